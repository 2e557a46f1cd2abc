//! Per-job event logs and metric records, appended in order with dense sequence numbers (the
//! writer is the only appender, so a sequence number is the last one plus one).

use orpo_api::{EventKind, EventView, JobState, MetricRecord};

use super::{from_json, pair_key, to_json, Result, Store, Trees};

/// Appends one event to the job's log on the writer and returns its `seq` (1-based).
pub(super) fn append(
    t: &Trees,
    id: u64,
    kind: EventKind,
    message: &str,
    state: Option<JobState>,
    checkpoint: Option<String>,
) -> Result<u64> {
    let seq = last_seq(&t.events, id)? + 1;
    let event = EventView {
        seq,
        time: crate::now_rfc3339(),
        kind,
        message: message.to_string(),
        state,
        checkpoint,
    };
    t.events.insert(pair_key(id, seq), to_json(&event))?;
    Ok(seq)
}

impl Store {
    /// Appends one event to the job's log and returns its `seq` (1-based).
    pub async fn append_event(
        &self,
        id: u64,
        kind: EventKind,
        message: &str,
        state: Option<JobState>,
        checkpoint: Option<String>,
    ) -> Result<u64> {
        let message = message.to_string();
        self.writer
            .run(false, move |t| {
                append(t, id, kind, &message, state, checkpoint)
            })
            .await
    }

    /// Events with `seq > since`, at most `limit`. Unreadable records are skipped.
    pub fn events(&self, id: u64, since: u64, limit: usize) -> Result<Vec<EventView>> {
        let range = pair_key(id, since.saturating_add(1))..pair_key(id.saturating_add(1), 0);
        let mut out = Vec::new();
        for v in self.t()?.events.range(range).values() {
            match from_json("events", &v?) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(job = id, "skipping an event: {e}"),
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// A record of the same step and kind (training or evaluation) as the job's last one
    /// replaces it: that is the same record told twice (a worker in Slurm posting again an
    /// event whose number a crash of the daemon lost).
    pub async fn append_metric(&self, id: u64, record: &MetricRecord) -> Result<()> {
        let value = to_json(record);
        let (step, train) = (record.step, record.learning_rate.is_some());
        self.writer
            .run(false, move |t| {
                let last = last_seq(&t.metrics, id)?;
                let again = match t.metrics.get(pair_key(id, last))? {
                    Some(v) => serde_json::from_slice::<MetricRecord>(&v)
                        .is_ok_and(|r| r.step == step && r.learning_rate.is_some() == train),
                    None => false,
                };
                let seq = if again { last } else { last + 1 };
                t.metrics.insert(pair_key(id, seq), value)?;
                Ok(())
            })
            .await
    }

    /// Records with `step > since`, in the order they were logged, at most `limit`.
    pub fn metrics(&self, id: u64, since: usize, limit: usize) -> Result<Vec<MetricRecord>> {
        let mut out = Vec::new();
        for v in self.t()?.metrics.scan_prefix(id.to_be_bytes()).values() {
            let rec: MetricRecord = match from_json("metrics", &v?) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job = id, "skipping a metric record: {e}");
                    continue;
                }
            };
            if rec.step > since {
                out.push(rec);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Replaces the job's records with `records`: a resumed run's history up to its checkpoint
    /// is the truth (steps after it will be trained again). Not atomic, and need not be: a
    /// crash part-way means a restart, and the resumed worker sends its history again.
    pub async fn replace_metrics(&self, id: u64, records: &[MetricRecord]) -> Result<()> {
        let values: Vec<Vec<u8>> = records.iter().map(to_json).collect();
        self.writer
            .run(false, move |t| {
                for key in t.metrics.scan_prefix(id.to_be_bytes()).keys() {
                    t.metrics.remove(key?)?;
                }
                for (i, v) in values.into_iter().enumerate() {
                    t.metrics.insert(pair_key(id, i as u64 + 1), v)?;
                }
                Ok(())
            })
            .await
    }
}

fn last_seq(tree: &sled::Tree, id: u64) -> Result<u64> {
    Ok(
        match tree.scan_prefix(id.to_be_bytes()).keys().next_back() {
            Some(k) => u64::from_be_bytes(k?[8..16].try_into().unwrap_or([0; 8])),
            None => 0,
        },
    )
}

/// `meta` key of a job's [`Store::worker_seq`].
pub(super) fn worker_seq_key(id: u64) -> Vec<u8> {
    let mut key = b"worker_seq/".to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

impl Store {
    /// Records that the events of the job's worker in Slurm job `slurm_job` are applied up to
    /// number `seq`. Written after the events it counts and flushed with them: sled recovers a
    /// prefix of the writes after a crash, so the number never counts an event the store lost,
    /// and a restarted daemon skips exactly the events it has when the worker posts them again.
    pub async fn set_worker_seq(&self, id: u64, slurm_job: u64, seq: u64) -> Result<()> {
        let mut value = slurm_job.to_be_bytes().to_vec();
        value.extend_from_slice(&seq.to_be_bytes());
        self.writer
            .run(false, move |t| {
                t.meta.insert(worker_seq_key(id), value)?;
                Ok(())
            })
            .await
    }

    /// The Slurm job and event number of [`Store::set_worker_seq`], if any.
    pub fn worker_seq(&self, id: u64) -> Result<Option<(u64, u64)>> {
        let Some(v) = self.t()?.meta.get(worker_seq_key(id))? else {
            return Ok(None);
        };
        let (job, seq) = (v.get(..8), v.get(8..16));
        Ok(job.zip(seq).map(|(j, s)| {
            let n = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            (n(j), n(s))
        }))
    }
}
