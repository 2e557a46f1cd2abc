//! The store's one writer thread: it runs every change in arrival order and does every flush,
//! off the async runtime. A change asked for with `durable` is answered only after a flush that
//! covers it; all durable changes waiting at once share one flush (group commit). Between
//! requests it flushes whatever is buffered every [`FLUSH_EVERY`].
//!
//! A change that panics is answered with an error (its reply channel is dropped); the writer
//! goes on with the next one.
//!
//! A flush that fails (a full disk: sled writes its buffers out there) leaves sled refusing
//! every write for good (its "global error"), though it still reads. The writer then keeps the
//! database for readers and answers changes with [`StoreError::Unavailable`] until the state
//! folder has [`REOPEN_MIN_FREE`] free again; then, on its own (it looks every
//! [`REOPEN_EVERY`]), it drops the database and opens the folder again, which recovers
//! everything flushed before the failure. The changes made since the last good flush were
//! answered with an error but were visible to readers until then; the reopened database may
//! not have them (see [`super::Store::reopened`]).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{open_trees, Result, Shared, StoreError, Trees};

/// Buffered writes reach the disk at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Durable changes answered by one flush at most; past it the writer flushes and goes on.
const GROUP_MAX: usize = 256;
/// How soon the writer tries again after it failed to reopen a database.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// Free bytes on the state folder's disk before a database that failed a write is reopened.
const REOPEN_MIN_FREE: u64 = 4 << 20;

/// Called with the outcome of the flush that covers a durable change.
type AfterFlush = Box<dyn FnOnce(Result<()>) + Send>;
/// One change: runs on the writer with the open trees (or why there are none); returns what to
/// call after the next flush, if anything.
type Op = Box<dyn FnOnce(Result<&Trees>) -> Option<AfterFlush> + Send>;

enum Msg {
    Op(Op),
    Stop,
}

/// How the rest of the store reaches the writer.
#[derive(Clone)]
pub(super) struct Handle {
    tx: mpsc::Sender<Msg>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

pub(super) fn spawn(shared: Arc<Shared>) -> Handle {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("orpod-store".into())
        .spawn(move || run_writer(shared, rx))
        .expect("starting the store writer thread");
    Handle {
        tx,
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
    }
}

impl Handle {
    /// Runs `change` on the writer and returns its result; with `durable`, only once a flush
    /// has made it (and everything before it) durable.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        durable: bool,
        change: impl FnOnce(&Trees) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(move |t| match t.and_then(change) {
            Ok(value) if durable => Some(Box::new(move |flushed: Result<()>| {
                let _ = reply.send(flushed.map(|()| value));
            })),
            result => {
                let _ = reply.send(result);
                None
            }
        });
        self.tx
            .send(Msg::Op(op))
            .map_err(|_| StoreError::Writer("the store is closed".into()))?;
        answer.await.map_err(|_| {
            StoreError::Writer("a store operation failed unexpectedly; see the log".into())
        })?
    }

    /// Asks the writer to flush and stop, and waits for it.
    pub(super) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn run_writer(shared: Arc<Shared>, rx: mpsc::Receiver<Msg>) {
    let mut db = Db {
        t: shared.get().ok(),
        shared,
        last_reopen: Instant::now()
            .checked_sub(REOPEN_EVERY)
            .unwrap_or_else(Instant::now),
    };
    let mut dirty = false;
    let mut last_flush = Instant::now();
    let mut waiting: Vec<AfterFlush> = Vec::new();
    loop {
        let mut wait = if dirty {
            FLUSH_EVERY.saturating_sub(last_flush.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        // A broken database is reopened as soon as there is room, not on the next write:
        // until then readers see changes that may not survive it.
        if db.is_broken() {
            wait = wait.min(REOPEN_EVERY);
        }
        let mut stop = false;
        match rx.recv_timeout(wait) {
            Ok(Msg::Op(op)) => {
                db.apply(op, &mut waiting);
                dirty = true;
                // Take what else is waiting, so one flush answers it all.
                while waiting.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(Msg::Op(op)) => db.apply(op, &mut waiting),
                        Ok(Msg::Stop) => {
                            stop = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
            Err(mpsc::RecvTimeoutError::Timeout) => db.reopen_if_broken(),
        }
        if !waiting.is_empty() || stop || (dirty && last_flush.elapsed() >= FLUSH_EVERY) {
            let flushed = db.flush();
            for done in waiting.drain(..) {
                done(flushed.clone().map_err(StoreError::Unavailable));
            }
            dirty = false;
            last_flush = Instant::now();
        }
        if stop {
            return;
        }
    }
}

/// The writer's view of the database: the open trees (or none while reopening), and whether
/// they can still write.
struct Db {
    t: Option<Trees>,
    shared: Arc<Shared>,
    last_reopen: Instant,
}

impl Db {
    /// Runs one change on the open trees, reopening them first if a write had failed.
    fn apply(&mut self, op: Op, waiting: &mut Vec<AfterFlush>) {
        self.reopen_if_broken();
        let broken = self.shared.broken().clone();
        let trees = match (&self.t, broken) {
            (Some(t), None) => Ok(t),
            (_, Some(why)) => Err(StoreError::Unavailable(why)),
            (None, None) => Err(StoreError::Unavailable(
                "the database is being reopened".into(),
            )),
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| op(trees))) {
            Ok(Some(after)) => waiting.push(after),
            Ok(None) => {}
            Err(_) => tracing::error!("store: a change panicked; it was not applied in full"),
        }
    }

    /// Flushes the open trees; a failure marks them broken (see the module docs). sled writes
    /// its buffers out here, so this is where a full disk shows.
    fn flush(&mut self) -> std::result::Result<(), String> {
        if let Some(why) = self.shared.broken().clone() {
            return Err(why);
        }
        let Some(t) = &self.t else {
            return Err("the database could not be reopened yet".into());
        };
        match t.db.flush() {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = format!("a write failed: {e}");
                tracing::error!("store: {why}; changes wait until the disk has room");
                *self.shared.broken() = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Whether the database failed a write (or is not open yet after one).
    fn is_broken(&self) -> bool {
        self.shared.broken().is_some() || self.t.is_none()
    }

    /// Once the disk has room, drops the broken database (readers get
    /// [`StoreError::Unavailable`] for the moment it takes) and opens the folder again.
    fn reopen_if_broken(&mut self) {
        if !self.is_broken() {
            return;
        }
        // The free space is cheap to read and is what decides; only a failed open waits.
        let room = crate::disk::free_bytes(&self.shared.dir).unwrap_or(u64::MAX);
        if room < REOPEN_MIN_FREE || self.last_reopen.elapsed() < REOPEN_EVERY {
            return;
        }
        self.last_reopen = Instant::now();
        self.shared.set(Err(
            "the database is being reopened after a failed write".into()
        ));
        self.t = None;
        // A reader may still hold the old handle for a moment, and with it sled's file lock.
        for _ in 0..50 {
            match open_trees(&self.shared.dir) {
                Ok(t) => {
                    tracing::info!("store: reopened after a failed write");
                    self.last_reopen = Instant::now()
                        .checked_sub(REOPEN_EVERY)
                        .unwrap_or_else(Instant::now);
                    self.shared.set(Ok(t.clone()));
                    *self.shared.broken() = None;
                    self.shared
                        .reopened
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    self.t = Some(t);
                    return;
                }
                Err(e) => {
                    self.shared.set(Err(format!("reopening failed: {e}")));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        tracing::warn!("store: could not reopen the database yet; trying again later");
    }
}
