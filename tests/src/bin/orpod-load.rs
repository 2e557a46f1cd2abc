//! Load benchmark (not a test): status polling of `GET /v1/jobs/{id}` from this process on
//! loopback while a job trains on the same machine. Starts its own daemon in a temporary
//! folder, submits a long job on the given model (default: the tiny test model), waits until it
//! trains, then sends requests open-loop at a fixed rate and reports req/s, p50, p99, max.
//!
//! `cargo run --release -p orpo-tests --bin orpod-load -- target/release/orpod [RATE] [SECONDS] [MODEL]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use orpo_api::JobState;
use orpo_tests::{submit_tiny, tiny_model, TestDaemon};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let exe = args
        .get(1)
        .expect("usage: orpod-load ORPOD_EXE [RATE] [SECONDS] [MODEL]");
    let rate: u64 = args.get(2).map_or(1000, |s| s.parse().expect("RATE"));
    let seconds: u64 = args.get(3).map_or(20, |s| s.parse().expect("SECONDS"));
    let tmp = tempfile::tempdir().unwrap();
    let model = match args.get(4) {
        Some(m) => std::path::PathBuf::from(m),
        None => tiny_model(tmp.path()),
    };
    let d = TestDaemon::start(exe.as_ref(), &tmp.path().join("state"), "").await;
    let job = submit_tiny(&d, &model, 64, "max_steps = 1000000\nsave_every = 0").await;
    d.wait_for(job.id, Duration::from_secs(300), "training", |j| {
        j.state == JobState::Running && j.progress.step >= 1
    })
    .await;
    let url = format!("{}/v1/jobs/{}", d.url, job.id);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        (rate * seconds) as usize,
    )));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let step_before = d.client.job(job.id).await.unwrap().progress.step;
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let (http, url, lat, errs) = (http.clone(), url.clone(), latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = match http.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                lat.lock().unwrap().push(t.elapsed());
            } else {
                errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let after = d.client.job(job.id).await.unwrap();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "GET /v1/jobs/{{id}}: {} ok, {} errors in {wall:.1} s = {:.0} req/s (target {rate}); \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; the job trained {} steps meanwhile ({})",
        lat.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        lat.len() as f64 / wall,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        after.progress.step - step_before,
        model.display()
    );
    let _ = d.client.cancel(job.id).await;
    d.wait_for(job.id, Duration::from_secs(30), "cancelled", |j| {
        j.state.is_terminal()
    })
    .await;
}
