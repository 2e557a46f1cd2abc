//! The web page in a real browser (headless Chromium over the DevTools protocol) against a
//! daemon with users training a tiny job: the token entered once and kept, the queue listing the
//! job, a job named with HTML shown as text, the charts gaining points while it trains, the
//! buttons pausing, resuming and cancelling it, and the compare view overlaying two runs.
//!
//! `ORPOD_SCREENSHOTS=DIR` writes a PNG of each page there
//! (`ORPOD_SCREENSHOTS=shots cargo test -p orpo-tests --test e2e web`).

use std::time::Duration;

use orpo_api::{JobState, SubmitJobRequest};
use orpo_tests::browser::Browser;
use orpo_tests::{job_toml, orpod_token_create, orpod_user_add, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// A name a careless page would run as HTML.
const EVIL: &str = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_page_shows_the_queue_live_charts_and_its_buttons_work() {
    let Some(mut b) = Browser::start().await else {
        return;
    };
    let shots = std::env::var_os("ORPOD_SCREENSHOTS").map(std::path::PathBuf::from);
    if let Some(dir) = &shots {
        std::fs::create_dir_all(dir).unwrap();
    }
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    orpod_user_add(exe(), &state, "alice", false);
    let token = orpod_token_create(exe(), &state, "alice");
    let mut d = TestDaemon::start(exe(), &state, "").await;
    d.use_token(&token);
    let ds = d.client.upload_dataset(prefs_jsonl(16)).await.unwrap();
    let toml = job_toml(
        &model,
        &ds.reference,
        "max_steps = 100000\nsave_every = 200",
    )
    .replace("name = \"tiny\"", &format!("name = {EVIL:?}"));
    let job = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(toml),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = job.id;
    // A second run, queued behind the first (max_running = 1): it trains once that is cancelled.
    let short = job_toml(&model, &ds.reference, "max_steps = 6")
        .replace("name = \"tiny\"", "name = \"beta 0.2\"");
    let second = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(short),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;

    // Without a token the page says what to do; a token entered once is kept.
    b.goto(&d.url).await;
    b.wait_for(
        "document.getElementById('error').textContent.includes('needs a token')",
        WAIT,
    )
    .await;
    b.eval(&format!(
        "document.getElementById('token').value = {token:?}; \
         document.querySelector('#token-form button').click(); true"
    ))
    .await;
    let row = format!("document.querySelector('#queue tr[data-id=\"{id}\"]')");
    b.wait_for(&row, WAIT).await;
    assert_eq!(
        b.eval("localStorage.getItem('orpod-token')").await,
        serde_json::json!(token)
    );
    // A mark on the old document, so the wait below sees the reloaded one, not the old rows.
    b.eval("window.oldPage = true; location.reload(); true")
        .await;
    b.wait_for(&format!("!window.oldPage && {row}"), WAIT).await;
    assert_eq!(
        b.eval("document.getElementById('who').textContent").await,
        "signed in as alice"
    );
    // The name is text: shown as written, nothing of it ran or became an element.
    assert_eq!(
        b.eval(&format!("{row}.querySelector('.name').textContent"))
            .await,
        EVIL
    );
    assert_eq!(
        b.eval("document.querySelectorAll('main img, main script').length")
            .await,
        0
    );
    assert_eq!(b.eval("window.pwned === undefined").await, true);
    assert!(b
        .eval("document.querySelector('#devices tr[data-device=\"cpu\"]') !== null")
        .await
        .as_bool()
        .unwrap());
    d.wait_state(id, JobState::Running, WAIT).await;
    b.wait_for(&format!("{row}.dataset.state === 'running'"), WAIT)
        .await;
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("queue.png"), true).await;
    }

    // The job's page: its charts gain points while it trains.
    b.goto(&format!("{}/#/jobs/{id}", d.url)).await;
    let points = "Number(document.querySelector('.chart[data-metric=\"loss\"]').dataset.points)";
    let first = b.wait_for(points, WAIT).await.as_u64().unwrap();
    b.wait_for(&format!("{points} > {first} + 2"), WAIT).await;
    b.wait_for(
        "document.querySelector('.chart[data-metric=\"loss\"] img')?.naturalWidth === 720",
        WAIT,
    )
    .await;
    assert_eq!(
        b.eval("document.querySelector('h2 .name').textContent")
            .await,
        EVIL
    );
    b.wait_for(
        "document.getElementById('log').textContent.includes('running')",
        WAIT,
    )
    .await;
    assert_eq!(b.eval("window.pwned === undefined").await, true);
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("job.png"), true).await;
    }

    // The buttons: pause (it checkpoints and frees the slot), resume, cancel.
    let state_is = |s: &str| format!("document.getElementById('state').textContent === '{s}'");
    b.eval("document.getElementById('pause').click(); true")
        .await;
    b.wait_for(&state_is("paused"), WAIT).await;
    assert_eq!(d.client.job(id).await.unwrap().state, JobState::Paused);
    assert_eq!(
        b.eval(
            "[document.getElementById('pause').hidden, document.getElementById('resume').hidden]"
        )
        .await,
        serde_json::json!([true, false])
    );
    b.eval("document.getElementById('resume').click(); true")
        .await;
    b.wait_for(&state_is("running"), WAIT).await;
    b.eval("document.getElementById('cancel').click(); true")
        .await;
    b.wait_for(&state_is("cancelled"), WAIT).await;
    assert_eq!(d.client.job(id).await.unwrap().state, JobState::Cancelled);

    // Compare: once the second run has trained, tick both and overlay their loss.
    d.wait_state(second, JobState::Succeeded, WAIT).await;
    b.goto(&format!("{}/#/compare", d.url)).await;
    b.wait_for(
        "document.querySelectorAll('label.pick input').length === 2",
        WAIT,
    )
    .await;
    b.eval(
        "document.querySelectorAll('label.pick input').forEach((c) => c.click()); \
         document.getElementById('metric').value = 'loss'; \
         document.getElementById('overlay').click(); true",
    )
    .await;
    b.wait_for(
        "document.querySelector('#compare-chart img')?.naturalWidth === 720",
        WAIT,
    )
    .await;
    let hash = b.eval("location.hash").await;
    let hash = hash.as_str().unwrap();
    assert!(hash.starts_with("#/compare?jobs="), "{hash}");
    assert!(hash.contains(&second.to_string()) && hash.contains(&id.to_string()));
    // The overlay is one chart with both runs in its legend (names escaped in the SVG).
    let legend = b
        .eval(&format!(
            "api('/v1/charts/loss.svg?jobs={id},{second}').then((r) => r.text())"
        ))
        .await;
    let legend = legend.as_str().unwrap();
    assert!(
        legend.contains(&format!("job {second} (beta 0.2)")),
        "{legend}"
    );
    assert!(legend.contains("&lt;script&gt;") && !legend.contains("<script>"));
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("compare.png"), true).await;
    }
    assert_eq!(b.eval("window.pwned === undefined").await, true);
    drop(tmp);
}
