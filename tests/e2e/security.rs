//! A shared server: tokens (missing, wrong, expired, revoked), other users' jobs and data sets,
//! owner spoofing, admin-only routes, traversal in path parameters, model paths outside the
//! roots (through symlinks too), an open daemon on a LAN address. Each refusal gets its status,
//! and the store is the same afterwards.

use std::path::Path;
use std::time::Duration;

use orpo_api::client::Client;
use orpo_api::{ErrorBody, JobState, NewToken, NewUser, SubmitJobRequest};
use orpo_tests::{job_toml, orpod_token_create, orpod_user_add, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// Status and body of `method path` with `token` (none when `None`).
async fn call(
    d: &TestDaemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let http = reqwest::Client::new();
    let url = d.client.url(path);
    let mut req = match method {
        "GET" => http.get(url),
        "POST" => http.post(url),
        "DELETE" => http.delete(url),
        m => panic!("{m}"),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn error(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Everything a refusal must leave alone, as an admin sees it.
async fn snapshot(admin: &Client) -> String {
    let jobs = admin
        .list(&orpo_api::client::ListJobs {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let jobs: Vec<_> = jobs
        .jobs
        .iter()
        .map(|j| (j.id, j.owner.clone(), j.state, j.spec.clone()))
        .collect();
    let mut events = Vec::new();
    for (id, ..) in &jobs {
        events.push(admin.events(*id, None).await.unwrap().len());
    }
    format!(
        "{jobs:?}\n{events:?}\n{:?}\n{:?}",
        admin.users().await.unwrap(),
        admin.tokens().await.unwrap()
    )
}

/// Every `/v1` route, with ids of an existing job and data set.
fn routes(job: u64, sha: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/v1/me".into()),
        ("GET", "/v1/jobs".into()),
        ("POST", "/v1/jobs".into()),
        ("GET", format!("/v1/jobs/{job}")),
        ("DELETE", format!("/v1/jobs/{job}")),
        ("POST", format!("/v1/jobs/{job}/cancel")),
        ("POST", format!("/v1/jobs/{job}/pause")),
        ("POST", format!("/v1/jobs/{job}/resume")),
        ("GET", format!("/v1/jobs/{job}/metrics")),
        ("GET", format!("/v1/jobs/{job}/events")),
        ("GET", format!("/v1/jobs/{job}/events?follow=true")),
        ("GET", format!("/v1/jobs/{job}/charts/loss.svg")),
        ("GET", format!("/v1/charts/loss.svg?jobs={job}")),
        ("GET", format!("/v1/jobs/{job}/checkpoints")),
        (
            "GET",
            format!("/v1/jobs/{job}/checkpoints/final/files/adapter_config.json"),
        ),
        ("POST", format!("/v1/jobs/{job}/generate")),
        ("POST", "/v1/datasets".into()),
        ("GET", format!("/v1/datasets/{sha}")),
        ("DELETE", format!("/v1/datasets/{sha}")),
        ("GET", "/v1/gpus".into()),
        ("POST", "/v1/plan".into()),
        ("GET", "/v1/users".into()),
        ("POST", "/v1/users".into()),
        ("GET", "/v1/tokens".into()),
        ("POST", "/v1/tokens".into()),
        ("DELETE", "/v1/tokens/0123abcd".into()),
        ("DELETE", "/v1/users/nobody".into()),
        ("GET", "/v1/notify".into()),
        ("POST", "/v1/notify".into()),
        ("DELETE", "/v1/notify/0123abcd".into()),
        ("POST", "/v1/notify/0123abcd/test".into()),
    ]
}

#[tokio::test]
async fn tokens_users_and_other_peoples_jobs() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    orpod_user_add(exe(), &state, "root", true);
    orpod_user_add(exe(), &state, "alice", false);
    orpod_user_add(exe(), &state, "bob", false);
    let root_t = orpod_token_create(exe(), &state, "root");
    let alice_t = orpod_token_create(exe(), &state, "alice");
    let bob_t = orpod_token_create(exe(), &state, "bob");
    // The host never has 100 TB free: alice's job stays queued, so nothing moves under the test.
    let mut d = TestDaemon::start(exe(), &state, "headroom_mib = 100000000\n").await;
    d.use_token(&root_t);
    let (root, alice, bob) = (
        d.client_with(&root_t),
        d.client_with(&alice_t),
        d.client_with(&bob_t),
    );
    assert_eq!(alice.me().await.unwrap().user, "alice");
    assert!(root.me().await.unwrap().admin);

    let ds = alice.upload_dataset(prefs_jsonl(6)).await.unwrap();
    let job = alice
        .submit(&SubmitJobRequest {
            job_toml: Some(job_toml(&model, &ds.reference, "max_steps = 2")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(job.owner, "alice");
    d.wait_for(job.id, Duration::from_secs(60), "an estimate", |j| {
        j.state == JobState::Queued && j.memory.estimate_bytes.is_some()
    })
    .await;
    let before = snapshot(&root).await;

    // No token, a wrong one, another scheme: 401 on every /v1 route, with the scheme to use.
    let forged = format!("orpod_{}_{}", &alice_t[6..14], "0".repeat(64));
    for token in [None, Some("nonsense"), Some(forged.as_str())] {
        for (method, path) in routes(job.id, &ds.sha256) {
            let (s, text) = call(&d, method, &path, token, None).await;
            assert_eq!(s, 401, "{method} {path} with {token:?}: {text}");
            let e = error(&text);
            assert_eq!(e.error.code, "unauthorized");
            let want = if token.is_none() {
                "needs a token"
            } else {
                "unknown or revoked"
            };
            assert!(e.error.message.contains(want), "{text}");
        }
    }
    let resp = reqwest::Client::new()
        .get(d.client.url("/v1/jobs"))
        .header("authorization", format!("Basic {alice_t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"orpod\""
    );
    // A worker's report route opens with its job's secret only (workers in Slurm), never with
    // a user's token; this daemon runs no job in Slurm.
    let report = format!("/v1/jobs/{}/events", job.id).replace("/v1/", "/internal/v1/");
    let body = serde_json::json!({ "first_seq": 1, "events": [{ "type": "finished" }] });
    let (s, text) = call(&d, "POST", &report, Some(&root_t), Some(body.clone())).await;
    assert_eq!(s, 404, "{text}");
    assert!(text.contains("no worker in Slurm"), "{text}");
    assert_eq!(call(&d, "POST", &report, None, Some(body)).await.0, 401);
    // Health and Prometheus metrics stay open for monitoring.
    assert_eq!(call(&d, "GET", "/healthz", None, None).await.0, 200);

    // Bob sees alice's job in the queue, but not what it does.
    let seen = bob.job(job.id).await.unwrap();
    assert_eq!(
        (seen.owner.as_str(), seen.state),
        ("alice", JobState::Queued)
    );
    assert!(seen.spec.is_none() && seen.metrics.is_none());
    let listed = bob.list(&Default::default()).await.unwrap();
    assert_eq!(listed.jobs.len(), 1);
    assert!(listed.jobs[0].spec.is_none());
    assert!(alice.job(job.id).await.unwrap().spec.is_some());
    assert!(root.job(job.id).await.unwrap().spec.is_some());
    // ... and may do nothing to it or with its data.
    for (method, path) in [
        ("GET", format!("/v1/jobs/{}/metrics", job.id)),
        ("GET", format!("/v1/jobs/{}/events", job.id)),
        ("GET", format!("/v1/jobs/{}/events?follow=true", job.id)),
        ("GET", format!("/v1/jobs/{}/charts/loss.svg", job.id)),
        ("GET", format!("/v1/charts/loss.svg?jobs={}", job.id)),
        ("GET", format!("/v1/jobs/{}/checkpoints", job.id)),
        (
            "GET",
            format!(
                "/v1/jobs/{}/checkpoints/final/files/adapter_model.safetensors",
                job.id
            ),
        ),
        ("POST", format!("/v1/jobs/{}/cancel", job.id)),
        ("POST", format!("/v1/jobs/{}/pause", job.id)),
        ("POST", format!("/v1/jobs/{}/resume", job.id)),
        ("DELETE", format!("/v1/jobs/{}", job.id)),
        ("POST", format!("/v1/jobs/{}/generate", job.id)),
    ] {
        let body = path
            .ends_with("/generate")
            .then(|| serde_json::json!({"prompts": ["what does alice train?"]}));
        let (s, text) = call(&d, method, &path, Some(&bob_t), body).await;
        assert_eq!(s, 403, "{method} {path}: {text}");
        let e = error(&text);
        assert!(
            e.error.message.contains("belongs to alice")
                && e.error.message.contains("owner or an admin"),
            "{text}"
        );
    }
    // Alice's data set does not exist for bob: not to read, delete or train on.
    let ds_path = format!("/v1/datasets/{}", ds.sha256);
    assert_eq!(call(&d, "GET", &ds_path, Some(&bob_t), None).await.0, 404);
    assert_eq!(
        call(&d, "DELETE", &ds_path, Some(&bob_t), None).await.0,
        404
    );
    let on_alices_data = SubmitJobRequest {
        job_toml: Some(job_toml(&model, &ds.reference, "max_steps = 2")),
        ..Default::default()
    };
    let e = bob.submit(&on_alices_data).await.unwrap_err();
    assert_eq!(e.code(), Some("dataset_not_found"), "{e}");
    assert_eq!(
        bob.plan(&on_alices_data).await.unwrap_err().code(),
        Some("dataset_not_found")
    );
    // Owner spoofing: the owner is the token's user.
    let bob_ds = bob.upload_dataset(prefs_jsonl(7)).await.unwrap();
    let spoof = SubmitJobRequest {
        job_toml: Some(job_toml(&model, &bob_ds.reference, "max_steps = 2")),
        owner: Some("alice".into()),
        ..Default::default()
    };
    let e = bob.submit(&spoof).await.unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    assert!(e.to_string().contains("(bob)"), "{e}");
    // Admin routes, and tokens of others.
    for (method, path, body) in [
        ("GET", "/v1/users", None),
        (
            "POST",
            "/v1/users",
            Some(serde_json::json!({"name": "mallory", "admin": true})),
        ),
        (
            "POST",
            "/v1/tokens",
            Some(serde_json::json!({"user": "alice"})),
        ),
    ] {
        let (s, text) = call(&d, method, path, Some(&bob_t), body).await;
        assert_eq!(s, 403, "{method} {path}: {text}");
        assert!(
            error(&text).error.message.contains("only an admin"),
            "{text}"
        );
    }
    let alice_ids: Vec<String> = alice
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(alice_ids.len(), 1);
    assert_eq!(
        bob.revoke_token(&alice_ids[0]).await.unwrap_err().code(),
        Some("not_found")
    );
    let bobs = bob.tokens().await.unwrap();
    assert!(bobs.iter().all(|t| t.user == "bob") && bobs.len() == 1);

    // Nothing refused changed anything: the same jobs, states, events, users and tokens.
    assert_eq!(snapshot(&root).await, before);
    assert_eq!(alice.dataset(&ds.sha256).await.unwrap().unwrap().rows, 6);

    // Bob uploading alice's bytes gets his own copy: 201 as for a new file (whether someone
    // else has them is not his to learn), 200 the second time. Deleting it drops only his.
    let upload = || {
        reqwest::Client::new()
            .post(d.client.url("/v1/datasets"))
            .bearer_auth(&bob_t)
            .body(prefs_jsonl(6))
            .send()
    };
    assert_eq!(upload().await.unwrap().status().as_u16(), 201);
    assert_eq!(upload().await.unwrap().status().as_u16(), 200);
    assert_eq!(
        call(&d, "DELETE", &ds_path, Some(&bob_t), None).await.0,
        200
    );
    assert_eq!(call(&d, "GET", &ds_path, Some(&bob_t), None).await.0, 404);
    assert_eq!(alice.dataset(&ds.sha256).await.unwrap().unwrap().rows, 6);

    // An admin may act on anyone's job.
    assert_eq!(root.metrics(job.id, None).await.unwrap().len(), 0);
    assert_eq!(root.checkpoints(job.id).await.unwrap().len(), 0);

    // Expired and revoked tokens.
    let short = root
        .create_token(&NewToken {
            user: Some("bob".into()),
            expires_in_s: Some(1),
        })
        .await
        .unwrap();
    assert!(short.info.expires_at.is_some());
    let second = alice.create_token(&NewToken::default()).await.unwrap();
    assert_eq!(second.info.user, "alice");
    assert_eq!(
        d.client_with(&second.token).me().await.unwrap().user,
        "alice"
    );
    alice.revoke_token(&second.info.id).await.unwrap();
    let e = d.client_with(&second.token).me().await.unwrap_err();
    assert!(e.to_string().contains("unknown or revoked"), "{e}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = d.client_with(&short.token).me().await.unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
    assert!(e.to_string().contains("expired at"), "{e}");
    // Bad lifetimes and names never reach the store.
    for (body, what) in [
        (serde_json::json!({"expires_in_s": 0}), "expires_in_s"),
        (
            serde_json::json!({"expires_in_s": 1e300}),
            "must be between 1 and",
        ),
        (
            serde_json::json!({"expires_in_s": -1}),
            "not a whole number",
        ),
        (
            serde_json::json!({"expires_in_s": 1.5}),
            "not a whole number",
        ),
        (serde_json::json!([null, null]), "must be a JSON object"),
        (serde_json::json!({"user": "nobody"}), "no user nobody"),
    ] {
        let (s, text) = call(&d, "POST", "/v1/tokens", Some(&root_t), Some(body)).await;
        assert!(s == 400 || s == 404, "{s} {text}");
        assert!(text.contains(what), "{text}");
    }
    let e = root
        .add_user(&NewUser {
            name: "../etc".into(),
            admin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"), "{e}");
    assert_eq!(
        root.add_user(&NewUser {
            name: "alice".into(),
            admin: false,
        })
        .await
        .unwrap_err()
        .code(),
        Some("conflict")
    );
    // An admin adds a user over the API; their token works at once.
    root.add_user(&NewUser {
        name: "carol".into(),
        admin: false,
    })
    .await
    .unwrap();
    let carol = root
        .create_token(&NewToken {
            user: Some("carol".into()),
            expires_in_s: None,
        })
        .await
        .unwrap();
    assert_eq!(
        d.client_with(&carol.token).me().await.unwrap().user,
        "carol"
    );
    // Every JSON body is an object: serde alone would read these arrays as the structs.
    for (path, body) in [
        ("/v1/users", serde_json::json!(["dave", false])),
        ("/v1/notify", serde_json::json!([null, "http://x/"])),
        ("/v1/jobs", serde_json::json!([null, null])),
        ("/v1/plan", serde_json::json!([])),
    ] {
        let (s, text) = call(&d, "POST", path, Some(&root_t), Some(body)).await;
        assert_eq!(s, 400, "{path}: {text}");
        assert!(
            text.contains("must be a JSON object, not an array"),
            "{text}"
        );
    }

    // Removing users: admins only, never the last admin, never with unfinished jobs.
    let before = snapshot(&root).await;
    for (token, path, status, what) in [
        (
            &bob_t,
            "/v1/users/carol",
            403,
            "only an admin may remove users",
        ),
        (&root_t, "/v1/users/nobody", 404, "no user nobody"),
        (&root_t, "/v1/users/root", 409, "root is the last admin"),
        (&root_t, "/v1/users/-x", 400, "user name"),
        (
            &root_t,
            "/v1/users/alice",
            409,
            &format!("alice has unfinished jobs ({})", job.id),
        ),
    ] {
        let (s, text) = call(&d, "DELETE", path, Some(token), None).await;
        assert_eq!(s, status, "{path}: {text}");
        assert!(text.contains(what), "{path}: {text}");
    }
    assert_eq!(
        snapshot(&root).await,
        before,
        "a refused removal changed the store"
    );

    // And an admin may cancel anyone's job.
    root.cancel(job.id).await.unwrap();
    d.wait_state(job.id, JobState::Cancelled, Duration::from_secs(30))
        .await;
    // With it ended alice can go: her tokens stop working, her job stays in the history.
    let (s, text) = call(&d, "DELETE", "/v1/users/alice", Some(&root_t), None).await;
    assert_eq!(s, 200, "{text}");
    let e = alice.me().await.unwrap_err();
    assert!(e.to_string().contains("unknown or revoked"), "{e}");
    assert!(root
        .tokens()
        .await
        .unwrap()
        .iter()
        .all(|t| t.user != "alice"));
    let users: Vec<String> = root
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(users, ["bob", "carol", "root"]);
    assert_eq!(root.job(job.id).await.unwrap().owner, "alice");
    assert!(
        root.dataset(&ds.sha256).await.unwrap().is_some(),
        "the file stays"
    );
}

/// Path parameters that try to leave their folder or their type get a 4xx and nothing else.
#[tokio::test]
async fn traversal_in_path_parameters_is_refused() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    orpod_user_add(exe(), &state, "alice", false);
    let t = orpod_token_create(exe(), &state, "alice");
    let mut d = TestDaemon::start(exe(), &state, "").await;
    d.use_token(&t);
    let alice = d.client_with(&t);
    let ds = alice.upload_dataset(prefs_jsonl(4)).await.unwrap();
    let job = alice
        .submit(&SubmitJobRequest {
            job_toml: Some(job_toml(&model, &ds.reference, "max_steps = 1")),
            ..Default::default()
        })
        .await
        .unwrap();
    d.wait_state(job.id, JobState::Succeeded, Duration::from_secs(120))
        .await;
    let id = job.id;
    for path in [
        "/v1/jobs/..%2F..%2Fdb".to_string(),
        "/v1/jobs/1%2F..%2F2".to_string(),
        format!("/v1/jobs/{id}/checkpoints/..%2F..%2F..%2Fdb/files/conf"),
        format!("/v1/jobs/{id}/checkpoints/final/files/..%2F..%2Fjob.toml"),
        format!("/v1/jobs/{id}/checkpoints/final/files/..%2F..%2F..%2F..%2Forpod.addr"),
        format!("/v1/jobs/{id}/checkpoints/..%2Ffinal/files/adapter_config.json"),
        format!("/v1/jobs/{id}/checkpoints/final/files/%2Fetc%2Fpasswd"),
        "/v1/datasets/..%2F..%2Fdb".to_string(),
        format!("/v1/datasets/{}%2F..", ds.sha256),
        "/v1/tokens/..%2F..%2Fdb".to_string(),
    ] {
        for method in ["GET", "DELETE"] {
            let (s, text) = call(&d, method, &path, Some(&t), None).await;
            assert!(matches!(s, 400 | 404 | 405), "{method} {path}: {s} {text}");
            assert!(
                !text.contains("root:") && !text.contains("[model]"),
                "{text}"
            );
        }
    }
    // The real file is still served.
    let (s, _) = call(
        &d,
        "GET",
        &format!("/v1/jobs/{id}/checkpoints/final/files/adapter_config.json"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
}

/// `model.base` and `lora.init_adapter` must resolve inside the model roots, which default to
/// `<state_dir>/models`; a symlink out of them is refused like any path outside.
#[tokio::test]
async fn model_paths_stay_inside_the_roots() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    // `model_roots = []`: the default, `<state_dir>/models`.
    let d = TestDaemon::start(exe(), &state, "model_roots = []\n").await;
    let models = state.join("models");
    assert!(models.is_dir(), "the daemon makes its model folder");
    std::fs::copy(&model, models.join("tiny.gguf")).unwrap();
    std::os::unix::fs::symlink(&model, models.join("escape.gguf")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), models.join("up")).unwrap();
    std::os::unix::fs::symlink(models.join("tiny.gguf"), models.join("alias.gguf")).unwrap();
    let ds = d.client.upload_dataset(prefs_jsonl(4)).await.unwrap();
    let plan = |base: &str| SubmitJobRequest {
        job_toml: Some(job_toml(Path::new(base), &ds.reference, "max_steps = 1")),
        ..Default::default()
    };
    // By name inside the root, by absolute path, through a symlink that stays inside.
    for base in [
        "tiny.gguf".to_string(),
        models.join("tiny.gguf").to_string_lossy().into_owned(),
        "alias.gguf".to_string(),
    ] {
        d.client
            .plan(&plan(&base))
            .await
            .unwrap_or_else(|e| panic!("{base}: {e}"));
    }
    // Outside: the model the test wrote (a real model), through a symlink to it, through a
    // symlinked folder, by `..`, an absolute system path.
    let roots = models.to_string_lossy().into_owned();
    for base in [
        model.to_string_lossy().into_owned(),
        "escape.gguf".to_string(),
        "up/tiny.gguf".to_string(),
        "../../tiny.gguf".to_string(),
        "/etc/passwd".to_string(),
    ] {
        let before = d.all_jobs().await.len();
        for req in [plan(&base), plan(&base)] {
            let e = d.client.submit(&req).await.unwrap_err();
            assert_eq!(e.code(), Some("model_not_found"), "{base}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("outside the daemon's model roots") && text.contains(&roots),
                "{base}: {text}"
            );
            assert!(!text.contains("root:"), "{text}");
        }
        assert_eq!(d.all_jobs().await.len(), before, "{base}: nothing stored");
    }
    // Without `data_roots` data comes only as uploads.
    let e = d
        .client
        .submit(&plan_server_data(&models))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_job"), "{e}");
    assert!(e.to_string().contains("data only as uploads"), "{e}");
    // lora.init_adapter follows the same rule.
    let mut text = job_toml(&models.join("tiny.gguf"), &ds.reference, "max_steps = 1");
    text = text.replace(
        "[lora]\n",
        &format!(
            "[lora]\ninit_adapter = {:?}\n",
            tmp.path().to_string_lossy()
        ),
    );
    let e = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(text),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("lora.init_adapter") && e.to_string().contains("outside"),
        "{e}"
    );
}

/// A daemon without users runs only on loopback; with one it serves any address and needs
/// tokens from the first request. `orpod user add` on a running daemon's folder says why not.
#[tokio::test]
async fn an_open_daemon_stays_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = std::process::Command::new(exe())
        .args(["serve", "--listen", "0.0.0.0:0", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no users yet") && err.contains("orpod user add NAME --admin"),
        "{err}"
    );
    // Open on loopback: every caller is an admin named anonymous, the owner is the client's.
    let d = TestDaemon::start(exe(), &state, "").await;
    let me = d.client.me().await.unwrap();
    assert!(me.open && me.admin && me.user == "anonymous", "{me:?}");
    // The first user closes it, through the API as well.
    d.client
        .add_user(&NewUser {
            name: "admin".into(),
            admin: true,
        })
        .await
        .unwrap();
    let e = d.client.me().await.unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"), "{e}");
    // The store is the running daemon's.
    let out = std::process::Command::new(exe())
        .args(["user", "add", "late", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by a running `orpod serve`"), "{err}");
    drop(d);
    // With a user, a LAN address is allowed.
    let config = tmp.path().join("lan.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:0\"\nstate_dir = {:?}\n",
            state.to_string_lossy()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(exe())
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = state.join("orpod.addr");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !addr.exists() {
        assert!(child.try_wait().unwrap().is_none(), "orpod serve exited");
        assert!(
            std::time::Instant::now() < deadline,
            "orpod serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn plan_server_data(models: &Path) -> SubmitJobRequest {
    SubmitJobRequest {
        job_toml: Some(job_toml(
            &models.join("tiny.gguf"),
            "server:prefs.jsonl",
            "",
        )),
        ..Default::default()
    }
}

/// `data.train = "server:<path>"` reads a file inside the owner's data root (`{user}` in
/// `data_roots`) and stores it as their data set; another user's folder, a symlink out, a
/// missing file and bad rows are refused, and nothing is stored for them.
#[tokio::test]
async fn server_data_stays_inside_the_owners_data_root() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let data = tmp.path().join("data");
    for user in ["ada", "bob"] {
        std::fs::create_dir_all(data.join(user)).unwrap();
        orpod_user_add(exe(), &state, user, false);
    }
    let (ada_t, bob_t) = (
        orpod_token_create(exe(), &state, "ada"),
        orpod_token_create(exe(), &state, "bob"),
    );
    std::fs::write(data.join("ada/prefs.jsonl"), prefs_jsonl(6)).unwrap();
    std::fs::write(data.join("bob/secret.jsonl"), prefs_jsonl(5)).unwrap();
    let mut bad = prefs_jsonl(2);
    bad.extend_from_slice(b"{\"prompt\": \"p\"}\n");
    std::fs::write(data.join("ada/bad.jsonl"), bad).unwrap();
    std::os::unix::fs::symlink(data.join("bob/secret.jsonl"), data.join("ada/link.jsonl")).unwrap();
    let config = format!(
        "data_roots = [{:?}]\nheadroom_mib = 100000000\n",
        data.join("{user}")
    );
    let mut d = TestDaemon::start(exe(), &state, &config).await;
    d.use_token(&ada_t);
    let (ada, bob) = (d.client_with(&ada_t), d.client_with(&bob_t));
    let job = |train: &str| SubmitJobRequest {
        job_toml: Some(job_toml(&model, train, "max_steps = 1")),
        ..Default::default()
    };

    // By name in ada's folder and by absolute path: stored as her data set, rows checked.
    let queued = ada.submit(&job("server:prefs.jsonl")).await.unwrap();
    let train = queued.spec.unwrap().data.train;
    let sha = orpo_api::parse_dataset_ref(&train).unwrap_or_else(|| panic!("{train}"));
    assert_eq!(ada.dataset(sha).await.unwrap().unwrap().rows, 6);
    assert!(
        bob.dataset(sha).await.unwrap().is_none(),
        "ada's, not bob's"
    );
    let abs = format!("server:{}", data.join("ada/prefs.jsonl").display());
    let plan = ada.plan(&job(&abs)).await.unwrap();
    assert!(plan.estimate_bytes.is_some());
    // Bob reads his own folder.
    bob.plan(&job("server:secret.jsonl")).await.unwrap();

    let before = d.all_jobs().await.len();
    let ada_root = data.join("ada").to_string_lossy().into_owned();
    for (train, code, what) in [
        (
            "server:../bob/secret.jsonl",
            "dataset_not_found",
            "outside the daemon's data roots",
        ),
        (
            "server:link.jsonl",
            "dataset_not_found",
            "outside the daemon's data roots",
        ),
        (
            "server:/etc/passwd",
            "dataset_not_found",
            "outside the daemon's data roots",
        ),
        (
            "server:missing.jsonl",
            "dataset_not_found",
            "does not exist on the server",
        ),
        ("server:bad.jsonl", "invalid_data", "bad.jsonl:3:"),
        ("server:", "invalid_job", "not an uploaded data set"),
    ] {
        let e = ada.submit(&job(train)).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{train}: {e}");
        let text = e.to_string();
        assert!(text.contains(what), "{train}: {text}");
        if what.contains("outside") {
            assert!(text.contains(&format!("roots ({ada_root})")), "{text}");
        }
        assert!(!text.contains("root:"), "{text}");
    }
    assert_eq!(d.all_jobs().await.len(), before, "nothing stored");
}
