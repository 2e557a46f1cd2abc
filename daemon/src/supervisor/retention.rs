//! Deleting what is no longer needed: a finished job on request (`DELETE /v1/jobs/{id}`,
//! `orpoctl rm`), and, once an hour, what the retention settings let go: the intermediate
//! checkpoints of jobs finished more than `checkpoint_retention_days` ago (their final adapter,
//! record and metrics stay), whole jobs finished more than `job_retention_days` ago, job
//! folders no record owns (left by a crash between a delete's two steps), and temporary files
//! of uploads a crash interrupted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use orpo_api::{EventKind, JobView};

use super::{spawn, Supervisor};
use crate::store::StoreError;

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

impl Supervisor {
    /// Deletes a finished job: its record and history first (durably), then its folder.
    pub async fn delete(&self, id: u64) -> Result<JobView, StoreError> {
        let view = self.store.delete_job(id).await?;
        self.store.flush().await?;
        let dir = spawn::job_dir(&self.config.state_dir, id);
        remove_dir(dir).await;
        self.disk.forget();
        tracing::info!(job = id, owner = %view.owner, "job deleted");
        Ok(view)
    }

    /// The retention sweep, once at start and then every [`SWEEP_EVERY`], until shutdown.
    pub async fn retention_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sweep().await {
                tracing::error!("retention sweep: {e:#}");
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    }

    /// One pass of the retention rules over the finished jobs and the job folders.
    pub async fn sweep(&self) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
        let finished: Vec<(u64, Duration)> = self
            .store
            .all_jobs()?
            .into_iter()
            .filter(|j| j.state.is_terminal())
            .filter_map(|j| {
                let at = humantime::parse_rfc3339(j.finished_at.as_deref()?).ok()?;
                Some((j.id, now.duration_since(at).unwrap_or_default()))
            })
            .collect();
        let (job_days, ckpt_days) = (
            self.config.job_retention_days,
            self.config.checkpoint_retention_days,
        );
        for (id, age) in &finished {
            if job_days > 0 && *age > days(job_days) {
                self.delete(*id).await?;
                tracing::info!(
                    job = id,
                    "deleted: finished more than {job_days} day(s) ago"
                );
            } else if ckpt_days > 0 && *age > days(ckpt_days) {
                let ckpts = spawn::job_dir(&self.config.state_dir, *id).join("checkpoints");
                if ckpts.is_dir() {
                    remove_dir(ckpts).await;
                    let msg = format!(
                        "intermediate checkpoints removed: finished more than {ckpt_days} \
                         day(s) ago (checkpoint_retention_days); final/ is kept"
                    );
                    self.store
                        .append_event(*id, EventKind::Log, &msg, None, None)
                        .await?;
                }
            }
        }
        self.remove_orphan_folders().await;
        self.remove_stale_uploads();
        Ok(())
    }

    /// Temporary files of uploads that a crash interrupted: untouched for an hour (an upload
    /// in progress writes to its file all the time).
    fn remove_stale_uploads(&self) {
        let dir = spawn::dataset_path(&self.config.state_dir, "");
        let Some(Ok(entries)) = dir.parent().map(std::fs::read_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if name.starts_with(".upload-") && name.ends_with(".tmp") && stale {
                tracing::info!("removing {name}, left by an interrupted upload");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Job folders whose job has no record (a crash between a delete's two steps).
    async fn remove_orphan_folders(&self) {
        let jobs = self.config.state_dir.join("jobs");
        let Ok(entries) = std::fs::read_dir(&jobs) else {
            return;
        };
        // A quarantined record's folder is kept for whoever looks into it.
        let quarantined = self.store.quarantined().unwrap_or_default();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let in_quarantine = quarantined.contains(&format!("jobs/{id}"));
            if !in_quarantine && matches!(self.store.job(id), Err(StoreError::NotFound(_))) {
                tracing::info!(job = id, "removing the folder of a deleted job");
                remove_dir(entry.path()).await;
            }
        }
    }
}

/// Removes a folder off the async runtime; a failure is logged (the next sweep tries again).
async fn remove_dir(dir: impl AsRef<Path> + Send + 'static) {
    let result = tokio::task::spawn_blocking(move || {
        let dir = dir.as_ref();
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", dir.display()))
            }
            _ => Ok(()),
        }
    })
    .await;
    if let Ok(Err(e)) = result {
        tracing::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use orpo_api::{JobSpec, JobState};

    use crate::config::ServeConfig;
    use crate::store::{Inserted, NewJob, Store};
    use crate::supervisor::{spawn, Supervisor};

    /// A finished job `days_ago` days ago, with a checkpoint and a final adapter on disk.
    async fn finished(sup: &Supervisor, days_ago: u64) -> u64 {
        let spec = JobSpec::parse(
            "[model]\nbase = \"m\"\n[data]\ntrain = \"t\"\n",
            "j".as_ref(),
        )
        .unwrap();
        let Inserted::New(job) = sup
            .store
            .insert_job(NewJob {
                owner: "ann".into(),
                spec,
                pending_reason: None,
                estimate_bytes: None,
                total_steps: 0,
                idempotency: None,
                caps: None,
            })
            .await
            .unwrap()
        else {
            panic!("no key given")
        };
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(days_ago * 86_400);
        let at = humantime::format_rfc3339_millis(at).to_string();
        sup.store
            .update_job(job.id, move |v| {
                v.state = JobState::Succeeded;
                v.finished_at = Some(at);
                Ok(())
            })
            .await
            .unwrap();
        let dir = spawn::job_dir(&sup.config.state_dir, job.id);
        std::fs::create_dir_all(dir.join("checkpoints/step-2")).unwrap();
        std::fs::create_dir_all(dir.join("final")).unwrap();
        job.id
    }

    #[tokio::test]
    async fn the_sweep_follows_the_retention_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let config = Arc::new(ServeConfig {
            state_dir: dir.path().to_path_buf(),
            checkpoint_retention_days: 14,
            job_retention_days: 90,
            ..ServeConfig::default()
        });
        let sup = Supervisor::new(store, config);
        let fresh = finished(&sup, 1).await;
        let old = finished(&sup, 30).await;
        let ancient = finished(&sup, 100).await;
        // A folder whose record is gone (a crash between a delete's two steps).
        let orphan = spawn::job_dir(&sup.config.state_dir, 77);
        std::fs::create_dir_all(&orphan).unwrap();
        sup.sweep().await.unwrap();

        let dir_of = |id| spawn::job_dir(&sup.config.state_dir, id);
        assert!(dir_of(fresh).join("checkpoints/step-2").is_dir());
        assert!(!dir_of(old).join("checkpoints").exists());
        assert!(dir_of(old).join("final").is_dir(), "final/ is kept");
        let events = sup.store.events(old, 0, 100).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("checkpoint_retention_days")),
            "{events:?}"
        );
        assert!(sup.store.job(ancient).is_err(), "deleted whole");
        assert!(!dir_of(ancient).exists());
        assert!(!orphan.exists());
        assert!(sup.store.job(fresh).is_ok() && sup.store.job(old).is_ok());
    }
}
