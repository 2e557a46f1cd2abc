//! The user's verbs on a job: cancel, pause, resume (`POST /v1/jobs/{id}/<verb>`). A job with a
//! worker is stopped by signal and settles when the worker exits; one without changes at once.

use std::sync::Arc;
use std::time::Duration;

use orpo_api::{JobState, JobView};

use super::{spawn, Intent, Supervisor, PAUSED};
use crate::store::StoreError;

impl Supervisor {
    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(self: &Arc<Self>, id: u64) -> Result<JobView, StoreError> {
        let view = self.store.job(id)?;
        if !view.state.is_terminal() && self.stop_worker(id, Intent::Cancel) {
            let grace = Duration::from_secs(self.config.cancel_grace_s);
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let (pid, slurm_job) = match this.slots().get(&id) {
                    Some(s) => (s.pid, s.slurm.as_ref().map(|r| r.job)),
                    None => (None, None),
                };
                if let Some(pid) = pid {
                    tracing::warn!(job = id, "worker ignored SIGTERM for {grace:?}; SIGKILL");
                    spawn::signal(pid, libc::SIGKILL);
                }
                if let Some(job) = slurm_job {
                    this.kill_in_slurm(id, job).await;
                }
            });
            return Ok(view);
        }
        let view = self
            .store
            .update_job(id, move |v| {
                // Decided here, in the write, not on the read above: while the store cannot
                // write, reads may show a change it will lose (see `Store::reopened`).
                if v.state.is_terminal() {
                    return Err(format!("job {id} is already {}", v.state));
                }
                if v.state.has_worker() {
                    return Err(format!("job {id} is {}", v.state));
                }
                v.state = JobState::Cancelled;
                v.pending_reason = None;
                v.finished_at = Some(crate::now_rfc3339());
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        Ok(view)
    }

    /// `POST /v1/jobs/{id}/pause`: a running job checkpoints and stops; a queued one leaves the
    /// queue.
    pub async fn pause(self: &Arc<Self>, id: u64) -> Result<JobView, StoreError> {
        let view = self
            .store
            .update_job(id, move |v| {
                match v.state {
                    JobState::Starting | JobState::Running => v.state = JobState::Pausing,
                    JobState::Queued | JobState::Interrupted => {
                        v.state = JobState::Paused;
                        v.pending_reason = Some(PAUSED.into());
                    }
                    s => {
                        return Err(format!(
                            "job {id} is {s}; only queued or running jobs pause"
                        ))
                    }
                }
                Ok(())
            })
            .await?;
        if view.state == JobState::Pausing {
            self.stop_worker(id, Intent::Pause);
        }
        self.store.flush().await?;
        Ok(view)
    }

    /// `POST /v1/jobs/{id}/resume`: back into the queue; the worker resumes from the newest
    /// checkpoint.
    pub async fn resume(self: &Arc<Self>, id: u64) -> Result<JobView, StoreError> {
        let view = self
            .store
            .update_job(id, move |v| {
                if !matches!(v.state, JobState::Paused | JobState::Interrupted) {
                    return Err(format!("job {id} is {}; only paused jobs resume", v.state));
                }
                v.state = JobState::Queued;
                v.pending_reason = Some("resumed; continues from its newest checkpoint".into());
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        self.wake();
        Ok(view)
    }
}
