//! The daemon with `executor = "slurm"` on the real single-node cluster: a job trains through
//! Slurm to the same numbers as a local run; a request Slurm refuses fails the job saying why;
//! two jobs asking for the one GPU gres, the second waiting with Slurm's reason (paused and
//! resumed while it waits) until the first is cancelled; pause and resume, then a `scancel` from
//! outside orpod, each resuming from a checkpoint with no step lost or repeated; a node that
//! fails under a job, which waits with Slurm's reason and resumes once the node is back; and a
//! daemon killed with SIGKILL while its job runs in Slurm, which re-attaches to the same Slurm
//! job on restart instead of starting another (and keeps a cancel it had answered), or, back
//! only after the worker ended, settles the job from the worker's outcome file and newest
//! checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orpo_api::{JobState, JobView, MetricRecord, SubmitJobRequest};
use orpo_tests::slurm::Cluster;
use orpo_tests::{job_toml, prefs_jsonl, tiny_model, TestDaemon};

use super::cluster_or_skip;

const LONG: Duration = Duration::from_secs(300);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orpod-e2e"))
}

/// A cluster, a temporary folder and the tiny model in it; none where tests skip Slurm.
fn cluster_and_model() -> Option<(Cluster, tempfile::TempDir, PathBuf)> {
    let c = cluster_or_skip()?;
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    Some((c, tmp, model))
}

/// A daemon whose workers run in `c`, with `slurm` lines added to its `[slurm]` table.
async fn slurm_daemon(c: &Cluster, dir: &Path, slurm: &str) -> TestDaemon {
    slurm_daemon_on(c, dir, None, slurm).await
}

/// [`slurm_daemon`] on `port` at every start (as a real daemon's address stays), or a new free
/// port at each.
async fn slurm_daemon_on(c: &Cluster, dir: &Path, port: Option<u16>, slurm: &str) -> TestDaemon {
    let listen = port.map_or(String::new(), |p| format!("listen = \"127.0.0.1:{p}\"\n"));
    TestDaemon::start(
        &exe(),
        &dir.join("slurm-state"),
        &format!(
            "{listen}executor = \"slurm\"\n[slurm]\nconf = {:?}\ncpus_per_job = 1\n{slurm}",
            c.conf().to_string_lossy()
        ),
    )
    .await
}

/// Submits the tiny job with `train` settings on `device`, on `rows` uploaded rows.
async fn submit(d: &TestDaemon, model: &Path, rows: usize, train: &str, device: &str) -> JobView {
    let ds = d.client.upload_dataset(prefs_jsonl(rows)).await.unwrap();
    let toml = job_toml(model, &ds.reference, train)
        .replace("device = \"cpu\"", &format!("device = \"{device}\""));
    d.client
        .submit(&SubmitJobRequest {
            job_toml: Some(toml),
            owner: Some("tester".into()),
            ..Default::default()
        })
        .await
        .expect("submit")
}

/// Submits a CPU job of `steps` steps that checkpoints every 20, and waits until it has
/// trained past its first checkpoint.
async fn past_a_checkpoint(d: &TestDaemon, model: &Path, steps: usize) -> JobView {
    let train = format!("max_steps = {steps}\nsave_every = 20");
    let job = submit(d, model, 16, &train, "cpu").await;
    d.wait_for(job.id, LONG, "a checkpoint", |j| j.progress.step >= 25)
        .await
}

/// A record without its timing, the one field two runs of the same job may differ in.
fn untimed(r: &MetricRecord) -> MetricRecord {
    MetricRecord {
        elapsed_s: 0.0,
        ..r.clone()
    }
}

fn name(id: u64) -> String {
    format!("orpod-{id}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_trained_through_slurm_has_the_local_runs_numbers() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let local = TestDaemon::start(&exe(), &tmp.path().join("local-state"), "").await;
    let slurm = slurm_daemon(&c, tmp.path(), "").await;
    let train = "max_steps = 12\nsave_every = 4";
    let here = submit(&local, &model, 16, train, "cpu").await;
    let there = submit(&slurm, &model, 16, train, "cpu").await;
    let there = slurm.wait_state(there.id, JobState::Succeeded, LONG).await;
    let here = local.wait_state(here.id, JobState::Succeeded, LONG).await;

    let host = c.run("hostname", &["-s"]).trim().to_string();
    assert_eq!(there.device.as_deref(), Some(&*format!("{host}:cpu")));
    // At start the daemon named Slurm and its one node, and that its workers report to its
    // own listen address.
    let log = slurm.log();
    assert!(
        log.contains("workers run in Slurm (") && log.contains("1 node(s)"),
        "{log}"
    );
    assert!(log.contains("slurm.daemon_url is not set"), "{log}");
    assert_eq!(there.attempts, 1);
    assert_eq!(there.pending_reason, None);
    let metrics = |d: &TestDaemon, id| {
        let client = d.client.clone();
        async move {
            let records = client.metrics(id, None).await.unwrap();
            records.iter().map(untimed).collect::<Vec<_>>()
        }
    };
    let (ours, theirs) = (
        metrics(&local, here.id).await,
        metrics(&slurm, there.id).await,
    );
    assert_eq!(theirs.len(), 12, "{theirs:?}");
    assert_eq!(ours, theirs);
    // The same adapter, byte for byte, where `orpoctl download` finds it.
    let adapter = |d: &TestDaemon, id: u64| {
        std::fs::read(
            d.state_dir
                .join(format!("jobs/{id}/final/adapter_model.safetensors")),
        )
        .unwrap()
    };
    assert!(adapter(&local, here.id) == adapter(&slurm, there.id));
    let checkpoints = slurm.client.checkpoints(there.id).await.unwrap();
    let names: Vec<&str> = checkpoints.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"final") && names.contains(&"step-8"),
        "{names:?}"
    );
    let events = slurm.client.events(there.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.starts_with("training 12 steps")),
        "{events:#?}"
    );
    assert!(c.jobs_named(&name(there.id)).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_job_for_the_one_gpu_waits_with_slurms_reason() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let d = slurm_daemon(
        &c,
        tmp.path(),
        "gpu_types = [{ gres = \"fake\", memory_mib = 4096 }]\n",
    )
    .await;
    let first = submit(
        &d,
        &model,
        16,
        "max_steps = 100000\nsave_every = 1000",
        "auto",
    )
    .await;
    d.wait_for(first.id, LONG, "the first job to train", |j| {
        j.state == JobState::Running && j.progress.step >= 1
    })
    .await;
    let slurm_job = c.jobs_named(&name(first.id));
    assert_eq!(slurm_job.len(), 1);
    let gres = c.run(
        "squeue",
        &["-h", "-j", &slurm_job[0].to_string(), "-o", "%b"],
    );
    assert!(gres.contains("gpu:fake:1"), "{gres}");

    // `orpoctl gpus` lists the cluster's node with the job on it and the GPU in use.
    let gpus = d.client.gpus().await.unwrap();
    let host = c.run("hostname", &["-s"]).trim().to_string();
    assert_eq!(gpus.slurm_nodes.len(), 1, "{gpus:?}");
    let node = &gpus.slurm_nodes[0];
    assert_eq!(node.name, host);
    assert_eq!(node.running_jobs, [first.id]);
    assert_eq!(node.gres, "gpu:fake:1");
    assert!(node.gres_used.starts_with("gpu:fake:1"), "{node:?}");
    // The web page lists it too.
    if let Some(mut b) = orpo_tests::browser::Browser::start().await {
        b.goto(&format!("{}/", d.url)).await;
        let row = b
            .wait_for(
                &format!(
                    "document.querySelector('#slurm-nodes tr[data-node=\"{host}\"]')?.innerText"
                ),
                LONG,
            )
            .await;
        let row = row.as_str().unwrap_or_default().to_string();
        assert!(
            row.contains(&format!("job {}", first.id)) && row.contains("gpu:fake:1"),
            "{row}"
        );
    }
    // `orpoctl plan` says what a job would ask Slurm for.
    let ds = d.client.upload_dataset(prefs_jsonl(16)).await.unwrap();
    let plan = d
        .client
        .plan(&SubmitJobRequest {
            job_toml: Some(
                job_toml(&model, &ds.reference, "max_steps = 4")
                    .replace("device = \"cpu\"", "device = \"auto\""),
            ),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(plan.device, "slurm");
    assert!(plan.reason.contains("--gres=gpu:fake:1"), "{plan:?}");

    // Only the worker's secret opens the route it reports on: a forged end changes nothing.
    let report = d
        .client
        .url(&format!("/internal/v1/jobs/{}/events", first.id));
    let forged = serde_json::json!({ "first_seq": 100000, "events": [{ "type": "finished" }] });
    let http = reqwest::Client::new();
    for (secret, status) in [(None, 401), (Some("0".repeat(64)), 403)] {
        let mut req = http.post(&report).json(&forged);
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
    }
    assert_eq!(
        d.client.job(first.id).await.unwrap().state,
        JobState::Running
    );

    let second = submit(&d, &model, 16, "max_steps = 4", "auto").await;
    let waiting = d
        .wait_for(second.id, LONG, "Slurm's reason", |j| {
            j.pending_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("slurm: Resources (job "))
        })
        .await;
    assert_eq!(waiting.state, JobState::Starting);
    assert_eq!(c.jobs_named(&name(second.id)).len(), 1);

    // Paused while Slurm holds it: it leaves Slurm's queue, and comes back on resume.
    d.client.pause(second.id).await.unwrap();
    d.wait_state(second.id, JobState::Paused, LONG).await;
    assert!(c.jobs_named(&name(second.id)).is_empty());
    d.client.resume(second.id).await.unwrap();
    d.wait_for(second.id, LONG, "Slurm's reason again", |j| {
        j.pending_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("slurm: Resources (job "))
    })
    .await;

    d.client.cancel(first.id).await.unwrap();
    let cancelled = d.wait_state(first.id, JobState::Cancelled, LONG).await;
    assert!(cancelled.finished_at.is_some());
    d.wait_state(second.id, JobState::Succeeded, LONG).await;
    assert!(c.jobs_named(&name(first.id)).is_empty());
    assert!(c.jobs_named(&name(second.id)).is_empty());
}

/// A request Slurm refuses fails the job with Slurm's words, instead of retrying for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_slurm_refuses_fails_saying_why() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let d = slurm_daemon(&c, tmp.path(), "partition = \"nosuch\"\n").await;
    let job = submit(&d, &model, 16, "max_steps = 2", "cpu").await;
    let failed = d.wait_state(job.id, JobState::Failed, LONG).await;
    let error = failed.error.unwrap();
    assert_eq!(error.kind, "slurm");
    assert!(
        error
            .message
            .starts_with("Slurm refused the job: sbatch failed")
            && error.message.contains("nosuch"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_an_outside_scancel_lose_no_step() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let d = slurm_daemon(&c, tmp.path(), "").await;
    let steps = 600;
    let job = past_a_checkpoint(&d, &model, steps).await;
    d.client.pause(job.id).await.unwrap();
    let paused = d.wait_state(job.id, JobState::Paused, LONG).await;
    assert!(c.jobs_named(&name(job.id)).is_empty());
    assert!(paused.progress.step < steps, "{paused:?}");

    d.client.resume(job.id).await.unwrap();
    let at = paused.progress.step;
    d.wait_for(job.id, LONG, "training past the pause", |j| {
        j.state == JobState::Running && j.progress.step > at + 20
    })
    .await;
    let second = c.jobs_named(&name(job.id));
    assert_eq!(second.len(), 1);

    // Someone cancels the worker's Slurm job behind orpod's back: the job is not lost.
    c.run("scancel", &[&second[0].to_string()]);
    let requeued = d
        .wait_for(job.id, LONG, "the third attempt", |j| j.attempts == 3)
        .await;
    let events = d.client.events(job.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("from outside orpod")),
        "{requeued:?}\n{events:#?}"
    );
    let done = d.wait_state(job.id, JobState::Succeeded, LONG).await;
    assert_eq!(done.attempts, 3);
    let trained = d.train_steps(job.id).await;
    assert_eq!(trained, (1..=steps).collect::<Vec<_>>());
    let events = d.client.events(job.id, None).await.unwrap();
    let resumed = events
        .iter()
        .filter(|e| e.message.starts_with("resumed from step-"))
        .count();
    assert_eq!(resumed, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_fails_under_a_job_sends_it_back_to_the_queue() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let d = slurm_daemon(&c, tmp.path(), "").await;
    let steps = 600;
    let job = past_a_checkpoint(&d, &model, steps).await;
    let host = c.run("hostname", &["-s"]).trim().to_string();
    let node = format!("NodeName={host}");
    c.run(
        "scontrol",
        &["update", &node, "State=DOWN", "Reason=orpod-test"],
    );
    // Slurm ends the job with the node; orpod queues it again, and it waits for a node.
    let waiting = d
        .wait_for(job.id, LONG, "a wait for the node", |j| {
            j.attempts == 2
                && j.state == JobState::Starting
                && j.pending_reason.as_deref().is_some_and(|r| {
                    r.starts_with("slurm: ") && !r.contains("RUNNING") && !r.contains("submitting")
                })
        })
        .await;
    let events = d.client.events(job.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("from outside orpod")),
        "{waiting:?}\n{events:#?}"
    );
    // The node registers again by itself (ReturnToService=2) or is told to.
    let resumed = c
        .command("scontrol")
        .args(["update", &node, "State=RESUME"])
        .output()
        .unwrap();
    eprintln!(
        "waited with {:?}; resume: {}",
        waiting.pending_reason,
        String::from_utf8_lossy(&resumed.stderr)
    );
    let done = d.wait_state(job.id, JobState::Succeeded, LONG).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(d.train_steps(job.id).await, (1..=steps).collect::<Vec<_>>());
}

/// Kills the daemon with SIGKILL while its job trains in Slurm and starts it again: at once on
/// the same address (`away` false), or only once the worker has ended and given up on reporting
/// (`away` true). Either way the job ends `succeeded` in its one Slurm job with every step's
/// metrics once.
async fn daemon_killed_while_its_job_runs_in_slurm(away: bool) {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let port = orpo_tests::slurm::free_port();
    let wait = format!("report_wait_s = {}\n", if away { 3 } else { 60 });
    let mut d = slurm_daemon_on(&c, tmp.path(), Some(port), &wait).await;
    let steps = 800;
    let job = submit(
        &d,
        &model,
        16,
        &format!("max_steps = {steps}\nsave_every = 50"),
        "cpu",
    )
    .await;
    d.wait_for(job.id, LONG, "training", |j| j.progress.step >= 5)
        .await;
    let before = c.jobs_named(&name(job.id));
    assert_eq!(before.len(), 1);

    d.kill9();
    if away {
        c.wait_for("the worker to end without its daemon", || {
            c.jobs_named(&name(job.id)).is_empty()
        });
    } else {
        // The worker trains on, keeping its events until the daemon takes them.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    d.restart().await;
    if !away {
        assert!(
            d.log().contains("re-attached to its Slurm job"),
            "{}",
            d.log()
        );
        let running = d.client.job(job.id).await.unwrap();
        assert!(running.state.has_worker(), "{running:?}");
        assert_eq!(c.jobs_named(&name(job.id)), before);
    }
    let done = d.wait_state(job.id, JobState::Succeeded, LONG).await;
    assert_eq!(done.attempts, 1);
    assert_eq!(done.progress.step, steps);
    let trained = d.train_steps(job.id).await;
    let events = d.client.events(job.id, None).await.unwrap();
    assert_eq!(
        trained,
        (1..=steps).collect::<Vec<_>>(),
        "{done:#?}\n{events:#?}\n{}",
        d.log()
    );
    let from_checkpoint = events
        .iter()
        .any(|e| e.message.contains("did not reach the daemon"));
    assert_eq!(from_checkpoint, away, "{events:#?}");
}

/// A cancel answered just before the daemon died is still a cancel after the restart, not a
/// worker stopped from outside to requeue.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_survives_a_daemon_killed_right_after_it() {
    let Some((c, tmp, model)) = cluster_and_model() else {
        return;
    };
    let port = orpo_tests::slurm::free_port();
    let mut d = slurm_daemon_on(&c, tmp.path(), Some(port), "").await;
    let job = submit(
        &d,
        &model,
        16,
        "max_steps = 100000\nsave_every = 1000",
        "cpu",
    )
    .await;
    d.wait_for(job.id, LONG, "training", |j| j.progress.step >= 5)
        .await;
    d.client.cancel(job.id).await.unwrap();
    d.kill9();
    d.restart().await;
    let cancelled = d.wait_state(job.id, JobState::Cancelled, LONG).await;
    assert_eq!(cancelled.attempts, 1);
    assert!(c.jobs_named(&name(job.id)).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_reattaches_to_the_running_slurm_job() {
    daemon_killed_while_its_job_runs_in_slurm(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_ended_while_its_daemon_was_down_keeps_its_metrics() {
    daemon_killed_while_its_job_runs_in_slurm(true).await;
}
