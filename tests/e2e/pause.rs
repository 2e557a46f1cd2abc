//! Pause writes a checkpoint and frees the slot; resume requeues the job and it continues from
//! that checkpoint (the trainer's resume contract: the same out_dir, the newest checkpoint).

use std::time::Duration;

use orpo_api::JobState;
use orpo_tests::{submit_tiny, TestDaemon};

use crate::{exe, fixture};

#[tokio::test]
async fn pause_checkpoints_frees_the_slot_and_resume_continues() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let job = submit_tiny(&d, &model, 8, "max_steps = 40").await;
    let other = submit_tiny(&d, &model, 8, "max_steps = 2").await;
    d.wait_for(job.id, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 2
    })
    .await;

    let v = d.client.pause(job.id).await.unwrap();
    assert_eq!(v.state, JobState::Pausing);
    let paused = d
        .wait_state(job.id, JobState::Paused, Duration::from_secs(30))
        .await;
    let at = paused.progress.step;
    assert!(at < 40, "paused before the end");
    assert!(paused.pending_reason.is_some());
    let ckpts = d.client.checkpoints(job.id).await.unwrap();
    assert!(
        ckpts.iter().any(|c| c.step == Some(at)),
        "pausing at step {at} wrote checkpoint step-{at}: {ckpts:?}"
    );
    // The freed slot runs the next job while this one is paused.
    d.wait_state(other.id, JobState::Succeeded, Duration::from_secs(60))
        .await;
    assert_eq!(d.client.job(job.id).await.unwrap().state, JobState::Paused);
    assert_eq!(
        d.client.pause(job.id).await.unwrap_err().code(),
        Some("conflict")
    );

    let v = d.client.resume(job.id).await.unwrap();
    assert_eq!(v.state, JobState::Queued);
    let done = d
        .wait_state(job.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    assert_eq!(done.attempts, 2);
    assert_eq!(done.progress.step, 40);
    let steps = d.train_steps(job.id).await;
    assert_eq!(
        steps,
        (1..=40).collect::<Vec<_>>(),
        "every step once, none repeated"
    );
    let events = d.client.events(job.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("resumed from step-{at}"))),
        "the second attempt resumed from step-{at}: {events:#?}"
    );
}

/// Found by CI on a busy machine: a pause that reaches a worker before it has installed its
/// SIGTERM handler killed it, and the job ended `failed` ("exited (signal: 15) while
/// pausing"). A pause right after the submit (queued, starting or running by then) must end
/// `paused`.
#[tokio::test]
async fn a_pause_right_after_the_start_pauses() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let ds = d
        .client
        .upload_dataset(orpo_tests::prefs_jsonl(8))
        .await
        .unwrap();
    let req = orpo_api::SubmitJobRequest {
        job_toml: Some(orpo_tests::job_toml(
            &model,
            &ds.reference,
            "max_steps = 100000",
        )),
        ..Default::default()
    };
    let mut with_worker = 0;
    for _ in 0..8 {
        let job = d.client.submit(&req).await.unwrap();
        // The scheduler starts it within milliseconds of the submit; pause at once.
        let asked = d.client.pause(job.id).await.unwrap();
        with_worker += usize::from(asked.state == JobState::Pausing);
        let paused = d
            .wait_for(job.id, Duration::from_secs(60), "paused", |j| {
                j.state.is_terminal() || j.state == JobState::Paused
            })
            .await;
        assert_eq!(paused.state, JobState::Paused, "{paused:#?}");
        d.client.cancel(job.id).await.unwrap();
    }
    eprintln!("{with_worker} of 8 pauses reached a worker (the rest a queued job)");
}
