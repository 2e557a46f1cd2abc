//! Queue benchmark (not a test): what a long queue costs the daemon. Starts its own daemon in a
//! temporary folder, starts a long job on the tiny test model, queues N more behind it (default
//! 2,000), then reports the submit rate, the daemon's CPU use while nothing changes (the
//! scheduler's rounds over the queue), and the time to list the whole queue.
//!
//! `cargo run --release -p orpo-tests --bin orpod-queue -- target/release/orpod [N] [SECONDS]`

use std::time::{Duration, Instant};

use orpo_api::client::ListJobs;
use orpo_api::{JobState, SubmitJobRequest};
use orpo_tests::{job_toml, prefs_jsonl, tiny_model, TestDaemon};

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let exe = args
        .get(1)
        .expect("usage: orpod-queue ORPOD_EXE [N] [SECONDS]");
    let n: usize = args.get(2).map_or(2000, |s| s.parse().expect("N"));
    let seconds: u64 = args.get(3).map_or(20, |s| s.parse().expect("SECONDS"));
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    // Thousands of jobs of one (anonymous) user.
    let d = TestDaemon::start(
        exe.as_ref(),
        &tmp.path().join("state"),
        "max_queued_per_user = 1000000\nmax_steps_per_user = 1000000000\n",
    )
    .await;
    let ds = d.client.upload_dataset(prefs_jsonl(8)).await.unwrap();
    let mut long = job_toml(&model, &ds.reference, "max_steps = 1000000\nsave_every = 0");
    long.insert_str(0, "priority = 10\n");
    let submit = |toml: String| SubmitJobRequest {
        job_toml: Some(toml),
        ..Default::default()
    };
    let running = d.client.submit(&submit(long)).await.unwrap();
    d.wait_for(running.id, Duration::from_secs(120), "training", |j| {
        j.state == JobState::Running
    })
    .await;
    let small = job_toml(&model, &ds.reference, "max_steps = 1");
    let t = Instant::now();
    for _ in 0..n {
        d.client.submit(&submit(small.clone())).await.unwrap();
    }
    let submit_s = t.elapsed().as_secs_f64();
    // Let the first rounds write the waiting reasons, then measure the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = d.pid();
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut listed, mut cursor) = (0, None);
    loop {
        let page = d
            .client
            .list(&ListJobs {
                limit: Some(1000),
                cursor,
                ..Default::default()
            })
            .await
            .unwrap();
        listed += page.jobs.len();
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let list_s = t.elapsed().as_secs_f64();
    println!(
        "{n} queued behind a running job: submits {:.0}/s; daemon CPU {:.1}% of one core over \
         {seconds} s (scheduler rounds, the job's events); listing all {listed} jobs {:.0} ms",
        n as f64 / submit_s,
        cpu * 100.0,
        list_s * 1e3
    );
    let _ = d.client.cancel(running.id).await;
}
