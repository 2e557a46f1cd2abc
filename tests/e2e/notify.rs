//! Word when a job ends: a local receiver stands in for ntfy, Slack and a JSON webhook. Only
//! URLs under the operator's prefixes are taken; each user hears about their own jobs only, in
//! each endpoint's format; a failing endpoint is retried, a refusing one is not, a dead one
//! holds up nothing; a job that waits long is announced once.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use orpo_api::{JobState, NewNotify, Notification, NotifyFormat, NotifyOn, SubmitJobRequest};
use orpo_tests::webhook::Receiver;
use orpo_tests::{job_toml, orpod_token_create, orpod_user_add, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// `/hooks/gone` answers 404, the first request to `/hooks/flaky` 503, everything else 200.
fn hooks_answer(path: &str, earlier: usize) -> &'static str {
    match path {
        "/hooks/gone" => "404 Not Found",
        "/hooks/flaky" if earlier == 0 => "503 Service Unavailable",
        _ => "200 OK",
    }
}

fn job(model: &std::path::Path, reference: &str, train: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        job_toml: Some(job_toml(model, reference, train)),
        ..Default::default()
    }
}

fn endpoint(url: String, format: Option<NotifyFormat>, on: Option<&[NotifyOn]>) -> NewNotify {
    NewNotify {
        user: None,
        url,
        format,
        on: on.map(<[NotifyOn]>::to_vec),
    }
}

#[tokio::test]
async fn webhooks_tell_each_owner_when_their_jobs_end_or_wait() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let hooks = Receiver::start(hooks_answer);
    // A port nothing listens on: an endpoint that is down.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for user in ["ada", "bob"] {
        orpod_user_add(exe(), &state, user, false);
    }
    let ada_t = orpod_token_create(exe(), &state, "ada");
    let bob_t = orpod_token_create(exe(), &state, "bob");
    let mut d = TestDaemon::start(
        exe(),
        &state,
        &format!(
            "notify_allow = [\"{}\", \"http://127.0.0.1:{dead}/\"]\nnotify_wait_after_s = 2\n\
             notify_retries = 2\n",
            hooks.url("/hooks")
        ),
    )
    .await;
    d.use_token(&ada_t);
    let (ada, bob) = (d.client_with(&ada_t), d.client_with(&bob_t));

    // Endpoints: JSON with the default events, ntfy for ends and cancels, Slack (guessed from
    // the `/slack` path), one that fails once, one that refuses, one that is down.
    use NotifyOn::*;
    let json = ada
        .add_notify(&endpoint(hooks.url("/hooks/json"), None, None))
        .await
        .unwrap();
    assert_eq!(
        (json.format, json.on.clone()),
        (NotifyFormat::Json, vec![Succeeded, Failed, Waiting])
    );
    let ntfy = ada
        .add_notify(&endpoint(
            hooks.url("/hooks/ntfy"),
            Some(NotifyFormat::Ntfy),
            Some(&[Succeeded, Cancelled]),
        ))
        .await
        .unwrap();
    let slack = ada
        .add_notify(&endpoint(hooks.url("/hooks/slack"), None, None))
        .await
        .unwrap();
    assert_eq!(slack.format, NotifyFormat::Slack);
    for path in ["/hooks/flaky", "/hooks/gone"] {
        ada.add_notify(&endpoint(hooks.url(path), None, Some(&[Succeeded])))
            .await
            .unwrap();
    }
    ada.add_notify(&endpoint(
        format!("http://127.0.0.1:{dead}/x"),
        None,
        Some(&[Succeeded]),
    ))
    .await
    .unwrap();

    // Refused, and nothing stored: outside the prefixes, another user's, the same URL twice;
    // bob neither sees nor touches ada's endpoints.
    let before = ada.notify_targets().await.unwrap();
    assert_eq!(before.len(), 6);
    for url in [
        hooks.url("/other"),
        hooks.url("/hooksx"),
        hooks.url("/hooks/../admin"),
        format!("http://user:pw@127.0.0.1:{}/hooks/a", hooks.port),
        "file:///etc/passwd".into(),
        "not a url".into(),
    ] {
        let e = ada
            .add_notify(&endpoint(url.clone(), None, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("forbidden"), "{url}: {e}");
    }
    let e = ada
        .add_notify(&endpoint(hooks.url("/elsewhere"), None, None))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(&hooks.url("/hooks")),
        "names the allowed prefixes: {e}"
    );
    let e = ada
        .add_notify(&NewNotify {
            user: Some("bob".into()),
            ..endpoint(hooks.url("/hooks/bob"), None, None)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    let e = ada
        .add_notify(&endpoint(hooks.url("/hooks/json"), None, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    assert!(bob.notify_targets().await.unwrap().is_empty());
    for e in [
        bob.remove_notify(&json.id).await.unwrap_err(),
        bob.test_notify(&json.id).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some("not_found"), "{e}");
    }
    assert_eq!(ada.notify_targets().await.unwrap(), before);

    // A job that waits behind bob's is announced once, then cancelled.
    let ada_ds = ada.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let bob_ds = bob.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let blocker = bob
        .submit(&job(&model, &bob_ds.reference, "max_steps = 100000"))
        .await
        .unwrap();
    d.wait_state(blocker.id, JobState::Running, Duration::from_secs(60))
        .await;
    let waiting = ada
        .submit(&job(&model, &ada_ds.reference, "max_steps = 1"))
        .await
        .unwrap();
    let r = hooks.wait_for("/hooks/json", "\"waiting\"").await;
    let note: Notification = serde_json::from_str(&r.body).unwrap();
    assert_eq!(note.job.as_ref().unwrap().id, waiting.id);
    assert!(
        note.text.starts_with(&format!("job {} ", waiting.id))
            && note.text.contains("has waited in the queue for "),
        "{}",
        note.text
    );
    hooks
        .wait_for("/hooks/slack", "has waited in the queue")
        .await;
    ada.cancel(waiting.id).await.unwrap();
    let r = hooks.wait_for("/hooks/ntfy", "was cancelled").await;
    assert_eq!(
        r.header("Title"),
        Some(format!("orpod: job {} cancelled", waiting.id).as_str())
    );

    // Bob's job ends (bob has no endpoints); ada's next job succeeds and every endpoint that
    // wants it hears, in its format.
    bob.cancel(blocker.id).await.unwrap();
    d.wait_state(blocker.id, JobState::Cancelled, Duration::from_secs(60))
        .await;
    let done = ada
        .submit(&job(&model, &ada_ds.reference, "max_steps = 2"))
        .await
        .unwrap();
    d.wait_state(done.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    let r = hooks.wait_for("/hooks/json", "\"succeeded\"").await;
    let note: Notification = serde_json::from_str(&r.body).unwrap();
    let job_seen = note.job.unwrap();
    assert_eq!(
        (job_seen.id, job_seen.state),
        (done.id, JobState::Succeeded)
    );
    assert!(job_seen.spec.is_some(), "the owner's view of the job");
    assert!(
        note.text.starts_with(&format!("job {} ", done.id))
            && note.text.contains("succeeded: 2 of 2 steps in "),
        "{}",
        note.text
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = hooks
        .wait_for("/hooks/ntfy", "succeeded: 2 of 2 steps")
        .await;
    assert_eq!(r.header("Tags"), Some("white_check_mark"));
    let r = hooks.wait_for("/hooks/slack", "succeeded").await;
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        body["text"].as_str().unwrap().contains("2 of 2 steps"),
        "{body}"
    );
    // The flaky endpoint got its retry, the refusing one no retry.
    hooks.wait_requests("/hooks/flaky", 2).await;
    // Past the second retry's time, had there been one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hooks.at("/hooks/flaky").len(), 2);
    assert_eq!(hooks.at("/hooks/gone").len(), 1);
    // Nobody heard of bob's job, and nothing was sent twice.
    let got = hooks.all();
    assert!(
        got.iter().all(|r| !r.body.contains("\"owner\":\"bob\"")
            && !r.body.contains(&format!("job {} ", blocker.id))),
        "{got:?}"
    );
    let events: Vec<(String, u64)> = hooks
        .at("/hooks/json")
        .iter()
        .map(|r| {
            let n: Notification = serde_json::from_str(&r.body).unwrap();
            (n.event, n.job.unwrap().id)
        })
        .collect();
    let once = |event: &str, id: u64| events.iter().filter(|e| **e == (event.into(), id)).count();
    assert_eq!(once("waiting", waiting.id), 1, "{events:?}");
    assert_eq!(once("succeeded", done.id), 1, "{events:?}");

    // Test sends and removal.
    let t = ada.test_notify(&json.id).await.unwrap();
    assert!(t.delivered && t.status == Some(200), "{t:?}");
    let gone = before
        .iter()
        .find(|n| n.url.ends_with("/hooks/gone"))
        .unwrap();
    let t = ada.test_notify(&gone.id).await.unwrap();
    assert_eq!((t.delivered, t.status), (false, Some(404)), "{t:?}");
    ada.remove_notify(&ntfy.id).await.unwrap();
    assert_eq!(ada.notify_targets().await.unwrap().len(), 5);
    assert_eq!(
        ada.remove_notify(&ntfy.id).await.unwrap_err().code(),
        Some("not_found")
    );
}

/// `/hooks/late` answers 503 to its first two requests, then 200.
fn late_answer(path: &str, earlier: usize) -> &'static str {
    match path {
        "/hooks/late" if earlier < 2 => "503 Service Unavailable",
        _ => "200 OK",
    }
}

#[tokio::test]
async fn a_delivery_cut_off_by_a_restart_is_sent_after_it() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let hooks = Receiver::start(late_answer);
    orpod_user_add(exe(), &state, "ada", false);
    let ada_t = orpod_token_create(exe(), &state, "ada");
    let config = format!(
        "notify_allow = [\"{}\"]\nnotify_retries = 5\n",
        hooks.url("/hooks")
    );
    let mut d = TestDaemon::start(exe(), &state, &config).await;
    d.use_token(&ada_t);
    let late = hooks.url("/hooks/late");
    d.client
        .add_notify(&endpoint(late, None, Some(&[NotifyOn::Succeeded])))
        .await
        .unwrap();
    let reference = d.upload(6).await;
    let done = d
        .client
        .submit(&job(&model, &reference, "max_steps = 1"))
        .await
        .unwrap();
    d.wait_state(done.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    // Two tries answered 503; the daemon dies in the 2 s before the third.
    hooks.wait_requests("/hooks/late", 2).await;
    d.kill9();
    assert_eq!(hooks.at("/hooks/late").len(), 2);
    d.restart().await;
    let got = hooks.wait_requests("/hooks/late", 3).await;
    let third: Notification = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(third.event, "succeeded");
    assert_eq!(third.job.map(|j| j.id), Some(done.id));
    // Delivered, so no longer kept (once the daemon has heard the answer and dropped it): a
    // second restart sends nothing.
    let start = Instant::now();
    while !d.log().contains("notification delivered") {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.kill9();
    d.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hooks.at("/hooks/late").len(), 3, "{}", d.log());
}
