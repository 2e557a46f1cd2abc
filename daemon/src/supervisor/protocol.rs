//! What a worker tells the daemon: one JSON object per line on its stdout. The worker's stderr
//! is not parsed; it goes to the job's `worker.log`.

use orpo_api::MetricRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// A human-readable progress line.
    Log { message: String },
    /// Training began (after loading and tokenizing).
    Started {
        total_steps: usize,
        train_pairs: usize,
        eval_pairs: usize,
        trainable_parameters: usize,
        device: String,
        /// How the frozen base is held, and its weights' bytes.
        base_precision: String,
        base_bytes: u64,
    },
    /// The run continues from checkpoint `checkpoint` after `step` steps; `records` is the
    /// metric history up to it, which replaces what the store holds (a worker whose daemon died
    /// logged steps nobody recorded).
    Resumed {
        step: usize,
        checkpoint: String,
        records: Vec<MetricRecord>,
    },
    /// A logged training step.
    Step { record: MetricRecord },
    /// An evaluation.
    Eval { record: MetricRecord },
    /// The worker's peak resident set so far (`VmHWM`), after each logged step and evaluation.
    Memory { peak_rss_bytes: u64 },
    /// A checkpoint (or the final adapter) was written to `path`.
    Saved { path: String },
    /// The run completed; the last line of a successful worker.
    Finished,
    /// The run stopped on request (SIGTERM) after writing a checkpoint.
    Stopped,
    /// The run failed; `kind` as in `JobError`.
    Failed { kind: String, message: String },
}

impl WorkerEvent {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("worker events serialise")
    }
}

/// What a worker reporting over HTTP posts (`POST /internal/v1/jobs/{id}/events`): its
/// events numbered from `first_seq`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub first_seq: u64,
    pub events: Vec<WorkerEvent>,
}

/// `JOB_DIR/outcome.json`, the last event of a worker Slurm ran, beside the Slurm job it ran in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerOutcome {
    pub slurm_job: Option<u64>,
    pub event: WorkerEvent,
}

pub const OUTCOME_FILE: &str = "outcome.json";

/// A trainer's log record as the daemon stores it.
pub fn metric_record(rec: &orpo_trainer::train::LogRecord) -> MetricRecord {
    MetricRecord {
        step: rec.step,
        epoch: rec.epoch,
        learning_rate: rec.learning_rate,
        grad_norm: rec.grad_norm,
        tokens: rec.tokens as u64,
        elapsed_s: rec.elapsed_s,
        metrics: rec.metrics.clone(),
    }
}

impl WorkerEvent {
    /// The outcome this event states, if it is a worker's last.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            WorkerEvent::Finished => Some(Outcome::Finished),
            WorkerEvent::Stopped => Some(Outcome::Stopped),
            WorkerEvent::Failed { kind, message } => Some(Outcome::Failed {
                kind: kind.clone(),
                message: message.clone(),
            }),
            _ => None,
        }
    }
}

/// How a worker ended, from its last event (none when it died without one).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    Stopped,
    Failed { kind: String, message: String },
}
