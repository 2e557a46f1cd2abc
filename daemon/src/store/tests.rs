//! The store's own invariants: queue order, the queue following job states, dense event
//! sequences, cursors, the schema version check.

use orpo_api::{EventKind, JobSpec, JobState};

use super::*;

fn spec(priority: i32) -> JobSpec {
    let mut s = JobSpec::parse(
        "[model]\nbase = \"m\"\n[data]\ntrain = \"t\"\n",
        Path::new("j"),
    )
    .unwrap();
    s.priority = priority;
    s
}

async fn new(store: &Store, priority: i32) -> u64 {
    match store
        .insert_job(NewJob {
            owner: "ann".into(),
            spec: spec(priority),
            pending_reason: None,
            estimate_bytes: None,
            total_steps: 0,
            idempotency: None,
            caps: None,
        })
        .await
        .unwrap()
    {
        Inserted::New(v) => v.id,
        Inserted::Existing(v) => panic!("no key, yet job {} came back", v.id),
    }
}

#[tokio::test]
async fn queue_runs_higher_priority_first_then_submit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0).await;
    let b = new(&store, 5).await;
    let c = new(&store, -3).await;
    let d = new(&store, 5).await;
    assert_eq!(store.queued(), vec![b, d, a, c]);
    store
        .update_job(b, |v| {
            v.state = JobState::Running;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.next_queued(), Some(d));
    store
        .update_job(b, |v| {
            v.state = JobState::Queued;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        store.next_queued(),
        Some(b),
        "a requeued job keeps its place"
    );
    let err = store.update_job(a, |_| Err("no".into())).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)));
    assert!(matches!(store.job(99), Err(StoreError::NotFound(99))));
}

#[tokio::test]
async fn events_are_dense_per_job_and_state_changes_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0).await;
    let b = new(&store, 0).await;
    store
        .append_event(a, EventKind::Log, "hello", None, None)
        .await
        .unwrap();
    store
        .update_job(a, |v| {
            v.state = JobState::Cancelled;
            Ok(())
        })
        .await
        .unwrap();
    let ev = store.events(a, 0, 100).unwrap();
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(ev[2].state, Some(JobState::Cancelled));
    assert_eq!(store.events(a, 2, 100).unwrap().len(), 1);
    assert_eq!(
        store.events(b, 0, 100).unwrap().len(),
        1,
        "b has only its submit event"
    );
}

#[tokio::test]
async fn list_pages_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(new(&store, 0).await);
        }
        ids
    };
    let f = JobFilter {
        limit: 2,
        ..Default::default()
    };
    let (page, next) = store.list_jobs(&f).unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let (page, next) = store
        .list_jobs(&JobFilter {
            cursor: next,
            ..f.clone()
        })
        .unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let (page, next) = store
        .list_jobs(&JobFilter {
            cursor: next,
            ..f.clone()
        })
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(next, None);
    let (page, _) = store
        .list_jobs(&JobFilter {
            state: Some(JobState::Running),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(page.is_empty());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .trees()
            .meta
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        store.close().await.unwrap();
    }
    let err = Store::open(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

/// Finding: a job stored with `epochs = inf` became `null` in JSON, and from then on the
/// queue, the listing and `orpod serve` itself failed on it. Such a record is moved aside at
/// open and the rest of the queue goes on.
#[tokio::test]
async fn an_unreadable_record_is_quarantined_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let store = Store::open(dir.path()).unwrap();
        let a = new(&store, 0).await;
        let b = new(&store, 0).await;
        // What the first release wrote for `epochs = inf`.
        let mut json: serde_json::Value =
            serde_json::from_slice(&store.trees().jobs.get(a.to_be_bytes()).unwrap().unwrap())
                .unwrap();
        json["spec"]["train"]["epochs"] = serde_json::Value::Null;
        store
            .trees()
            .jobs
            .insert(a.to_be_bytes(), serde_json::to_vec(&json).unwrap())
            .unwrap();
        store.close().await.unwrap();
        (a, b)
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.queued(), vec![b]);
    assert!(matches!(store.job(a), Err(StoreError::NotFound(_))));
    let (page, _) = store
        .list_jobs(&JobFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b]);
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0], format!("jobs/{a}"));
    // A new job does not reuse the id of the quarantined one.
    assert_eq!(new(&store, 0).await, b + 1);
}

/// What the store writes it can read back: a record with a non-finite float is refused and
/// the stored job stays as it was.
#[tokio::test]
async fn a_record_that_would_not_read_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0).await;
    let err = store
        .update_job(a, |v| {
            v.progress.elapsed_s = f64::INFINITY;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("would not read back"), "{err}");
    assert_eq!(store.job(a).unwrap().progress.elapsed_s, 0.0);
}

/// Finding: eight clients submitting at once deadlocked sled 0.34 (transactions against its
/// flushes). Sixteen tasks each submit, update, append and flush at once; all of it must end
/// (the test has a deadline), ids must be unique and dense, and every event must be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_flushes_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let work = async {
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..40i32 {
                    let id = new(&store, i % 3).await;
                    store
                        .update_job(id, move |v| {
                            v.pending_reason = Some(format!("task {t} round {i}"));
                            Ok(())
                        })
                        .await
                        .unwrap();
                    store
                        .append_event(id, EventKind::Log, "x", None, None)
                        .await
                        .unwrap();
                    if i % 4 == 0 {
                        store.flush().await.unwrap();
                    }
                    // Readers on the same threads, at the same time.
                    store.job(id).unwrap();
                    ids.push(id);
                }
                ids
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    };
    let mut ids = tokio::time::timeout(std::time::Duration::from_secs(60), work)
        .await
        .expect("the writers finished (no deadlock)");
    ids.sort_unstable();
    assert_eq!(ids, (1..=640).collect::<Vec<u64>>());
    for id in [1, 320, 640] {
        assert_eq!(store.events(id, 0, 10).unwrap().len(), 2, "job {id}");
    }
    assert_eq!(store.queue_len(), 640);
}

fn keyed(key: &str, fingerprint: &str) -> NewJob {
    NewJob {
        owner: "ann".into(),
        spec: spec(0),
        pending_reason: None,
        estimate_bytes: None,
        total_steps: 0,
        idempotency: Some(Idempotency {
            key: key.into(),
            fingerprint: fingerprint.into(),
        }),
        caps: None,
    }
}

/// A retried submit with the same key returns the first job, across a restart; another
/// request with that key is refused; another owner's key of the same text is theirs.
#[tokio::test]
async fn an_idempotency_key_creates_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = Store::open(dir.path()).unwrap();
        let Inserted::New(first) = store.insert_job(keyed("k1", "f")).await.unwrap() else {
            panic!("a new key makes a new job");
        };
        store.close().await.unwrap();
        first
    };
    let store = Store::open(dir.path()).unwrap();
    match store.insert_job(keyed("k1", "f")).await.unwrap() {
        Inserted::Existing(v) => assert_eq!(v.id, first.id),
        Inserted::New(v) => panic!("a duplicate job {}", v.id),
    }
    let err = store.insert_job(keyed("k1", "other")).await.unwrap_err();
    assert!(err.to_string().contains("another request"), "{err}");
    let mut bob = keyed("k1", "f");
    bob.owner = "bob".into();
    assert!(matches!(
        store.insert_job(bob).await.unwrap(),
        Inserted::New(_)
    ));
    assert_eq!(store.queue_len(), 2);
}

/// Deleting: only finished jobs; history and key go with the record.
#[tokio::test]
async fn delete_removes_a_finished_job_and_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let Inserted::New(job) = store.insert_job(keyed("k", "f")).await.unwrap() else {
        panic!()
    };
    let other = new(&store, 0).await;
    store
        .append_metric(job.id, &orpo_api::MetricRecord::default())
        .await
        .unwrap();
    // The same record told twice is kept once; the next step and an evaluation of the same
    // step are new records.
    let step = |step, lr: Option<f64>| orpo_api::MetricRecord {
        step,
        learning_rate: lr,
        ..Default::default()
    };
    for r in [
        step(1, Some(1e-4)),
        step(1, Some(1e-4)),
        step(1, None),
        step(2, Some(1e-4)),
    ] {
        store.append_metric(job.id, &r).await.unwrap();
    }
    let kept: Vec<(usize, bool)> = store
        .metrics(job.id, 0, 10)
        .unwrap()
        .iter()
        .map(|r| (r.step, r.learning_rate.is_some()))
        .collect();
    assert_eq!(kept, [(1, true), (1, false), (2, true)]);
    store.set_worker_seq(job.id, 42, 7).await.unwrap();
    store.set_worker_seq(other, 43, 9).await.unwrap();
    store.set_worker_seq(job.id, 42, 8).await.unwrap();
    assert_eq!(store.worker_seq(job.id).unwrap(), Some((42, 8)));
    let err = store.delete_job(job.id).await.unwrap_err();
    assert!(err.to_string().contains("cancel it first"), "{err}");
    store
        .update_job(job.id, |v| {
            v.state = JobState::Cancelled;
            Ok(())
        })
        .await
        .unwrap();
    store.delete_job(job.id).await.unwrap();
    assert!(matches!(store.job(job.id), Err(StoreError::NotFound(_))));
    assert!(store.events(job.id, 0, 10).unwrap().is_empty());
    assert!(store.metrics(job.id, 0, 10).unwrap().is_empty());
    assert_eq!(store.events(other, 0, 10).unwrap().len(), 1);
    assert_eq!(store.worker_seq(job.id).unwrap(), None);
    assert_eq!(store.worker_seq(other).unwrap(), Some((43, 9)));
    assert_eq!(store.queued(), vec![other]);
    // The key is free again: the same request makes a new job.
    assert!(matches!(
        store.insert_job(keyed("k", "f")).await.unwrap(),
        Inserted::New(_)
    ));
}

/// A change that panics is answered with an error; the writer goes on with the next one.
#[tokio::test]
async fn a_panicking_change_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0).await;
    let err = store
        .update_job(a, |_| panic!("a bug in a change"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Writer(_)), "{err}");
    assert_eq!(new(&store, 0).await, a + 1);
}

/// The queue order is rebuilt from the records when the store opens.
#[tokio::test]
async fn the_queue_is_rebuilt_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let order = {
        let store = Store::open(dir.path()).unwrap();
        let a = new(&store, 0).await;
        let b = new(&store, 7).await;
        let c = new(&store, 0).await;
        store
            .update_job(c, |v| {
                v.state = JobState::Paused;
                Ok(())
            })
            .await
            .unwrap();
        store.close().await.unwrap();
        vec![b, a]
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.queued(), order);
}

/// After a failed write sled refuses writes for good: the writer keeps the database for
/// readers, refuses changes while the disk has no room, then reopens the folder and goes on
/// with what was flushed. (The failure is marked by hand here; tests/e2e/diskfull.rs fills a
/// real disk.)
#[tokio::test]
async fn after_a_failed_write_the_store_reopens_with_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0).await;
    store.flush().await.unwrap();
    *store.shared.broken() = Some("a write failed: No space left on device".into());
    assert!(store.health().unwrap_err().contains("cannot write"));
    // Reads go on meanwhile.
    assert_eq!(store.job(a).unwrap().id, a);
    assert_eq!(store.queued(), vec![a]);
    // The disk has room here, so the next change reopens the folder first, and succeeds.
    let b = new(&store, 5).await;
    assert!(store.health().is_ok());
    assert_eq!(
        store.queued(),
        vec![b, a],
        "the queue was rebuilt from disk"
    );
    store.flush().await.unwrap();
    assert_eq!(store.job(a).unwrap().id, a);
}

/// Submits at once cannot pass a user's cap by one: the count and the insert are one write.
#[tokio::test]
async fn user_caps_hold_for_submits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let caps = crate::limits::UserCaps {
        max_queued: 3,
        max_steps: 1_000,
    };
    let submit = |owner: &str, steps: usize| {
        store.insert_job(NewJob {
            owner: owner.into(),
            spec: spec(0),
            pending_reason: None,
            estimate_bytes: None,
            total_steps: steps,
            idempotency: None,
            caps: Some(caps),
        })
    };
    let results = futures_util::future::join_all((0..8).map(|_| submit("ann", 10))).await;
    let refused: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Err(StoreError::Limit(why)) => Some(why),
            Err(e) => panic!("{e}"),
            Ok(_) => None,
        })
        .collect();
    assert_eq!(refused.len(), 5, "3 of 8 fit under max_queued = 3");
    assert!(
        refused[0].contains("max_queued_per_user = 3"),
        "{}",
        refused[0]
    );
    // Another user's jobs do not count against ann's cap, and steps add up per user.
    submit("bob", 990).await.unwrap();
    let Err(StoreError::Limit(why)) = submit("bob", 11).await else {
        panic!("990 + 11 steps passed max_steps = 1000");
    };
    assert!(why.contains("max_steps_per_user = 1000"), "{why}");
    assert_eq!(store.all_jobs().unwrap().len(), 4);
}
