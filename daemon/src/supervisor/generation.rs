//! Generation requests (`POST /v1/jobs/{id}/generate`): each is admitted on memory like a job
//! and runs in its own worker process, `orpod generate --events`, whose JSON-lines events are
//! passed on to the client as they come.
//!
//! Admission: the request's estimate (`engine::estimate_bytes`) must fit a device's free
//! memory less what is promised to running jobs and other generations, less the headroom,
//! decided under the same lock as a scheduling round's starts; so a generation never takes
//! memory a training job was admitted with, and a job started later counts the generation's.
//! A generation takes no `max_running` slot (it lasts seconds to minutes); at most
//! `max_generations` run at once. One that does not fit waits, saying why, for at most
//! `generate_wait_s`.
//!
//! The worker is killed when the client goes away (its stream is dropped), when it is done,
//! or when the daemon dies (PR_SET_PDEATHSIG): an answer has nothing to save.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use orpo_api::GenerateEvent;
use orpo_trainer::generate::engine::{estimate_bytes, GenerateOptions};
use orpo_trainer::model::ModelConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{spawn, Supervisor};
use crate::devices::admission::{admit, Candidate, Decision};

/// The most generation requests waiting for memory or a slot at once, beyond those running.
pub const MAX_WAITING: usize = 16;

/// How often a waiting request asks admission again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Lines of the worker's stderr kept for the error message when it fails.
const STDERR_LINES: usize = 20;

/// The memory a generation worker on `cfg` is admitted with: prompts of up to `prompt_tokens`
/// and answers of up to `max_new` tokens (both within the model's positions), in the dtype the
/// worker takes (`--dtype auto`: bf16 on CUDA, f32 on the CPU).
pub fn estimate(
    cfg: &ModelConfig,
    prompt_tokens: usize,
    max_new: usize,
    cuda: bool,
) -> orpo_trainer::Result<u64> {
    let tokens = (prompt_tokens + max_new).min(cfg.max_position_embeddings);
    estimate_bytes(cfg, if cuda { 2 } else { 4 }, tokens as u64, cuda)
}

/// A generation's worker as admission counts it.
#[derive(Debug)]
pub struct GenerationSlot {
    /// What it is for people: `generation N`, `samples of job J step-N`.
    what: String,
    device: String,
    estimate: u64,
    pid: Option<u32>,
}

/// What a request runs: a checkpoint of a job, its base, the device pin of the job.
#[derive(Debug, Clone)]
pub struct GenerationWork {
    pub job: u64,
    pub checkpoint: String,
    pub checkpoint_dir: PathBuf,
    pub base: PathBuf,
    pub pin: String,
    pub estimate: u64,
    pub prompts: Vec<String>,
    /// Answer with the base alone first.
    pub compare_base: bool,
    /// The request's settings, checked, with defaults filled in.
    pub options: GenerateOptions,
}

/// A request counted against [`MAX_WAITING`] + `max_generations` until dropped.
pub struct RequestTicket {
    sup: Arc<Supervisor>,
}

impl Drop for RequestTicket {
    fn drop(&mut self) {
        self.sup.generation_requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A generation's memory, promised until dropped.
pub(super) struct Admitted {
    sup: Arc<Supervisor>,
    key: u64,
    device: String,
}

impl Admitted {
    pub(super) fn device(&self) -> &str {
        &self.device
    }

    pub(super) fn set_pid(&self, pid: Option<u32>) {
        if let Some(slot) = self.sup.generations().get_mut(&self.key) {
            slot.pid = pid;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.sup.generations().remove(&self.key);
        // Memory freed: a queued job may fit now.
        self.sup.wake();
    }
}

impl Supervisor {
    fn generations(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, GenerationSlot>> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(what, pid, device, estimate)` of every generation with a worker, for
    /// [`Supervisor::device_states`].
    pub(super) fn generation_workers(&self) -> Vec<(String, Option<u32>, String, u64)> {
        self.generations()
            .values()
            .map(|s| (s.what.clone(), s.pid, s.device.clone(), s.estimate))
            .collect()
    }

    /// Generation requests with a worker now (`/metrics`).
    pub fn generations_running(&self) -> usize {
        self.generations().len()
    }

    /// Counts a new request, or says why there is no room for one (429).
    pub fn generation_ticket(self: &Arc<Self>) -> Result<RequestTicket, String> {
        let cap = self.config.max_generations.max(1) + MAX_WAITING;
        let now = self.generation_requests.fetch_add(1, Ordering::SeqCst);
        let ticket = RequestTicket { sup: self.clone() };
        if now >= cap {
            return Err(format!(
                "{now} generation requests are running or waiting (max_generations = {} plus \
                 {MAX_WAITING} waiting); try again later",
                self.config.max_generations
            ));
        }
        Ok(ticket)
    }

    /// Places a generation of `estimate` bytes on a device `pin` allows, or says why it waits.
    /// `what` names it where its memory is shown promised (default `generation N`).
    pub(super) async fn admit_generation(
        self: &Arc<Self>,
        pin: &str,
        estimate: u64,
        what: Option<String>,
    ) -> anyhow::Result<Result<Admitted, String>> {
        let _admitting = self.admitting.lock().await;
        let max = self.config.max_generations.max(1);
        let running = self.generations().len();
        if running >= max {
            return Ok(Err(format!(
                "waiting for a generation slot: {running} generation(s) running \
                 (max_generations = {max})"
            )));
        }
        let devices = self.device_states()?;
        let key = self.generation_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let candidate = Candidate {
            id: key,
            estimate: Some(estimate),
            pin: pin.to_string(),
        };
        // Generations take no max_running slot: admission sees none running.
        match admit(&[candidate], &devices, 0, &self.policy()).pop() {
            Some(Decision::Start { device, .. }) => {
                self.generations().insert(
                    key,
                    GenerationSlot {
                        what: what.unwrap_or_else(|| format!("generation {key}")),
                        device: device.clone(),
                        estimate,
                        pid: None,
                    },
                );
                Ok(Ok(Admitted {
                    sup: self.clone(),
                    key,
                    device,
                }))
            }
            Some(Decision::Wait { reason, .. }) => Ok(Err(format!("waiting for memory: {reason}"))),
            None => unreachable!("admission decides every candidate"),
        }
    }

    /// Runs `work` to the end, sending its events to `tx`: waits for admission, starts the
    /// worker, passes its events on, ends with `done` or `error`. Returns early, killing the
    /// worker, when the receiver is dropped (the client went away).
    pub async fn run_generation(
        self: Arc<Self>,
        work: GenerationWork,
        tx: mpsc::Sender<GenerateEvent>,
        _ticket: RequestTicket,
    ) {
        let last = match self.generate(&work, &tx).await {
            Ok(true) => GenerateEvent::Done {},
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(job = work.job, "generation failed: {e:#}");
                GenerateEvent::Error {
                    kind: "generation".into(),
                    message: format!("{e:#}"),
                }
            }
        };
        let _ = tx.send(last).await;
    }

    /// [`Supervisor::run_generation`]'s work: `Ok(false)` when the client went away.
    async fn generate(
        self: &Arc<Self>,
        work: &GenerationWork,
        tx: &mpsc::Sender<GenerateEvent>,
    ) -> anyhow::Result<bool> {
        let wait_s = self.config.generate_wait_s;
        let deadline = Instant::now() + Duration::from_secs(wait_s);
        let mut last_reason = String::new();
        let admitted = loop {
            if self.is_stopping() {
                anyhow::bail!("the daemon is stopping");
            }
            match self
                .admit_generation(&work.pin, work.estimate, None)
                .await?
            {
                Ok(a) => break a,
                Err(reason) => {
                    if Instant::now() >= deadline {
                        anyhow::bail!("waited {wait_s} s (generate_wait_s) and still {reason}");
                    }
                    if reason != last_reason {
                        let event = GenerateEvent::Waiting {
                            reason: reason.clone(),
                        };
                        if tx.send(event).await.is_err() {
                            return Ok(false);
                        }
                        last_reason = reason;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_EVERY) => {}
                        _ = tx.closed() => return Ok(false),
                    }
                }
            }
        };
        let started = GenerateEvent::Started {
            device: admitted.device.clone(),
            checkpoint: work.checkpoint.clone(),
            estimate_bytes: work.estimate,
        };
        if tx.send(started).await.is_err() {
            return Ok(false);
        }
        let (run_on, nice) = self.run_on(&admitted.device);
        let exe = self.config.worker_exe()?;
        let opts = &work.options;
        let mut child = spawn_generate(
            &exe,
            &work.checkpoint_dir,
            &work.base,
            &run_on,
            nice,
            |cmd| {
                cmd.args(["--events", "--prompts-stdin"])
                    .args(["--max-new-tokens", &opts.max_new_tokens.to_string()])
                    .args(["--seed", &opts.seed.to_string()]);
                if let Some(t) = opts.temperature {
                    cmd.args(["--temperature", &t.to_string()]);
                }
                if let Some(k) = opts.top_k {
                    cmd.args(["--top-k", &k.to_string()]);
                }
                if let Some(p) = opts.top_p {
                    cmd.args(["--top-p", &p.to_string()]);
                }
                if work.compare_base {
                    cmd.arg("--compare-base");
                }
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            },
        )?;
        admitted.set_pid(child.id());
        tracing::info!(job = work.job, pid = child.id(), device = %run_on, "generation started");

        let prompts = serde_json::to_vec(&work.prompts).expect("strings serialise");
        let mut stdin = child.stdin.take().context("the worker's stdin")?;
        // A worker that dies before reading its prompts shows as its exit status below.
        let _ = stdin.write_all(&prompts).await;
        drop(stdin);

        let tail = stderr_tail(child.stderr.take().context("the worker's stderr")?);
        let stdout = child.stdout.take().context("the worker's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line.context("reading the worker's output")?,
                _ = tx.closed() => return Ok(false),
            };
            let Some(line) = line else { break };
            // Only answers come from the worker; anything else on its stdout is not passed on.
            match serde_json::from_str::<GenerateEvent>(&line) {
                Ok(event @ (GenerateEvent::Token { .. } | GenerateEvent::Answer { .. })) => {
                    if tx.send(event).await.is_err() {
                        return Ok(false);
                    }
                }
                _ => tracing::debug!(job = work.job, "generation worker wrote: {line}"),
            }
        }
        let status = child.wait().await.context("waiting for the worker")?;
        let stderr = tail.await.unwrap_or_default();
        if !status.success() {
            anyhow::bail!(
                "the generation worker exited with {status}: {}",
                last_error(&stderr)
            );
        }
        Ok(true)
    }
}

/// The last [`STDERR_LINES`] of a worker's stderr, read as it writes them.
pub(super) fn stderr_tail(stderr: tokio::process::ChildStderr) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut tail = VecDeque::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if tail.len() == STDERR_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail).join("\n")
    })
}

/// The worker's own error line (`error: ...`), else its last lines.
pub(super) fn last_error(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            l.trim()
                .strip_prefix("error: ")
                .or_else(|| l.trim().strip_prefix("Error: "))
        })
        .map(str::to_string)
        .unwrap_or_else(|| stderr.trim().to_string())
}

/// `<exe> generate CHECKPOINT --base BASE --device DEVICE`, then what `configure` adds (more
/// arguments, stdin and stdout), with stderr piped; killed when dropped and when the daemon
/// dies. The worker of a generation request and of a checkpoint's samples.
pub(super) fn spawn_generate(
    exe: &Path,
    checkpoint_dir: &Path,
    base: &Path,
    device: &str,
    nice: Option<i32>,
    configure: impl FnOnce(&mut std::process::Command),
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("generate")
        .arg(checkpoint_dir)
        .arg("--base")
        .arg(base)
        .args(["--device", device])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    spawn::worker_env(&mut cmd);
    spawn::tie_to_daemon(&mut cmd, libc::SIGKILL, nice);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting {} generate", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;
    use crate::devices::FakeGpu;
    use crate::store::Store;

    const GIB: u64 = 1 << 30;

    /// On a fake 24 GiB GPU with 4 GiB used by others and 1 GiB headroom: a generation is
    /// placed where it fits and its memory is promised to it (a job admitted next sees less
    /// free, with the generation named), the slot cap holds, and dropping the admission frees
    /// both.
    #[tokio::test]
    async fn generations_are_admitted_on_memory_and_slots_and_release_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = Arc::new(ServeConfig {
            state_dir: dir.path().to_path_buf(),
            max_generations: 1,
            headroom_mib: 1024,
            fake_gpus: vec![FakeGpu {
                name: "Fake 24G".into(),
                total_mib: 24 * 1024,
                used_mib: 4 * 1024,
                processes: Vec::new(),
                utilization_percent: None,
                temperature_c: None,
            }],
            ..ServeConfig::default()
        });
        let sup = Supervisor::new(store, config);
        let too_big = sup.admit_generation("cuda", 20 * GIB, None).await.unwrap();
        let reason = too_big.err().expect("20 GiB does not fit in 19 usable");
        assert!(
            reason.starts_with(
                "waiting for memory: needs 20.0 GiB (+ 1.0 GiB headroom); cuda:0: 20.0 GiB free"
            ),
            "{reason}"
        );
        let first = sup
            .admit_generation("cuda", 6 * GIB, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.device, "cuda:0");
        let promised = || {
            let states = sup.device_states().unwrap();
            let gpu = states.into_iter().find(|d| d.reading.device == "cuda:0");
            gpu.unwrap().promised
        };
        assert_eq!(
            promised(),
            vec![(format!("generation {}", first.key), 6 * GIB)]
        );
        let second = sup.admit_generation("cuda", GIB, None).await.unwrap();
        assert_eq!(
            second.err().unwrap(),
            "waiting for a generation slot: 1 generation(s) running (max_generations = 1)"
        );
        drop(first);
        assert!(sup
            .device_states()
            .unwrap()
            .iter()
            .all(|d| d.promised.is_empty()));
        // Checkpoint samples are admitted the same way, shown by what they are for.
        let samples = sup
            .admit_generation("cuda", 2 * GIB, Some("samples of job 3 step-4".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            promised(),
            vec![("samples of job 3 step-4".to_string(), 2 * GIB)]
        );
        drop(samples);
        assert!(sup
            .admit_generation("cuda", 6 * GIB, None)
            .await
            .unwrap()
            .is_ok());
    }

    #[test]
    fn requests_past_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = Arc::new(ServeConfig {
            state_dir: dir.path().to_path_buf(),
            max_generations: 1,
            ..ServeConfig::default()
        });
        let sup = Supervisor::new(store, config);
        let tickets: Vec<_> = (0..1 + MAX_WAITING)
            .map(|_| sup.generation_ticket().unwrap())
            .collect();
        let err = sup.generation_ticket().err().unwrap();
        assert!(
            err.contains("17 generation requests are running or waiting"),
            "{err}"
        );
        drop(tickets);
        assert!(sup.generation_ticket().is_ok());
    }

    #[test]
    fn the_workers_own_error_line_is_the_message() {
        let stderr = "2026-12-07T10:00:00Z INFO loading\nError: loading /m: no such file\n";
        assert_eq!(last_error(stderr), "loading /m: no such file");
        assert_eq!(last_error("thread panicked at x\n"), "thread panicked at x");
    }
}
