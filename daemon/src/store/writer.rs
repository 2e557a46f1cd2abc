//! The store's one writer thread: it runs every change in arrival order and does every flush,
//! off the async runtime. A change asked for with `durable` is answered only after a flush that
//! covers it; all durable changes waiting at once share one flush (group commit). Between
//! requests it flushes whatever is buffered every [`FLUSH_EVERY`].
//!
//! A change that panics is answered with an error (its reply channel is dropped); the writer
//! goes on with the next one.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Result, StoreError, Trees};

/// Buffered writes reach the disk at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Durable changes answered by one flush at most; past it the writer flushes and goes on.
const GROUP_MAX: usize = 256;

/// Called with the outcome of the flush that covers a durable change.
type AfterFlush = Box<dyn FnOnce(Result<()>) + Send>;
/// One change: runs on the writer; returns what to call after the next flush, if anything.
type Op = Box<dyn FnOnce(&Trees) -> Option<AfterFlush> + Send>;

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

pub(super) fn spawn(trees: Trees) -> Handle {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("orpod-store".into())
        .spawn(move || run_writer(trees, rx))
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
        let op: Op = Box::new(move |t| match change(t) {
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

fn run_writer(t: Trees, rx: mpsc::Receiver<Msg>) {
    let mut dirty = false;
    let mut last_flush = Instant::now();
    let mut waiting: Vec<AfterFlush> = Vec::new();
    loop {
        let wait = if dirty {
            FLUSH_EVERY.saturating_sub(last_flush.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let mut stop = false;
        match rx.recv_timeout(wait) {
            Ok(Msg::Op(op)) => {
                apply(&t, op, &mut waiting);
                dirty = true;
                // Take what else is waiting, so one flush answers it all.
                while waiting.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(Msg::Op(op)) => apply(&t, op, &mut waiting),
                        Ok(Msg::Stop) => {
                            stop = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !waiting.is_empty() || stop || (dirty && last_flush.elapsed() >= FLUSH_EVERY) {
            let flushed = t.db.flush().map(|_| ()).map_err(|e| e.to_string());
            if let Err(e) = &flushed {
                tracing::error!("store: flush failed: {e}");
            }
            for done in waiting.drain(..) {
                done(flushed.clone().map_err(StoreError::Writer));
            }
            dirty = flushed.is_err();
            last_flush = Instant::now();
        }
        if stop {
            return;
        }
    }
}

fn apply(t: &Trees, op: Op, waiting: &mut Vec<AfterFlush>) {
    match std::panic::catch_unwind(AssertUnwindSafe(|| op(t))) {
        Ok(Some(after)) => waiting.push(after),
        Ok(None) => {}
        Err(_) => tracing::error!("store: a change panicked; it was not applied in full"),
    }
}
