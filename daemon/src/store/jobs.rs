//! Jobs and the queue: insert, read, list with filters and cursors, and transactional updates
//! that keep the `queue` tree equal to the set of queued jobs.

use orpo_api::{EventKind, JobSpec, JobState, JobView, Memory, Progress};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{job_from_json, to_json, Result, Store, StoreError};

/// What a submit stores.
pub struct NewJob {
    pub owner: String,
    pub spec: JobSpec,
    pub pending_reason: Option<String>,
}

/// `GET /v1/jobs` filters. `cursor`: list jobs with ids below it (newest first).
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub owner: Option<String>,
    pub limit: usize,
    pub cursor: Option<u64>,
}

/// Queue order: highest priority first, then lowest id (submit order). The priority's sign bit
/// is flipped so it sorts as unsigned, and the result inverted so larger priorities come first.
fn queue_key(view: &JobView) -> [u8; 12] {
    let p = !((view.spec.priority as u32) ^ 0x8000_0000);
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&p.to_be_bytes());
    k[4..].copy_from_slice(&view.id.to_be_bytes());
    k
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn unwrap_tx<T>(r: std::result::Result<T, TransactionError<StoreError>>) -> Result<T> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl Store {
    /// Stores a new job as `queued` and returns it. Not durable until [`Store::flush`].
    pub fn insert_job(&self, new: NewJob) -> Result<JobView> {
        let created_at = crate::now_rfc3339();
        let view = unwrap_tx((&self.meta, &self.jobs, &self.queue).transaction(
            |(meta, jobs, queue)| {
                let id = match meta.get("next_job_id")? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                    None => 1,
                };
                meta.insert("next_job_id", &(id + 1).to_be_bytes())?;
                let view = JobView {
                    id,
                    name: new.spec.name.clone(),
                    owner: new.owner.clone(),
                    state: JobState::Queued,
                    pending_reason: new.pending_reason.clone(),
                    device: None,
                    progress: Progress::default(),
                    metrics: None,
                    eval_metrics: None,
                    memory: Memory::default(),
                    error: None,
                    attempts: 0,
                    created_at: created_at.clone(),
                    started_at: None,
                    finished_at: None,
                    spec: new.spec.clone(),
                };
                jobs.insert(&id.to_be_bytes(), to_json(&view))?;
                queue.insert(&queue_key(&view), &id.to_be_bytes())?;
                Ok(view)
            },
        ))?;
        self.append_event(
            view.id,
            EventKind::State,
            "submitted; queued",
            Some(JobState::Queued),
            None,
        )?;
        Ok(view)
    }

    pub fn job(&self, id: u64) -> Result<JobView> {
        match self.jobs.get(id.to_be_bytes())? {
            Some(bytes) => job_from_json(&bytes),
            None => Err(StoreError::NotFound(id)),
        }
    }

    /// Applies `change` to the job in one transaction and keeps the queue in step with the new
    /// state. `change` may run more than once (sled retries on conflict) and refuses a change by
    /// returning `Err(reason)`. A state change is recorded as an event with `note`.
    pub fn update_job(
        &self,
        id: u64,
        change: impl Fn(&mut JobView) -> std::result::Result<(), String>,
    ) -> Result<JobView> {
        let (before, after) = unwrap_tx((&self.jobs, &self.queue).transaction(|(jobs, queue)| {
            let key = id.to_be_bytes();
            let bytes = jobs.get(key)?.ok_or(abort(StoreError::NotFound(id)))?;
            let before = job_from_json(&bytes).map_err(abort)?;
            let mut after = before.clone();
            change(&mut after).map_err(|m| abort(StoreError::Rejected(m)))?;
            if before.state == JobState::Queued {
                queue.remove(&queue_key(&before))?;
            }
            if after.state == JobState::Queued {
                queue.insert(&queue_key(&after), &key)?;
            }
            jobs.insert(&key, to_json(&after))?;
            Ok((before, after))
        }))?;
        if before.state != after.state {
            let mut msg = format!("{} → {}", before.state, after.state);
            let detail = match after.state {
                JobState::Failed => after.error.as_ref().map(|e| e.message.clone()),
                _ => after.pending_reason.clone(),
            };
            if let Some(d) = detail {
                msg = format!("{msg}: {d}");
            }
            self.append_event(id, EventKind::State, &msg, Some(after.state), None)?;
        }
        Ok(after)
    }

    /// The queued job that runs next.
    pub fn next_queued(&self) -> Result<Option<u64>> {
        Ok(self
            .queue
            .first()?
            .map(|(_, v)| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
    }

    /// Queued job ids in run order.
    pub fn queued(&self) -> Result<Vec<u64>> {
        self.queue
            .iter()
            .values()
            .map(|v| Ok(u64::from_be_bytes(v?.as_ref().try_into().unwrap_or([0; 8]))))
            .collect()
    }

    /// Newest first, after `filter.cursor`; also returns the cursor of the next page.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<JobView>, Option<u64>)> {
        let end = filter.cursor.unwrap_or(u64::MAX).to_be_bytes();
        let mut out = Vec::new();
        for item in self.jobs.range(..end).rev() {
            let (_, bytes) = item?;
            let view = job_from_json(&bytes)?;
            if filter.state.is_some_and(|s| s != view.state)
                || filter.owner.as_ref().is_some_and(|o| *o != view.owner)
            {
                continue;
            }
            if out.len() == filter.limit {
                let last = out.last().map(|v: &JobView| v.id);
                return Ok((out, last));
            }
            out.push(view);
        }
        Ok((out, None))
    }

    /// Every job, oldest first (recovery, counts).
    pub fn all_jobs(&self) -> impl Iterator<Item = Result<JobView>> + '_ {
        self.jobs
            .iter()
            .values()
            .map(|v| job_from_json(&v.map_err(StoreError::Sled)?))
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }
}
