//! The Slurm executor (`executor = "slurm"`): a job's worker runs as a Slurm batch job on the
//! node Slurm picks, not as the daemon's child.
//!
//! Why the commands (`sbatch`, `squeue`, `scancel`) and not slurmrestd: they are the same on
//! every Slurm a lab runs and work on any host with the cluster's `slurm.conf` and munge key,
//! while slurmrestd is a separate service with its own authentication and an OpenAPI version
//! that changes with Slurm releases.
//!
//! The life of a job here: a queued job, in fair order, is written to its folder (job.toml, a
//! fresh secret in `worker.secret`) and submitted (`sbatch --wrap "exec orpod worker --job-dir
//! DIR --report URL"`); it is `starting`, its `pending_reason` Slurm's (`slurm: Resources (job
//! 42)`), until the worker reports it began. The worker posts its events to
//! `POST /internal/v1/jobs/{id}/events` with that secret ([`Supervisor::take_report`]); each
//! scheduling round reads `squeue` for the reasons and for the end of each Slurm job, and a job
//! whose Slurm job ended is settled from the worker's last event (or its `outcome.json`, when
//! the daemon was away). A worker stopped from outside orpod (`scancel`, a node failure, the
//! time limit) leaves the job `interrupted`, and it goes on from its newest checkpoint in a new
//! Slurm job. `JOB_DIR/slurm.json` records the Slurm job and what the daemon asked of it, and
//! the store the last event applied, so a restarted daemon re-attaches to the Slurm jobs still
//! running instead of starting them again, and applies each event once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orpo_api::{JobError, JobSpec, JobState, JobView, SlurmNodeView};
use serde::{Deserialize, Serialize};

use super::protocol::{metric_record, Outcome, WorkerOutcome, WorkerReport, OUTCOME_FILE};
use super::{spawn, Intent, Slot, Supervisor};
use crate::auth::tokens;
use crate::config::ServeConfig;
use crate::devices::admission::Decision;
use crate::store::StoreError;

/// `JOB_DIR/slurm.json`: the Slurm job of the job's current attempt.
pub const RUN_FILE: &str = "slurm.json";

/// How long one Slurm command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A job whose worker runs (or waits) in Slurm.
#[derive(Debug, Clone, Default)]
pub struct SlurmRun {
    /// The Slurm job id.
    pub job: u64,
    /// sha256 of this attempt's secret.
    pub secret_hash: String,
    /// The number of the last worker event applied.
    pub applied: u64,
    /// The worker's last event, once it reported one.
    pub outcome: Option<Outcome>,
}

/// The number of the last event applied lives in the store, with the events
/// ([`crate::store::Store::set_worker_seq`]).
#[derive(Debug, Serialize, Deserialize)]
struct RunFile {
    slurm_job: u64,
    /// What the daemon asked of the worker (a cancel in flight when the daemon restarts stays
    /// a cancel).
    #[serde(default)]
    intent: Option<Intent>,
}

/// One job as `squeue` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub job: u64,
    pub name: String,
    pub state: String,
    pub reason: String,
    pub node: String,
}

/// The `squeue -o` format [`parse_queue`] reads.
const QUEUE_FORMAT: &str = "%i|%j|%T|%r|%N";

/// `squeue -h -o QUEUE_FORMAT` output; lines that do not parse are skipped.
pub fn parse_queue(text: &str) -> Vec<QueueRow> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(5, '|');
            Some(QueueRow {
                job: f.next()?.trim().parse().ok()?,
                name: f.next()?.to_string(),
                state: f.next()?.to_string(),
                reason: f.next()?.to_string(),
                node: f.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The `sinfo -O` fields [`parse_nodes`] reads, each ended by `|`.
const NODE_FORMAT: &str =
    "NodeHost:|,StateCompact:|,CPUsState:|,Memory:|,AllocMem:|,Gres:|,GresUsed:|,Partition:|";

/// `sinfo -h -N -O NODE_FORMAT` output: one node per row, a node in several partitions once
/// with all of them (the default partition's `*` dropped).
pub fn parse_nodes(text: &str) -> Vec<SlurmNodeView> {
    let mut nodes: Vec<SlurmNodeView> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        if f.len() < 8 || f[0].is_empty() {
            continue;
        }
        let partition = f[7].trim_end_matches('*').to_string();
        if let Some(n) = nodes.iter_mut().find(|n| n.name == f[0]) {
            n.partitions.push(partition);
            continue;
        }
        // CPUsState is allocated/idle/other/total.
        let cpus: Vec<u32> = f[2].split('/').filter_map(|c| c.parse().ok()).collect();
        let mib = |v: &str| v.parse::<u64>().unwrap_or(0) << 20;
        nodes.push(SlurmNodeView {
            name: f[0].to_string(),
            state: f[1].to_string(),
            cpus_allocated: cpus.first().copied().unwrap_or(0),
            cpus_total: cpus.get(3).copied().unwrap_or(0),
            memory_bytes: mib(f[3]),
            memory_allocated_bytes: mib(f[4]),
            gres: f[5].to_string(),
            gres_used: f[6].to_string(),
            partitions: vec![partition],
            running_jobs: Vec::new(),
        });
    }
    nodes
}

/// A job's `pending_reason` while its Slurm job is alive and the worker has not begun:
/// Slurm's reason while it is pending (`None` until the scheduler has looked at it), its state
/// and node after.
pub fn waiting_reason(row: &QueueRow) -> String {
    match (row.state.as_str(), row.reason.as_str(), row.node.as_str()) {
        ("PENDING", "None" | "", _) => format!("slurm: pending (job {})", row.job),
        ("PENDING", reason, _) => format!("slurm: {reason} (job {})", row.job),
        (state, _, "") => format!("slurm: {state} (job {})", row.job),
        (state, _, node) => format!("slurm: {state} on {node} (job {})", row.job),
    }
}

/// Whether a Slurm job in this state may still run its worker (or is still ending it).
pub fn alive(state: &str) -> bool {
    !matches!(
        state,
        "COMPLETED"
            | "CANCELLED"
            | "FAILED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "OUT_OF_MEMORY"
            | "SPECIAL_EXIT"
            | "REVOKED"
    )
}

/// The `sbatch` options for a job of this spec and memory estimate: its GPU (the smallest gres
/// type in `slurm.gpu_types` whose memory holds the estimate and the headroom; any GPU when
/// none are listed; none for `resources.device = "cpu"`), host memory, CPUs, time limit and
/// partition. Err names why no GPU type fits.
pub fn request(cfg: &ServeConfig, spec: &JobSpec, estimate: u64) -> Result<Vec<String>, String> {
    let s = &cfg.slurm;
    let need = estimate + (cfg.headroom_mib << 20);
    let mib = |b: u64| b.div_ceil(1 << 20);
    let mut args = vec![format!("--cpus-per-task={}", s.cpus_per_job.max(1))];
    if spec.resources.device == "cpu" {
        args.push(format!("--mem={}M", mib(need)));
    } else {
        let gres = if s.gpu_types.is_empty() {
            "--gres=gpu:1".to_string()
        } else {
            let fits = s
                .gpu_types
                .iter()
                .filter(|t| t.memory_mib << 20 >= need)
                .min_by_key(|t| t.memory_mib);
            match fits {
                Some(t) => format!("--gres=gpu:{}:1", t.gres),
                None => {
                    let largest = s.gpu_types.iter().max_by_key(|t| t.memory_mib);
                    return Err(format!(
                        "slurm: no GPU type in slurm.gpu_types holds the job's estimate of {:.1} \
                         GiB plus headroom_mib (largest: {})",
                        estimate as f64 / (1u64 << 30) as f64,
                        largest.map_or("none".into(), |t| format!(
                            "{}, {:.1} GiB",
                            t.gres,
                            t.memory_mib as f64 / 1024.0
                        ))
                    ));
                }
            }
        };
        args.push(gres);
        args.push(format!("--mem={}M", s.gpu_job_host_mib));
    }
    if !s.time_limit.is_empty() {
        args.push(format!("--time={}", s.time_limit));
    }
    if !s.partition.is_empty() {
        args.push(format!("--partition={}", s.partition));
    }
    Ok(args)
}

/// The device a worker in Slurm trains on: Slurm shows a job only the GPU it was given, as
/// `cuda:0`, whatever GPU a job pinned.
fn worker_device(spec: &JobSpec) -> &'static str {
    match spec.resources.device.as_str() {
        "cpu" => "cpu",
        d if d.starts_with("cuda") => "cuda:0",
        _ => "auto",
    }
}

/// `text` in single quotes for `sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn read_run_file(dir: &Path) -> Option<RunFile> {
    let text = std::fs::read(dir.join(RUN_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_run_file(dir: &Path, run: &SlurmRun, intent: Option<Intent>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{RUN_FILE}.tmp"));
    let text = serde_json::to_vec(&RunFile {
        slurm_job: run.job,
        intent,
    })
    .map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(RUN_FILE))
}

/// Why a report was not taken.
pub enum ReportError {
    /// The job has no worker in Slurm now (finished, requeued, unknown): 404.
    NoWorker(String),
    /// The secret is not this attempt's: 403.
    WrongSecret,
    /// The store could not record an event: 503, the worker tries again.
    Store(StoreError),
}

impl Supervisor {
    /// `exe` with the cluster's `SLURM_CONF`, in a worker's environment: `sbatch` hands its
    /// environment to the batch job.
    fn slurm_command(&self, exe: &str) -> tokio::process::Command {
        let mut std_cmd = std::process::Command::new(exe);
        spawn::worker_env(&mut std_cmd);
        if let Some(conf) = &self.config.slurm.conf {
            std_cmd.env("SLURM_CONF", conf);
        }
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs a Slurm command; its stdout, or an error with its stderr.
    async fn slurm(&self, exe: &str, args: &[String]) -> anyhow::Result<String> {
        let mut cmd = self.slurm_command(exe);
        cmd.args(args);
        let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("{exe} did not answer within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("running {exe} (is Slurm installed on this host?)"))?;
        if !out.status.success() {
            anyhow::bail!(
                "{exe} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// At start: Slurm's commands must run here (else the daemon does not start, naming the
    /// one missing); a controller that does not answer yet, or a report URL that only this host
    /// reaches, is worth a warning.
    pub async fn check_slurm(&self) -> anyhow::Result<()> {
        let mut version = String::new();
        for exe in ["sbatch", "squeue", "scancel", "sinfo"] {
            version = self
                .slurm(exe, &["--version".to_string()])
                .await
                .context("executor = \"slurm\" needs Slurm's commands on this host")?;
        }
        match self.slurm_nodes().await {
            Ok(nodes) => tracing::info!(
                "workers run in Slurm ({}): {} node(s)",
                version.trim(),
                nodes.len()
            ),
            Err(e) => tracing::warn!("the Slurm controller does not answer yet: {e:#}"),
        }
        if self.config.slurm.daemon_url.is_empty() {
            tracing::warn!(
                "slurm.daemon_url is not set: workers report to {}, which only a worker on \
                 this host reaches",
                self.daemon_url()
            );
        }
        Ok(())
    }

    /// This daemon's user's Slurm jobs, finished ones Slurm still remembers included.
    pub async fn slurm_queue(&self) -> anyhow::Result<Vec<QueueRow>> {
        let args = ["-h", "--me", "-t", "all", "-o", QUEUE_FORMAT].map(String::from);
        Ok(parse_queue(&self.slurm("squeue", &args).await?))
    }

    /// The cluster's nodes, with this daemon's jobs on each (`GET /v1/gpus`).
    pub async fn slurm_nodes(&self) -> anyhow::Result<Vec<SlurmNodeView>> {
        let args = ["-h", "-N", "-O", NODE_FORMAT].map(String::from);
        let mut nodes = parse_nodes(&self.slurm("sinfo", &args).await?);
        let ours: Vec<(u64, u64)> = self
            .slots()
            .iter()
            .filter_map(|(id, s)| Some((s.slurm.as_ref()?.job, *id)))
            .collect();
        if ours.is_empty() {
            return Ok(nodes);
        }
        for row in self.slurm_queue().await? {
            let Some((_, id)) = ours.iter().find(|(job, _)| *job == row.job) else {
                continue;
            };
            if !alive(&row.state) || row.state == "PENDING" {
                continue;
            }
            if let Some(n) = nodes.iter_mut().find(|n| n.name == row.node) {
                n.running_jobs.push(*id);
                n.running_jobs.sort_unstable();
            }
        }
        Ok(nodes)
    }

    fn slurm_name(&self, id: u64) -> String {
        format!("{}-{id}", self.config.slurm.job_name_prefix)
    }

    /// Where workers reach this daemon: `slurm.daemon_url`, else the listen address.
    fn daemon_url(&self) -> String {
        match self.config.slurm.daemon_url.trim_end_matches('/') {
            "" => format!(
                "http://{}",
                self.listen_addr
                    .get()
                    .map_or("127.0.0.1:8750", |s| s.as_str())
            ),
            url => url.to_string(),
        }
    }

    /// The URL this job's worker reports to.
    fn report_url(&self, id: u64) -> String {
        format!("{}/internal/v1/jobs/{id}/events", self.daemon_url())
    }

    /// A scheduling round's decisions with Slurm, for the queued jobs in fair order: submit
    /// while fewer than `slurm.max_jobs` of this daemon's jobs are in Slurm; a job no GPU type
    /// holds, or past that bound, waits saying why.
    pub(super) fn slurm_decisions(&self, queued: &[JobView]) -> Vec<Decision> {
        let mut in_slurm = self.slots().len();
        let max = self.config.slurm.max_jobs.max(1);
        let mut decisions = Vec::with_capacity(queued.len());
        for job in queued {
            let estimate = job.memory.estimate_bytes.unwrap_or(0);
            let decision = if in_slurm >= max {
                Decision::Wait {
                    id: job.id,
                    reason: format!(
                        "slurm: {in_slurm} of this daemon's jobs are in Slurm (slurm.max_jobs)"
                    ),
                }
            } else {
                match request(&self.config, crate::store::spec_of(job), estimate) {
                    Ok(_) => {
                        in_slurm += 1;
                        Decision::Start {
                            id: job.id,
                            device: "slurm".into(),
                        }
                    }
                    Err(reason) => Decision::Wait { id: job.id, reason },
                }
            };
            decisions.push(decision);
        }
        decisions
    }

    /// Moves a queued job to `starting` and submits its worker to Slurm.
    pub(super) async fn start_in_slurm(
        self: Arc<Self>,
        id: u64,
        estimate: u64,
    ) -> anyhow::Result<()> {
        let submitting = Some("slurm: submitting".to_string());
        let view = self.claim_start(id, None, estimate, submitting).await?;
        let submitted = self.sbatch(&view, estimate).await;
        let run = match submitted {
            Ok(run) => run,
            Err(e) => {
                self.slots().remove(&id);
                let message = format!("{e:#}");
                // A controller that does not answer is worth another try; a request Slurm
                // refuses (a partition or gres that does not exist) is the job's error.
                let transient = [
                    "Unable to contact",
                    "timed out",
                    "did not answer",
                    "Zero Bytes",
                ]
                .iter()
                .any(|m| message.contains(m));
                self.store
                    .update_job(id, move |v| {
                        if transient {
                            v.state = JobState::Queued;
                            v.pending_reason =
                                Some(format!("slurm: sbatch failed, trying again: {message}"));
                        } else {
                            v.state = JobState::Failed;
                            v.pending_reason = None;
                            v.finished_at = Some(crate::now_rfc3339());
                            v.error = Some(JobError {
                                kind: "slurm".into(),
                                message: format!("Slurm refused the job: {message}"),
                            });
                        }
                        Ok(())
                    })
                    .await?;
                self.store.flush().await?;
                return Ok(());
            }
        };
        let slurm_job = run.job;
        let early_intent = {
            let mut slots = self.slots();
            let slot = slots.entry(id).or_default();
            slot.slurm = Some(run);
            slot.intent
        };
        tracing::info!(job = id, slurm_job, "submitted to Slurm");
        self.store
            .update_job(id, move |v| {
                if v.state == JobState::Starting {
                    v.pending_reason = Some(format!("slurm: submitted as job {slurm_job}"));
                }
                Ok(())
            })
            .await?;
        if let Some(intent) = early_intent {
            self.stop_in_slurm(id, slurm_job, intent);
        }
        Ok(())
    }

    /// Writes the job's folder for this attempt and submits it with the [`request`] of its
    /// spec and `estimate`; the new [`SlurmRun`].
    async fn sbatch(&self, view: &JobView, estimate: u64) -> anyhow::Result<SlurmRun> {
        let id = view.id;
        let dir = spawn::job_dir(&self.config.state_dir, id);
        let spec = crate::store::spec_of(view);
        let args = request(&self.config, spec, estimate).map_err(anyhow::Error::msg)?;
        spawn::write_job_file(&self.config.state_dir, &dir, spec, worker_device(spec))?;
        let secret = tokens::random_hex(32).context("making the worker's secret")?;
        write_secret(&dir, &secret)?;
        for stale in [OUTCOME_FILE, RUN_FILE] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let exe = self.config.worker_exe()?;
        let script = format!(
            "exec {} worker --job-dir {} --report {} --report-wait-s {}",
            quote(&exe.to_string_lossy()),
            quote(&dir.to_string_lossy()),
            quote(&self.report_url(id)),
            self.config.slurm.report_wait_s
        );
        let log = dir.join("worker.log");
        let mut all = vec![
            "--parsable".to_string(),
            format!("--job-name={}", self.slurm_name(id)),
            format!("--chdir={}", dir.display()),
            format!("--output={}", log.display()),
            "--open-mode=append".into(),
            // orpod decides what a worker that was stopped becomes, not Slurm.
            "--no-requeue".into(),
        ];
        all.extend(args);
        all.push(format!("--wrap={script}"));
        // `--parsable`: `JOBID` or `JOBID;CLUSTER`.
        let text = self.slurm("sbatch", &all).await?;
        let job = text
            .trim()
            .split(';')
            .next()
            .and_then(|j| j.parse().ok())
            .with_context(|| format!("sbatch printed {text:?}, not a job id"))?;
        let run = SlurmRun {
            job,
            secret_hash: tokens::hash(&secret),
            applied: 0,
            outcome: None,
        };
        write_run_file(&dir, &run, None).context("writing slurm.json")?;
        Ok(run)
    }

    /// Asks Slurm to stop a job's worker for `intent`: SIGTERM to a running worker (it
    /// checkpoints and exits), a plain cancel of one still pending. A daemon shutdown leaves
    /// Slurm jobs running: the next daemon re-attaches to them.
    pub(super) fn stop_in_slurm(self: &Arc<Self>, id: u64, slurm_job: u64, intent: Intent) {
        if intent == Intent::Shutdown {
            return;
        }
        let (run, recorded) = match self.slots().get(&id) {
            Some(slot) => (slot.slurm.clone(), slot.intent),
            None => (None, None),
        };
        if let Some(run) = run {
            let dir = spawn::job_dir(&self.config.state_dir, id);
            if let Err(e) = write_run_file(&dir, &run, recorded) {
                tracing::warn!(job = id, "writing slurm.json: {e}");
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let job = slurm_job.to_string();
            let pending = this
                .slurm_queue()
                .await
                .ok()
                .and_then(|rows| rows.into_iter().find(|r| r.job == slurm_job))
                .is_some_and(|r| r.state == "PENDING");
            let args: Vec<String> = if pending {
                vec![job]
            } else {
                vec!["--signal=TERM".into(), "--full".into(), job]
            };
            if let Err(e) = this.slurm("scancel", &args).await {
                tracing::warn!(job = id, slurm_job, "scancel: {e:#}");
            }
        });
    }

    /// Ends a Slurm job that did not stop within the cancel grace.
    pub(super) async fn kill_in_slurm(&self, id: u64, slurm_job: u64) {
        tracing::warn!(job = id, slurm_job, "the worker ignored SIGTERM; scancel");
        let args = [
            "--signal=KILL".to_string(),
            "--full".into(),
            slurm_job.to_string(),
        ];
        if let Err(e) = self.slurm("scancel", &args).await {
            tracing::warn!(job = id, slurm_job, "scancel: {e:#}");
        }
    }

    /// A round's reading of `squeue`: each job waiting in Slurm shows Slurm's reason, and a
    /// job whose Slurm job ended is settled.
    pub(super) async fn poll_slurm(self: &Arc<Self>) -> anyhow::Result<()> {
        let runs: Vec<(u64, SlurmRun)> = self
            .slots()
            .iter()
            .filter_map(|(id, s)| Some((*id, s.slurm.clone()?)))
            .collect();
        if runs.is_empty() {
            return Ok(());
        }
        let rows = self.slurm_queue().await.context("reading squeue")?;
        for (id, run) in runs {
            let row = rows.iter().find(|r| r.job == run.job);
            match row {
                Some(row) if alive(&row.state) => {
                    let reason = waiting_reason(row);
                    self.store
                        .update_job(id, move |v| {
                            if v.state == JobState::Starting
                                && v.pending_reason.as_ref() != Some(&reason)
                            {
                                v.pending_reason = Some(reason);
                            }
                            Ok(())
                        })
                        .await?;
                }
                ended => {
                    let state = ended.map_or("gone from squeue".to_string(), |r| r.state.clone());
                    // After any report being applied, with what it brought.
                    let _one = self.reporting.lock().await;
                    let fresh = self.slots().get(&id).and_then(|s| s.slurm.clone());
                    if let Some(run) = fresh {
                        self.settle_slurm(id, run, &state).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The job's state after its Slurm job ended in `state`.
    async fn settle_slurm(&self, id: u64, run: SlurmRun, state: &str) -> Result<(), StoreError> {
        let dir = spawn::job_dir(&self.config.state_dir, id);
        let outcome = run.outcome.clone().or_else(|| {
            let text = std::fs::read(dir.join(OUTCOME_FILE)).ok()?;
            let o: WorkerOutcome = serde_json::from_slice(&text).ok()?;
            (o.slurm_job == Some(run.job))
                .then(|| o.event.outcome())
                .flatten()
        });
        if run.outcome.is_none() {
            self.history_from_checkpoint(id, &dir).await?;
        }
        let intent = self.intent(id);
        tracing::info!(
            job = id,
            slurm_job = run.job,
            ?intent,
            ?outcome,
            "Slurm job ended: {state}"
        );
        let crashed = matches!(state, "FAILED" | "OUT_OF_MEMORY" | "BOOT_FAIL");
        let from_outside = intent.is_none()
            && match &outcome {
                Some(Outcome::Stopped) => true,
                None => !crashed,
                _ => false,
            };
        if from_outside {
            self.requeue_orphan(
                id,
                format!("Slurm job {} ended ({state}) from outside orpod", run.job),
                format!(
                    "requeued: Slurm job {} ended ({state}) from outside orpod; resumes from its \
                     newest checkpoint",
                    run.job
                ),
            )
            .await?;
        } else {
            let status = format!("Slurm job {} {state}", run.job);
            // A pause of a job still pending in Slurm cancels it before it runs.
            let signal = (intent == Some(Intent::Pause)).then_some(libc::SIGTERM);
            super::monitor::settle(self, id, intent, outcome, &status, signal).await?;
        }
        self.store.flush().await?;
        let _ = std::fs::remove_file(dir.join(RUN_FILE));
        self.slots().remove(&id);
        self.wake();
        Ok(())
    }

    /// A worker that ended while the daemon could not hear it (away longer than
    /// `slurm.report_wait_s`) took its last events with it; its newest checkpoint holds the
    /// whole metric history up to it (the last step always writes one), which then replaces
    /// what the store has.
    async fn history_from_checkpoint(&self, id: u64, dir: &Path) -> Result<(), StoreError> {
        use orpo_trainer::checkpoint;
        let Ok(Some(newest)) = checkpoint::latest(dir) else {
            return Ok(());
        };
        let Ok(state) = checkpoint::load_state(&newest) else {
            return Ok(());
        };
        let known = self.store.job(id)?.progress.step;
        if state.step <= known {
            return Ok(());
        }
        let name = newest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let records = state.log_history.iter().map(metric_record).collect();
        super::monitor::restore_history(&self.store, id, records).await?;
        self.store
            .append_event(
                id,
                orpo_api::EventKind::Log,
                &format!(
                    "the worker's events after step {known} did not reach the daemon; the \
                     metrics up to step {} are read from {name}",
                    state.step
                ),
                None,
                Some(name),
            )
            .await?;
        Ok(())
    }

    /// At start: the jobs a previous daemon left with a worker in Slurm get their slot back
    /// (their Slurm job is found by `slurm.json` or by its name), so the next rounds follow
    /// them, with the cancel or pause that daemon had asked for (asked again); the others are
    /// put back as at a restart. Err when `squeue` cannot be read: without
    /// it the daemon cannot tell a running worker from a lost one, and starting the job again
    /// could run it twice.
    pub(super) async fn reattach_slurm(
        self: &Arc<Self>,
        jobs: &[JobView],
    ) -> anyhow::Result<usize> {
        if !jobs.iter().any(|j| j.state.has_worker()) {
            return Ok(0);
        }
        let rows = self
            .slurm_queue()
            .await
            .context("reading squeue to re-attach to the jobs running in Slurm")?;
        let mut attached = 0;
        for job in jobs.iter().filter(|j| j.state.has_worker()) {
            let dir = spawn::job_dir(&self.config.state_dir, job.id);
            let file = read_run_file(&dir);
            let name = self.slurm_name(job.id);
            let by_name = rows
                .iter()
                .filter(|r| r.name == name && alive(&r.state))
                .map(|r| r.job)
                .max();
            let Some(slurm_job) = file.as_ref().map(|f| f.slurm_job).or(by_name) else {
                continue;
            };
            let secret = std::fs::read_to_string(dir.join(crate::commands::worker::SECRET_FILE))
                .unwrap_or_default();
            // A pause recorded in the job's state alone: the previous daemon died before it
            // wrote slurm.json.
            let pausing = (job.state == JobState::Pausing).then_some(Intent::Pause);
            let intent = file.as_ref().and_then(|f| f.intent).or(pausing);
            let applied = match self.store.worker_seq(job.id)? {
                Some((j, seq)) if j == slurm_job => seq,
                _ => 0,
            };
            let run = SlurmRun {
                job: slurm_job,
                secret_hash: tokens::hash(secret.trim()),
                applied,
                outcome: None,
            };
            tracing::info!(job = job.id, slurm_job, "re-attached to its Slurm job");
            self.slots().insert(
                job.id,
                Slot {
                    intent,
                    estimate: job.memory.estimate_bytes.unwrap_or(0),
                    slurm: Some(run),
                    ..Slot::default()
                },
            );
            attached += 1;
            // The previous daemon may have died before its signal went out: asking again
            // costs nothing.
            if let Some(intent) = intent {
                self.stop_in_slurm(job.id, slurm_job, intent);
            }
        }
        Ok(attached)
    }

    /// `POST /internal/v1/jobs/{id}/events`: applies the events of `report` not applied yet,
    /// in order, if `secret` is the job's current attempt's.
    pub async fn take_report(
        self: &Arc<Self>,
        id: u64,
        secret: &str,
        report: WorkerReport,
    ) -> Result<u64, ReportError> {
        // One report at a time: a worker retrying a batch whose answer it lost must not race
        // the first delivery.
        let _one = self.reporting.lock().await;
        let run = self
            .slots()
            .get(&id)
            .and_then(|s| s.slurm.clone())
            .ok_or_else(|| ReportError::NoWorker(format!("job {id} has no worker in Slurm now")))?;
        if tokens::hash(secret) != run.secret_hash {
            return Err(ReportError::WrongSecret);
        }
        let mut applied = run.applied;
        let mut result = Ok(());
        for (seq, event) in (report.first_seq..).zip(report.events) {
            if seq <= applied {
                continue;
            }
            let mut outcome = None;
            // Each number right after its event: a store recovered after a crash (a prefix of
            // the writes) then holds every event its number counts, and at most the one event
            // being applied beyond it, which `append_metric` takes as told twice.
            let done = match super::monitor::apply(self, id, event, &mut outcome).await {
                Ok(()) => self.store.set_worker_seq(id, run.job, seq).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                result = Err(e);
                break;
            }
            applied = seq;
            if let Some(slot) = self.slots().get_mut(&id).and_then(|s| s.slurm.as_mut()) {
                slot.applied = seq;
                if outcome.is_some() {
                    slot.outcome = outcome;
                }
            }
        }
        // Durable before the answer: a worker told 200 never posts these again. An answer that
        // is not 200 makes it post them again.
        result = result.and(self.store.flush().await);
        result.map(|()| applied).map_err(ReportError::Store)
    }
}

/// `DIR/worker.secret`, readable by its owner only.
fn write_secret(dir: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(crate::commands::worker::SECRET_FILE);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GpuType;

    fn spec(device: &str) -> JobSpec {
        JobSpec::parse(
            &format!(
                "[model]\nbase = \"m\"\n[data]\ntrain = \"t\"\n[resources]\ndevice = \"{device}\"\n"
            ),
            "j".as_ref(),
        )
        .unwrap()
    }

    #[test]
    fn the_estimate_picks_the_smallest_gpu_type_that_holds_it() {
        let mut cfg = ServeConfig {
            headroom_mib: 512,
            ..ServeConfig::default()
        };
        cfg.slurm.gpu_types = vec![
            GpuType {
                gres: "rtx3090".into(),
                memory_mib: 24_576,
            },
            GpuType {
                gres: "a4000".into(),
                memory_mib: 16_376,
            },
        ];
        cfg.slurm.time_limit = "1-00:00:00".into();
        let gib = 1u64 << 30;
        let small = request(&cfg, &spec("auto"), 10 * gib).unwrap();
        assert_eq!(
            small,
            [
                "--cpus-per-task=4",
                "--gres=gpu:a4000:1",
                "--mem=16384M",
                "--time=1-00:00:00"
            ]
        );
        // 16,376 MiB holds 15.5 GiB, not 15.5 GiB and 512 MiB of headroom.
        let big = request(&cfg, &spec("cuda"), 15 * gib + gib / 2).unwrap();
        assert!(big.contains(&"--gres=gpu:rtx3090:1".to_string()), "{big:?}");
        let err = request(&cfg, &spec("auto"), 30 * gib).unwrap_err();
        assert!(
            err.contains("30.0 GiB") && err.contains("rtx3090, 24.0 GiB"),
            "{err}"
        );
        // A CPU job asks for its estimate and headroom as host memory, and no GPU.
        let cpu = request(&cfg, &spec("cpu"), gib).unwrap();
        assert_eq!(cpu[1], "--mem=1536M");
        assert!(!cpu.iter().any(|a| a.starts_with("--gres")));
        cfg.slurm.gpu_types.clear();
        cfg.slurm.partition = "gpu".into();
        let any = request(&cfg, &spec("auto"), 30 * gib).unwrap();
        assert!(any.contains(&"--gres=gpu:1".to_string()), "{any:?}");
        assert!(any.contains(&"--partition=gpu".to_string()), "{any:?}");
    }

    #[test]
    fn squeue_rows_parse() {
        let rows = parse_queue(
            "42|orpod-7|PENDING|Resources|\n43|orpod-8|RUNNING|None|gpu-box-2\nnot a row\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].job, 42);
        assert_eq!(rows[0].reason, "Resources");
        assert_eq!(rows[1].node, "gpu-box-2");
        assert!(alive("PENDING") && alive("COMPLETING") && !alive("NODE_FAIL"));
        let reasons: Vec<String> = parse_queue(
            "42|orpod-7|PENDING|Resources|\n42|orpod-7|PENDING|None|\n\
             42|orpod-7|RUNNING|None|gpu-box-2\n42|orpod-7|CONFIGURING|None|\n",
        )
        .iter()
        .map(waiting_reason)
        .collect();
        assert_eq!(
            reasons,
            [
                "slurm: Resources (job 42)",
                "slurm: pending (job 42)",
                "slurm: RUNNING on gpu-box-2 (job 42)",
                "slurm: CONFIGURING (job 42)"
            ]
        );
    }

    /// What `sinfo -h -N -O NODE_FORMAT` printed on the tests' cluster (Slurm 22.05) with a job
    /// holding the GPU, and a node in two partitions.
    #[test]
    fn sinfo_rows_parse() {
        let nodes = parse_nodes(
            "vm|mix|1/1/0/2|21735|100|gpu:fake:1|gpu:fake:1(IDX:0)|debug*|\n\
             box2|idle|0/16/0/16|64000|0|gpu:a4000:2|gpu:a4000:0(IDX:N/A)|debug*|\n\
             box2|idle|0/16/0/16|64000|0|gpu:a4000:2|gpu:a4000:0(IDX:N/A)|long|\n",
        );
        assert_eq!(nodes.len(), 2);
        assert_eq!(
            nodes[0],
            SlurmNodeView {
                name: "vm".into(),
                state: "mix".into(),
                cpus_total: 2,
                cpus_allocated: 1,
                memory_bytes: 21735 << 20,
                memory_allocated_bytes: 100 << 20,
                gres: "gpu:fake:1".into(),
                gres_used: "gpu:fake:1(IDX:0)".into(),
                partitions: vec!["debug".into()],
                running_jobs: vec![],
            }
        );
        assert_eq!(nodes[1].partitions, ["debug", "long"]);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
