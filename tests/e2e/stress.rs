//! The queue under its users: sixteen clients at once while a job trains, and kill -9 of the
//! daemon at twenty random moments of such load. Bounded in time and in requests; everything
//! goes to a daemon on loopback that the test starts and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orpo_api::client::{Client, ListJobs};
use orpo_api::{JobState, JobView, SubmitJobRequest};
use orpo_tests::{job_toml, TestDaemon};

use crate::{exe, fixture};

/// What each request may take at most while the box is busy training.
const SLOW: Duration = Duration::from_secs(5);

/// A request with a deadline; its latency goes into `worst`.
async fn timed<T>(
    worst: &Mutex<Duration>,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let t = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within 30 s"));
    let took = t.elapsed();
    let mut w = worst.lock().unwrap();
    if took > *w {
        *w = took;
    }
    out
}

/// Finding: eight clients submitting at once deadlocked the daemon. Sixteen clients submit
/// (with idempotency keys), cancel, list and follow events for 20 s while a job trains; every
/// request answers within a few seconds, the daemon stops cleanly on SIGTERM, and after a
/// restart every acknowledged job is in the store exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_at_once_while_a_job_trains() {
    let (tmp, model) = fixture();
    // Every client is `anonymous` (no users): one user's cap would refuse most submits.
    let mut d = TestDaemon::start(
        exe(),
        &tmp.path().join("state"),
        "max_queued_per_user = 1000000\n",
    )
    .await;
    let ds = d
        .client
        .upload_dataset(orpo_tests::prefs_jsonl(16))
        .await
        .unwrap();
    let train = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(job_toml(
                &model,
                &ds.reference,
                "max_steps = 100000\nsave_every = 0",
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    d.wait_for(train.id, Duration::from_secs(60), "training", |j| {
        j.state == JobState::Running && j.progress.step >= 1
    })
    .await;

    let small = job_toml(&model, &ds.reference, "max_steps = 1");
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(20);
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (client, small, worst, acked, requests) = (
            d.client.clone(),
            small.clone(),
            worst.clone(),
            acked.clone(),
            requests.clone(),
        );
        let train_id = train.id;
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut round = 0u64;
            while Instant::now() < until {
                round += 1;
                match (c + round) % 4 {
                    0 | 1 => {
                        let req = SubmitJobRequest {
                            job_toml: Some(small.clone()),
                            owner: Some(format!("client{c}")),
                            ..Default::default()
                        };
                        let key = format!("c{c}-r{round}");
                        let job = timed(&worst, "submit", client.submit_idempotent(&req, &key, 1))
                            .await
                            .expect("submit");
                        // The same key again: the same job, not a second one.
                        let again =
                            timed(&worst, "submit", client.submit_idempotent(&req, &key, 1))
                                .await
                                .expect("resubmit");
                        assert_eq!(again.id, job.id);
                        acked.lock().unwrap().push(job.id);
                        mine.push(job.id);
                    }
                    2 => {
                        if let Some(id) = mine.pop() {
                            let _ = timed(&worst, "cancel", client.cancel(id)).await;
                        }
                        timed(
                            &worst,
                            "list",
                            client.list(&ListJobs {
                                limit: Some(200),
                                ..Default::default()
                            }),
                        )
                        .await
                        .expect("list");
                    }
                    _ => {
                        // Follow the training job's events for a moment, then hang up.
                        let stream = timed(&worst, "follow", client.follow_events(train_id, None))
                            .await
                            .expect("follow");
                        let mut stream = Box::pin(stream);
                        let _ =
                            tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in clients {
        c.await.expect("a client task failed");
    }
    let worst = *worst.lock().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "16 clients: {} rounds, {} jobs acknowledged, slowest request {worst:?}",
        requests.load(Ordering::Relaxed),
        acked.len()
    );
    assert!(worst < SLOW, "a request took {worst:?}");
    assert!(acked.len() >= 16, "only {} submits in 20 s", acked.len());
    let health = d.client.health().await.unwrap();
    assert_eq!(health.status, "ok", "{health:?}");
    let took = d.stop();
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
    d.restart().await;
    let ids = d.job_ids().await;
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a job listed twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged job {id} lost");
    }
    assert_eq!(ids.len(), acked.len() + 1, "jobs nobody acknowledged");
    let _ = d.client.cancel(train.id).await;
}

/// SIGKILL at twenty random moments of load: after each restart the store opens, every
/// acknowledged job is there exactly once, a submit retried with its key after the crash made
/// no duplicate, and the training job resumes from its checkpoints to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_at_twenty_random_moments_loses_nothing_acknowledged() {
    let (tmp, model) = fixture();
    let mut d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let ds = d
        .client
        .upload_dataset(orpo_tests::prefs_jsonl(16))
        .await
        .unwrap();
    // Runs before every queued submit (priority), checkpoints often.
    // Long enough (a few seconds) for the kills to find it running.
    let mut toml = job_toml(&model, &ds.reference, "max_steps = 400\nsave_every = 2");
    toml.insert_str(0, "priority = 10\n");
    let train = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(toml),
            ..Default::default()
        })
        .await
        .unwrap();
    let small = job_toml(&model, &ds.reference, "max_steps = 1");
    // The daemon's address changes with every restart (port 0); clients read it from here.
    let url = Arc::new(RwLock::new(d.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    // key → the job id its submit was answered with (every answer for a key must agree).
    let acked = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (url, stop, acked, small) = (url.clone(), stop.clone(), acked.clone(), small.clone());
        clients.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                let key = format!("c{c}-k{k}");
                let req = SubmitJobRequest {
                    job_toml: Some(small.clone()),
                    owner: Some("crash".into()),
                    ..Default::default()
                };
                // Retry the same key until it is answered, through crashes and restarts.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let base = url.read().unwrap().clone();
                    let client = Client::new(&base);
                    let sent = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.submit_idempotent(&req, &key, 1),
                    )
                    .await;
                    if let Ok(Ok(job)) = sent {
                        let mut a = acked.lock().unwrap();
                        if let Some(prev) = a.insert(key.clone(), job.id) {
                            assert_eq!(prev, job.id, "key {key} answered with two jobs");
                        }
                        break;
                    }
                    assert!(Instant::now() < deadline, "key {key} never answered");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = move || {
        // xorshift64*: random but reproducible from the printed seed.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for round in 0..20 {
        let wait = Duration::from_millis(200 + next() % 1800);
        tokio::time::sleep(wait).await;
        d.kill9();
        d.restart().await;
        *url.write().unwrap() = d.url.clone();
        // What was acknowledged before the listing starts must be in it (clients go on
        // submitting to the new daemon meanwhile).
        let acked_now: Vec<u64> = acked.lock().unwrap().values().copied().collect();
        let ids = d.job_ids().await;
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "round {round}: a job listed twice");
        for id in acked_now {
            assert!(
                unique.contains(&id),
                "round {round}: acknowledged job {id} lost"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("a client task failed");
    }
    let acked = acked.lock().unwrap().clone();
    let crash_jobs: Vec<JobView> = d
        .all_jobs()
        .await
        .into_iter()
        .filter(|j| j.owner == "crash")
        .collect();
    let distinct: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "two keys answered with one job"
    );
    assert_eq!(
        crash_jobs.len(),
        acked.len(),
        "each key made exactly one job ({} keys, {} jobs)",
        acked.len(),
        crash_jobs.len()
    );
    eprintln!(
        "20 kills: {} keyed submits, each answered with one job",
        acked.len()
    );
    let done = d
        .wait_state(train.id, JobState::Succeeded, Duration::from_secs(300))
        .await;
    assert!(done.attempts > 1, "the job was interrupted: {done:?}");
    let steps = d.train_steps(train.id).await;
    assert_eq!(steps, (1..=400).collect::<Vec<_>>());
    let events = d.client.events(train.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("resumed from step-")),
        "resumed from a checkpoint: {events:#?}"
    );
}
