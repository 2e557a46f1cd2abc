//! Jobs on the wire: what `POST /v1/jobs` takes, the `JobView` every job route returns, its
//! states, progress, metrics, events and checkpoints (docs/http-api.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::JobSpec;

/// Where a job is in its life. Terminal states never change again.
///
/// `validating → queued → starting → running → succeeded | failed | cancelled`, with
/// `running → pausing → paused → queued` and, after a daemon restart, `interrupted → queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Validating,
    Queued,
    Starting,
    Running,
    Pausing,
    Paused,
    Interrupted,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Validating,
        JobState::Queued,
        JobState::Starting,
        JobState::Running,
        JobState::Pausing,
        JobState::Paused,
        JobState::Interrupted,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The wire name (`"running"`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Validating => "validating",
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Pausing => "pausing",
            JobState::Paused => "paused",
            JobState::Interrupted => "interrupted",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// A worker process exists (or is being started or stopped) for the job.
    pub fn has_worker(self) -> bool {
        matches!(
            self,
            JobState::Starting | JobState::Running | JobState::Pausing
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// `POST /v1/jobs` (and `POST /v1/plan`): the job as job.toml text or as the same structure in
/// JSON, exactly one of the two. `data.train` and `data.eval` name uploaded data sets as
/// `sha256:<hex>` (see `POST /v1/datasets`); `model.base` is a path on the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    /// The job file's text (TOML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_toml: Option<String>,
    /// The job as JSON, instead of `job_toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
    /// Who submits, on a daemon without users (open, loopback only): printable text of at most
    /// 64 characters, default "anonymous" (also when blank). With users the owner is the
    /// token's user and a different name here is refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schema(
            max_length = 64,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub owner: Option<String>,
}

/// How far a job has come. `eta_s` is the mean time per step so far times the steps left.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    /// Real (non-padding) tokens processed so far.
    pub tokens: u64,
    /// Training time so far, over all attempts.
    pub elapsed_s: f64,
    pub eta_s: Option<f64>,
}

/// One logged training step or evaluation, with TRL's metric names (`loss`, `nll_loss`,
/// `rewards/chosen`, ..., or `eval_loss`, ... for evaluations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct MetricRecord {
    pub step: usize,
    pub epoch: f64,
    /// Absent on evaluation records.
    pub learning_rate: Option<f64>,
    /// The global gradient norm before clipping; absent on evaluation records.
    pub grad_norm: Option<f64>,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// Memory of the job: the estimate admission used, and the peak measured while it ran (the
/// worker's peak resident set on the CPU, its memory as NVML reports it on a GPU; the highest
/// over all attempts), so each finished job shows how good its estimate was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Memory {
    pub estimate_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
}

/// Why a job failed. `kind`: `model`, `data`, `config`, `adapter`, `io`, `runtime`,
/// `crashed` (the worker died without saying why), `spawn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct JobError {
    pub kind: String,
    pub message: String,
}

/// A job as every job route returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct JobView {
    pub id: u64,
    pub name: String,
    pub owner: String,
    pub state: JobState,
    /// Why a queued (or paused, or interrupted) job is not running.
    pub pending_reason: Option<String>,
    /// Where it runs or ran: `cpu`, `cuda:0`.
    pub device: Option<String>,
    /// How the frozen base is held while it runs (`model.quantize`): `"q4_1 + q8_0, f32
    /// norms"` for a GGUF kept quantized, `"bf16"` for a dense one.
    #[serde(default)]
    pub base_precision: Option<String>,
    pub progress: Progress,
    /// The latest training record.
    pub metrics: Option<MetricRecord>,
    /// The latest evaluation record.
    pub eval_metrics: Option<MetricRecord>,
    pub memory: Memory,
    pub error: Option<JobError>,
    /// How many times a worker was started for the job (resumes count).
    pub attempts: u32,
    /// RFC 3339 times.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The job file as the daemon runs it; absent on another user's job (so are `metrics` and
    /// `eval_metrics`, and the error's message is replaced by a note): everyone sees the queue,
    /// only the owner and admins see what a job does.
    pub spec: Option<JobSpec>,
}

/// `GET /v1/jobs`: newest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The job changed state (`state` is the new one).
    State,
    /// A line from the worker (loading, starting, resuming, ...).
    Log,
    /// A checkpoint was written (`checkpoint` is its name).
    Checkpoint,
    /// A logged step or an evaluation (its record is in `/metrics`).
    Metrics,
}

/// One entry of a job's event log; `seq` increases by one per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EventView {
    pub seq: u64,
    pub time: String,
    pub kind: EventKind,
    pub message: String,
    pub state: Option<JobState>,
    pub checkpoint: Option<String>,
}

/// A file inside a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FileView {
    pub name: String,
    pub size_bytes: u64,
}

/// A complete checkpoint (`step-N`) or the final adapter (`final`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CheckpointView {
    pub name: String,
    /// The step it was taken at (absent for `final`).
    pub step: Option<usize>,
    pub modified_at: String,
    pub files: Vec<FileView>,
}
