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

fn new(store: &Store, priority: i32) -> u64 {
    store
        .insert_job(NewJob {
            owner: "ann".into(),
            spec: spec(priority),
            pending_reason: None,
        })
        .unwrap()
        .id
}

#[test]
fn queue_runs_higher_priority_first_then_submit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0);
    let b = new(&store, 5);
    let c = new(&store, -3);
    let d = new(&store, 5);
    assert_eq!(store.queued().unwrap(), vec![b, d, a, c]);
    store
        .update_job(b, |v| {
            v.state = JobState::Running;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.next_queued().unwrap(), Some(d));
    store
        .update_job(b, |v| {
            v.state = JobState::Queued;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store.next_queued().unwrap(),
        Some(b),
        "a requeued job keeps its place"
    );
    let err = store.update_job(a, |_| Err("no".into())).unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)));
    assert!(matches!(store.job(99), Err(StoreError::NotFound(99))));
}

#[test]
fn events_are_dense_per_job_and_state_changes_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = new(&store, 0);
    let b = new(&store, 0);
    store
        .append_event(a, EventKind::Log, "hello", None, None)
        .unwrap();
    store
        .update_job(a, |v| {
            v.state = JobState::Cancelled;
            Ok(())
        })
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

#[test]
fn list_pages_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<u64> = (0..5).map(|_| new(&store, 0)).collect();
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

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .meta
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        store.flush_blocking().unwrap();
    }
    let err = Store::open(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("schema version 99"), "{err}");
}
