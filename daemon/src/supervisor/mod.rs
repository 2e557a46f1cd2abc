//! The supervisor: starts queued jobs the admission policy lets in (`admit`: memory on a device,
//! `max_running`), runs one `orpod worker` child per running job, turns the worker's JSON-lines events into store updates, and carries
//! out cancel, pause and shutdown by signalling workers.
//!
//! Why a process per job: a panic, an out-of-memory abort or a SIGKILL for cancel must never take
//! the daemon or the queue with it, and a finished job's device memory must really be free.
//!
//! Stopping a worker is always SIGTERM first: the worker finishes its step and writes a
//! checkpoint (the trainer's stop flag), so pause and shutdown lose nothing; a cancel that is
//! not done within `cancel_grace_s` gets SIGKILL.

mod admit;
mod control;
mod fair;
pub mod generation;
mod monitor;
pub mod protocol;
mod retention;
mod samples;
pub mod slurm;
pub mod spawn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orpo_api::{JobError, JobState, JobView};
use tokio::sync::Notify;

use crate::config::ServeConfig;
use crate::devices::Devices;
use crate::store::{Store, StoreError};

pub use admit::Plan;

/// Why the daemon is stopping a worker; decides the job's state when the worker exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Cancel,
    Pause,
    Shutdown,
}

/// A job with a worker process (or one being started).
#[derive(Debug, Default)]
struct Slot {
    pid: Option<u32>,
    intent: Option<Intent>,
    /// Where admission placed it (`cpu`, `cuda:N`) and the memory it was admitted with; no
    /// device for a job in Slurm, which takes none of this machine's.
    device: Option<String>,
    estimate: u64,
    /// The Slurm job running the worker (`executor = "slurm"`), once submitted.
    slurm: Option<slurm::SlurmRun>,
}

pub struct Supervisor {
    store: Store,
    config: Arc<ServeConfig>,
    /// Jobs with a worker. A std mutex: it is never held across an await.
    slots: Mutex<HashMap<u64, Slot>>,
    wake: Notify,
    stopping: AtomicBool,
    pub devices: Devices,
    /// How the scheduler loop is doing, for `/healthz`.
    health: Mutex<SchedulerHealth>,
    /// Per user, the sequence number of their job that started last (fair turns).
    last_start: Mutex<(u64, HashMap<String, u64>)>,
    /// The store's reopen count the jobs were last checked against the workers at
    /// ([`Supervisor::reconcile`]).
    reconciled_at: std::sync::atomic::AtomicU64,
    /// Taken while admission decides and records a start (a scheduling round's, or a
    /// generation request's), so two decisions never promise the same memory.
    admitting: tokio::sync::Mutex<()>,
    /// Generation requests with a worker (or being started), by request number.
    generations: Mutex<HashMap<u64, generation::GenerationSlot>>,
    /// The last request number given, and the requests waiting or running now.
    generation_seq: std::sync::atomic::AtomicU64,
    generation_requests: std::sync::atomic::AtomicUsize,
    /// Checkpoints waiting for their samples, by job.
    samples: Mutex<samples::SampleQueues>,
    /// The address the HTTP server listens on (workers in Slurm report there by default).
    listen_addr: std::sync::OnceLock<String>,
    /// Taken while a worker's report from Slurm is applied.
    reporting: tokio::sync::Mutex<()>,
    /// Each owner's job-folder bytes, for the disk cap at start.
    disk: crate::limits::DiskUsage,
}

/// The scheduler loop's last signs of life.
#[derive(Debug, Clone)]
pub struct SchedulerHealth {
    /// When the last round ended (or the loop started).
    pub last_round: std::time::Instant,
    /// The last round's failure or panic, cleared by a round that succeeds.
    pub last_error: Option<String>,
    /// Rounds that panicked since the daemon started.
    pub panics: u64,
    /// False once the loop has returned (shutdown).
    pub running: bool,
}

/// A round that has not ended for this long means the scheduler is stuck.
pub const SCHEDULER_STUCK_AFTER: Duration = Duration::from_secs(60);

/// The longest the scheduler loop waits between rounds when nothing wakes it.
pub const ROUND_EVERY: Duration = Duration::from_secs(2);

/// Test hook (tests/e2e/systemd.rs), never set in production: while the file this variable names
/// exists, a round that starts never ends, as one stuck on a hung device read would.
pub const HANG_HOOK_ENV: &str = "ORPOD_TEST_HANG_SCHEDULER_WHILE";

impl Supervisor {
    pub fn new(store: Store, config: Arc<ServeConfig>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            store,
            slots: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            devices: Devices::detect(&config),
            health: Mutex::new(SchedulerHealth {
                last_round: std::time::Instant::now(),
                last_error: None,
                panics: 0,
                running: false,
            }),
            last_start: Mutex::new((0, HashMap::new())),
            reconciled_at: Default::default(),
            admitting: tokio::sync::Mutex::new(()),
            generations: Mutex::new(HashMap::new()),
            generation_seq: Default::default(),
            generation_requests: Default::default(),
            samples: Mutex::default(),
            listen_addr: Default::default(),
            reporting: Default::default(),
            disk: Default::default(),
            config,
        })
    }

    /// Where the HTTP server listens, once bound.
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.listen_addr.set(addr.to_string());
    }

    /// Whether workers run in Slurm.
    fn in_slurm(&self) -> bool {
        self.config.executor == crate::config::Executor::Slurm
    }

    fn health_mut(&self) -> std::sync::MutexGuard<'_, SchedulerHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scheduler's state, for `/healthz`: `Err(why)` when it is not running, stuck, or
    /// its last round failed.
    pub fn scheduler_health(&self) -> Result<(), String> {
        let h = self.health_mut().clone();
        if !h.running {
            return Err("the scheduler is not running".into());
        }
        let since = h.last_round.elapsed();
        if since > SCHEDULER_STUCK_AFTER {
            return Err(format!(
                "the scheduler has not finished a round for {} s",
                since.as_secs()
            ));
        }
        match h.last_error {
            Some(e) => Err(format!("the scheduler's last round failed: {e}")),
            None => Ok(()),
        }
    }

    /// Whether the scheduler loop runs and has ended a round within `within`: what the
    /// systemd watchdog pings on. Between two round ends lie at most [`ROUND_EVERY`] of waiting
    /// and one round, so `within` must exceed `ROUND_EVERY`.
    pub fn scheduler_alive(&self, within: Duration) -> bool {
        let h = self.health_mut();
        h.running && h.last_round.elapsed() < within
    }

    /// Scheduling rounds that panicked since the daemon started.
    pub fn scheduler_panics(&self) -> u64 {
        self.health_mut().panics
    }

    /// Job ids with a worker on each device now.
    pub fn running_on(&self) -> HashMap<String, Vec<u64>> {
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        for (id, slot) in self.slots().iter() {
            if let Some(d) = &slot.device {
                out.entry(d.clone()).or_default().push(*id);
            }
        }
        out.values_mut().for_each(|v| v.sort_unstable());
        out
    }

    /// The daemon is shutting down: no new work, and nothing waits on the store any more.
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The pid of a job's worker, if it has one.
    pub fn worker_pid(&self, id: u64) -> Option<u32> {
        self.slots().get(&id).and_then(|s| s.pid)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Job ids with a worker now.
    pub fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.slots().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many jobs with a worker each user has (fair turns).
    fn running_by_owner(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for id in self.running() {
            if let Ok(job) = self.store.job(id) {
                *out.entry(job.owner).or_insert(0) += 1;
            }
        }
        out
    }

    /// Per user, when their last job started, as a sequence number (fair turns).
    fn last_starts(&self) -> HashMap<String, u64> {
        self.last_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Wakes the scheduler (a job was queued or a slot freed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Puts jobs a previous daemon left with a worker back in the queue. Their workers got
    /// SIGTERM when that daemon died (PR_SET_PDEATHSIG) and checkpointed; a new worker resumes
    /// from the newest checkpoint. A job that was being paused stays paused. With Slurm, a job
    /// whose Slurm job is still there is re-attached to it instead.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut stale: Vec<JobView> = self
            .store
            .all_jobs()?
            .into_iter()
            .filter(|v| v.state.has_worker() || v.state == JobState::Interrupted)
            .collect();
        if self.in_slurm() {
            let attached = self.reattach_slurm(&stale).await?;
            if attached > 0 {
                tracing::info!("re-attached to {attached} job(s) running in Slurm");
            }
            stale.retain(|j| !self.slots().contains_key(&j.id));
        }
        for job in &stale {
            self.requeue_orphan(
                job.id,
                "the daemon stopped while the job ran",
                "requeued after a daemon restart; resumes from its newest checkpoint",
            )
            .await?;
        }
        self.store.flush().await?;
        Ok(stale.len())
    }

    /// Puts a job whose record says it has a worker, though none runs, where a restart puts
    /// it: paused if it was pausing; else `interrupted` (saying `why`), then queued again
    /// (saying `requeued`) to resume from its newest checkpoint. A job already interrupted is
    /// queued. Each step checks the record in its own write.
    async fn requeue_orphan(
        &self,
        id: u64,
        why: impl Into<String>,
        requeued: impl Into<String>,
    ) -> Result<(), StoreError> {
        let (why, requeued) = (why.into(), requeued.into());
        let view = self
            .store
            .update_job(id, move |v| {
                if v.state == JobState::Pausing {
                    v.state = JobState::Paused;
                    v.pending_reason = Some(PAUSED.into());
                } else if v.state.has_worker() {
                    v.state = JobState::Interrupted;
                    v.pending_reason = Some(why);
                }
                Ok(())
            })
            .await?;
        if view.state == JobState::Interrupted {
            self.store
                .update_job(id, move |v| {
                    if v.state == JobState::Interrupted {
                        v.state = JobState::Queued;
                        v.pending_reason = Some(requeued);
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// Makes the jobs' records agree with the workers again after the store was reopened
    /// following a failed write (a full disk): it then holds what its last good flush wrote,
    /// which may predate a job's start (the job reads `queued` while its worker runs) or a
    /// job's end. A job that runs but reads queued is marked running again (its worker
    /// settles it as usual); one that reads as running without a worker is put back as at a
    /// restart ([`Supervisor::requeue_orphan`]). (A worker's end is recorded durably before
    /// its slot is freed, so the second is a safety net.)
    async fn reconcile(&self) -> Result<(), StoreError> {
        let reopened = self.store.reopened();
        if reopened == self.reconciled_at.load(Ordering::SeqCst) {
            return Ok(());
        }
        for job in self.store.all_jobs()? {
            let slot_device = self.slots().get(&job.id).map(|s| s.device.clone());
            let id = job.id;
            match (job.state, slot_device) {
                (JobState::Queued, Some(device)) => {
                    tracing::warn!(job = id, "the reopened store lost the job's start");
                    self.store
                        .update_job(id, move |v| {
                            if v.state == JobState::Queued {
                                v.state = JobState::Running;
                                v.pending_reason = None;
                                v.device = device.or(v.device.take());
                            }
                            Ok(())
                        })
                        .await?;
                }
                (state, None) if state.has_worker() => {
                    tracing::warn!(job = id, "the reopened store lost the end of the job's run");
                    self.requeue_orphan(
                        id,
                        "the store lost the end of its last run after a failed write",
                        "requeued: the store lost the end of its last run after a failed \
                         write; resumes from its newest checkpoint",
                    )
                    .await?;
                }
                _ => {}
            }
        }
        self.store.flush().await?;
        self.reconciled_at.store(reopened, Ordering::SeqCst);
        Ok(())
    }

    /// The scheduler loop: a round of admission on every wake-up (a submit, a worker's exit)
    /// and every two seconds, since other people's processes free memory without telling us.
    /// A round that fails or panics is logged and shown by `/healthz`; the next round runs as
    /// usual, so one bad job never stops scheduling for everyone.
    ///
    /// The loop counts as running from this call, before the future is first polled, so that
    /// `/healthz` is ok as soon as the daemon tells systemd it is ready.
    pub fn run(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send {
        {
            let mut h = self.health_mut();
            h.running = true;
            h.last_round = std::time::Instant::now();
        }
        self.rounds()
    }

    async fn rounds(self: Arc<Self>) {
        use futures_util::FutureExt;
        let hang_while = std::env::var_os(HANG_HOOK_ENV).map(std::path::PathBuf::from);
        loop {
            if self.is_stopping() {
                break;
            }
            if hang_while.as_ref().is_some_and(|p| p.exists()) {
                tracing::warn!("{HANG_HOOK_ENV}: this round never ends");
                std::future::pending::<()>().await;
            }
            let round = std::panic::AssertUnwindSafe(self.schedule())
                .catch_unwind()
                .await;
            let error = match round {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    tracing::error!("scheduling: {e:#}");
                    Some(format!("{e:#}"))
                }
                Err(panic) => {
                    let text = panic_text(panic);
                    tracing::error!("a scheduling round panicked: {text}");
                    self.health_mut().panics += 1;
                    Some(format!("panicked: {text}"))
                }
            };
            {
                let mut h = self.health_mut();
                h.last_round = std::time::Instant::now();
                h.last_error = error;
            }
            let _ = tokio::time::timeout(ROUND_EVERY, self.wake.notified()).await;
        }
        self.health_mut().running = false;
    }

    /// Where a worker admission placed on `device` runs, and its niceness: a fake GPU exists
    /// only in the config, so its work runs on the CPU; CPU workers are niced so the daemon's
    /// HTTP stays responsive.
    fn run_on(&self, device: &str) -> (String, Option<i32>) {
        let run_on = match self.devices.is_fake() {
            true => "cpu".to_string(),
            false => device.to_string(),
        };
        let nice = (run_on == "cpu").then_some(self.config.cpu_worker_nice);
        (run_on, nice)
    }

    /// Gives a queued job its slot and moves it to `starting` (on `device` when admission
    /// placed it here; with `pending_reason` while it waits elsewhere), counting the attempt
    /// and its owner's turn. The slot comes first, so no round starts the job twice.
    async fn claim_start(
        &self,
        id: u64,
        device: Option<String>,
        estimate: u64,
        pending_reason: Option<String>,
    ) -> anyhow::Result<JobView> {
        self.slots().insert(
            id,
            Slot {
                device: device.clone(),
                estimate,
                ..Slot::default()
            },
        );
        let view = self
            .store
            .update_job(id, move |v| {
                if v.state != JobState::Queued {
                    return Err(format!("job is {}", v.state));
                }
                v.state = JobState::Starting;
                v.pending_reason = pending_reason;
                v.error = None;
                v.attempts += 1;
                v.device = device;
                v.started_at.get_or_insert_with(crate::now_rfc3339);
                Ok(())
            })
            .await;
        let view = match view {
            Ok(v) => v,
            Err(e) => {
                self.slots().remove(&id);
                return Err(e.into());
            }
        };
        self.note_start(&view.owner);
        Ok(view)
    }

    /// Moves a queued job to `starting` on `device` and spawns its worker.
    async fn start(self: Arc<Self>, id: u64, device: String, estimate: u64) -> anyhow::Result<()> {
        let view = self
            .claim_start(id, Some(device.clone()), estimate, None)
            .await?;
        let dir = spawn::job_dir(&self.config.state_dir, id);
        let (run_on, nice) = self.run_on(&device);
        let child = self.config.worker_exe().and_then(|exe| {
            spawn::write_job_file(
                &self.config.state_dir,
                &dir,
                crate::store::spec_of(&view),
                &run_on,
            )?;
            spawn::spawn_worker(&exe, &dir, nice)
        });
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.slots().remove(&id);
                let message = format!("{e:#}");
                self.store
                    .update_job(id, move |v| {
                        v.state = JobState::Failed;
                        v.finished_at = Some(crate::now_rfc3339());
                        v.error = Some(JobError {
                            kind: "spawn".into(),
                            message,
                        });
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
        };
        let pid = child.id();
        let early_intent = {
            let mut slots = self.slots();
            let slot = slots.entry(id).or_default();
            slot.pid = pid;
            slot.intent
        };
        if let (Some(_), Some(pid)) = (early_intent, pid) {
            spawn::signal(pid, libc::SIGTERM);
        }
        tracing::info!(job = id, pid, "worker started");
        tokio::spawn(monitor::watch(self.clone(), id, child));
        Ok(())
    }

    /// Records that `owner`'s job started now (fair turns).
    fn note_start(&self, owner: &str) {
        let mut last = self.last_start.lock().unwrap_or_else(|e| e.into_inner());
        last.0 += 1;
        let seq = last.0;
        last.1.insert(owner.to_string(), seq);
    }

    /// Asks the job's worker to stop for `intent`; false when the job has no worker.
    fn stop_worker(self: &Arc<Self>, id: u64, intent: Intent) -> bool {
        let (pid, slurm_job) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&id) else {
                return false;
            };
            // A cancel overrides a pause or shutdown already under way, not the other way round.
            if slot.intent != Some(Intent::Cancel) {
                slot.intent = Some(intent);
            }
            (slot.pid, slot.slurm.as_ref().map(|r| r.job))
        };
        if let Some(pid) = pid {
            spawn::signal(pid, libc::SIGTERM);
        }
        if let Some(job) = slurm_job {
            self.stop_in_slurm(id, job, intent);
        }
        true
    }

    /// Jobs whose worker is this daemon's child (not in Slurm).
    fn local_workers(&self) -> Vec<(u64, Option<u32>)> {
        self.slots()
            .iter()
            .filter(|(_, s)| s.slurm.is_none())
            .map(|(id, s)| (*id, s.pid))
            .collect()
    }

    fn intent(&self, id: u64) -> Option<Intent> {
        self.slots().get(&id).and_then(|s| s.intent)
    }

    /// Stops scheduling, asks every worker to checkpoint and stop, and waits up to
    /// `shutdown_grace_s` before killing what is left. Their jobs become `interrupted` and are
    /// requeued when the daemon starts again. Workers in Slurm go on: the next daemon
    /// re-attaches to them.
    pub async fn shutdown(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake();
        for (id, _) in self.local_workers() {
            self.stop_worker(id, Intent::Shutdown);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.shutdown_grace_s);
        while !self.local_workers().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (id, pid) in self.local_workers() {
            tracing::warn!(job = id, "worker did not stop in time; SIGKILL");
            if let Some(pid) = pid {
                spawn::signal(pid, libc::SIGKILL);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.local_workers().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!("flushing the store at shutdown: {e}");
        }
    }
}

const PAUSED: &str = "paused; `resume` puts it back in the queue";

/// The message of a caught panic.
pub(crate) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/healthz` reads this: not running before the loop starts and after it stops; running
    /// and healthy while rounds end.
    #[tokio::test]
    async fn scheduler_health_follows_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = Arc::new(ServeConfig {
            state_dir: dir.path().to_path_buf(),
            ..ServeConfig::default()
        });
        let sup = Supervisor::new(store, config);
        assert_eq!(
            sup.scheduler_health(),
            Err("the scheduler is not running".into())
        );
        let task = tokio::spawn(sup.clone().run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sup.scheduler_health(), Ok(()));
        assert!(sup.scheduler_alive(ROUND_EVERY + Duration::from_secs(1)));
        sup.health_mut().last_round = std::time::Instant::now() - SCHEDULER_STUCK_AFTER * 2;
        let stuck = sup.scheduler_health().unwrap_err();
        assert!(stuck.contains("has not finished a round for"), "{stuck}");
        assert!(!sup.scheduler_alive(SCHEDULER_STUCK_AFTER));
        sup.shutdown().await;
        task.await.unwrap();
        assert_eq!(
            sup.scheduler_health(),
            Err("the scheduler is not running".into())
        );
        assert!(!sup.scheduler_alive(SCHEDULER_STUCK_AFTER));
        assert_eq!(sup.scheduler_panics(), 0);
    }

    /// A reopened store (after a full disk) may have lost a start or an end: the records are
    /// put back in line with the workers, and a job with a worker is never started twice.
    #[tokio::test]
    async fn a_reopened_store_is_reconciled_with_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = Arc::new(ServeConfig {
            state_dir: dir.path().to_path_buf(),
            ..ServeConfig::default()
        });
        let sup = Supervisor::new(store, config);
        let spec = orpo_api::JobSpec::parse(
            "[model]\nbase = \"m\"\n[data]\ntrain = \"t\"\n",
            "j".as_ref(),
        )
        .unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let new = crate::store::NewJob {
                owner: "ann".into(),
                spec: spec.clone(),
                pending_reason: None,
                estimate_bytes: Some(1),
                total_steps: 0,
                idempotency: None,
                caps: None,
            };
            match sup.store.insert_job(new).await.unwrap() {
                crate::store::Inserted::New(v) => ids.push(v.id),
                other => panic!("{other:?}"),
            }
        }
        let (runs_but_reads_queued, ran_but_reads_running, pausing) = (ids[0], ids[1], ids[2]);
        sup.slots().insert(
            runs_but_reads_queued,
            Slot {
                device: Some("cpu".into()),
                ..Slot::default()
            },
        );
        for (id, state) in [
            (ran_but_reads_running, JobState::Running),
            (pausing, JobState::Pausing),
        ] {
            sup.store
                .update_job(id, move |v| {
                    v.state = state;
                    Ok(())
                })
                .await
                .unwrap();
        }
        // Nothing happens until the store was reopened.
        sup.reconcile().await.unwrap();
        let state = |id| sup.store.job(id).unwrap().state;
        assert_eq!(state(runs_but_reads_queued), JobState::Queued);
        assert_eq!(state(ran_but_reads_running), JobState::Running);

        sup.store.pretend_reopened();
        sup.reconcile().await.unwrap();
        let running = sup.store.job(runs_but_reads_queued).unwrap();
        assert_eq!(running.state, JobState::Running);
        assert_eq!(running.device.as_deref(), Some("cpu"));
        let requeued = sup.store.job(ran_but_reads_running).unwrap();
        assert_eq!(requeued.state, JobState::Queued);
        assert!(
            requeued
                .pending_reason
                .as_deref()
                .is_some_and(|r| r.contains("lost the end of its last run")),
            "{requeued:?}"
        );
        assert_eq!(state(pausing), JobState::Paused);
        assert_eq!(sup.store.queued(), vec![ran_but_reads_running]);
    }
}
