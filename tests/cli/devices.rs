//! `orpoctl gpus`, `plan` and `completions`, and the daemon's dataset lookup that lets
//! `submit` skip uploads (`GET /v1/datasets/{sha256}`).

use orpo_api::GpusView;

use crate::Setup;

#[tokio::test]
async fn gpus_and_plan_show_where_jobs_would_run() {
    let s = Setup::new().await;
    let out = s.run(&["gpus"]).expect(0);
    assert!(
        out.stdout.starts_with("DEVICE  ")
            && out.stdout.contains("TOTAL")
            && out.stdout.contains("FREE"),
        "{out:#?}"
    );
    let view: GpusView =
        serde_json::from_str(&s.run(&["gpus", "--json"]).expect(0).stdout).unwrap();
    for d in &view.devices {
        assert!(
            out.stdout.contains(&format!("\n{}  ", d.device)),
            "{out:#?}"
        );
    }

    let job = s.job_file("plan", 4, "max_steps = 1");
    let out = s.run(&["plan", job.to_str().unwrap()]).expect(0);
    for key in [
        "device        cpu\n",
        "estimate      ",
        "  weights     ",
        "free          ",
        "queued ahead  0\n",
        "starts now    yes\n",
        "reason        ",
    ] {
        assert!(out.stdout.contains(key), "{key:?}: {out:#?}");
    }
    let out = s.run(&["plan", job.to_str().unwrap(), "--json"]).expect(0);
    let plan: orpo_api::PlanView = serde_json::from_str(&out.stdout).unwrap();
    assert!(plan.starts_now);
    // plan queues nothing.
    assert!(s
        .d
        .client
        .list(&Default::default())
        .await
        .unwrap()
        .jobs
        .is_empty());
}

#[tokio::test]
async fn completions_need_no_server() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = crate::run_with(
            crate::orpoctl(home.path()).env("ORPOD_URL", "http://127.0.0.1:9"),
            &["completions", shell],
        )
        .expect(0);
        assert!(
            out.stdout.contains("orpoctl") && out.stdout.contains("submit"),
            "{shell}"
        );
    }
}

#[tokio::test]
async fn dataset_lookup_by_sha256() {
    let s = Setup::new().await;
    let c = &s.d.client;
    let bytes = orpo_tests::prefs_jsonl(3);
    let sha = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(c.dataset(&sha).await.unwrap(), None, "not uploaded yet");
    let up = c.upload_dataset(bytes).await.unwrap();
    let found = c.dataset(&sha).await.unwrap().expect("found after upload");
    assert_eq!(found, up);
    let err = c.dataset("ABC").await.unwrap_err();
    assert_eq!(err.code(), Some("bad_request"));
}
