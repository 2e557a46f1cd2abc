//! What one user may ask of a shared daemon (the `max_*_per_user`, `max_user_priority`,
//! `max_keep_checkpoints` and `min_save_every` settings): checked at submit, so a job over a
//! limit is refused with the limit's name and value before anything is stored (the counts of
//! [`UserCaps`] by the store, in the write that inserts the job). The disk cap is checked again
//! before each start ([`DiskUsage`]): jobs queued under it write while they run. How running
//! slots are shared between users (round-robin at equal priority, `max_running_per_user`) is
//! the scheduler's ([`crate::supervisor`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orpo_api::{JobSpec, JobState, JobView};

use crate::auth::Caller;
use crate::config::ServeConfig;
use crate::http::error::ApiError;
use crate::store::{Store, StoreError};

/// The limits on the job itself: its priority (admins may exceed the ceiling) and how many
/// checkpoints it keeps how often.
pub fn check_spec(config: &ServeConfig, caller: &Caller, spec: &JobSpec) -> Result<(), ApiError> {
    let t = &spec.train;
    if spec.priority > config.max_user_priority && !caller.admin {
        return Err(ApiError::LimitExceeded(format!(
            "priority = {} is above this server's ceiling (max_user_priority = {}); only an \
             admin may submit above it",
            spec.priority, config.max_user_priority
        )));
    }
    if t.keep_checkpoints > config.max_keep_checkpoints {
        return Err(ApiError::LimitExceeded(format!(
            "train.keep_checkpoints = {} is above this server's limit (max_keep_checkpoints = {})",
            t.keep_checkpoints, config.max_keep_checkpoints
        )));
    }
    if t.save_every != 0 && t.save_every < config.min_save_every {
        return Err(ApiError::LimitExceeded(format!(
            "train.save_every = {} is below this server's limit (min_save_every = {}); use a \
             larger interval, or 0 for the final checkpoint only",
            t.save_every, config.min_save_every
        )));
    }
    Ok(())
}

/// The caps on how much one user has waiting: jobs queued and steps still to run. The store
/// checks them in the same write that inserts a job ([`crate::store::NewJob::caps`]), so two
/// submits at once cannot both pass a cap by one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserCaps {
    pub max_queued: usize,
    pub max_steps: u64,
}

impl UserCaps {
    pub fn of(config: &ServeConfig) -> UserCaps {
        UserCaps {
            max_queued: config.max_queued_per_user,
            max_steps: config.max_steps_per_user,
        }
    }

    /// `Err(why)`, naming the setting and its value, when one more job of `steps` steps would
    /// take `owner` past a cap; `jobs` are `owner`'s.
    pub fn check<'a>(
        &self,
        owner: &str,
        steps: u64,
        jobs: impl IntoIterator<Item = &'a JobView>,
    ) -> Result<(), String> {
        let (mut waiting, mut left) = (0, 0u64);
        for j in jobs {
            waiting += usize::from(waits(j.state));
            if !j.state.is_terminal() {
                let to_run = j.progress.total_steps.saturating_sub(j.progress.step) as u64;
                left = left.saturating_add(to_run);
            }
        }
        if waiting >= self.max_queued {
            return Err(format!(
                "{owner} has {waiting} job(s) waiting, this server's limit (max_queued_per_user = \
                 {}); submit more when some have run, or cancel some",
                self.max_queued
            ));
        }
        if left.saturating_add(steps) > self.max_steps {
            return Err(format!(
                "this job's {steps} steps and the {left} still to run of {owner}'s unfinished jobs \
                 are more than this server's limit (max_steps_per_user = {})",
                self.max_steps
            ));
        }
        Ok(())
    }
}

/// The limit on what `owner`'s jobs hold on disk (checkpoints and exports), read now (on a
/// blocking thread: it walks their folders).
pub async fn check_disk(
    config: Arc<ServeConfig>,
    store: Store,
    owner: String,
) -> Result<(), ApiError> {
    let (c, o) = (config.clone(), owner.clone());
    let mut usage = tokio::task::spawn_blocking(move || disk_by_owner(&c, &store, Some(&o)))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    let bytes = usage.remove(&owner).unwrap_or(0);
    match disk_refusal(&config, &owner, bytes) {
        Some(refusal) => Err(ApiError::LimitExceeded(refusal)),
        None => Ok(()),
    }
}

/// Why `owner`, whose job folders hold `bytes`, may not add to them; `None` under the cap.
pub fn disk_refusal(config: &ServeConfig, owner: &str, bytes: u64) -> Option<String> {
    let cap = config.max_checkpoint_mib_per_user.saturating_mul(1 << 20);
    (bytes >= cap).then(|| {
        format!(
            "{owner}'s jobs hold {} MiB of checkpoints and exports, this server's limit \
             (max_checkpoint_mib_per_user = {}); remove finished jobs with `orpoctl rm ID`",
            bytes >> 20,
            config.max_checkpoint_mib_per_user
        )
    })
}

/// How long the scheduler trusts a reading of the job folders; it asks every round.
const DISK_FRESH: Duration = Duration::from_secs(10);

/// Each owner's job-folder bytes as the scheduler sees them: read from disk at most every
/// [`DISK_FRESH`] (a round every two seconds must not walk every folder), and again right
/// after a job is deleted, so `orpoctl rm` lets the owner's next job start at once.
#[derive(Default)]
pub struct DiskUsage(Mutex<Option<(Instant, Arc<ByOwner>)>>);

/// Bytes by owner.
type ByOwner = HashMap<String, u64>;

impl DiskUsage {
    /// Each owner's bytes. Blocking: walks the job folders when the last reading is stale.
    pub fn by_owner(
        &self,
        config: &ServeConfig,
        store: &Store,
    ) -> Result<Arc<ByOwner>, StoreError> {
        let cached = self.0.lock().expect("disk usage lock").clone();
        if let Some((_, usage)) = cached.filter(|(at, _)| at.elapsed() < DISK_FRESH) {
            return Ok(usage);
        }
        let usage = Arc::new(disk_by_owner(config, store, None)?);
        *self.0.lock().expect("disk usage lock") = Some((Instant::now(), usage.clone()));
        Ok(usage)
    }

    /// Drops the reading (a job folder was removed): the next call reads the disk again.
    pub fn forget(&self) {
        *self.0.lock().expect("disk usage lock") = None;
    }
}

/// What each owner's (or `only` this owner's) job folders hold: checkpoints, adapters, exports.
fn disk_by_owner(
    config: &ServeConfig,
    store: &Store,
    only: Option<&str>,
) -> Result<ByOwner, StoreError> {
    let mut usage = ByOwner::new();
    let jobs = store.all_jobs()?.into_iter();
    for job in jobs.filter(|j| only.is_none_or(|o| j.owner == o)) {
        let dir = crate::supervisor::spawn::job_dir(&config.state_dir, job.id);
        *usage.entry(job.owner).or_default() += folder_bytes(&dir);
    }
    Ok(usage)
}

/// States in which a job waits for a slot (counted by `max_queued_per_user`).
fn waits(state: JobState) -> bool {
    matches!(
        state,
        JobState::Queued | JobState::Paused | JobState::Interrupted | JobState::Validating
    )
}

/// Bytes of the files under `dir` (symlinks not followed); 0 when it does not exist.
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(admin: bool) -> Caller {
        Caller {
            user: "alice".into(),
            admin,
            open: false,
        }
    }

    #[test]
    fn spec_limits_name_their_setting() {
        let config = ServeConfig::default();
        let mut spec = JobSpec::default();
        spec.train.save_every = 0;
        assert!(check_spec(&config, &caller(false), &spec).is_ok());
        let refused = |spec: &JobSpec, admin: bool| {
            check_spec(&config, &caller(admin), spec)
                .unwrap_err()
                .to_string()
        };
        spec.priority = 2_147_483_647;
        assert!(refused(&spec, false).contains("max_user_priority = 10"));
        assert!(
            check_spec(&config, &caller(true), &spec).is_ok(),
            "admins may"
        );
        spec.priority = 10;
        spec.train.keep_checkpoints = 11;
        assert!(refused(&spec, true).contains("max_keep_checkpoints = 10"));
        spec.train.keep_checkpoints = 10;
        spec.train.save_every = 1;
        assert!(refused(&spec, true).contains("min_save_every = 10"));
        spec.train.save_every = 10;
        assert!(check_spec(&config, &caller(false), &spec).is_ok());
    }

    #[test]
    fn folder_bytes_add_up_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 28]).unwrap();
        assert_eq!(folder_bytes(dir.path()), 128);
        assert_eq!(folder_bytes(&dir.path().join("missing")), 0);
    }
}
