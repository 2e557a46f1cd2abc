//! A worker's events sent to the daemon over HTTP, for a worker Slurm started (maybe on another
//! node, where the daemon's stdout pipe cannot reach).
//!
//! Events are numbered from 1 and posted in order, in batches, by one thread, to the URL the
//! daemon gave (`--report`) with the job's secret (`JOB_DIR/worker.secret`, written by the
//! daemon for this attempt alone). A batch that fails is posted again until it is taken: the
//! daemon keeps the number of the last event it applied and skips those it has, so a batch
//! taken twice (its answer lost) counts once, and a daemon that restarts loses nothing. A daemon
//! that refuses the secret or no longer runs the job through this worker (it was requeued in
//! another Slurm job) answers 403, 404 or 409: the worker then stops at its next step, with a
//! checkpoint, instead of training a job nobody follows.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::supervisor::protocol::{WorkerEvent, WorkerReport};

/// The job's secret for this attempt, beside its job.toml.
pub const SECRET_FILE: &str = "worker.secret";

/// Most events in one post.
const BATCH: usize = 256;

/// The longest wait between two tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Reporter {
    tx: Mutex<Option<mpsc::Sender<WorkerEvent>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Reporter {
    /// Starts the sending thread. `stop` is the trainer's stop flag, raised when the daemon
    /// disowns this worker.
    pub fn start(url: &str, job_dir: &Path, stop: Arc<AtomicBool>) -> anyhow::Result<Reporter> {
        let path = job_dir.join(SECRET_FILE);
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the job's secret {}", path.display()))?
            .trim()
            .to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let (tx, rx) = mpsc::channel();
        let url = url.to_string();
        let thread = std::thread::Builder::new()
            .name("report".into())
            .spawn(move || send_all(rx, &client, &url, &secret, &stop))
            .context("starting the report thread")?;
        Ok(Reporter {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn send(&self, event: WorkerEvent) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(event);
        }
    }

    /// No more events; waits up to `wait` for the daemon to take those not sent yet. Past it
    /// the worker exits anyway: the daemon reads the job's end from `outcome.json`.
    pub fn finish(&self, wait: Duration) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            eprintln!("the daemon did not take the last events within {wait:?}; exiting");
        }
    }
}

fn send_all(
    rx: mpsc::Receiver<WorkerEvent>,
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    stop: &AtomicBool,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot report events: {e}");
            return;
        }
    };
    let mut next_seq = 1u64;
    let mut disowned = false;
    // `recv` fails once the sender is dropped and every event was received.
    while let Ok(first) = rx.recv() {
        let mut events = vec![first];
        while events.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let report = WorkerReport {
            first_seq: next_seq,
            events,
        };
        next_seq += report.events.len() as u64;
        if disowned {
            continue;
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            let sent = runtime.block_on(async {
                client
                    .post(url)
                    .bearer_auth(secret)
                    .json(&report)
                    .send()
                    .await
            });
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if matches!(r.status().as_u16(), 403 | 404 | 409) => {
                    let body = runtime.block_on(r.text()).unwrap_or_default();
                    eprintln!("the daemon disowned this worker: {body}; stopping");
                    stop.store(true, Ordering::SeqCst);
                    disowned = true;
                    break;
                }
                Ok(r) => eprintln!("reporting events: HTTP {}; trying again", r.status()),
                Err(e) => eprintln!("reporting events: {e}; trying again"),
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
