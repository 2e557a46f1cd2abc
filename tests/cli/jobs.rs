//! A job's whole life through `orpoctl`, and the verbs that change a job's state.

use std::time::Duration;

use orpo_api::{GenerateEvent, JobState, JobView};

use crate::Setup;

/// The rows of a table as cells (split at runs of two or more spaces), with the columns that
/// depend on the clock or the machine (MEMORY: the peak seen; AGE) replaced by `*`.
fn cells(table: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect();
    let header = rows[0].clone();
    for row in rows.iter_mut().skip(1) {
        for (i, h) in header.iter().enumerate() {
            if (h == "MEMORY" || h == "AGE") && i < row.len() {
                row[i] = "*".into();
            }
        }
    }
    rows
}

#[tokio::test]
async fn submit_watch_and_read_everything_back() {
    let s = Setup::new().await;
    let job = s.job_file("cli-tiny", 8, "max_steps = 4\nsave_every = 2");

    let out = s
        .run(&[
            "submit",
            job.to_str().unwrap(),
            "--watch",
            "--name",
            "first",
        ])
        .expect(0);
    assert!(
        out.stdout.starts_with("submitted job 1 (first), queued"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("job 1 succeeded: 4 steps in "),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("data.train: uploaded prefs.jsonl ("),
        "{out:#?}"
    );
    assert!(out.stderr.contains(" 8 rows)"), "{out:#?}");
    // Not a terminal: one plain line per step instead of a bar.
    for step in 1..=4 {
        assert!(
            out.stderr.contains(&format!("step {step}/4 loss ")),
            "{out:#?}"
        );
    }
    assert!(out.stderr.contains("checkpoint step-2 saved"), "{out:#?}");

    // The same data again: found by sha256, not uploaded; --json prints the JobView.
    let out = s
        .run(&[
            "submit",
            job.to_str().unwrap(),
            "--json",
            "--priority",
            "-3",
        ])
        .expect(0);
    assert!(
        out.stderr
            .contains("prefs.jsonl is already on the server (8 rows"),
        "{out:#?}"
    );
    let second: JobView = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((second.id, second.spec.unwrap().priority), (2, -3));
    assert_eq!(second.owner, "tester");
    s.d.wait_state(2, JobState::Succeeded, Duration::from_secs(60))
        .await;

    let out = s.run(&["list"]).expect(0);
    let want = [
        "ID NAME OWNER STATE PROGRESS DEVICE MEMORY AGE",
        "2 cli-tiny tester succeeded 4/4 (100%) cpu * *",
        "1 first tester succeeded 4/4 (100%) cpu * *",
    ];
    let got: Vec<String> = cells(&out.stdout).iter().map(|r| r.join(" ")).collect();
    assert_eq!(got, want, "{}", out.stdout);
    let out = s.run(&["list", "--state", "queued"]).expect(0);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no jobs in state queued"), "{out:#?}");
    let out = s.run(&["list", "--json"]).expect(0);
    let jobs: Vec<JobView> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 2);

    let out = s.run(&["status", "1"]).expect(0);
    for line in [
        "job         1 (first)\n",
        "state       succeeded\n",
        "device      cpu\n",
        "progress    4/4 (100%), epoch ",
        "latest metrics (step 4):\n",
        "  rewards/accuracies ",
        "checkpoints:\n  step-2     ",
        "  final      ",
    ] {
        assert!(out.stdout.contains(line), "{line:?} in {}", out.stdout);
    }
    let out = s.run(&["status", "1", "--json"]).expect(0);
    let view: JobView = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(view.state, JobState::Succeeded);

    let out = s.run(&["metrics", "1", "-n", "2"]).expect(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("STEP  EPOCH  loss    nll_loss  log_odds_ratio"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("3 ") && lines[2].starts_with("4 "),
        "{}",
        out.stdout
    );
    let out = s.run(&["metrics", "1", "--json"]).expect(0);
    let records: Vec<orpo_api::MetricRecord> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        records.iter().filter(|r| r.learning_rate.is_some()).count(),
        4
    );

    let out = s.run(&["logs", "1"]).expect(0);
    assert!(out.stdout.contains("  state       "), "{}", out.stdout);
    assert!(out.stdout.contains("  checkpoint  "), "{}", out.stdout);
    let followed = s.run(&["logs", "1", "-f"]).expect(0);
    assert_eq!(
        followed.stdout, out.stdout,
        "following a finished job replays it and ends"
    );

    // A finished job: watch prints the outcome at once and exits with it.
    let out = s.run(&["watch", "1"]).expect(0);
    assert!(
        out.stdout.starts_with("job 1 succeeded: 4 steps"),
        "{out:#?}"
    );
}

#[tokio::test]
async fn checkpoints_and_download_resume_a_broken_transfer() {
    let s = Setup::new().await;
    let job = s.job_file("dl", 8, "max_steps = 2\nsave_every = 1");
    s.run(&["submit", job.to_str().unwrap()]).expect(0);
    s.d.wait_state(1, JobState::Succeeded, Duration::from_secs(60))
        .await;

    let out = s.run(&["checkpoints", "1"]).expect(0);
    let names: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["NAME", "step-1", "step-2", "final"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.starts_with("NAME    STEP  FILES  SIZE"),
        "{}",
        out.stdout
    );

    let dir = s.tmp.path().join("adapter");
    let out = s
        .run(&["download", "1", "-o", dir.to_str().unwrap()])
        .expect(0);
    assert!(
        out.stdout.starts_with("downloaded final of job 1 into "),
        "{out:#?}"
    );
    let server = s.d.state_dir.join("jobs/1/final");
    let weights = "adapter_model.safetensors";
    let want = std::fs::read(server.join(weights)).unwrap();
    assert_eq!(std::fs::read(dir.join(weights)).unwrap(), want);
    assert!(dir.join("adapter_config.json").is_file());

    // A broken transfer leaves NAME.part; the same command resumes it with a Range request.
    std::fs::remove_file(dir.join(weights)).unwrap();
    let half = want.len() / 2;
    std::fs::write(dir.join(format!("{weights}.part")), &want[..half]).unwrap();
    let out = s
        .run(&["download", "1", "-o", dir.to_str().unwrap()])
        .expect(0);
    assert_eq!(
        std::fs::read(dir.join(weights)).unwrap(),
        want,
        "resumed bytes"
    );
    assert!(!dir.join(format!("{weights}.part")).exists());
    let transferred = orpoctl_size(&out.stdout);
    assert!(
        transferred < want.len() as f64,
        "only the missing half was transferred: {out:#?}"
    );

    let step = s.tmp.path().join("step1");
    s.run(&[
        "download",
        "1",
        "-c",
        "step-1",
        "-o",
        step.to_str().unwrap(),
    ])
    .expect(0);
    assert!(step.join("optimizer.safetensors").is_file() || step.join(weights).is_file());
    let out = s
        .run(&[
            "download",
            "1",
            "-c",
            "step-9",
            "-o",
            step.to_str().unwrap(),
        ])
        .expect(1);
    assert!(
        out.stderr
            .contains("job 1 has no checkpoint \"step-9\"; it has: step-1, step-2, final"),
        "{out:#?}"
    );
}

/// The `; N transferred)` figure of a download line, in bytes.
fn orpoctl_size(line: &str) -> f64 {
    let t = line
        .rsplit("; ")
        .next()
        .unwrap()
        .trim_end_matches(" transferred)\n");
    let (n, unit) = t.split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        _ => 1073741824.0,
    }
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let s = Setup::new().await;
    let job = s.job_file("long", 8, "max_steps = 400");
    s.run(&["submit", job.to_str().unwrap()]).expect(0);
    s.d.wait_for(1, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 1
    })
    .await;

    // Ctrl-C detaches `watch`; the job keeps running.
    let child = crate::orpoctl(&s.tmp.path().join("home"))
        .env("ORPOD_URL", &s.d.url)
        .args(["watch", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("detached; job 1 keeps running"), "{stderr}");
    assert!(stderr.contains("step "), "it showed steps before: {stderr}");
    assert_eq!(s.d.client.job(1).await.unwrap().state, JobState::Running);

    let out = s.run(&["pause", "1"]).expect(0);
    assert_eq!(out.stdout, "job 1 is pausing\n");
    assert!(
        out.stderr.contains("`orpoctl resume 1` queues it again"),
        "{out:#?}"
    );
    s.d.wait_state(1, JobState::Paused, Duration::from_secs(30))
        .await;
    let out = s.run(&["pause", "1"]).expect(1);
    assert!(out.stderr.starts_with("error: "), "{out:#?}");
    assert!(out.stderr.contains("(conflict)"), "{out:#?}");

    let out = s.run(&["resume", "1"]).expect(0);
    assert_eq!(out.stdout, "job 1 is queued\n");
    s.d.wait_for(1, Duration::from_secs(60), "running again", |j| {
        j.state == JobState::Running
    })
    .await;

    let out = s.run(&["cancel", "1"]).expect(0);
    assert!(
        out.stdout == "cancelling job 1 (it was running)\n" || out.stdout == "job 1 is cancelled\n",
        "{out:#?}"
    );
    s.d.wait_state(1, JobState::Cancelled, Duration::from_secs(30))
        .await;
    // Watching a cancelled job exits 1 with the outcome.
    let out = s.run(&["watch", "1"]).expect(1);
    assert_eq!(out.stdout, "job 1 was cancelled\n");

    // `rm` deletes the finished job and its folder; an unknown id is reported, the rest go on.
    let dir = s.d.state_dir.join("jobs/1");
    assert!(dir.is_dir());
    let out = s.run(&["rm", "1", "99"]).expect(1);
    assert_eq!(out.stdout, "deleted job 1 (long, cancelled)\n", "{out:#?}");
    assert!(out.stderr.contains("job 99"), "{out:#?}");
    assert!(out.stderr.contains("1 of 2 job(s) not deleted"), "{out:#?}");
    assert!(!dir.exists(), "the job's folder is gone");
    let out = s.run(&["status", "1"]).expect(1);
    assert!(out.stderr.contains("not found"), "{out:#?}");
}

#[tokio::test]
async fn generate_streams_the_answer_and_puts_the_base_beside_it() {
    let s = Setup::new().await;
    let job = s.job_file("gen", 8, "max_steps = 2\nsave_every = 1");
    s.run(&["submit", job.to_str().unwrap()]).expect(0);
    s.d.wait_state(1, JobState::Succeeded, Duration::from_secs(60))
        .await;
    let ask = ["generate", "1", "Hi there", "--max-new-tokens", "6"];

    // --json: every event of the stream, one per line.
    let out = s
        .run(&[&ask[..], &["--checkpoint", "step-1", "--json"]].concat())
        .expect(0);
    let events: Vec<GenerateEvent> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        matches!(&events[0], GenerateEvent::Started { checkpoint, .. } if checkpoint == "step-1"),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&GenerateEvent::Done {}));
    let answer = events
        .iter()
        .find_map(|e| match e {
            GenerateEvent::Answer { text, .. } => Some(text.clone()),
            _ => None,
        })
        .unwrap();

    // Plain: the answer alone on stdout, where it runs on stderr.
    let out = s
        .run(&[&ask[..], &["--checkpoint", "step-1"]].concat())
        .expect(0);
    assert_eq!(out.stdout, format!("{answer}\n"), "{out:#?}");
    assert!(
        out.stderr.contains("answering with job 1's step-1 on cpu"),
        "{out:#?}"
    );

    // --compare-base: the base's answer and the newest checkpoint's, side by side (100
    // columns when stdout is not a terminal).
    let out = s.run(&[&ask[..], &["--compare-base"]].concat()).expect(0);
    let mut lines = out.stdout.lines();
    let titles = lines.next().unwrap();
    assert!(
        titles.starts_with("base ") && titles.ends_with(" │ final"),
        "{}",
        out.stdout
    );
    assert_eq!(titles.find('│'), Some(49), "{}", out.stdout);
    assert!(lines.next().unwrap().starts_with("────"));

    // A chart of the run, to a file and to a pipe.
    let svg = s.tmp.path().join("loss.svg");
    let out = s
        .run(&["chart", "1", "loss", "-o", svg.to_str().unwrap()])
        .expect(0);
    assert!(
        out.stderr.starts_with("wrote loss of job 1 to "),
        "{out:#?}"
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("job 1 (gen): loss"));
    let out = s.run(&["chart", "1", "rewards/margins"]).expect(0);
    assert!(out.stdout.starts_with("<svg"), "{out:#?}");
    let out = s.run(&["chart", "1", "nope"]).expect(1);
    assert!(
        out.stderr.contains("has no points of \"nope\"; it has: "),
        "{out:#?}"
    );

    // Refusals name the problem.
    let out = s
        .run(&["generate", "1", "hi", "--checkpoint", "step-9"])
        .expect(1);
    assert!(
        out.stderr.contains("job 1 has no checkpoint \"step-9\""),
        "{out:#?}"
    );
    let out = s.run(&["generate", "1", "hi", "--top-p", "2"]).expect(1);
    assert!(
        out.stderr.contains("top_p must be in (0, 1], not 2"),
        "{out:#?}"
    );
}
