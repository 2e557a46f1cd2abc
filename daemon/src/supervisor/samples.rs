//! Checkpoint samples. The trainer puts a few eval prompts in each checkpoint
//! (`sample_prompts.json`); the daemon answers them with the generation engine in a worker of
//! their own, `orpod generate CHECKPOINT --samples`, which writes the checkpoint's
//! `samples.json`. That work needs the engine's dense merged copy of the model, which the
//! training job was not admitted with, so it is admitted on memory like a generation request
//! (same lock, same `max_generations` slots, its memory promised while it runs). On a card the
//! job fills, samples wait, without a deadline: the memory often comes only when the job ends.
//!
//! One queue per job, answered oldest first. A checkpoint removed meanwhile (rotated away by
//! `keep_checkpoints`, the job deleted) is skipped. A daemon that stops leaves the rest to the
//! next one, which queues every checkpoint with prompts and no samples when it starts.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use orpo_api::EventKind;
use orpo_trainer::checkpoint::{SAMPLES, SAMPLE_PROMPTS};
use orpo_trainer::generate::{self, SAMPLE_TOKENS};

use super::generation::{self, last_error, spawn_generate, stderr_tail, RETRY_EVERY};
use super::spawn::job_dir;
use super::Supervisor;
use crate::checkpoints;
use crate::store::spec_of;

/// Checkpoint names waiting for their samples, by job.
pub type SampleQueues = HashMap<u64, VecDeque<String>>;

impl Supervisor {
    fn sample_queues(&self) -> std::sync::MutexGuard<'_, SampleQueues> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the samples of `job`'s checkpoint `name` (`step-N` or `final`); the job's queue
    /// is answered by one task at a time.
    pub(super) fn queue_samples(self: &Arc<Self>, job: u64, name: String) {
        let mut queues = self.sample_queues();
        let idle = !queues.contains_key(&job);
        let queue = queues.entry(job).or_default();
        if !queue.contains(&name) {
            queue.push_back(name);
        }
        drop(queues);
        if idle {
            tokio::spawn(self.clone().answer_queue(job));
        }
    }

    /// At start: queues every checkpoint of every job that has sample prompts and no samples
    /// (left by a previous daemon that stopped before answering them). Returns how many.
    pub fn queue_missing_samples(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut queued = 0;
        for job in self.store.all_jobs()? {
            let dir = job_dir(&self.config.state_dir, job.id);
            if !dir.is_dir() {
                continue;
            }
            for checkpoint in generate::missing_samples(&dir)? {
                if let Some(name) = checkpoint.file_name() {
                    self.queue_samples(job.id, name.to_string_lossy().into_owned());
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// Answers `job`'s queue until it is empty (or the daemon stops). A failure is told in the
    /// job's event log and the next checkpoint is tried.
    async fn answer_queue(self: Arc<Self>, job: u64) {
        loop {
            let next = {
                let mut queues = self.sample_queues();
                match queues.get_mut(&job).and_then(VecDeque::pop_front) {
                    Some(name) if !self.is_stopping() => name,
                    _ => {
                        queues.remove(&job);
                        return;
                    }
                }
            };
            if let Err(e) = self.answer_samples(job, &next).await {
                tracing::warn!(job, checkpoint = %next, "samples not written: {e:#}");
                self.sample_event(job, &next, &format!("samples of {next} not written: {e:#}"))
                    .await;
            }
        }
    }

    async fn sample_event(&self, job: u64, checkpoint: &str, message: &str) {
        let name = Some(checkpoint.to_string());
        if let Err(e) = (self.store)
            .append_event(job, EventKind::Log, message, None, name)
            .await
        {
            tracing::warn!(job, "recording a samples event: {e}");
        }
    }

    /// Admits and runs the samples worker of one checkpoint; returns early, writing nothing,
    /// when the checkpoint is gone or already answered, or the daemon stops.
    async fn answer_samples(self: &Arc<Self>, job: u64, name: &str) -> anyhow::Result<()> {
        let dir = checkpoints::dir(&job_dir(&self.config.state_dir, job), name);
        let pending = || dir.join(SAMPLE_PROMPTS).is_file() && !dir.join(SAMPLES).exists();
        if !pending() {
            return Ok(());
        }
        let view = self.store.job(job)?;
        let spec = spec_of(&view);
        let base = std::path::PathBuf::from(&spec.model.base);
        let pin = spec.resources.device.clone();
        let estimate = {
            let (base, dir, cuda) = (base.clone(), dir.clone(), self.on_gpu(&pin));
            tokio::task::spawn_blocking(move || samples_estimate(&base, &dir, cuda)).await??
        };
        let mut told = false;
        let label = format!("samples of job {job} {name}");
        let admitted = loop {
            if self.is_stopping() || !pending() {
                return Ok(());
            }
            match self
                .admit_generation(&pin, estimate, Some(label.clone()))
                .await?
            {
                Ok(admitted) => break admitted,
                Err(reason) => {
                    if !told {
                        self.sample_event(job, name, &format!("samples of {name} {reason}"))
                            .await;
                        told = true;
                    }
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        };
        let (run_on, nice) = self.run_on(admitted.device());
        let exe = self.config.worker_exe()?;
        let mut child = spawn_generate(&exe, &dir, &base, &run_on, nice, |cmd| {
            cmd.arg("--samples");
        })?;
        admitted.set_pid(child.id());
        let tail = stderr_tail(child.stderr.take().context("the worker's stderr")?);
        let status = child.wait().await.context("waiting for the worker")?;
        let stderr = tail.await.unwrap_or_default();
        if !status.success() {
            // Stopped with the daemon, or the checkpoint was rotated away while it ran.
            if self.is_stopping() || !dir.join(SAMPLE_PROMPTS).is_file() {
                return Ok(());
            }
            anyhow::bail!(
                "the samples worker exited with {status}: {}",
                last_error(&stderr)
            );
        }
        self.sample_event(job, name, &format!("samples of {name} written"))
            .await;
        Ok(())
    }
}

/// The generation estimate of answering `checkpoint`'s sample prompts: the longest prompt
/// plus [`SAMPLE_TOKENS`].
fn samples_estimate(base: &Path, checkpoint: &Path, cuda: bool) -> anyhow::Result<u64> {
    let cfg = orpo_trainer::model::read_config(base)
        .with_context(|| format!("reading the base {}", base.display()))?;
    let prompts = generate::sample_prompts(checkpoint)?.unwrap_or_default();
    let longest = prompts
        .iter()
        .map(|p| p.prompt_ids.len())
        .max()
        .unwrap_or(0);
    Ok(generation::estimate(&cfg, longest, SAMPLE_TOKENS, cuda)?)
}
