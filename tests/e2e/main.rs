//! The end-to-end suite: one test binary (link time), each test starting real `orpod serve`
//! processes in temporary folders on port 0 and talking to them over HTTP with the typed client.
//!
//! - `admission`: jobs admitted against the host's RAM and against fake GPUs, the reasons they
//!   wait, `/v1/gpus`, `/v1/plan`, the measured peak beside the estimate.
//! - `jobs`: a job's life on the tiny model (submit, view, metrics, events, checkpoints,
//!   download with Range, list filters and cursors), cancel.
//! - `generate`: a checkpoint's answers beside its base's from a worker process, the same
//!   tokens as `orpod generate`; bad requests; a request that does not fit waits, then gives up.
//! - `pause`: pause checkpoints and frees the slot; resume continues from the checkpoint.
//! - `recovery`: kill -9 of the daemon mid-training, SIGTERM shutdown, 10,000 stored jobs.
//! - `diskfull`: the state folder on a full tmpfs: new work refused clearly, nothing lost.
//! - `queue`: bad values refused, unreadable records quarantined, a model no one could train
//!   fails its own job only, idempotency keys, deleting finished jobs.
//! - `stress`: sixteen clients at once while a job trains; kill -9 at twenty random moments.
//! - `errors`: bad inputs get the right 4xx and a message that says what is wrong.
//! - `openapi`: the committed api-spec/openapi.json is what the code generates.
//! - `notify`: webhooks (JSON, ntfy, Slack) from a local receiver's view: allowed prefixes
//!   only, each owner hears of their own jobs, retries, a long wait announced once.
//! - `security`: tokens (missing, wrong, expired, revoked), other users' jobs and data sets,
//!   owner spoofing, admin routes, traversal in path parameters, model paths outside the roots.
//! - `sharing`: each per-user limit refuses with its name and value; fair turns between users.
//! - `web`: the web page in headless Chromium: token, queue, a job named with HTML shown as
//!   text, charts that grow while the job trains, pause / resume / cancel buttons, compare.
//! - `systemd`: the unit file names the real binary and flags and passes `systemd-analyze
//!   verify`; readiness, watchdog and stopping notifications, pings stop when the scheduler hangs.

mod admission;
mod diskfull;
mod edges;
mod errors;
mod generate;
mod jobs;
mod notify;
mod openapi;
mod pause;
mod queue;
mod recovery;
mod security;
mod sharing;
mod stress;
mod systemd;
mod web;

use std::path::{Path, PathBuf};

/// The daemon binary built from this package (`orpod`'s main under another name).
pub const ORPOD: &str = env!("CARGO_BIN_EXE_orpod-e2e");

pub fn exe() -> &'static Path {
    Path::new(ORPOD)
}

/// A temporary folder with the tiny model in it.
pub fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = orpo_tests::tiny_model(tmp.path());
    (tmp, model)
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
