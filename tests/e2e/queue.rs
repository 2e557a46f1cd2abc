//! One bad job never stops the queue for everyone: non-finite and absurd values are refused at
//! submit, a record that cannot be read is moved aside at start, a model no one could train
//! fails its own job and nothing else, retried submits are one job, finished jobs can be
//! deleted.

use std::time::Duration;

use orpo_api::client::ListJobs;
use orpo_api::{JobState, SubmitJobRequest};
use orpo_tests::{job_toml, submit_tiny, TestDaemon};
use orpod::store::{Inserted, NewJob, Store};

use crate::{exe, fixture};

/// A Hugging Face folder whose config.json says `vocab_size: 0` (the output head's chunk rule
/// divided by it and the scheduler panicked on every round, also after a restart).
fn zero_vocab_model(dir: &std::path::Path) -> std::path::PathBuf {
    let m = dir.join("zero-vocab");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("config.json"),
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 0,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
            "tie_word_embeddings": true
        })
        .to_string(),
    )
    .unwrap();
    m
}

#[tokio::test]
async fn bad_values_are_refused_at_submit_and_name_the_key() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let reference = d.upload(4).await;
    let submit = |train: &str| SubmitJobRequest {
        job_toml: Some(job_toml(&model, &reference, train)),
        ..Default::default()
    };
    for (train, key) in [
        ("epochs = inf", "epochs"),
        ("learning_rate = nan", "learning_rate"),
        ("epochs = -inf", "epochs"),
    ] {
        let err = d.client.submit(&submit(train)).await.unwrap_err();
        assert_eq!(err.code(), Some("invalid_job"), "{train}: {err}");
        assert!(err.to_string().contains(key), "{train}: {err}");
    }
    let huge = job_toml(&model, &reference, "")
        .replace("max_length = 48", "max_length = 4611686018427387904");
    let err = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(huge),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
    let zero = zero_vocab_model(tmp.path());
    let err = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(job_toml(&zero, &reference, "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_job"), "{err}");
    assert!(err.to_string().contains("vocab_size"), "{err}");
    d.client.submit(&submit("max_steps = 2")).await.unwrap();
    // The daemon still serves and schedules; the one good job runs.
    let health = d.client.health().await.unwrap();
    assert_eq!(health.status, "ok", "{health:?}");
    let jobs = d.client.list(&ListJobs::default()).await.unwrap().jobs;
    assert_eq!(jobs.len(), 1, "only the good job was stored");
    d.wait_state(jobs[0].id, JobState::Succeeded, Duration::from_secs(120))
        .await;
}

/// Jobs stored before these checks (by an older daemon): a record that cannot be read and a
/// job whose model cannot be estimated. The daemon starts, the bad record is moved aside, the
/// unestimable job fails with the reason, and the good job behind them runs.
#[tokio::test]
async fn stored_bad_jobs_fail_alone_and_the_queue_goes_on() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let reference;
    {
        let mut d = TestDaemon::start(exe(), &state, "").await;
        reference = d.upload(4).await;
        d.stop();
    }
    let zero = zero_vocab_model(tmp.path());
    let parse = |m: &std::path::Path| {
        orpo_api::JobSpec::parse(&job_toml(m, &reference, "max_steps = 2"), "j".as_ref()).unwrap()
    };
    {
        let store = Store::open(&state.join("db")).unwrap();
        for spec in [parse(&model), parse(&zero), parse(&model)] {
            let Inserted::New(_) = store
                .insert_job(NewJob {
                    owner: "old".into(),
                    spec,
                    pending_reason: None,
                    estimate_bytes: None,
                    total_steps: 0,
                    idempotency: None,
                    caps: None,
                })
                .await
                .unwrap()
            else {
                panic!("no key given")
            };
        }
        store.close().await.unwrap();
    }
    {
        // Job 1 as the first release wrote `epochs = inf`: null where a number belongs.
        let db = sled::open(state.join("db")).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let mut v: serde_json::Value =
            serde_json::from_slice(&jobs.get(1u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        v["spec"]["train"]["epochs"] = serde_json::Value::Null;
        jobs.insert(1u64.to_be_bytes(), serde_json::to_vec(&v).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let d = TestDaemon::start(exe(), &state, "").await;
    assert!(
        d.log().contains("moved to quarantine"),
        "the bad record is reported: {}",
        d.log()
    );
    let failed = d
        .wait_state(2, JobState::Failed, Duration::from_secs(60))
        .await;
    let error = failed.error.expect("a reason");
    assert_eq!(error.kind, "estimate");
    assert!(error.message.contains("vocab_size"), "{error:?}");
    d.wait_state(3, JobState::Succeeded, Duration::from_secs(120))
        .await;
    let ids = d.job_ids().await;
    assert_eq!(ids, vec![3, 2]);
    assert_eq!(d.client.health().await.unwrap().status, "ok");
}

/// Idempotency over HTTP: a replay is 200 with the first job, another request with the same key
/// is 409, a malformed key is 400.
#[tokio::test]
async fn idempotency_keys_over_http() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let reference = d.upload(4).await;
    let body = |steps: u32| SubmitJobRequest {
        job_toml: Some(job_toml(
            &model,
            &reference,
            &format!("max_steps = {steps}"),
        )),
        ..Default::default()
    };
    let http = reqwest::Client::new();
    let post = |key: &str, steps: u32| {
        http.post(format!("{}/v1/jobs", d.url))
            .header("Idempotency-Key", key)
            .json(&body(steps))
            .send()
    };
    let first = post("abc-1", 1).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: orpo_api::JobView = first.json().await.unwrap();
    let again = post("abc-1", 1).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let again: orpo_api::JobView = again.json().await.unwrap();
    assert_eq!(again.id, first.id);
    let other = post("abc-1", 2).await.unwrap();
    assert_eq!(other.status(), 409);
    assert!(other.text().await.unwrap().contains("another request"));
    let bad = post("has space", 1).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        d.client
            .list(&ListJobs::default())
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
}

/// DELETE removes a finished job with its folder and refuses one that is not finished.
#[tokio::test]
async fn finished_jobs_are_deleted_with_their_files() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let done = submit_tiny(&d, &model, 4, "max_steps = 2\nsave_every = 1").await;
    d.wait_state(done.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    let long = submit_tiny(&d, &model, 4, "max_steps = 100000").await;
    let dir = d.state_dir.join(format!("jobs/{}", done.id));
    assert!(dir.join("final").is_dir());
    let err = d.client.delete_job(long.id).await.unwrap_err();
    assert_eq!(err.code(), Some("conflict"), "{err}");
    assert!(err.to_string().contains("cancel it first"), "{err}");
    let gone = d.client.delete_job(done.id).await.unwrap();
    assert_eq!(gone.id, done.id);
    assert!(!dir.exists(), "the job's folder is removed");
    let err = d.client.job(done.id).await.unwrap_err();
    assert_eq!(err.code(), Some("job_not_found"));
    let err = d.client.delete_job(done.id).await.unwrap_err();
    assert_eq!(err.code(), Some("job_not_found"));

    // A data set goes only when no unfinished job names it.
    let sha = long
        .spec
        .as_ref()
        .unwrap()
        .data
        .train
        .trim_start_matches("sha256:")
        .to_string();
    let file = d.state_dir.join(format!("datasets/{sha}.jsonl"));
    assert!(file.is_file());
    let err = d.client.delete_dataset(&sha).await.unwrap_err();
    assert_eq!(err.code(), Some("conflict"), "{err}");
    assert!(err.to_string().contains(&long.id.to_string()), "{err}");
    d.client.cancel(long.id).await.unwrap();
    d.wait_state(long.id, JobState::Cancelled, Duration::from_secs(30))
        .await;
    d.client.delete_dataset(&sha).await.unwrap();
    assert!(!file.exists(), "the data set's file is removed");
    assert!(d.client.dataset(&sha).await.unwrap().is_none());
}
