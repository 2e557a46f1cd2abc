//! Crash and restart: kill -9 of the daemon mid-training, SIGTERM shutdown, a large store.

use std::time::{Duration, Instant};

use orpo_api::client::ListJobs;
use orpo_api::{JobState, SubmitJobRequest};
use orpo_tests::{job_toml, submit_tiny, TestDaemon};
use orpod::store::{Inserted, NewJob, Store};

use crate::{exe, fixture};

#[tokio::test]
async fn kill9_requeues_the_running_job_which_resumes_and_loses_nothing_acknowledged() {
    let (tmp, model) = fixture();
    let mut d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let job = submit_tiny(&d, &model, 8, "max_steps = 30").await;
    d.wait_for(job.id, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 3
    })
    .await;
    // Acknowledged submits just before the crash must all be there afterwards.
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(submit_tiny(&d, &model, 8, "max_steps = 1").await.id);
    }
    d.kill9();
    d.restart().await;

    let all = d.client.list(&ListJobs::default()).await.unwrap();
    for id in acked.iter().chain([&job.id]) {
        assert!(
            all.jobs.iter().any(|j| j.id == *id),
            "job {id} lost after kill -9"
        );
    }
    let states: Vec<JobState> = d
        .client
        .events(job.id, None)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.state)
        .collect();
    assert!(
        states
            .windows(2)
            .any(|w| w == [JobState::Interrupted, JobState::Queued]),
        "restart marks the job interrupted and requeues it: {states:?}"
    );
    let done = d
        .wait_state(job.id, JobState::Succeeded, Duration::from_secs(180))
        .await;
    assert_eq!(done.attempts, 2);
    let events = d.client.events(job.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("resumed from step-")),
        "the second attempt resumed from a checkpoint: {events:#?}"
    );
    let steps = d.train_steps(job.id).await;
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    for id in acked {
        d.wait_state(id, JobState::Succeeded, Duration::from_secs(60))
            .await;
    }
}

#[tokio::test]
async fn sigterm_checkpoints_running_jobs_and_they_resume_on_start() {
    let (tmp, model) = fixture();
    let mut d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let job = submit_tiny(&d, &model, 8, "max_steps = 40").await;
    d.wait_for(job.id, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 2
    })
    .await;
    let took = d.stop();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    d.restart().await;
    let v = d.client.job(job.id).await.unwrap();
    assert!(v.attempts >= 1);
    let done = d
        .wait_state(job.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    assert_eq!(done.attempts, 2);
    let states: Vec<JobState> = d
        .client
        .events(job.id, None)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.state)
        .collect();
    assert!(states.contains(&JobState::Interrupted), "{states:?}");
    let events = d.client.events(job.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("resumed from step-")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn restart_with_ten_thousand_stored_jobs() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let ds_ref;
    {
        // Seed through a first daemon so the data set exists, then fill the store directly.
        let mut d = TestDaemon::start(exe(), &state, "").await;
        ds_ref = d.upload(4).await;
        d.stop();
    }
    let spec = orpo_api::JobSpec::parse(&job_toml(&model, &ds_ref, "max_steps = 1"), "j".as_ref())
        .unwrap();
    {
        let store = Store::open(&state.join("db")).unwrap();
        for i in 0..10_000u64 {
            let Inserted::New(v) = store
                .insert_job(NewJob {
                    owner: format!("user{}", i % 4),
                    spec: spec.clone(),
                    pending_reason: None,
                    estimate_bytes: None,
                    total_steps: 0,
                    idempotency: None,
                    caps: None,
                })
                .await
                .unwrap()
            else {
                panic!("no idempotency key, yet an existing job");
            };
            store
                .update_job(v.id, move |j| {
                    j.state = if i == 9_999 {
                        JobState::Running
                    } else {
                        JobState::Succeeded
                    };
                    Ok(())
                })
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    }
    let t = Instant::now();
    let d = TestDaemon::start(exe(), &state, "").await;
    let started = t.elapsed();
    assert!(
        started < Duration::from_secs(20),
        "start with 10,000 jobs took {started:?}"
    );
    // The one left running was requeued and runs to the end.
    d.wait_state(10_000, JobState::Succeeded, Duration::from_secs(60))
        .await;
    let t = Instant::now();
    let (mut seen, mut cursor) = (0, None);
    loop {
        let page = d
            .client
            .list(&ListJobs {
                owner: Some("user1".into()),
                limit: Some(1000),
                cursor,
                ..Default::default()
            })
            .await
            .unwrap();
        seen += page.jobs.len();
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, 2_500);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "paging took {:?}",
        t.elapsed()
    );
    let req = SubmitJobRequest {
        job_toml: Some(job_toml(&model, &ds_ref, "max_steps = 1")),
        ..Default::default()
    };
    let v = d.client.submit(&req).await.unwrap();
    assert_eq!(v.id, 10_001, "ids continue after the stored ones");
}
