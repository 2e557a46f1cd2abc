//! The scheduler's round: read the devices, count what running jobs will still take, run the
//! admission policy over the queue, start what it admits and write each waiting job's reason.
//! `POST /v1/plan` runs the same policy for a job that is not stored.

use std::collections::HashMap;
use std::sync::Arc;

use orpo_api::{JobError, JobSpec, JobState, JobView};
use orpo_trainer::estimate::{estimate, JobShape, MemoryEstimate};

use super::{fair, panic_text, Supervisor};
use crate::devices::admission::{admit, Candidate, Decision, DeviceState, Policy};
use crate::store::spec_of;

/// Id of the job being planned in [`Supervisor::plan`]; never a stored job's id.
const PLANNED: u64 = u64::MAX;

/// What `POST /v1/plan` learns.
pub struct Plan {
    pub estimate: MemoryEstimate,
    /// The device it would start on, or the best one it waits for.
    pub device: String,
    pub free_bytes: u64,
    pub starts_now: bool,
    pub reason: String,
    pub queued_ahead: usize,
}

impl Supervisor {
    pub fn policy(&self) -> Policy {
        Policy {
            headroom_bytes: self.config.headroom_mib << 20,
            backfill: self.config.backfill,
            max_running: self.config.max_running.max(1),
        }
    }

    /// Every device with the memory promised to this daemon's workers (running jobs and
    /// generation requests): each one's estimate less what its process holds now (one still
    /// loading has not taken its memory yet).
    pub fn device_states(&self) -> anyhow::Result<Vec<DeviceState>> {
        let readings = self.devices.read()?;
        let mut workers: Vec<(String, Option<u32>, String, u64)> = self
            .slots()
            .iter()
            .filter_map(|(id, s)| Some((format!("job {id}"), s.pid, s.device.clone()?, s.estimate)))
            .collect();
        workers.extend(self.generation_workers());
        Ok(readings
            .into_iter()
            .map(|reading| {
                let here = workers.iter().filter(|(_, _, d, _)| *d == reading.device);
                let promised = here
                    .clone()
                    .map(|(what, pid, dev, est)| {
                        let held = pid
                            .and_then(|p| self.devices.process_memory(dev, p))
                            .unwrap_or(0);
                        (what.clone(), est.saturating_sub(held))
                    })
                    .filter(|(_, b)| *b > 0)
                    .collect();
                DeviceState {
                    takes_jobs: !reading.is_gpu() || self.devices.gpus_take_jobs(),
                    our_pids: workers.iter().filter_map(|(_, p, _, _)| *p).collect(),
                    promised,
                    reading,
                }
            })
            .collect())
    }

    /// Whether work with this `resources.device` runs on one of this host's GPUs (estimated in
    /// bf16 with a CUDA context): generation requests and samples, and local training.
    pub fn on_gpu(&self, pin: &str) -> bool {
        pin != "cpu" && self.devices.gpus_take_jobs()
    }

    /// Whether a job with this `resources.device` trains on a GPU: with Slurm, any job not
    /// pinned to the CPU (it asks Slurm for a GPU, whatever this host has).
    fn trains_on_gpu(&self, pin: &str) -> bool {
        match self.in_slurm() {
            true => pin != "cpu",
            false => self.on_gpu(pin),
        }
    }

    /// The memory estimate of `spec` on its data (the longest micro-batch it will see, from
    /// the data sets' token lengths: `crate::lengths`), off the async runtime. An estimate
    /// that fails or panics (a model config no one could train, a row that truncation leaves
    /// without an answer) is an error that names the setting or row at fault.
    /// Also the job's optimizer steps on its data (`train::total_steps` of its training rows).
    pub async fn estimate(&self, spec: &JobSpec) -> Result<(MemoryEstimate, usize), String> {
        let (spec, cuda) = (spec.clone(), self.trains_on_gpu(&spec.resources.device));
        let state_dir = self.config.state_dir.clone();
        let work = move || -> Result<(MemoryEstimate, usize), String> {
            let model_error = |e: orpo_trainer::Error| {
                format!("model.base: cannot estimate the job's memory: {e}")
            };
            let (cfg, shape) = JobShape::for_model(&spec, cuda).map_err(model_error)?;
            // The worst case first, on the config alone: a model no one could train is named
            // as such before its tokenizer or the data are read.
            estimate(&cfg, &shape).map_err(model_error)?;
            let batches = crate::lengths::job_batches(&state_dir, &spec)?;
            let steps = orpo_trainer::train::total_steps(&spec, batches.train_rows);
            let memory = estimate(&cfg, &shape.with_batches(&batches)).map_err(model_error)?;
            Ok((memory, steps))
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(e) => Err(format!(
                "the memory estimate crashed: {}",
                e.try_into_panic()
                    .map(panic_text)
                    .unwrap_or_else(|e| e.to_string())
            )),
        }
    }

    /// Gives every queued job that has none its estimate, once (a submit computes it; jobs
    /// stored before that, or by an older daemon, get it here). A job whose estimate fails
    /// ends `failed` with the reason.
    async fn estimate_queued(&self, queued: &[JobView]) -> anyhow::Result<()> {
        for job in queued.iter().filter(|j| j.memory.estimate_bytes.is_none()) {
            let id = job.id;
            match self.estimate(spec_of(job)).await {
                Ok((e, steps)) => {
                    let bytes = e.total_bytes;
                    self.store
                        .update_job(id, move |v| {
                            v.memory.estimate_bytes = Some(bytes);
                            if v.progress.total_steps == 0 {
                                v.progress.total_steps = steps;
                            }
                            Ok(())
                        })
                        .await?;
                }
                Err(message) => {
                    tracing::warn!(job = id, "{message}");
                    self.store
                        .update_job(id, move |v| {
                            if v.state != JobState::Queued {
                                return Ok(());
                            }
                            v.state = JobState::Failed;
                            v.pending_reason = None;
                            v.finished_at = Some(crate::now_rfc3339());
                            v.error = Some(JobError {
                                kind: "estimate".into(),
                                message,
                            });
                            Ok(())
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// One scheduling round.
    pub(super) async fn schedule(self: &Arc<Self>) -> anyhow::Result<()> {
        self.reconcile().await?;
        if self.in_slurm() {
            self.poll_slurm().await?;
        }
        let ids = self.store.queued();
        if ids.is_empty() {
            return Ok(());
        }
        let mut queued = Vec::with_capacity(ids.len());
        // A job with a worker is never started twice, whatever its record says.
        let with_worker = self.running();
        for id in ids.into_iter().filter(|id| !with_worker.contains(id)) {
            match self.store.job(id) {
                Ok(v) => queued.push(v),
                // Deleted or changed since the index was read: the next round sees it.
                Err(e) => tracing::debug!(job = id, "skipped this round: {e}"),
            }
        }
        if queued.iter().any(|j| j.memory.estimate_bytes.is_none()) {
            self.estimate_queued(&queued).await?;
            // The next round (right away) admits with the estimates in place.
            self.wake();
            return Ok(());
        }
        let reasons: HashMap<u64, Option<String>> = queued
            .iter()
            .map(|j| (j.id, j.pending_reason.clone()))
            .collect();
        let (queued, full) = self.under_disk_cap(queued).await?;
        let (queued, capped) = fair::order(
            queued,
            &self.running_by_owner(),
            &self.last_starts(),
            self.config.max_running_per_user,
        );
        // Held until every start below has its slot, so a generation request admitted meanwhile
        // sees the memory these jobs were promised. Jobs in Slurm take none of this host's.
        let (_admitting, mut decisions) = if self.in_slurm() {
            (None, self.slurm_decisions(&queued))
        } else {
            let admitting = self.admitting.lock().await;
            let devices = self.device_states()?;
            let running = self.slots().len();
            let decisions = admit(&candidates(&queued), &devices, running, &self.policy());
            (Some(admitting), decisions)
        };
        decisions.extend(
            full.into_iter()
                .chain(capped)
                .map(|(id, reason)| Decision::Wait { id, reason }),
        );
        for decision in decisions {
            match decision {
                Decision::Start { id, device } => {
                    let estimate = queued
                        .iter()
                        .find(|j| j.id == id)
                        .and_then(|j| j.memory.estimate_bytes)
                        .unwrap_or(0);
                    let started = match self.in_slurm() {
                        true => self.clone().start_in_slurm(id, estimate).await,
                        false => self.clone().start(id, device, estimate).await,
                    };
                    if let Err(e) = started {
                        tracing::error!(job = id, "starting the job failed: {e:#}");
                    }
                }
                Decision::Wait { id, reason } => {
                    // Only a changed reason is written: a long queue costs no writes per round.
                    let unchanged = reasons.get(&id) == Some(&Some(reason.clone()));
                    if unchanged {
                        continue;
                    }
                    let _ = self
                        .store
                        .update_job(id, move |v| {
                            if v.state == JobState::Queued {
                                v.pending_reason = Some(reason);
                            }
                            Ok(())
                        })
                        .await;
                }
            }
        }
        Ok(())
    }

    /// The queued jobs whose owners' folders are under `max_checkpoint_mib_per_user`, and those
    /// that wait, with the reason, until their owner removes some. Submit checks the cap too,
    /// but the jobs an owner queued under it each write checkpoints and exports as they run.
    async fn under_disk_cap(
        self: &Arc<Self>,
        queued: Vec<JobView>,
    ) -> anyhow::Result<(Vec<JobView>, Vec<(u64, String)>)> {
        let this = self.clone();
        let usage =
            tokio::task::spawn_blocking(move || this.disk.by_owner(&this.config, &this.store))
                .await??;
        let (mut under, mut full) = (Vec::new(), Vec::new());
        for job in queued {
            let bytes = usage.get(&job.owner).copied().unwrap_or(0);
            match crate::limits::disk_refusal(&self.config, &job.owner, bytes) {
                Some(refusal) => full.push((job.id, format!("waiting: {refusal}"))),
                None => under.push(job),
            }
        }
        Ok((under, full))
    }

    /// Where `spec`, of this `estimate`, would run if `owner` submitted it now: behind the
    /// queued jobs of its priority or higher, in its owner's fair turn (as [`fair::order`]
    /// places it), and why not if it would wait.
    pub fn plan(
        &self,
        spec: &JobSpec,
        owner: &str,
        estimate: MemoryEstimate,
    ) -> anyhow::Result<Plan> {
        let mut queued = Vec::new();
        let mut inserted = false;
        for id in self.store.queued() {
            let Ok(view) = self.store.job(id) else {
                continue;
            };
            if !inserted && spec_of(&view).priority < spec.priority {
                inserted = true;
                queued.push(planned_view(spec, owner, &estimate));
            }
            queued.push(view);
        }
        if !inserted {
            queued.push(planned_view(spec, owner, &estimate));
        }
        let (ordered, capped) = fair::order(
            queued,
            &self.running_by_owner(),
            &self.last_starts(),
            self.config.max_running_per_user,
        );
        let queued_ahead = ordered
            .iter()
            .position(|j| j.id == PLANNED)
            .unwrap_or(ordered.len());
        if self.in_slurm() {
            return Ok(self.plan_in_slurm(spec, estimate, queued_ahead, capped));
        }
        let devices = self.device_states()?;
        let decisions = admit(
            &candidates(&ordered),
            &devices,
            self.slots().len(),
            &self.policy(),
        );
        let capped = capped.into_iter().find(|(id, _)| *id == PLANNED);
        let (device, starts_now, reason) = match (
            capped,
            decisions.into_iter().find(|d| match d {
                Decision::Start { id, .. } | Decision::Wait { id, .. } => *id == PLANNED,
            }),
        ) {
            (Some((_, reason)), _) => (waits_for(spec, &devices), false, reason),
            (None, Some(Decision::Start { device, .. })) => {
                let why = format!("it would start now on {device}");
                (device, true, why)
            }
            (None, Some(Decision::Wait { reason, .. })) => {
                (waits_for(spec, &devices), false, reason)
            }
            (None, None) => unreachable!("every candidate gets a decision"),
        };
        let free_bytes = devices
            .iter()
            .find(|d| d.reading.device == device)
            .map_or(0, |d| d.reading.free_bytes);
        Ok(Plan {
            estimate,
            device,
            free_bytes,
            starts_now,
            reason,
            queued_ahead,
        })
    }
}

impl Supervisor {
    /// [`Supervisor::plan`] with `executor = "slurm"`: what the job would ask Slurm for, and
    /// whether it would be submitted at once (Slurm then decides when and where it runs).
    fn plan_in_slurm(
        &self,
        spec: &JobSpec,
        estimate: MemoryEstimate,
        queued_ahead: usize,
        capped: Vec<(u64, String)>,
    ) -> Plan {
        let in_slurm = self.slots().len();
        let max = self.config.slurm.max_jobs.max(1);
        let capped = capped.into_iter().find(|(id, _)| *id == PLANNED);
        let (starts_now, reason) =
            match super::slurm::request(&self.config, spec, estimate.total_bytes) {
                Err(why) => (false, why),
                Ok(_) if capped.is_some() => (false, capped.map(|(_, r)| r).unwrap_or_default()),
                Ok(args) if in_slurm + queued_ahead < max => (
                    true,
                    format!(
                        "it would be submitted to Slurm now with {}; Slurm decides when and where \
                         it runs",
                        args.join(" ")
                    ),
                ),
                Ok(args) => (
                    false,
                    format!(
                        "{in_slurm} of this daemon's jobs are in Slurm and {queued_ahead} wait \
                         before it (slurm.max_jobs = {max}); then it asks Slurm for {}",
                        args.join(" ")
                    ),
                ),
            };
        Plan {
            estimate,
            device: "slurm".into(),
            free_bytes: 0,
            starts_now,
            reason,
            queued_ahead,
        }
    }
}

/// Admission's view of queued jobs, in the order given.
fn candidates(jobs: &[JobView]) -> Vec<Candidate> {
    jobs.iter()
        .map(|j| Candidate {
            id: j.id,
            estimate: j.memory.estimate_bytes,
            pin: spec_of(j).resources.device.clone(),
        })
        .collect()
}

/// The job a plan asks about, as if `owner` had just submitted it.
fn planned_view(spec: &JobSpec, owner: &str, estimate: &MemoryEstimate) -> JobView {
    JobView {
        id: PLANNED,
        name: spec.name.clone(),
        owner: owner.to_string(),
        state: JobState::Queued,
        pending_reason: None,
        device: None,
        base_precision: None,
        progress: Default::default(),
        metrics: None,
        eval_metrics: None,
        memory: orpo_api::Memory {
            estimate_bytes: Some(estimate.total_bytes),
            ..Default::default()
        },
        error: None,
        attempts: 0,
        created_at: String::new(),
        started_at: None,
        finished_at: None,
        spec: Some(spec.clone()),
    }
}

/// The device a waiting job is waiting for: its pin, else the usable GPU with the most free
/// memory, else the CPU.
fn waits_for(spec: &JobSpec, devices: &[DeviceState]) -> String {
    let pin = spec.resources.device.as_str();
    if pin != "auto" && pin != "cuda" {
        return pin.to_string();
    }
    devices
        .iter()
        .filter(|d| d.takes_jobs && d.reading.is_gpu())
        .max_by_key(|d| d.reading.free_bytes)
        .map_or_else(|| "cpu".to_string(), |d| d.reading.device.clone())
}
