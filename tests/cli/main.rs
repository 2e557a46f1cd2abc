//! The client tests: the real `orpoctl` binary (as `orpoctl-e2e`) against real `orpod serve`
//! processes on port 0, every verb, with the exit code, stdout and stderr a user would see.
//!
//! - `jobs`: submit (uploads, dedup by sha256, --watch, --json), list, status, metrics, logs,
//!   checkpoints, download (and resuming a broken one), generate (streamed, beside the base),
//!   cancel, pause, resume.
//! - `errors`: bad job files (exit 2, line and column), unknown jobs, a server that is down,
//!   where the server and token come from.
//! - `devices`: gpus, plan, completions, and the daemon's dataset lookup route.
//! - `notify`: `notify add | list | test | rm` against a local receiver.
//! - `users`: a daemon with users: whoami, missing and refused tokens, `user add|list`,
//!   `token create|list|revoke`, and jobs that only their owners (and admins) may touch.

mod devices;
mod errors;
mod jobs;
mod notify;
mod users;

use std::path::{Path, PathBuf};
use std::process::Command;

use orpo_tests::TestDaemon;

pub const ORPOD: &str = env!("CARGO_BIN_EXE_orpod-e2e");
pub const ORPOCTL: &str = env!("CARGO_BIN_EXE_orpoctl-e2e");

/// A daemon in a temporary folder, the tiny model, and a job folder with a job.toml.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub d: TestDaemon,
    pub model: PathBuf,
}

impl Setup {
    pub async fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let model = orpo_tests::tiny_model(tmp.path());
        let d = TestDaemon::start(Path::new(ORPOD), &tmp.path().join("state"), "").await;
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        Setup { tmp, d, model }
    }

    /// Writes `job/job.toml` (data in `job/prefs.jsonl`, relative to it) and returns its path.
    pub fn job_file(&self, name: &str, rows: usize, train: &str) -> PathBuf {
        let dir = self.tmp.path().join("job");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("prefs.jsonl"), orpo_tests::prefs_jsonl(rows)).unwrap();
        let text = orpo_tests::job_toml(&self.model, "prefs.jsonl", train)
            .replace("name = \"tiny\"", &format!("name = {name:?}"));
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `orpoctl ARGS` against this daemon, with a clean home (no user config file).
    pub fn run(&self, args: &[&str]) -> Out {
        run_with(
            orpoctl(&self.tmp.path().join("home")).env("ORPOD_URL", &self.d.url),
            args,
        )
    }
}

/// `orpoctl` with HOME and XDG_CONFIG_HOME in `home` and no server or token in the environment.
pub fn orpoctl(home: &Path) -> Command {
    let mut c = Command::new(ORPOCTL);
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("USER", "tester")
        .env_remove("ORPOD_URL")
        .env_remove("ORPOD_TOKEN");
    c
}

/// What a run of `orpoctl` did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics with everything when the exit code is not `code`.
    #[track_caller]
    pub fn expect(self, code: i32) -> Out {
        assert_eq!(self.code, code, "exit code; {self:#?}");
        self
    }
}

pub fn run_with(cmd: &mut Command, args: &[&str]) -> Out {
    let out = cmd.args(args).output().expect("running orpoctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
