//! The daemon's durable state in sled: jobs, the queue order, per-job events and metric records,
//! and the index of uploaded data sets. Only the daemon opens it (sled takes an exclusive lock);
//! workers report through their stdout.
//!
//! Trees (keys are big-endian so sled's byte order is numeric order):
//! - `meta`: `schema_version` (u32), `next_job_id` (u64).
//! - `jobs`: job id → the job's [`JobView`] as JSON.
//! - `queue`: `(priority flipped, job id)` → job id; exactly the queued jobs, highest priority
//!   first, ties in submit order. Kept in step with `jobs` by transactions.
//! - `events`, `metrics`: `(job id, seq)` → JSON.
//! - `datasets`: sha256 hex → [`DatasetView`] as JSON (the bytes are files beside the db).
//!
//! sled buffers writes and flushes every 500 ms; whatever must survive a crash once the client
//! has been told so (a submitted job, a state change asked for over HTTP) is followed by
//! [`Store::flush`] before the answer goes out.

mod events;
mod jobs;

use std::path::Path;
use std::sync::Mutex;

use orpo_api::{DatasetView, JobView};

pub use jobs::{JobFilter, NewJob};

/// Bumped whenever a stored format changes; an older daemon refuses a newer store.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    #[error("job {0} not found")]
    NotFound(u64),
    /// The change does not apply to the job as it is (e.g. pausing a finished job).
    #[error("{0}")]
    Rejected(String),
    #[error(
        "store at {path} has schema version {found}; this orpod reads version {SCHEMA_VERSION}"
    )]
    Schema { path: String, found: u32 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle on the open database; cheap to clone (sled trees are `Arc`s).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    jobs: sled::Tree,
    queue: sled::Tree,
    events: sled::Tree,
    metrics: sled::Tree,
    datasets: sled::Tree,
    /// Serialises appends so each job's sequence numbers are dense and unique.
    append_lock: std::sync::Arc<Mutex<()>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new().path(dir).open()?;
        let store = Store {
            meta: db.open_tree("meta")?,
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
            events: db.open_tree("events")?,
            metrics: db.open_tree("metrics")?,
            datasets: db.open_tree("datasets")?,
            db,
            append_lock: Default::default(),
        };
        match store.meta.get("schema_version")? {
            None => {
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                store.db.flush()?;
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        tree: "meta",
                        message: "schema_version is not a u32".into(),
                    })?);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        path: dir.display().to_string(),
                        found,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Writes and fsyncs everything so far.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Blocking flush, for shutdown paths outside the runtime.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn put_dataset(&self, view: &DatasetView) -> Result<()> {
        self.datasets
            .insert(view.sha256.as_bytes(), to_json(view))?;
        Ok(())
    }

    pub fn dataset(&self, sha256: &str) -> Result<Option<DatasetView>> {
        self.datasets
            .get(sha256.as_bytes())?
            .map(|v| from_json("datasets", &v))
            .transpose()
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("wire types serialise")
}

fn from_json<T: serde::de::DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

fn job_from_json(bytes: &[u8]) -> Result<JobView> {
    from_json("jobs", bytes)
}

/// `(job id, seq)` as 16 big-endian bytes.
fn pair_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests;
