//! Snapshots of the table and status output for fixed job views and a fixed clock.

use std::collections::BTreeMap;
use std::time::SystemTime;

use orpo_api::{FileView, JobError, JobSpec, Memory, Progress};

use super::*;

fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap()
}

fn job(id: u64, state: JobState) -> JobView {
    let mut spec = JobSpec::default();
    spec.model.base = "/srv/models/SmolLM2-135M-Instruct".into();
    spec.data.train = format!("sha256:{}", "ab".repeat(32));
    JobView {
        id,
        name: "smollm2-polite".into(),
        owner: "alice".into(),
        state,
        pending_reason: None,
        device: None,
        base_precision: None,
        progress: Progress::default(),
        metrics: None,
        eval_metrics: None,
        memory: Memory::default(),
        error: None,
        attempts: 0,
        created_at: "2026-11-27T11:58:30Z".into(),
        started_at: None,
        finished_at: None,
        spec: Some(spec),
    }
}

fn record(step: usize, loss: f64) -> MetricRecord {
    let metrics = BTreeMap::from([
        ("loss".to_string(), loss),
        ("nll_loss".to_string(), loss - 0.05),
        ("log_odds_ratio".to_string(), -0.6543),
        ("rewards/accuracies".to_string(), 0.5),
        ("rewards/margins".to_string(), 0.0123),
        ("rewards/chosen".to_string(), -0.1234),
    ]);
    MetricRecord {
        step,
        epoch: step as f64 / 4.0,
        learning_rate: Some(2e-4),
        grad_norm: Some(1.5),
        tokens: 100 * step as u64,
        elapsed_s: step as f64,
        metrics,
    }
}

fn running() -> JobView {
    let mut j = job(7, JobState::Running);
    j.device = Some("cuda:0".into());
    j.base_precision = Some("q4_1 + q8_0, f32 norms".into());
    j.progress = Progress {
        step: 3,
        total_steps: 12,
        epoch: 0.75,
        tokens: 1200,
        elapsed_s: 65.0,
        eta_s: Some(195.0),
    };
    j.memory = Memory {
        estimate_bytes: Some(3 << 30),
        peak_bytes: Some(2560 << 20),
    };
    j.metrics = Some(record(3, 1.25));
    j.attempts = 1;
    j.started_at = Some("2026-11-27T11:58:40Z".into());
    j
}

#[test]
fn list_table() {
    let mut queued = job(8, JobState::Queued);
    queued.name = String::new();
    queued.owner = "bob".into();
    queued.memory.estimate_bytes = Some(6 << 30);
    queued.created_at = "2026-11-25T09:00:00Z".into();
    let mut failed = job(3, JobState::Failed);
    failed.device = Some("cpu".into());
    failed.progress.total_steps = 40;
    failed.progress.step = 40;
    failed.created_at = "2026-11-27T11:59:58Z".into();
    assert_eq!(
        render_list(&[queued, running(), failed], now()),
        "\
ID  NAME            OWNER  STATE    PROGRESS      DEVICE  MEMORY    AGE
8   -               bob    queued   -             -       ~6.0 GiB  2d
7   smollm2-polite  alice  running  3/12 (25%)    cuda:0  2.5 GiB   1m
3   smollm2-polite  alice  failed   40/40 (100%)  cpu     -         2s
"
    );
}

#[test]
fn status_of_a_running_job() {
    let ckpts = vec![CheckpointView {
        name: "step-2".into(),
        step: Some(2),
        modified_at: "2026-11-27T11:59:00Z".into(),
        files: vec![
            FileView {
                name: "adapter_model.safetensors".into(),
                size_bytes: 3 << 20,
            },
            FileView {
                name: "adapter_config.json".into(),
                size_bytes: 512,
            },
        ],
    }];
    assert_eq!(
        render_status(&running(), &ckpts, now()),
        "\
job         7 (smollm2-polite)
owner       alice
state       running
device      cuda:0
base        q4_1 + q8_0, f32 norms
progress    3/12 (25%), epoch 0.75, 1200 tokens, 1m05s elapsed, ETA 3m15s
memory      estimate 3.0 GiB, peak 2.5 GiB
model       /srv/models/SmolLM2-135M-Instruct
data        train sha256:abababababab
created     2026-11-27T11:58:30Z (1m ago)
started     2026-11-27T11:58:40Z
attempts    1

latest metrics (step 3):
  log_odds_ratio         -0.6543
  loss                   1.2500
  nll_loss               1.2000
  rewards/accuracies     0.5000
  rewards/chosen         -0.1234
  rewards/margins        0.0123
  learning_rate          2.000e-4
  grad_norm              1.5000

checkpoints:
  step-2     2 files, 3.0 MiB
"
    );
}

#[test]
fn status_says_why_a_job_waits_or_failed() {
    let mut q = job(9, JobState::Queued);
    q.pending_reason = Some("needs 6.1 GiB; GPU 0 has 3.2 GiB free".into());
    let text = render_status(&q, &[], now());
    assert!(
        text.contains("\nwaiting     needs 6.1 GiB; GPU 0 has 3.2 GiB free\n"),
        "{text}"
    );
    assert!(
        text.contains("\nmemory      estimate -, peak -\n"),
        "{text}"
    );
    let mut f = job(4, JobState::Failed);
    f.error = Some(JobError {
        kind: "model".into(),
        message: "model.base: no such file".into(),
    });
    let text = render_status(&f, &[], now());
    assert!(
        text.contains("\nerror       model: model.base: no such file\n"),
        "{text}"
    );
}

#[test]
fn metrics_table_shows_the_last_rows() {
    let mut eval = record(4, 0.0);
    eval.learning_rate = None;
    eval.grad_norm = None;
    eval.metrics = BTreeMap::from([("eval_loss".to_string(), 0.9)]);
    let rows = [
        record(1, 2.0),
        record(2, 1.5),
        record(3, 1.25),
        record(4, 1.0),
        eval,
    ];
    assert_eq!(
        render_metrics(&rows, 3),
        "\
STEP    EPOCH  loss    nll_loss  log_odds_ratio  rewards/accuracies  rewards/margins  rewards/chosen  LR        GRAD_NORM
3       0.75   1.2500  1.2000    -0.6543         0.5000              0.0123           -0.1234         2.000e-4  1.5000
4       1.00   1.0000  0.9500    -0.6543         0.5000              0.0123           -0.1234         2.000e-4  1.5000
4 eval  1.00   0.9000  -         -               -                   -                -               -         -
"
    );
}

#[test]
fn status_of_another_users_job_shows_the_public_fields() {
    // As the daemon sends it to someone who is neither the owner nor an admin.
    let mut j = running();
    j.owner = "bob".into();
    j.spec = None;
    j.metrics = None;
    j.eval_metrics = None;
    assert_eq!(
        render_status(&j, &[], now()),
        "\
job         7 (smollm2-polite)
owner       bob
state       running
device      cuda:0
base        q4_1 + q8_0, f32 norms
progress    3/12 (25%), epoch 0.75, 1200 tokens, 1m05s elapsed, ETA 3m15s
memory      estimate 3.0 GiB, peak 2.5 GiB
spec        visible only to its owner and admins (with its metrics, logs and checkpoints)
created     2026-11-27T11:58:30Z (1m ago)
started     2026-11-27T11:58:40Z
attempts    1
"
    );
    let mut f = job(4, JobState::Failed);
    f.spec = None;
    f.error = Some(JobError {
        kind: "data".into(),
        message: String::new(),
    });
    let text = render_status(&f, &[], now());
    assert!(text.contains("\nerror       data\n"), "{text}");
    // The list looks the same whoever asks.
    assert!(render_list(&[j], now()).contains("\n7   smollm2-polite  bob    running"));
}
