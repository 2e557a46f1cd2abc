//! A job's life on the tiny model, and cancel.

use std::time::Duration;

use orpo_api::client::ListJobs;
use orpo_api::{EventKind, JobState};
use orpo_tests::{submit_tiny, TestDaemon};

use crate::{exe, fixture};

#[tokio::test]
async fn lifecycle_submit_train_succeed_and_read_everything_back() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let job = submit_tiny(&d, &model, 8, "max_steps = 6\nsave_every = 3").await;
    assert_eq!(job.state, JobState::Queued, "201 carries the new JobView");
    assert_eq!(job.owner, "tester");
    assert!(
        job.pending_reason.is_some(),
        "a queued job says why it waits"
    );
    let done = d
        .wait_state(job.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    assert_eq!(done.progress.step, 6);
    assert_eq!(done.progress.total_steps, 6);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.device.as_deref(), Some("cpu"));
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    assert!(done.progress.tokens > 0 && done.progress.epoch > 0.0);
    let m = done.metrics.as_ref().expect("latest metrics");
    assert_eq!(m.step, 6);
    for name in ["loss", "nll_loss", "log_odds_ratio", "rewards/accuracies"] {
        assert!(
            m.metrics.get(name).is_some_and(|v| v.is_finite()),
            "{name} in {m:?}"
        );
    }

    let steps = d.train_steps(job.id).await;
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(d.client.metrics(job.id, Some(4)).await.unwrap().len(), 2);

    // The checkpoints' samples are answered after the job, each saying so in its log.
    assert_eq!(d.wait_samples(job.id).await, ["step-3", "step-6", "final"]);
    let events = d.client.events(job.id, None).await.unwrap();
    let states: Vec<JobState> = events.iter().filter_map(|e| e.state).collect();
    assert_eq!(
        states,
        vec![
            JobState::Queued,
            JobState::Starting,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "dense seqs"
    );
    let saved: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Checkpoint)
        .filter_map(|e| e.checkpoint.clone())
        .collect();
    assert!(saved.contains(&"final".to_string()), "{saved:?}");

    // The SSE stream of a finished job replays its events and ends.
    let url = d
        .client
        .url(&format!("/v1/jobs/{}/events?follow=true", job.id));
    let resp = d.client.http().get(url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.matches("\ndata: ").count(), events.len(), "{body}");
    assert!(body.contains("event: state"));

    // Charts: SVG drawn by the daemon, one metric against the step; a slash in a TRL name
    // travels percent-encoded; a metric without points is named with those the job has.
    let loss = d.client.chart(job.id, "loss").await.unwrap();
    assert!(
        loss.starts_with("<svg") && loss.contains("<polyline"),
        "{loss}"
    );
    assert!(
        loss.contains(&format!("job {} (tiny): loss", job.id)),
        "{loss}"
    );
    let acc = d.client.chart(job.id, "rewards/accuracies").await.unwrap();
    assert!(acc.contains("rewards/accuracies"), "{acc}");
    let url = d
        .client
        .url(&format!("/v1/jobs/{}/charts/grad_norm.svg", job.id));
    let resp = d.client.http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    assert!(resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    let err = d.client.chart(job.id, "eval_nothing").await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err}");
    assert!(
        err.to_string()
            .contains("has no points of \"eval_nothing\"; it has: ")
            && err.to_string().contains("loss, nll_loss"),
        "{err}"
    );

    let ckpts = d.client.checkpoints(job.id).await.unwrap();
    let names: Vec<&str> = ckpts.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"step-3") && names.last() == Some(&"final"),
        "{names:?}"
    );
    let fin = ckpts.last().unwrap();
    let weights = fin
        .files
        .iter()
        .find(|f| f.name == "adapter_model.safetensors")
        .expect("adapter");
    let whole = d
        .client
        .download(job.id, "final", &weights.name, None)
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, weights.size_bytes);
    let part = d
        .client
        .download(job.id, "final", &weights.name, Some("bytes=8-23"))
        .await
        .unwrap();
    assert_eq!(part, whole[8..24].to_vec(), "Range gives those bytes");
    // Only files listed in the checkpoint are served: nothing else of the job folder.
    let err = d
        .client
        .download(job.id, "final", "job.toml", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("checkpoint_not_found"));
    let err = d
        .client
        .download(job.id, "final", "..%2F..%2Fjob.toml", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, orpo_api::client::ClientError::Api { status: 404, .. }),
        "{err}"
    );

    // Listing, filters, cursors, and the monitoring routes.
    let second = submit_tiny(&d, &model, 8, "max_steps = 1").await;
    d.wait_state(second.id, JobState::Succeeded, Duration::from_secs(60))
        .await;
    let all = d.client.list(&ListJobs::default()).await.unwrap();
    assert_eq!(
        all.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![second.id, job.id]
    );
    let page = d
        .client
        .list(&ListJobs {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs[0].id, second.id);
    let page2 = d
        .client
        .list(&ListJobs {
            limit: Some(1),
            cursor: page.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.jobs[0].id, job.id);
    assert_eq!(page2.next_cursor, None);
    let none = d
        .client
        .list(&ListJobs {
            state: Some(JobState::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.jobs.is_empty());
    let other = d
        .client
        .list(&ListJobs {
            owner: Some("someone-else".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other.jobs.is_empty());
    let health = d.client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.schema_version, orpod::store::SCHEMA_VERSION);
    let prom = d
        .client
        .http()
        .get(d.client.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(prom.contains("orpod_jobs{state=\"succeeded\"} 2"), "{prom}");
    let gpus = d.client.gpus().await.unwrap();
    assert_eq!(gpus.devices[0].device, "cpu");
    assert!(gpus.devices[0].total_bytes > 0);
}

#[tokio::test]
async fn cancel_stops_a_running_worker_and_a_queued_job() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let running = submit_tiny(&d, &model, 8, "max_steps = 100000").await;
    let queued = submit_tiny(&d, &model, 8, "max_steps = 100000").await;
    d.wait_for(running.id, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 2
    })
    .await;
    let q = d.client.job(queued.id).await.unwrap();
    assert_eq!(q.state, JobState::Queued);
    assert!(
        q.pending_reason.as_deref().unwrap_or("").contains("ahead"),
        "{q:?}"
    );

    let v = d.client.cancel(queued.id).await.unwrap();
    assert_eq!(
        v.state,
        JobState::Cancelled,
        "a queued job is cancelled at once"
    );
    let t = std::time::Instant::now();
    d.client.cancel(running.id).await.unwrap();
    let v = d
        .wait_state(running.id, JobState::Cancelled, Duration::from_secs(30))
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM stops it within a step"
    );
    assert!(v.finished_at.is_some());
    assert!(v.progress.step < 100000);
    let err = d.client.cancel(running.id).await.unwrap_err();
    assert_eq!(err.code(), Some("conflict"), "{err}");
    // The worker is gone: nothing of this daemon runs.
    assert_eq!(d.client.health().await.unwrap().jobs_running, 0);
}
