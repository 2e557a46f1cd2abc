//! Jobs and the queue: insert (once per idempotency key), read, list with filters and cursors,
//! updates that keep the queue index equal to the set of queued jobs, and deletion.

use orpo_api::{EventKind, JobSpec, JobState, JobView, Memory, Progress};
use serde::{Deserialize, Serialize};

use super::{job_from_json, job_to_json, to_json, Result, Store, StoreError, Trees};
use crate::limits::UserCaps;

/// What a submit stores.
pub struct NewJob {
    pub owner: String,
    pub spec: JobSpec,
    pub pending_reason: Option<String>,
    /// The memory estimate, when the submit computed it.
    pub estimate_bytes: Option<u64>,
    /// The job's optimizer steps on its data (0: not known yet); the worker sets it again.
    pub total_steps: usize,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<Idempotency>,
    /// The owner's caps, checked against their jobs in the write that inserts this one
    /// ([`StoreError::Limit`]); `None` for jobs the daemon makes itself.
    pub caps: Option<UserCaps>,
}

/// A client's `Idempotency-Key` and a fingerprint of its request: the same key with the same
/// request returns the job it created; with another request it is refused.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// The outcome of [`Store::insert_job`].
#[derive(Debug)]
pub enum Inserted {
    New(JobView),
    /// The job an earlier request with the same idempotency key created.
    Existing(JobView),
}

/// What the `idempotency` tree holds under `owner \0 key`.
#[derive(Serialize, Deserialize)]
pub(super) struct IdemEntry {
    pub job: u64,
    pub fingerprint: String,
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
pub(super) fn queue_key(view: &JobView) -> [u8; 12] {
    let p = !((super::spec_of(view).priority as u32) ^ 0x8000_0000);
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&p.to_be_bytes());
    k[4..].copy_from_slice(&view.id.to_be_bytes());
    k
}

pub(super) fn read_next_id(t: &Trees) -> Result<u64> {
    Ok(match t.meta.get("next_job_id")? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            message: "next_job_id is not a u64".into(),
        })?),
        None => 1,
    })
}

fn idem_key(owner: &str, key: &str) -> Vec<u8> {
    [owner.as_bytes(), b"\0", key.as_bytes()].concat()
}

fn get_job(t: &Trees, id: u64) -> Result<JobView> {
    match t.jobs.get(id.to_be_bytes())? {
        Some(bytes) => job_from_json(&bytes),
        None => Err(StoreError::NotFound(id)),
    }
}

impl Store {
    /// Stores a new job as `queued`, or returns the job an earlier submit with the same
    /// idempotency key created. Not durable until [`Store::flush`].
    pub async fn insert_job(&self, new: NewJob) -> Result<Inserted> {
        let created_at = crate::now_rfc3339();
        self.writer
            .run(false, move |t| {
                if let Some(idem) = &new.idempotency {
                    let key = idem_key(&new.owner, &idem.key);
                    if let Some(bytes) = t.idempotency.get(&key)? {
                        let entry: IdemEntry = super::from_json("idempotency", &bytes)?;
                        match get_job(t, entry.job) {
                            Ok(_) if entry.fingerprint != idem.fingerprint => {
                                return Err(StoreError::Rejected(format!(
                                    "Idempotency-Key {:?} was used for another request (job \
                                     {}); use a new key for a new job",
                                    idem.key, entry.job
                                )))
                            }
                            Ok(view) => return Ok(Inserted::Existing(view)),
                            // Its job was deleted: the key is free again (the entry is
                            // overwritten below, or dropped at the next open).
                            Err(StoreError::NotFound(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                if let Some(caps) = &new.caps {
                    let mut mine = Vec::new();
                    for v in t.jobs.iter().values() {
                        let job = job_from_json(&v?)?;
                        if job.owner == new.owner {
                            mine.push(job);
                        }
                    }
                    caps.check(&new.owner, new.total_steps as u64, &mine)
                        .map_err(StoreError::Limit)?;
                }
                let id = read_next_id(t)?;
                let view = JobView {
                    id,
                    name: new.spec.name.clone(),
                    owner: new.owner.clone(),
                    state: JobState::Queued,
                    pending_reason: new.pending_reason.clone(),
                    device: None,
                    base_precision: None,
                    progress: Progress {
                        total_steps: new.total_steps,
                        ..Progress::default()
                    },
                    metrics: None,
                    eval_metrics: None,
                    memory: Memory {
                        estimate_bytes: new.estimate_bytes,
                        ..Memory::default()
                    },
                    error: None,
                    attempts: 0,
                    created_at: created_at.clone(),
                    started_at: None,
                    finished_at: None,
                    spec: Some(new.spec.clone()),
                };
                let record = job_to_json(&view)?;
                // In this order (see the module docs): the id, the key, the job, its event.
                t.meta.insert("next_job_id", &(id + 1).to_be_bytes())?;
                if let Some(idem) = &new.idempotency {
                    let entry = IdemEntry {
                        job: id,
                        fingerprint: idem.fingerprint.clone(),
                    };
                    t.idempotency
                        .insert(idem_key(&new.owner, &idem.key), to_json(&entry))?;
                }
                t.jobs.insert(id.to_be_bytes(), record)?;
                t.queue().insert(queue_key(&view), id);
                super::events::append(
                    t,
                    id,
                    EventKind::State,
                    "submitted; queued",
                    Some(JobState::Queued),
                    None,
                )?;
                Ok(Inserted::New(view))
            })
            .await
    }

    pub fn job(&self, id: u64) -> Result<JobView> {
        get_job(&self.t()?, id)
    }

    /// Applies `change` to the job and keeps the queue in step with the new state; nothing is
    /// written when `change` leaves the job as it was. `change` refuses by returning
    /// `Err(reason)`. A state change is recorded as an event.
    pub async fn update_job(
        &self,
        id: u64,
        change: impl FnOnce(&mut JobView) -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<JobView> {
        let (after, moved) = self
            .writer
            .run(false, move |t| {
                let before = get_job(t, id)?;
                let mut after = before.clone();
                change(&mut after).map_err(StoreError::Rejected)?;
                if after == before {
                    return Ok((after, false));
                }
                after.id = id;
                let record = job_to_json(&after)?;
                t.jobs.insert(id.to_be_bytes(), record)?;
                let mut queue = t.queue();
                if before.state == JobState::Queued {
                    queue.remove(&queue_key(&before));
                }
                if after.state == JobState::Queued {
                    queue.insert(queue_key(&after), id);
                }
                drop(queue);
                if before.state != after.state {
                    let mut msg = format!("{} → {}", before.state, after.state);
                    let detail = match after.state {
                        JobState::Failed => after.error.as_ref().map(|e| e.message.clone()),
                        _ => after.pending_reason.clone(),
                    };
                    if let Some(d) = detail {
                        msg = format!("{msg}: {d}");
                    }
                    super::events::append(t, id, EventKind::State, &msg, Some(after.state), None)?;
                }
                let moved = before.state != after.state;
                Ok((after, moved))
            })
            .await?;
        if moved {
            // No receiver (no notifier yet) is fine.
            let _ = self.transitions.send(after.clone());
        }
        Ok(after)
    }

    /// Removes a job in a final state with its events and metric records. Its files are the
    /// caller's; an idempotency key that named it is free from now on (see `insert_job`).
    pub async fn delete_job(&self, id: u64) -> Result<JobView> {
        self.writer
            .run(false, move |t| {
                let view = get_job(t, id)?;
                if !view.state.is_terminal() {
                    return Err(StoreError::Rejected(format!(
                        "job {id} is {}; cancel it first, only finished jobs are deleted",
                        view.state
                    )));
                }
                // The record last: a crash part-way leaves a job whose history is shorter,
                // which a second delete finishes.
                for tree in [&t.events, &t.metrics] {
                    for key in tree.scan_prefix(id.to_be_bytes()).keys() {
                        tree.remove(key?)?;
                    }
                }
                t.meta.remove(super::events::worker_seq_key(id))?;
                t.jobs.remove(id.to_be_bytes())?;
                Ok(view)
            })
            .await
    }

    /// The queued job that runs next (none while the store is unavailable).
    pub fn next_queued(&self) -> Option<u64> {
        self.t().ok()?.queue().values().next().copied()
    }

    /// Queued job ids in run order (none while the store is unavailable).
    pub fn queued(&self) -> Vec<u64> {
        self.t()
            .map(|t| t.queue().values().copied().collect())
            .unwrap_or_default()
    }

    /// Newest first, after `filter.cursor`; also returns the cursor of the next page.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<JobView>, Option<u64>)> {
        let end = filter.cursor.unwrap_or(u64::MAX).to_be_bytes();
        let mut out = Vec::new();
        for item in self.t()?.jobs.range(..end).rev() {
            let (_, bytes) = item?;
            let view = match job_from_json(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("skipping a job record: {e}");
                    continue;
                }
            };
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

    /// Every job, oldest first (recovery, counts). Unreadable records are skipped.
    pub fn all_jobs(&self) -> Result<Vec<JobView>> {
        let mut out = Vec::new();
        for v in self.t()?.jobs.iter().values() {
            match job_from_json(&v?) {
                Ok(view) => out.push(view),
                Err(e) => tracing::warn!("skipping a job record: {e}"),
            }
        }
        Ok(out)
    }

    pub fn queue_len(&self) -> usize {
        self.t().map_or(0, |t| t.queue().len())
    }
}
