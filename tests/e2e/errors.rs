//! Bad inputs: each gets the right 4xx, the API's error body, and a message that says what is
//! wrong and where.

use orpo_api::{ErrorBody, SubmitJobRequest};
use orpo_tests::{job_toml, prefs_jsonl, TestDaemon};

use crate::{exe, fixture};

/// Sends `body` to `path` and returns the status and the decoded error body.
async fn post(d: &TestDaemon, path: &str, content_type: &str, body: Vec<u8>) -> (u16, ErrorBody) {
    let resp = d
        .client
        .http()
        .post(d.client.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

async fn submit(d: &TestDaemon, req: serde_json::Value) -> (u16, ErrorBody) {
    post(
        d,
        "/v1/jobs",
        "application/json",
        req.to_string().into_bytes(),
    )
    .await
}

#[tokio::test]
async fn bad_inputs_get_the_right_status_and_a_clear_message() {
    let (tmp, model) = fixture();
    let d = TestDaemon::start(exe(), &tmp.path().join("state"), "").await;
    let ds = d.client.upload_dataset(prefs_jsonl(4)).await.unwrap();
    let good = job_toml(&model, &ds.reference, "max_steps = 1");

    // Malformed JSON.
    let (s, e) = post(
        &d,
        "/v1/jobs",
        "application/json",
        b"{\"job_toml\": ".to_vec(),
    )
    .await;
    assert_eq!((s, e.error.code.as_str()), (400, "bad_request"), "{e:?}");
    // Unknown key in the request.
    let (s, e) = submit(&d, serde_json::json!({"job_toml": good, "priority": 3})).await;
    assert_eq!(s, 400);
    assert!(e.error.message.contains("priority"), "{e:?}");
    // Neither or both forms of the job.
    let (s, e) = submit(&d, serde_json::json!({})).await;
    assert_eq!((s, e.error.code.as_str()), (400, "bad_request"));
    // Malformed TOML: the line is named.
    let (s, e) = submit(&d, serde_json::json!({"job_toml": "[model\nbase = 1"})).await;
    assert_eq!((s, e.error.code.as_str()), (400, "invalid_job"));
    assert!(e.error.message.contains("line 1"), "{e:?}");
    // Unknown key in the job file, with its line.
    let typo = good.replace("max_steps = 1", "max_steps = 1\nlearning_rat = 1e-4");
    let (s, e) = submit(&d, serde_json::json!({"job_toml": typo})).await;
    assert_eq!((s, e.error.code.as_str()), (400, "invalid_job"));
    assert!(
        e.error.message.contains("learning_rat") && e.error.message.contains("line"),
        "{e:?}"
    );
    // Unknown key in a JSON spec.
    let mut spec =
        serde_json::to_value(orpo_api::JobSpec::parse(&good, "j".as_ref()).unwrap()).unwrap();
    spec["train"]["learning_rat"] = 1.0.into();
    let (s, e) = submit(&d, serde_json::json!({"spec": spec})).await;
    assert_eq!(s, 400);
    assert!(e.error.message.contains("learning_rat"), "{e:?}");
    // Out-of-range value names the key.
    let bad = good.replace("r = 4", "r = 0");
    let (s, e) = submit(&d, serde_json::json!({"job_toml": bad})).await;
    assert_eq!((s, e.error.code.as_str()), (400, "invalid_job"));
    assert!(e.error.message.contains("lora.r"), "{e:?}");
    // Missing model.
    let missing = good.replace(&*model.to_string_lossy(), "/nowhere/model.gguf");
    let (s, e) = submit(&d, serde_json::json!({"job_toml": missing})).await;
    assert_eq!((s, e.error.code.as_str()), (422, "model_not_found"));
    assert!(e.error.message.contains("/nowhere/model.gguf"), "{e:?}");
    // Data named by a client path, and a data set never uploaded.
    let local = good.replace(&ds.reference, "prefs.jsonl");
    let (s, e) = submit(&d, serde_json::json!({"job_toml": local})).await;
    assert_eq!((s, e.error.code.as_str()), (400, "invalid_job"));
    assert!(e.error.message.contains("POST /v1/datasets"), "{e:?}");
    let unknown = good.replace(&ds.sha256, &"0".repeat(64));
    let (s, e) = submit(&d, serde_json::json!({"job_toml": unknown})).await;
    assert_eq!((s, e.error.code.as_str()), (422, "dataset_not_found"));

    // Bad rows: every bad line is named, nothing is stored.
    let mut rows = prefs_jsonl(3);
    rows.extend_from_slice(b"{\"prompt\": \"p\", \"chosen\": \"c\"}\nnot json\n");
    let (s, e) = post(&d, "/v1/datasets", "application/x-ndjson", rows).await;
    assert_eq!((s, e.error.code.as_str()), (422, "invalid_data"));
    assert!(
        e.error.message.contains(":4:") && e.error.message.contains(":5:"),
        "{e:?}"
    );
    let (s, _) = post(&d, "/v1/datasets", "application/x-ndjson", Vec::new()).await;
    assert_eq!(s, 422, "an empty data set is refused");

    // Unknown job id, non-numeric id, unknown route, wrong method, bad query.
    let err = d.client.job(4242).await.unwrap_err();
    assert_eq!(err.code(), Some("job_not_found"));
    assert!(err.to_string().contains("4242"));
    for (path, status) in [
        ("/v1/jobs/abc", 400),
        ("/v1/nope", 404),
        ("/v1/jobs?limit=0", 400),
        ("/v1/jobs?state=bogus", 400),
    ] {
        let resp = d
            .client
            .http()
            .get(d.client.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let body: ErrorBody = resp.json().await.unwrap();
        assert!(!body.error.message.is_empty());
    }
    let resp = d
        .client
        .http()
        .delete(d.client.url("/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(
        d.client.pause(4242).await.unwrap_err().code(),
        Some("job_not_found")
    );

    // The good job still goes through, and nothing bad was stored.
    let ok = d
        .client
        .submit(&SubmitJobRequest {
            job_toml: Some(good),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.id, 1, "no refused submit consumed an id");
    assert_eq!(ok.owner, "anonymous");
}
