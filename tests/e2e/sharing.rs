//! Sharing one daemon: every per-user limit refuses a job with its name and value and stores
//! nothing; at equal priority the slot goes round-robin between users, not first come.

use std::time::Duration;

use orpo_api::client::Client;
use orpo_api::{JobState, JobView, SubmitJobRequest};
use orpo_tests::{job_toml, orpod_token_create, orpod_user_add, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// A job of `train` keys (and `priority`) on the tiny model and the caller's data set.
fn job(model: &std::path::Path, reference: &str, priority: i32, train: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_toml: Some(format!(
            "priority = {priority}\n{}",
            job_toml(model, reference, train)
        )),
        ..Default::default()
    }
}

/// Submits and expects a refusal naming `limit`; the store keeps as many jobs as before.
async fn refused(d: &TestDaemon, client: &Client, req: &SubmitJobRequest, limit: &str) {
    let before = d.all_jobs().await.len();
    let e = client.submit(req).await.unwrap_err();
    assert_eq!(e.code(), Some("limit_exceeded"), "{limit}: {e}");
    assert!(e.to_string().contains(limit), "{limit}: {e}");
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert_eq!(d.all_jobs().await.len(), before, "{limit}: nothing stored");
}

#[tokio::test]
async fn each_limit_refuses_with_its_name_and_value() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    orpod_user_add(exe(), &state, "root", true);
    orpod_user_add(exe(), &state, "alice", false);
    let root_t = orpod_token_create(exe(), &state, "root");
    let alice_t = orpod_token_create(exe(), &state, "alice");
    // No host has 100 TB: every job stays queued.
    let mut d = TestDaemon::start(
        exe(),
        &state,
        "headroom_mib = 100000000\nmax_user_priority = 5\nmax_queued_per_user = 2\n\
         max_steps_per_user = 100\nmax_checkpoint_mib_per_user = 1\nmax_keep_checkpoints = 3\n\
         min_save_every = 5\n",
    )
    .await;
    d.use_token(&root_t);
    let (root, alice) = (d.client_with(&root_t), d.client_with(&alice_t));
    let ds = alice.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let root_ds = root.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let r = &ds.reference;

    // The job itself: priority (admins may pass it), checkpoints kept, how often.
    refused(
        &d,
        &alice,
        &job(&model, r, 6, "max_steps = 1"),
        "max_user_priority = 5",
    )
    .await;
    let e = alice
        .plan(&job(&model, r, 6, "max_steps = 1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("limit_exceeded"), "{e}");
    root.submit(&job(&model, &root_ds.reference, 1_000, "max_steps = 1"))
        .await
        .unwrap();
    refused(
        &d,
        &alice,
        &job(&model, r, 0, "max_steps = 1\nkeep_checkpoints = 4"),
        "max_keep_checkpoints = 3",
    )
    .await;
    refused(
        &d,
        &alice,
        &job(&model, r, 0, "max_steps = 10\nsave_every = 2"),
        "min_save_every = 5",
    )
    .await;
    // What alice has: steps still to run, jobs waiting. An epoch-based job counts its steps
    // from the data: 6 rows, 2 per batch, 30 epochs = 90 steps.
    let first = alice
        .submit(&job(&model, r, 0, "max_steps = 60\nsave_every = 5"))
        .await
        .unwrap();
    assert_eq!(first.progress.total_steps, 60);
    refused(
        &d,
        &alice,
        &job(&model, r, 0, "epochs = 30"),
        "max_steps_per_user = 100",
    )
    .await;
    let second = alice
        .submit(&job(&model, r, 0, "max_steps = 40"))
        .await
        .unwrap();
    refused(
        &d,
        &alice,
        &job(&model, r, 0, "max_steps = 0\nepochs = 0.001"),
        "max_queued_per_user = 2",
    )
    .await;
    // Disk: a cancelled job's folder that holds 2 MiB counts until it is removed.
    alice.cancel(second.id).await.unwrap();
    d.wait_state(second.id, JobState::Cancelled, Duration::from_secs(30))
        .await;
    let dir = state.join(format!("jobs/{}/checkpoints/step-5", second.id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), vec![0u8; 2 << 20]).unwrap();
    refused(
        &d,
        &alice,
        &job(&model, r, 0, "max_steps = 1"),
        "max_checkpoint_mib_per_user = 1",
    )
    .await;
    let e = alice
        .plan(&job(&model, r, 0, "max_steps = 1"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("max_checkpoint_mib_per_user = 1"),
        "{e}"
    );
    // Her job queued under the cap waits now, naming it, and moves on once she removes one.
    let reason = |j: &JobView| j.pending_reason.clone().unwrap_or_default();
    let cap = "waiting: alice's jobs hold 2 MiB of checkpoints and exports, this server's limit \
               (max_checkpoint_mib_per_user = 1); remove finished jobs with `orpoctl rm ID`";
    d.wait_for(first.id, Duration::from_secs(30), "the disk cap", |j| {
        reason(j) == cap
    })
    .await;
    alice.delete_job(second.id).await.unwrap();
    let waiting = d
        .wait_for(first.id, Duration::from_secs(10), "another reason", |j| {
            reason(j) != cap
        })
        .await;
    assert!(reason(&waiting).contains("headroom"), "{waiting:?}");
    alice
        .submit(&job(&model, r, 0, "max_steps = 1"))
        .await
        .unwrap();
    assert_eq!(alice.job(first.id).await.unwrap().state, JobState::Queued);
}

#[tokio::test]
async fn equal_priorities_take_turns_between_users() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    for user in ["alice", "bob"] {
        orpod_user_add(exe(), &state, user, false);
    }
    let alice_t = orpod_token_create(exe(), &state, "alice");
    let bob_t = orpod_token_create(exe(), &state, "bob");
    let mut d = TestDaemon::start(exe(), &state, "").await;
    d.use_token(&alice_t);
    let (alice, bob) = (d.client_with(&alice_t), d.client_with(&bob_t));
    let a_ds = alice.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let b_ds = bob.upload_dataset(prefs_jsonl(6)).await.unwrap();
    // Alice's long job holds the one slot while alice queues two more and then bob one.
    let blocker = alice
        .submit(&job(&model, &a_ds.reference, 0, "max_steps = 100000"))
        .await
        .unwrap();
    d.wait_state(blocker.id, JobState::Running, Duration::from_secs(60))
        .await;
    let a1 = alice
        .submit(&job(&model, &a_ds.reference, 0, "max_steps = 1"))
        .await
        .unwrap();
    let a2 = alice
        .submit(&job(&model, &a_ds.reference, 0, "max_steps = 1"))
        .await
        .unwrap();
    // `plan` counts the jobs ahead in fair turns: alice's third would wait behind her two,
    // bob's first behind none.
    let plan = |c: &orpo_api::client::Client, ds: &str| {
        let req = job(&model, ds, 0, "max_steps = 1");
        let c = c.clone();
        async move { c.plan(&req).await.unwrap() }
    };
    assert_eq!(plan(&alice, &a_ds.reference).await.queued_ahead, 2);
    assert_eq!(plan(&bob, &b_ds.reference).await.queued_ahead, 0);
    let b1 = bob
        .submit(&job(&model, &b_ds.reference, 0, "max_steps = 1"))
        .await
        .unwrap();
    alice.cancel(blocker.id).await.unwrap();
    // Bob, who has not had a turn, goes before alice's queued jobs; then alice's in order.
    let mut started = Vec::new();
    for id in [a1.id, a2.id, b1.id] {
        let j = d
            .wait_state(id, JobState::Succeeded, Duration::from_secs(120))
            .await;
        started.push((j.started_at.unwrap(), id));
    }
    started.sort();
    let order: Vec<u64> = started.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, [b1.id, a1.id, a2.id], "{started:?}");
}
