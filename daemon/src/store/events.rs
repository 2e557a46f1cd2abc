//! Per-job event logs and metric records, appended in order with dense sequence numbers.

use orpo_api::{EventKind, EventView, JobState, MetricRecord};

use super::{from_json, pair_key, to_json, Result, Store};

impl Store {
    /// Appends one event to the job's log and returns its `seq` (1-based).
    pub fn append_event(
        &self,
        id: u64,
        kind: EventKind,
        message: &str,
        state: Option<JobState>,
        checkpoint: Option<String>,
    ) -> Result<u64> {
        let _guard = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let seq = last_seq(&self.events, id)? + 1;
        let event = EventView {
            seq,
            time: crate::now_rfc3339(),
            kind,
            message: message.to_string(),
            state,
            checkpoint,
        };
        self.events.insert(pair_key(id, seq), to_json(&event))?;
        Ok(seq)
    }

    /// Events with `seq > since`, at most `limit`.
    pub fn events(&self, id: u64, since: u64, limit: usize) -> Result<Vec<EventView>> {
        let range = pair_key(id, since.saturating_add(1))..pair_key(id.saturating_add(1), 0);
        self.events
            .range(range)
            .values()
            .take(limit)
            .map(|v| from_json("events", &v?))
            .collect()
    }

    pub fn append_metric(&self, id: u64, record: &MetricRecord) -> Result<()> {
        let _guard = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let seq = last_seq(&self.metrics, id)? + 1;
        self.metrics.insert(pair_key(id, seq), to_json(record))?;
        Ok(())
    }

    /// Records with `step > since`, in the order they were logged.
    pub fn metrics(&self, id: u64, since: usize, limit: usize) -> Result<Vec<MetricRecord>> {
        let mut out = Vec::new();
        for v in self.metrics.scan_prefix(id.to_be_bytes()).values() {
            let rec: MetricRecord = from_json("metrics", &v?)?;
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
    /// is the truth (steps after it will be trained again).
    pub fn replace_metrics(&self, id: u64, records: &[MetricRecord]) -> Result<()> {
        let _guard = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        for key in self.metrics.scan_prefix(id.to_be_bytes()).keys() {
            batch.remove(key?);
        }
        for (i, rec) in records.iter().enumerate() {
            batch.insert(&pair_key(id, i as u64 + 1), to_json(rec));
        }
        self.metrics.apply_batch(batch)?;
        Ok(())
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
