//! The daemon's durable state in sled: jobs, per-job events and metric records, the index of
//! uploaded data sets and the idempotency keys of submits. Only the daemon opens it (sled takes
//! an exclusive lock); workers report through their stdout.
//!
//! # One writer
//! Every change goes through one thread, [`writer`], which also does every flush; callers await
//! its answer. Nothing else writes, so no two changes race (a read-modify-write such as
//! [`Store::update_job`] is atomic without a sled transaction), and sled's own background
//! flusher is off. Why: sled 0.34's transactions take a process-wide write lock that its
//! flushes take as a read lock, re-entrantly; a transaction waiting between a flush's two read
//! acquisitions deadlocks both (eight concurrent submits did it within seconds). The store
//! therefore uses no sled transaction or batch at all (those are what switch sled to the
//! lock), and each change is single-key inserts and removes that are correct in the order they
//! are made, because sled recovers a prefix of them after a crash:
//! - a job is one record; the queue order is an index in memory, rebuilt from the records when
//!   the store opens;
//! - `next_job_id` is written before the job that takes the id; the idempotency entry before
//!   the job it names (an entry whose job is missing after a crash is dropped at open).
//!
//! Reads (`job`, `list_jobs`, `events`, ...) go straight to sled from any thread: without the
//! lock switched on they take no lock.
//!
//! # Trees
//! Keys are big-endian so sled's byte order is numeric order.
//! - `meta`: `schema_version` (u32), `next_job_id` (u64), and per job with a worker in Slurm
//!   `worker_seq/<job id>` → (Slurm job, last event applied), two u64.
//! - `jobs`: job id → the job's [`JobView`] as JSON.
//! - `events`, `metrics`: `(job id, seq)` → JSON.
//! - `datasets`: sha256 hex → [`DatasetView`] as JSON (the bytes are files beside the db).
//! - `idempotency`: `owner \0 key` → the job it created and a fingerprint of the request.
//! - `users`, `tokens`, `dataset_owners`: who may call the API and whose data sets are whose
//!   ([`users`]).
//! - `notify`: `user \0 id` → a webhook endpoint of that user ([`notify`]).
//! - `outbox`: `job id, event \0 endpoint id` → a notification not yet delivered nor given up
//!   on ([`notify::Pending`]), so one the daemon was still trying when it stopped is tried again.
//! - `quarantine`: `tree/key` → the raw bytes of a record that could not be read, moved aside
//!   at open so that one bad record never stops the queue.
//!
//! Writes are buffered and flushed every 500 ms; whatever must survive a crash once a client
//! has been told so (a submitted job, a state change asked for over HTTP) is followed by
//! [`Store::flush`] before the answer goes out. Flushes asked for at the same time are one.

mod events;
mod jobs;
mod notify;
mod users;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use orpo_api::{DatasetView, JobState, JobView};

pub use jobs::{Idempotency, Inserted, JobFilter, NewJob};
pub use notify::Pending;
pub use users::{RemovedUser, TokenRecord};

/// Bumped whenever a stored format changes; an older daemon refuses a newer store.
/// 2: the queue order lives in memory (the `queue` tree is gone); `idempotency`, `quarantine`.
/// 3: `users`, `tokens`, `dataset_owners` (a version-2 daemon would ignore the users and run
/// open, so it must refuse this store), `notify`.
pub const SCHEMA_VERSION: u32 = 3;

/// How many state changes [`Store::transitions`] keeps for a slow receiver.
pub const TRANSITIONS_BUFFER: usize = 1024;

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
    /// A user's limit would be passed (their jobs waiting, steps, endpoints): the message
    /// names the limit and its value.
    #[error("{0}")]
    Limit(String),
    #[error(
        "store at {path} has schema version {found}; this orpod reads version {SCHEMA_VERSION}"
    )]
    Schema { path: String, found: u32 },
    /// The writer thread is gone (the store was closed) or the operation panicked there.
    #[error("store: {0}")]
    Writer(String),
    /// A write failed (a full disk) and the database is being opened again from what is on
    /// disk; the request may be retried.
    #[error("store: unavailable until it is reopened after a failed write ({0})")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The trees and the in-memory queue index: what the writer changes and readers read.
#[derive(Clone)]
pub(crate) struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    jobs: sled::Tree,
    events: sled::Tree,
    metrics: sled::Tree,
    datasets: sled::Tree,
    idempotency: sled::Tree,
    quarantine: sled::Tree,
    users: sled::Tree,
    tokens: sled::Tree,
    dataset_owners: sled::Tree,
    notify: sled::Tree,
    outbox: sled::Tree,
    /// `queue_key(job)` → id for exactly the queued jobs: highest priority first, ties in
    /// submit order. Only the writer changes it.
    queue: Arc<Mutex<BTreeMap<[u8; 12], u64>>>,
}

impl Trees {
    fn queue(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 12], u64>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The open database, or why there is none. sled refuses every write for good after one
/// failed (its "global error") but still reads, so the writer keeps it for readers until the
/// disk has room, then drops it and opens the folder again, which recovers what was flushed.
pub(crate) struct Shared {
    dir: std::path::PathBuf,
    trees: std::sync::RwLock<std::result::Result<Trees, String>>,
    /// Why the open database can no longer write, until it is reopened; reads go on.
    broken: Mutex<Option<String>>,
    /// How many times the database was reopened after a failed write ([`Store::reopened`]).
    reopened: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn get(&self) -> Result<Trees> {
        match &*self.trees.read().unwrap_or_else(|e| e.into_inner()) {
            Ok(t) => Ok(t.clone()),
            Err(why) => Err(StoreError::Unavailable(why.clone())),
        }
    }

    fn set(&self, trees: std::result::Result<Trees, String>) {
        *self.trees.write().unwrap_or_else(|e| e.into_inner()) = trees;
    }

    fn broken(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: writer::Handle,
    /// Every job whose state changed, as it is after the change ([`Store::transitions`]).
    transitions: tokio::sync::broadcast::Sender<JobView>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, checks (and upgrades) its schema version, moves
    /// records that cannot be read into `quarantine`, rebuilds the queue and starts the writer.
    pub fn open(dir: &Path) -> Result<Store> {
        let t = open_trees(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            trees: std::sync::RwLock::new(Ok(t)),
            broken: Mutex::new(None),
            reopened: Default::default(),
        });
        let writer = writer::spawn(shared.clone());
        let (transitions, _) = tokio::sync::broadcast::channel(TRANSITIONS_BUFFER);
        Ok(Store {
            shared,
            writer,
            transitions,
        })
    }

    /// A receiver of every job state change from now on (the job as it is after it). Sending
    /// never waits: a receiver that falls more than [`TRANSITIONS_BUFFER`] behind misses the
    /// oldest and is told how many (`RecvError::Lagged`).
    pub fn transitions(&self) -> tokio::sync::broadcast::Receiver<JobView> {
        self.transitions.subscribe()
    }

    /// The open trees, or [`StoreError::Unavailable`] while the store is being reopened.
    fn t(&self) -> Result<Trees> {
        self.shared.get()
    }

    /// `Err(why)` while the store cannot write (it is reopened once there is room again).
    pub fn health(&self) -> std::result::Result<(), String> {
        if let Some(why) = self.shared.broken().clone() {
            return Err(format!(
                "the store cannot write ({why}); it reopens when there is room"
            ));
        }
        self.t().map(|_| ()).map_err(|e| e.to_string())
    }

    /// How many times the database was reopened after a failed write. A reopened database
    /// holds what the last good flush wrote: the changes answered with an error since (which
    /// readers saw meanwhile) may be gone, so whoever acted on them checks again.
    pub fn reopened(&self) -> u64 {
        self.shared
            .reopened
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a reopen without one, for tests of what reacts to it.
    #[cfg(test)]
    pub(crate) fn pretend_reopened(&self) {
        self.shared
            .reopened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes everything written so far durable (one fsync for all callers waiting at once).
    pub async fn flush(&self) -> Result<()> {
        self.writer.run(true, |_| Ok(())).await
    }

    /// Flushes, stops the writer and waits for it; later writes fail. Reads keep working.
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.writer.stop();
        Ok(())
    }

    pub async fn put_dataset(&self, view: &DatasetView) -> Result<()> {
        let (key, value) = (view.sha256.clone(), to_json(view));
        self.writer
            .run(false, move |t| {
                t.datasets.insert(key.as_bytes(), value)?;
                Ok(())
            })
            .await
    }

    pub fn dataset(&self, sha256: &str) -> Result<Option<DatasetView>> {
        self.t()?
            .datasets
            .get(sha256.as_bytes())?
            .map(|v| from_json("datasets", &v))
            .transpose()
    }

    /// Forgets a data set's record (its file is the caller's).
    pub async fn remove_dataset(&self, sha256: &str) -> Result<()> {
        let key = sha256.to_string();
        self.writer
            .run(false, move |t| {
                t.datasets.remove(key.as_bytes())?;
                Ok(())
            })
            .await
    }

    /// The names (`tree/key`) of the records moved aside at open.
    pub fn quarantined(&self) -> Result<Vec<String>> {
        self.t()?
            .quarantine
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Raw access for tests that need to damage a record.
    #[cfg(test)]
    fn trees(&self) -> Trees {
        self.t().expect("the store is open")
    }
}

/// Opens the database in `dir` (see [`Store::open`]) without starting a writer.
/// The processes (`pid (command line)`) with a file of the store at `dir` open, from /proc:
/// what a refused lock names.
pub fn holders(dir: &Path) -> Vec<String> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&dir)));
        if open {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push(format!("pid {pid} ({})", cmd.trim()));
        }
    }
    out
}

pub(crate) fn open_trees(dir: &Path) -> Result<Trees> {
    // No background flusher: the writer flushes (see the module docs for why).
    let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
    let t = Trees {
        meta: db.open_tree("meta")?,
        jobs: db.open_tree("jobs")?,
        events: db.open_tree("events")?,
        metrics: db.open_tree("metrics")?,
        datasets: db.open_tree("datasets")?,
        idempotency: db.open_tree("idempotency")?,
        quarantine: db.open_tree("quarantine")?,
        users: db.open_tree("users")?,
        tokens: db.open_tree("tokens")?,
        dataset_owners: db.open_tree("dataset_owners")?,
        notify: db.open_tree("notify")?,
        outbox: db.open_tree("outbox")?,
        db,
        queue: Default::default(),
    };
    match t.meta.get("schema_version")? {
        None => {}
        Some(v) => {
            let found =
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "meta",
                    message: "schema_version is not a u32".into(),
                })?);
            if found > SCHEMA_VERSION {
                return Err(StoreError::Schema {
                    path: dir.display().to_string(),
                    found,
                });
            }
        }
    }
    // Version 1 kept the queue order in a tree; it is rebuilt from the jobs below.
    t.db.drop_tree("queue")?;
    t.meta
        .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
    rebuild(&t)?;
    t.db.flush()?;
    Ok(t)
}

/// In one pass over the job records: the queue index, `next_job_id` past every job, and every
/// record that does not decode moved into `quarantine` (under `jobs/<id>`, logged once); the
/// same for data set records; then idempotency entries whose job is missing dropped.
fn rebuild(t: &Trees) -> Result<()> {
    let mut bad = Vec::new();
    let mut max_id = 0;
    {
        let mut queue = t.queue();
        queue.clear();
        for kv in t.jobs.iter() {
            let (k, v) = kv?;
            match job_from_json(&v) {
                Ok(view) => {
                    max_id = max_id.max(view.id);
                    if view.state == JobState::Queued {
                        queue.insert(jobs::queue_key(&view), view.id);
                    }
                }
                Err(e) => {
                    let id = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                    tracing::error!("store: job {id} cannot be read ({e}); moved to quarantine");
                    bad.push((&t.jobs, format!("jobs/{id}"), k, v));
                }
            }
        }
    }
    fn reads<T: serde::de::DeserializeOwned>(v: &[u8]) -> bool {
        serde_json::from_slice::<T>(v).is_ok()
    }
    type Reads = fn(&[u8]) -> bool;
    let readable: [(&sled::Tree, &str, Reads); 5] = [
        (&t.datasets, "datasets", reads::<DatasetView>),
        (&t.users, "users", reads::<orpo_api::UserView>),
        (&t.tokens, "tokens", reads::<TokenRecord>),
        (&t.notify, "notify", reads::<orpo_api::NotifyView>),
        (&t.outbox, "outbox", reads::<notify::Pending>),
    ];
    for (tree, name, reads) in readable {
        for kv in tree.iter() {
            let (k, v) = kv?;
            if !reads(&v) {
                // A token's key is its hash, a user's key their name: neither is a secret.
                let key = String::from_utf8_lossy(&k).into_owned();
                tracing::error!("store: {name} record {key} cannot be read; moved to quarantine");
                bad.push((tree, format!("{name}/{key}"), k, v));
            }
        }
    }
    if !bad.is_empty() {
        tracing::error!(
            "store: moved {} unreadable record(s) to the quarantine tree; the rest of the \
             queue goes on",
            bad.len()
        );
    }
    for (tree, name, key, value) in bad {
        // Copy first, then remove: a crash in between leaves the record in both places, and
        // the next open moves it again.
        t.quarantine.insert(name.as_bytes(), value)?;
        tree.remove(key)?;
    }
    if jobs::read_next_id(t)? <= max_id {
        t.meta.insert("next_job_id", &(max_id + 1).to_be_bytes())?;
    }
    for kv in t.idempotency.iter() {
        let (k, v) = kv?;
        let keep = from_json::<jobs::IdemEntry>("idempotency", &v)
            .map(|e| t.jobs.contains_key(e.job.to_be_bytes()).unwrap_or(false))
            .unwrap_or(false);
        if !keep {
            t.idempotency.remove(k)?;
        }
    }
    Ok(())
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
    let view: JobView = from_json("jobs", bytes)?;
    if view.spec.is_none() {
        return Err(StoreError::Corrupt {
            tree: "jobs",
            message: format!("job {} has no spec", view.id),
        });
    }
    Ok(view)
}

/// The spec of a job the store returned: every stored job has one (a record without is
/// quarantined when the store opens and refused when written); only the API leaves it out,
/// for another user's job.
pub fn spec_of(view: &JobView) -> &orpo_api::JobSpec {
    view.spec
        .as_ref()
        .expect("stored jobs have a spec (checked when read)")
}

/// A job record as stored, refused if it would not read back (a non-finite float, which JSON
/// writes as `null`): what the store writes it can always read.
fn job_to_json(view: &JobView) -> Result<Vec<u8>> {
    let bytes = to_json(view);
    job_from_json(&bytes).map_err(|e| {
        StoreError::Rejected(format!(
            "job {} was not stored: its record would not read back ({e})",
            view.id
        ))
    })?;
    Ok(bytes)
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
