//! What a careless or hostile client can do to the daemon, and what it must not get back:
//! event followers that leave without a word, uploads larger than memory and over the limits,
//! model paths that point at files which are not models, and errors that would carry
//! backtraces.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orpo_api::{ErrorBody, JobState, SubmitJobRequest};
use orpo_tests::{job_toml, prefs_jsonl, submit_tiny, TestDaemon};
use sha2::Digest as _;

use crate::{exe, fixture};

/// `orpod_event_followers` from `/metrics`.
async fn followers(d: &TestDaemon) -> usize {
    let text = d
        .client
        .http()
        .get(d.client.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("orpod_event_followers "))
        .unwrap_or_else(|| panic!("no orpod_event_followers in:\n{text}"))
        .parse()
        .unwrap()
}

/// Sockets the daemon holds open: its listener, the connections of clients, and those of
/// clients that closed but that the daemon did not (CLOSE-WAIT).
fn sockets(d: &TestDaemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Opens a follow stream with a client of its own, so dropping it closes the connection.
async fn follow(d: &TestDaemon, id: u64) -> (u16, reqwest::Response) {
    let resp = reqwest::Client::new()
        .get(d.client.url(&format!("/v1/jobs/{id}/events?follow=true")))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp)
}

/// Reads what a stream has sent so far (at least one frame), as `orpoctl logs -f` would before
/// its user presses Ctrl-C. A client that closes with unread data resets the connection, which
/// the daemon notices at once; one that read everything only half-closes it, which it does not.
async fn read_some(resp: &mut reqwest::Response) -> String {
    let mut seen = Vec::new();
    while !seen.ends_with(b"\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("a frame within 5 s")
            .unwrap()
            .expect("the stream stays open");
        seen.extend_from_slice(&chunk);
    }
    String::from_utf8(seen).unwrap()
}

/// Two jobs that stay paused: the first paused while it trains (as `pause` does it), the
/// second while it waits behind the first.
async fn paused_jobs(d: &TestDaemon, model: &Path) -> (u64, u64) {
    let a = submit_tiny(d, model, 8, "max_steps = 100000").await;
    let b = submit_tiny(d, model, 8, "max_steps = 100000").await;
    d.client.pause(b.id).await.unwrap();
    d.wait_for(a.id, Duration::from_secs(60), "training", |j| {
        j.progress.step >= 1
    })
    .await;
    d.client.pause(a.id).await.unwrap();
    for id in [a.id, b.id] {
        d.wait_state(id, JobState::Paused, Duration::from_secs(60))
            .await;
    }
    (a.id, b.id)
}

#[tokio::test]
async fn followers_that_leave_are_let_go_and_followers_are_capped() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(
        exe(),
        &tmp.path().join("state"),
        "max_followers_per_job = 3\nmax_followers = 4\nevents_keepalive_s = 1\n",
    )
    .await;
    let (a, b) = paused_jobs(&d, &model).await;

    let baseline = sockets(&d);
    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, mut resp) = follow(&d, a).await;
        assert_eq!(status, 200);
        assert!(read_some(&mut resp).await.contains("event: state"));
        open.push(resp);
    }
    let (status, resp) = follow(&d, a).await;
    let e: ErrorBody = resp.json().await.unwrap();
    assert_eq!((status, e.error.code.as_str()), (429, "too_many_requests"));
    assert!(e.error.message.contains("max_followers_per_job"), "{e:?}");
    let (status, mut resp) = follow(&d, b).await;
    assert_eq!(status, 200);
    read_some(&mut resp).await;
    open.push(resp);
    let (status, resp) = follow(&d, b).await;
    let e: ErrorBody = resp.json().await.unwrap();
    assert_eq!(status, 429);
    assert!(e.error.message.contains("max_followers "), "{e:?}");
    assert_eq!(followers(&d).await, 4);

    // A quiet stream (its job is paused) carries keep-alive comments.
    let last = open.last_mut().unwrap();
    assert_eq!(read_some(last).await, ": keep-alive\n\n");

    // Clients that close without a word: their streams end and their sockets close.
    drop(open);
    let t = Instant::now();
    loop {
        let (n, held) = (followers(&d).await, sockets(&d));
        if n == 0 && held <= baseline {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{n} followers and {held} sockets (not {baseline}) remain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _kept) = follow(&d, a).await;
    assert_eq!(status, 200, "the freed places are free");
    // A finished job's stream ends by itself, and uncounts its follower.
    d.client.cancel(b).await.unwrap();
    let (status, resp) = follow(&d, b).await;
    assert_eq!(status, 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the stream of a cancelled job ends")
        .unwrap();
    assert!(text.contains("event: state"), "{text}");
    wait_followers(&d, 1).await;
}

/// Waits up to 10 s for `orpod_event_followers` to read `n`.
async fn wait_followers(d: &TestDaemon, n: usize) {
    let t = Instant::now();
    while followers(d).await != n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} followers, not {n}",
            followers(d).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The daemon's peak resident memory in bytes.
fn peak_rss(d: &TestDaemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Files in the datasets folder whose name starts with `.upload-` (temporary files).
fn leftovers(d: &TestDaemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.state_dir.join("datasets"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".upload-")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_large_upload_is_streamed_not_held_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    // Warm up the upload path, so its code and buffers are in the baseline.
    d.client.upload_dataset(prefs_jsonl(10)).await.unwrap();
    let mut big = Vec::with_capacity(52 << 20);
    let pad = "x".repeat(900);
    let mut rows = 0;
    while big.len() < 50 << 20 {
        let row = serde_json::json!({
            "prompt": format!("{rows} {pad}"), "chosen": " yes", "rejected": " no"
        });
        big.extend_from_slice(row.to_string().as_bytes());
        big.push(b'\n');
        rows += 1;
    }
    let before = peak_rss(&d);
    let view = d.client.upload_dataset(big.clone()).await.unwrap();
    let grew = peak_rss(&d).saturating_sub(before);
    assert_eq!((view.rows, view.size_bytes), (rows, big.len() as u64));
    let sha = sha2::Sha256::digest(&big);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(view.sha256, hex);
    assert!(
        grew < (big.len() / 4) as u64,
        "the daemon's peak memory grew by {grew} bytes for a {} byte upload",
        big.len()
    );
    let stored = d.state_dir.join(format!("datasets/{hex}.jsonl"));
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), big.len() as u64);
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));

    // The same file again: 200 and nothing new stored.
    let resp = d
        .client
        .http()
        .post(d.client.url("/v1/datasets"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(leftovers(&d).is_empty());
}

/// Posts an upload (with Content-Length, or chunked when `chunked`) and decodes the error.
async fn upload_error(d: &TestDaemon, body: Vec<u8>, chunked: bool) -> (u16, String) {
    let req = d.client.http().post(d.client.url("/v1/datasets"));
    let req = if chunked {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
        req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
    } else {
        req.body(body)
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let e: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, e.error.message)
}

#[tokio::test]
async fn upload_limits_are_named_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(
        exe(),
        &tmp.path().join("state"),
        "max_upload_bytes = 20000\nmax_upload_rows = 5\nmax_line_bytes = 2000\n",
    )
    .await;
    let (s, m) = upload_error(&d, prefs_jsonl(6), false).await;
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("max_upload_rows"), "{m}");
    let mut long = prefs_jsonl(2);
    long.extend_from_slice(format!("{{\"prompt\": \"{}\"}}\n", "y".repeat(3000)).as_bytes());
    let (s, m) = upload_error(&d, long, true).await;
    assert_eq!(s, 413, "{m}");
    assert!(m.contains(":3:") && m.contains("max_line_bytes"), "{m}");
    let blank = vec![b'\n'; 30000];
    for chunked in [false, true] {
        let (s, m) = upload_error(&d, blank.clone(), chunked).await;
        assert_eq!(s, 413, "{m}");
        assert!(m.contains("max_upload_bytes"), "{m}");
    }
    // Bad rows are reported with their lines, as before uploads were streamed.
    let mut rows = prefs_jsonl(3);
    rows.extend_from_slice(b"{\"prompt\": \"p\", \"chosen\": \"c\"}\nnot json\n");
    let (s, m) = upload_error(&d, rows, true).await;
    assert_eq!(s, 422);
    assert!(
        m.starts_with("upload.jsonl:4: missing key \"rejected\"")
            && m.contains("upload.jsonl:5: invalid JSON"),
        "{m}"
    );
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
    d.client.upload_dataset(prefs_jsonl(5)).await.unwrap();
}

/// Asserts an error body is short and carries no backtrace or source location.
fn clean(status: u16, text: &str) -> ErrorBody {
    assert!(text.len() < 1100, "{status}: {} bytes: {text}", text.len());
    for bad in ["backtrace", ".rs:", "   0: "] {
        assert!(!text.contains(bad), "{status}: {bad:?} in {text}");
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Submits (or plans) `job_toml` and returns the status and the checked error body.
async fn send(d: &TestDaemon, route: &str, job_toml: String) -> (u16, String) {
    let resp = d
        .client
        .http()
        .post(d.client.url(route))
        .json(&SubmitJobRequest {
            job_toml: Some(job_toml),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn model_errors_reveal_no_file_content_and_carry_no_backtrace() {
    let (tmp, tiny) = fixture();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let model = models.join("tiny.gguf");
    std::fs::copy(&tiny, &model).unwrap();
    const SECRET: &str = "TOPSECRET root:$6$salt$hash:19000:0:99999:7:::";
    std::fs::write(models.join("notes.txt"), SECRET).unwrap();
    std::fs::write(tmp.path().join("shadow"), SECRET).unwrap();
    // A GGUF file of an unknown version: candle refuses it with an error that carries a
    // backtrace when backtraces are on, as the wrapper below turns them on.
    std::fs::write(models.join("future.gguf"), b"GGUF\x63\x00\x00\x00rest").unwrap();
    let wrapper = tmp.path().join("orpod-with-backtraces");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nRUST_LIB_BACKTRACE=1 RUST_BACKTRACE=1 exec {:?} \"$@\"\n",
            exe()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    let d = TestDaemon::start(
        &wrapper,
        &tmp.path().join("state"),
        &format!("model_roots = [{:?}]\n", models.to_string_lossy()),
    )
    .await;
    let ds = d.client.upload_dataset(prefs_jsonl(4)).await.unwrap();
    let job = |base: &str| job_toml(Path::new(base), &ds.reference, "max_steps = 1");

    // Not a model, inside the roots: refused before it is parsed, nothing of it quoted.
    let notes = models.join("notes.txt").to_string_lossy().into_owned();
    for route in ["/v1/jobs", "/v1/plan"] {
        let (s, text) = send(&d, route, job(&notes)).await;
        let e = clean(s, &text);
        assert_eq!(
            (s, e.error.code.as_str()),
            (422, "model_not_found"),
            "{text}"
        );
        assert!(e.error.message.contains("not a model"), "{text}");
        for leak in ["TOPS", "root", "magic", "53504f54", "0x"] {
            assert!(!text.contains(leak), "{leak:?} leaked: {text}");
        }
    }
    // Outside the roots: the same answer whether the file exists or not, so nothing is learnt.
    let outside = |path: &str| job(path);
    let shadow = tmp.path().join("shadow").to_string_lossy().into_owned();
    let missing = tmp.path().join("missing").to_string_lossy().into_owned();
    let (s1, t1) = send(&d, "/v1/jobs", outside(&shadow)).await;
    let (s2, t2) = send(&d, "/v1/jobs", outside(&missing)).await;
    let (s3, t3) = send(&d, "/v1/jobs", outside("../shadow")).await;
    for (s, t) in [(s1, &t1), (s2, &t2), (s3, &t3)] {
        let e = clean(s, t);
        assert_eq!(s, 422);
        assert!(
            e.error.message.contains("outside the daemon's model roots"),
            "{t}"
        );
        assert!(!t.contains("TOPS"), "{t}");
    }
    assert_eq!(t1.replace(&shadow, "P"), t2.replace(&missing, "P"));

    // A model file the trainer cannot read: one clear message, no backtrace.
    let future = models.join("future.gguf").to_string_lossy().into_owned();
    let (s, text) = send(&d, "/v1/plan", job(&future)).await;
    let e = clean(s, &text);
    assert_eq!(s, 400, "{text}");
    assert!(e.error.message.contains("future.gguf"), "{text}");

    // Other bad requests stay short and clean too.
    for (route, body) in [
        ("/v1/jobs", "{\"job_toml\": ".to_string()),
        (
            "/v1/jobs",
            format!("{{\"job_toml\": {:?}}}", "x".repeat(100_000)),
        ),
        (
            "/v1/datasets",
            format!(
                "{{\"prompt\": \"p\", \"chosen\": [{{\"role\": {:?}, \"content\": \"c\"}}], \
                 \"rejected\": \"r\"}}\n",
                "r".repeat(5000)
            ),
        ),
    ] {
        let resp = d
            .client
            .http()
            .post(d.client.url(route))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        assert!((400..500).contains(&s), "{route}: {s}");
        clean(s, &resp.text().await.unwrap());
    }
    // The real model still plans.
    let (s, text) = send(&d, "/v1/plan", job(&model.to_string_lossy())).await;
    assert_eq!(s, 200, "{text}");
}
