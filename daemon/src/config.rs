//! `orpod serve`'s settings: embedded defaults, overridden by the config file
//! (`--config FILE`, TOML), overridden by flags. Unknown keys in the file are an error.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::devices::FakeGpu;

/// The documented default address: loopback only, so a fresh install is not on the LAN until
/// the operator says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";

/// Everything `orpod serve` (and [`crate::server::run`]) needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// `host:port`; port 0 picks a free one (tests).
    pub listen: String,
    /// sled database, uploaded data sets, job folders.
    pub state_dir: PathBuf,
    /// Folders `model.base` (and `lora.init_adapter`) must be inside, symlinks followed; a
    /// relative `model.base` is taken inside the first. Empty: `<state_dir>/models`.
    pub model_roots: Vec<PathBuf>,
    /// Folders from which a job may take `data.train = "server:<path>"` (symlinks followed; a
    /// relative path is taken inside the first); `{user}` in a root stands for the job's
    /// owner, so each user reads only their own folder. Empty: data only as uploads.
    pub data_roots: Vec<PathBuf>,
    /// The most jobs running at once (one worker process each), whatever the memory; admission
    /// starts a job only when a device also has the memory its estimate needs.
    pub max_running: usize,
    /// MiB kept free on every device beyond a job's estimate: room for the estimate's error and
    /// for other users' processes to grow.
    pub headroom_mib: u64,
    /// Let smaller jobs start past a job that runs first but does not fit yet. Off: strict
    /// queue order, a big job at the head holds everyone back until it fits.
    pub backfill: bool,
    /// GPUs that exist only in the config, for tests of admission without a GPU: `[[fake_gpus]]`
    /// with `name`, `total_mib`, `used_mib`, and `[[fake_gpus.processes]]` (`pid`, `name`,
    /// `used_mib`). Jobs placed on them run on the CPU. Empty: read real GPUs through NVML.
    pub fake_gpus: Vec<FakeGpu>,
    /// Niceness of CPU workers, so the daemon's HTTP stays responsive beside a training job.
    pub cpu_worker_nice: i32,
    /// Seconds a cancelled worker gets to stop after SIGTERM before SIGKILL.
    pub cancel_grace_s: u64,
    /// Seconds running jobs get to checkpoint when the daemon stops (keep systemd's
    /// `TimeoutStopSec` above this).
    pub shutdown_grace_s: u64,
    /// Largest data set upload accepted, in bytes. Default 1 GiB.
    pub max_upload_bytes: usize,
    /// Most rows (non-blank lines) in an uploaded data set. Default 5,000,000: ten times the
    /// largest public preference sets.
    pub max_upload_rows: usize,
    /// Longest line of an uploaded data set, in bytes; an upload is checked a line at a time, so
    /// this bounds the memory one upload takes. Default 1 MiB (about 250k tokens of text).
    pub max_line_bytes: usize,
    /// Most clients following one job's events (`GET /v1/jobs/{id}/events?follow=true`) at
    /// once. Default 16.
    pub max_followers_per_job: usize,
    /// Most clients following events at once, all jobs together. Default 256.
    pub max_followers: usize,
    /// Seconds between keep-alive comments on a quiet event stream; a client that went away is
    /// only noticed when a write to it fails, so this bounds how long its stream lingers.
    /// Default 15.
    pub events_keepalive_s: u64,
    /// Days after which a finished job's intermediate checkpoints (`checkpoints/step-N/`, the
    /// bulk of its disk) are removed; its final adapter, record and metrics stay until
    /// `orpoctl rm`. 0 keeps them. Default 14.
    pub checkpoint_retention_days: u64,
    /// Days after which a finished job is deleted whole (record, history, files). 0 keeps
    /// finished jobs until `orpoctl rm`. Default 0.
    pub job_retention_days: u64,
    /// MiB that must stay free on the state folder's file system: uploads and submits are
    /// refused below it (507), so a full disk never stops the queue or corrupts the store.
    /// Default 256.
    pub min_free_mib: u64,
    /// The program run as `<worker_exe> worker --job-dir DIR`; empty: this executable.
    pub worker_exe: Option<PathBuf>,
    /// The highest `priority` a job may have unless an admin submits it. Default 10.
    pub max_user_priority: i32,
    /// Most unfinished jobs one user may have waiting (queued, paused or interrupted); a submit
    /// past it is refused. Default 50.
    pub max_queued_per_user: usize,
    /// Most jobs of one user running at once; 0: only `max_running` bounds them. Default 0.
    pub max_running_per_user: usize,
    /// Most optimizer steps one user's unfinished jobs may still have to run, all together; a
    /// submit that would pass it is refused. Default 1,000,000.
    pub max_steps_per_user: u64,
    /// MiB one user's job folders (checkpoints, adapters, exports) may hold on the state disk;
    /// while they hold more, submits are refused and queued jobs wait (`orpoctl rm` frees it).
    /// Default 51,200.
    pub max_checkpoint_mib_per_user: u64,
    /// The most checkpoints a job may keep (`train.keep_checkpoints`). Default 10.
    pub max_keep_checkpoints: usize,
    /// The smallest `train.save_every` a job may ask for (0, "final only", is always allowed).
    /// Default 10.
    pub min_save_every: usize,
    /// URL prefixes users' notification endpoints must start with (`http://host:port/path`,
    /// compared after parsing: scheme, host and port equal, path under it). Empty: users cannot
    /// add endpoints. Only the operator sets it, so the daemon posts where the admin allows.
    pub notify_allow: Vec<String>,
    /// Seconds a job may wait in the queue before its owner hears that it waits (once per job);
    /// 0: never. Default 3600.
    pub notify_wait_after_s: u64,
    /// Tries after the first when an endpoint fails, 1 s apart and doubling. Default 5.
    pub notify_retries: u32,
    /// Most generation requests (`POST /v1/jobs/{id}/generate`) with a worker at once; more
    /// wait. They need memory like a job but take no `max_running` slot. Default 2.
    pub max_generations: usize,
    /// Seconds a generation request may wait for memory or a slot before it is refused.
    /// Default 600.
    pub generate_wait_s: u64,
    /// Where training workers run: `local` (child processes of the daemon, placed by its own
    /// admission on this machine's devices) or `slurm` (batch jobs placed by Slurm, settings in
    /// `[slurm]`). Generation requests and checkpoint samples always run locally.
    pub executor: Executor,
    /// The Slurm executor's settings (`executor = "slurm"`).
    pub slurm: SlurmConfig,
}

/// Where training workers run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    #[default]
    Local,
    Slurm,
}

/// `[slurm]`: how jobs become Slurm batch jobs. The daemon runs `sbatch`, `squeue`, `scancel`
/// and `sinfo` from `PATH`; the state folder must be the same path on every node (NFS or the
/// like): workers read their job.toml and data there and write checkpoints there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// The URL workers on the nodes reach this daemon at (they report events there). Empty:
    /// `http://<listen address>`, which only suits a cluster of this one machine.
    pub daemon_url: String,
    /// `SLURM_CONF` for the Slurm commands; empty: Slurm's default (`/etc/slurm/slurm.conf`).
    pub conf: Option<PathBuf>,
    /// `--partition`; empty: the cluster's default partition.
    pub partition: String,
    /// The GPU gres types and their memory, smallest first or not: a job asks for the
    /// smallest type whose memory holds its estimate plus `headroom_mib`
    /// (`--gres=gpu:<gres>:1`). Empty: any GPU (`--gres=gpu:1`).
    pub gpu_types: Vec<GpuType>,
    /// `--cpus-per-task` of every job. Default 4.
    pub cpus_per_job: u32,
    /// `--mem` in MiB of a GPU job (the host memory it loads the model in); a CPU job asks for
    /// its estimate plus `headroom_mib`. Default 16,384.
    pub gpu_job_host_mib: u64,
    /// `--time` (Slurm's formats, e.g. `2-00:00:00`); empty: the partition's default. A job
    /// stopped at its limit checkpoints and is submitted again to go on.
    pub time_limit: String,
    /// Most of this daemon's jobs in Slurm at once (pending or running). Default 16.
    pub max_jobs: usize,
    /// The Slurm job name is `<job_name_prefix>-<job id>`: how a restarted daemon finds its
    /// jobs. Give each daemon sharing a cluster its own. Default `orpod`.
    pub job_name_prefix: String,
    /// Seconds a worker waits for the daemon to take its last events (the daemon may be
    /// restarting) before it exits anyway. Default 120.
    pub report_wait_s: u64,
}

/// One GPU type of the cluster, as its `gres.conf` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuType {
    /// The gres type (`gpu:<gres>`), e.g. `a4000`.
    pub gres: String,
    /// Its memory in MiB.
    pub memory_mib: u64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            daemon_url: String::new(),
            conf: None,
            partition: String::new(),
            gpu_types: Vec::new(),
            cpus_per_job: 4,
            gpu_job_host_mib: 16_384,
            time_limit: String::new(),
            max_jobs: 16,
            job_name_prefix: "orpod".into(),
            report_wait_s: 120,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: DEFAULT_LISTEN.into(),
            state_dir: default_state_dir(),
            model_roots: Vec::new(),
            data_roots: Vec::new(),
            max_running: 1,
            headroom_mib: 512,
            backfill: true,
            fake_gpus: Vec::new(),
            cpu_worker_nice: 10,
            cancel_grace_s: 10,
            shutdown_grace_s: 60,
            max_upload_bytes: 1 << 30,
            max_upload_rows: 5_000_000,
            max_line_bytes: 1 << 20,
            max_followers_per_job: 16,
            max_followers: 256,
            events_keepalive_s: 15,
            checkpoint_retention_days: 14,
            job_retention_days: 0,
            min_free_mib: 256,
            worker_exe: None,
            max_user_priority: 10,
            max_queued_per_user: 50,
            max_running_per_user: 0,
            max_steps_per_user: 1_000_000,
            max_checkpoint_mib_per_user: 51_200,
            max_keep_checkpoints: 10,
            min_save_every: 10,
            notify_allow: Vec::new(),
            max_generations: 2,
            generate_wait_s: 600,
            notify_wait_after_s: 3600,
            notify_retries: 5,
            executor: Executor::Local,
            slurm: SlurmConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults, then the file when given.
    pub fn load(file: Option<&Path>) -> anyhow::Result<ServeConfig> {
        let Some(path) = file else {
            return Ok(ServeConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// `user`'s data roots: the configured ones with `{user}` replaced.
    pub fn data_roots(&self, user: &str) -> Vec<PathBuf> {
        self.data_roots
            .iter()
            .map(|r| PathBuf::from(r.to_string_lossy().replace("{user}", user)))
            .collect()
    }

    /// The model roots in force: the configured ones, or `<state_dir>/models`.
    pub fn model_roots(&self) -> Vec<PathBuf> {
        if self.model_roots.is_empty() {
            vec![self.state_dir.join(MODELS_DIR)]
        } else {
            self.model_roots.clone()
        }
    }

    /// The worker executable: the configured one or the running binary.
    pub fn worker_exe(&self) -> anyhow::Result<PathBuf> {
        match &self.worker_exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().context("locating the orpod executable"),
        }
    }
}

/// The folder of the state directory where models go when `model_roots` is not set.
pub const MODELS_DIR: &str = "models";

/// What the foreground commands (`orpod train`, `orpod eval`) make of a relative `model.base`
/// that is not beside the job file (`JobSpec::load` resolves those): a model in the default
/// state folder's `models/`, as the daemon reads it, so one job file works both ways.
pub fn local_model(base: &str) -> String {
    let path = Path::new(base);
    if path.is_relative() && !path.exists() {
        let in_models = default_state_dir().join(MODELS_DIR).join(path);
        if in_models.exists() {
            return in_models.to_string_lossy().into_owned();
        }
    }
    base.to_string()
}

/// The foreground commands read data files here: a `sha256:` or `server:` value names data on
/// a daemon, which they cannot reach.
pub fn local_data(spec: &orpo_api::JobSpec) -> anyhow::Result<()> {
    for (key, value) in [
        ("data.train", &spec.data.train),
        ("data.eval", &spec.data.eval),
    ] {
        if orpo_api::is_server_data(value) {
            anyhow::bail!(
                "{key} = {value:?} names data on a daemon (`orpoctl submit` sends it there); \
                 here give the JSONL file's path"
            );
        }
    }
    Ok(())
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `$XDG_STATE_HOME/orpod`, else
/// `~/.local/state/orpod`.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("STATE_DIRECTORY") {
        // systemd may pass several colon-separated folders; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return PathBuf::from(first);
    }
    if let Some(dir) = env("XDG_STATE_HOME") {
        return dir.join("orpod");
    }
    let home = env("HOME").unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/orpod")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("orpod.toml");
        std::fs::write(&p, "listen = \"0.0.0.0:9000\"\nmax_running = 2\n").unwrap();
        let c = ServeConfig::load(Some(&p)).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.max_running, 2);
        assert_eq!(c.cancel_grace_s, ServeConfig::default().cancel_grace_s);
        std::fs::write(&p, "listn = \"x\"\n").unwrap();
        let err = format!("{:#}", ServeConfig::load(Some(&p)).unwrap_err());
        assert!(err.contains("listn"), "{err}");
        assert_eq!(ServeConfig::load(None).unwrap().listen, DEFAULT_LISTEN);
    }

    /// The example config documents every default (only `model_roots` differs).
    #[test]
    fn example_config_lists_the_defaults() {
        let example: ServeConfig =
            toml::from_str(include_str!("../../systemd/orpod.toml")).unwrap();
        let defaults = ServeConfig {
            model_roots: example.model_roots.clone(),
            state_dir: example.state_dir.clone(),
            ..ServeConfig::default()
        };
        assert_eq!(example, defaults);
    }

    #[test]
    fn fake_gpus_with_foreign_processes_parse() {
        let c: ServeConfig = toml::from_str(
            "headroom_mib = 256\nbackfill = false\n\
             [[fake_gpus]]\nname = \"RTX 4090\"\ntotal_mib = 24564\nused_mib = 20000\n\
             [[fake_gpus.processes]]\npid = 4242\nname = \"ollama\"\nused_mib = 19000\n\
             [[fake_gpus]]\ntotal_mib = 12288\n",
        )
        .unwrap();
        assert_eq!(c.headroom_mib, 256);
        assert!(!c.backfill);
        assert_eq!(c.fake_gpus.len(), 2);
        assert_eq!(c.fake_gpus[0].processes[0].used_mib, 19000);
        assert_eq!(c.fake_gpus[1].used_mib, 0);
        assert_eq!(c.fake_gpus[1].name, "Fake GPU");
        assert!(toml::from_str::<ServeConfig>("[[fake_gpus]]\ntotal = 1\n").is_err());
    }
}
