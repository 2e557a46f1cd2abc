//! Follows one worker: its stdout events become store updates, its exit becomes the job's next
//! state.

use std::sync::Arc;

use orpo_api::{EventKind, JobError, JobState, JobView, MetricRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::protocol::{Outcome, WorkerEvent};
use super::{Intent, Supervisor, PAUSED};
use crate::store::StoreError;

/// How often a job whose worker exited tries again to record its final state while the store
/// cannot write.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs until the worker exits, then settles the job's state and frees its slot.
pub(super) async fn watch(sup: Arc<Supervisor>, id: u64, mut child: tokio::process::Child) {
    let mut outcome = None;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(event) => {
                        if let Err(e) = apply(&sup, id, event, &mut outcome).await {
                            tracing::error!(job = id, "recording a worker event: {e}");
                        }
                    }
                    Err(_) => tracing::warn!(job = id, "worker wrote a non-event line: {line}"),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(job = id, "reading worker output: {e}");
                    break;
                }
            }
        }
    }
    let status = child.wait().await;
    let intent = sup.intent(id);
    let status_text = match &status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::info!(job = id, ?intent, ?outcome, "worker exited: {status_text}");
    let signal = {
        use std::os::unix::process::ExitStatusExt;
        status.as_ref().ok().and_then(|s| s.signal())
    };
    // The process is gone: nothing may signal its pid (the kernel may give it to another).
    if let Some(slot) = sup.slots().get_mut(&id) {
        slot.pid = None;
    }
    // A full disk leaves the store refusing writes until it has room again. The job's final
    // state waits for it, with the slot held (nothing starts meanwhile: starting is a write),
    // and is flushed before the slot is freed: a store reopened after a failed write holds
    // only what was flushed, and a lost end would show the job running, with no worker.
    let settle_durably = || async {
        settle(&sup, id, intent, outcome.clone(), &status_text, signal).await?;
        sup.store.flush().await
    };
    let mut settled = settle_durably().await;
    while matches!(settled, Err(StoreError::Unavailable(_))) && !sup.is_stopping() {
        tokio::time::sleep(SETTLE_RETRY).await;
        settled = settle_durably().await;
    }
    if let Err(e) = settled {
        tracing::error!(job = id, "settling the job after its worker exited: {e}");
    }
    sup.slots().remove(&id);
    sup.wake();
}

pub(super) async fn apply(
    sup: &Arc<Supervisor>,
    id: u64,
    event: WorkerEvent,
    outcome: &mut Option<Outcome>,
) -> Result<(), crate::store::StoreError> {
    let store = &sup.store;
    match event {
        WorkerEvent::Log { message } => {
            store
                .append_event(id, EventKind::Log, &message, None, None)
                .await?;
        }
        WorkerEvent::Started {
            total_steps,
            device,
            train_pairs,
            eval_pairs,
            trainable_parameters,
            base_precision,
            base_bytes,
        } => {
            let msg = format!(
                "training {total_steps} steps on {train_pairs} pairs ({eval_pairs} eval), \
                 {trainable_parameters} LoRA parameters, on {device}; base in {base_precision} \
                 ({:.1} MB)",
                base_bytes as f64 / 1e6
            );
            store
                .append_event(id, EventKind::Log, &msg, None, None)
                .await?;
            // A job on a fake GPU keeps that name; its worker runs on the CPU.
            let fake = sup.devices.is_fake() && !slurm_worker(sup, id);
            store
                .update_job(id, move |v| {
                    if v.state == JobState::Starting {
                        v.state = JobState::Running;
                        // A Slurm job's wait is over.
                        v.pending_reason = None;
                    }
                    v.progress.total_steps = total_steps;
                    v.base_precision = Some(base_precision.clone());
                    if !fake {
                        v.device = Some(device);
                    }
                    Ok(())
                })
                .await?;
        }
        WorkerEvent::Resumed {
            step,
            checkpoint,
            records,
        } => {
            restore_history(store, id, records).await?;
            store
                .append_event(
                    id,
                    EventKind::Log,
                    &format!("resumed from {checkpoint} after step {step}"),
                    None,
                    Some(checkpoint),
                )
                .await?;
        }
        WorkerEvent::Memory { peak_rss_bytes } => {
            // On the CPU (fake GPUs included, whose workers run there) the worker's RSS is
            // the memory it takes from the device; on a GPU it is not, NVML says (below).
            // A worker in Slurm names its node and device ("node-2:cpu").
            let on_cpu = match slurm_worker(sup, id) {
                true => store.job(id)?.device.is_some_and(|d| d.ends_with("cpu")),
                false => sup.devices.is_fake() || job_device(sup, id).as_deref() == Some("cpu"),
            };
            if on_cpu {
                raise_peak(store, id, peak_rss_bytes).await?;
            }
        }
        WorkerEvent::Step { record } => {
            if let (Some(device), Some(pid)) = (job_device(sup, id), sup.worker_pid(id)) {
                if device != "cpu" {
                    if let Some(bytes) = sup.devices.process_memory(&device, pid) {
                        raise_peak(store, id, bytes).await?;
                    }
                }
            }
            store.append_metric(id, &record).await?;
            // A transaction, not a read-modify-write: a pause or cancel may change the state
            // between the two.
            store
                .update_job(id, move |v| {
                    update_progress(v, &record);
                    v.metrics = Some(record);
                    Ok(())
                })
                .await?;
        }
        WorkerEvent::Eval { record } => {
            store.append_metric(id, &record).await?;
            store
                .append_event(
                    id,
                    EventKind::Metrics,
                    &format!("evaluated at step {}", record.step),
                    None,
                    None,
                )
                .await?;
            store
                .update_job(id, move |v| {
                    v.eval_metrics = Some(record);
                    Ok(())
                })
                .await?;
        }
        WorkerEvent::Saved { path } => {
            let name = std::path::Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(path.clone());
            store
                .append_event(
                    id,
                    EventKind::Checkpoint,
                    &format!("checkpoint {name} written"),
                    None,
                    Some(name.clone()),
                )
                .await?;
            sup.queue_samples(id, name);
        }
        WorkerEvent::Finished => *outcome = Some(Outcome::Finished),
        WorkerEvent::Stopped => *outcome = Some(Outcome::Stopped),
        WorkerEvent::Failed { kind, message } => *outcome = Some(Outcome::Failed { kind, message }),
    }
    Ok(())
}

/// Makes `records` the job's metric history, and its last training and evaluation records the
/// job's progress and metrics: a resumed worker's history, or one read from a checkpoint.
pub(super) async fn restore_history(
    store: &crate::store::Store,
    id: u64,
    records: Vec<MetricRecord>,
) -> Result<(), crate::store::StoreError> {
    store.replace_metrics(id, &records).await?;
    let last_train = records
        .iter()
        .rev()
        .find(|r| r.learning_rate.is_some())
        .cloned();
    let last_eval = records
        .iter()
        .rev()
        .find(|r| r.learning_rate.is_none())
        .cloned();
    store
        .update_job(id, move |v| {
            if let Some(r) = &last_train {
                update_progress(v, r);
            }
            v.metrics = last_train;
            v.eval_metrics = last_eval;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Whether the job's worker runs in Slurm.
fn slurm_worker(sup: &Supervisor, id: u64) -> bool {
    sup.slots().get(&id).is_some_and(|s| s.slurm.is_some())
}

/// Where the job's worker runs, as admission placed it.
fn job_device(sup: &Supervisor, id: u64) -> Option<String> {
    sup.slots().get(&id).and_then(|s| s.device.clone())
}

/// Records `bytes` as the job's measured peak if it is above the one recorded (over attempts).
async fn raise_peak(
    store: &crate::store::Store,
    id: u64,
    bytes: u64,
) -> Result<(), crate::store::StoreError> {
    store
        .update_job(id, move |v| {
            if v.memory.peak_bytes.is_none_or(|p| p < bytes) {
                v.memory.peak_bytes = Some(bytes);
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// Progress from a step record. `elapsed_s` counts the training time of earlier attempts too
/// (the trainer keeps it in its checkpoints), so the mean time per step spans them all.
fn update_progress(view: &mut JobView, rec: &MetricRecord) {
    let p = &mut view.progress;
    p.step = rec.step;
    p.epoch = rec.epoch;
    p.tokens = rec.tokens;
    p.elapsed_s = rec.elapsed_s;
    p.eta_s = (rec.step > 0 && p.total_steps >= rec.step)
        .then(|| rec.elapsed_s / rec.step as f64 * (p.total_steps - rec.step) as f64);
}

/// The job's state after its worker exited: what the worker said, read against what the
/// daemon had asked of it.
pub(super) async fn settle(
    sup: &Supervisor,
    id: u64,
    intent: Option<Intent>,
    outcome: Option<Outcome>,
    status: &str,
    signal: Option<i32>,
) -> Result<(), crate::store::StoreError> {
    let log = super::spawn::job_dir(&sup.config.state_dir, id).join("worker.log");
    let status = status.to_string();
    sup.store
        .update_job(id, move |v| {
            let now = crate::now_rfc3339();
            let mut fail = |kind: &str, message: String| {
                v.state = JobState::Failed;
                v.error = Some(JobError {
                    kind: kind.into(),
                    message,
                });
            };
            match (&outcome, intent) {
                (Some(Outcome::Finished), _) => {
                    v.state = JobState::Succeeded;
                    v.progress.eta_s = Some(0.0);
                }
                (_, Some(Intent::Cancel)) => v.state = JobState::Cancelled,
                // What the worker said, without a backtrace (RUST_BACKTRACE in the daemon's
                // environment makes candle attach one): every owner of the job reads this.
                (Some(Outcome::Failed { kind, message }), _) => {
                    fail(kind, crate::http::error::client_message(message.clone()))
                }
                (Some(Outcome::Stopped), Some(Intent::Pause)) => {
                    v.state = JobState::Paused;
                    v.pending_reason = Some(PAUSED.into());
                }
                // Our SIGTERM reached the worker before it had installed its handler (a pause
                // right after the start): it had nothing to checkpoint, and resumes from the
                // newest checkpoint there is.
                (None, Some(Intent::Pause)) if signal == Some(libc::SIGTERM) => {
                    v.state = JobState::Paused;
                    v.pending_reason = Some(PAUSED.into());
                }
                (_, Some(Intent::Shutdown)) => {
                    v.state = JobState::Interrupted;
                    v.pending_reason = Some(
                        "the daemon stopped; the job resumes from its newest checkpoint".into(),
                    );
                }
                (Some(Outcome::Stopped), _) => fail(
                    "crashed",
                    "the worker was stopped by a signal from outside the daemon".into(),
                ),
                (None, Some(Intent::Pause)) => fail(
                    "crashed",
                    format!(
                        "the worker exited ({status}) while pausing; see {}",
                        log.display()
                    ),
                ),
                (None, None) => fail(
                    "crashed",
                    format!(
                        "the worker exited ({status}) without a result; see {}",
                        log.display()
                    ),
                ),
            }
            if v.state.is_terminal() {
                v.finished_at = Some(now);
                v.pending_reason = None;
            }
            Ok(())
        })
        .await?;
    Ok(())
}
