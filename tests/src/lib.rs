//! Harness of the end-to-end suite: real `orpod serve` processes in temporary folders on port 0,
//! a tiny model and preference data written on the fly, and waiting helpers.
//!
//! The daemon runs as a separate process (not in-process) because the suite kills it with
//! SIGKILL and SIGTERM, and its workers must see a real parent die.

pub mod browser;
pub mod slurm;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orpo_api::client::Client;
use orpo_api::{JobState, JobView, SubmitJobRequest};

/// A running `orpod serve`.
pub struct TestDaemon {
    pub state_dir: PathBuf,
    pub url: String,
    pub client: Client,
    exe: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// What `client` sends as its bearer token (see [`TestDaemon::use_token`]).
    token: Option<String>,
}

impl TestDaemon {
    /// Starts `exe serve` with state in `state_dir` and `extra` TOML lines in its config file.
    /// Unless `extra` sets them, it listens on a free port (a new one at each restart), models
    /// may be anywhere in `state_dir`'s parent (the test's
    /// temporary folder, where its model is) and jobs may checkpoint every step.
    pub async fn start(exe: &Path, state_dir: &Path, extra: &str) -> TestDaemon {
        std::fs::create_dir_all(state_dir).unwrap();
        let config = state_dir.with_extension("toml");
        let mut roots = String::new();
        if !extra.contains("listen =") {
            roots += "listen = \"127.0.0.1:0\"\n";
        }
        if !extra.contains("model_roots") {
            roots += &format!(
                "model_roots = [{:?}]\n",
                state_dir.parent().unwrap().to_string_lossy()
            );
        }
        if !extra.contains("min_save_every") {
            roots += "min_save_every = 1\n";
        }
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ncancel_grace_s = 5\nshutdown_grace_s = 20\n{roots}{extra}",
                state_dir.to_string_lossy()
            ),
        )
        .unwrap();
        let mut d = TestDaemon {
            state_dir: state_dir.to_path_buf(),
            url: String::new(),
            client: Client::new("http://127.0.0.1:1"),
            exe: exe.to_path_buf(),
            config,
            child: None,
            token: None,
        };
        d.spawn().await;
        d
    }

    async fn spawn(&mut self) {
        let addr_file = self.state_dir.join("orpod.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting orpod serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    break a;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "orpod serve exited at start ({status}); log: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "orpod serve did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.url = format!("http://{addr}");
        self.client = match &self.token {
            Some(t) => self.client_with(t),
            None => Client::new(&self.url),
        };
    }

    /// From now on `client` (and the waiting helpers) send `token`, also after a restart.
    pub fn use_token(&mut self, token: &str) {
        self.token = Some(token.to_string());
        self.client = self.client_with(token);
    }

    /// A client of this daemon that sends `token`.
    pub fn client_with(&self, token: &str) -> Client {
        Client::with_token(&self.url, Some(token), Duration::from_secs(10)).unwrap()
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns how long the daemon took to exit.
    pub fn stop(&mut self) -> Duration {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        assert!(
            status.success(),
            "orpod serve exited with {status}: {}",
            self.log()
        );
        t.elapsed()
    }

    /// Starts the daemon again on the same state folder (a new port).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill it first");
        self.spawn().await;
    }

    /// Polls the job until `pred` holds; panics with the job after `timeout`.
    pub async fn wait_for(
        &self,
        id: u64,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.client.job(id).await.expect("GET job");
            if pred(&job) {
                return job;
            }
            if Instant::now() > deadline {
                let events = self.client.events(id, None).await.unwrap_or_default();
                let log =
                    std::fs::read_to_string(self.state_dir.join(format!("jobs/{id}/worker.log")))
                        .unwrap_or_default();
                panic!(
                    "job {id}: timed out waiting for {what}: {job:#?}\nevents: {events:#?}\nworker.log:\n{log}\ndaemon log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every job of the store, newest first, paging through `GET /v1/jobs`.
    pub async fn all_jobs(&self) -> Vec<JobView> {
        let (mut out, mut cursor) = (Vec::new(), None);
        loop {
            let page = self
                .client
                .list(&orpo_api::client::ListJobs {
                    limit: Some(1000),
                    cursor,
                    ..Default::default()
                })
                .await
                .expect("list");
            out.extend(page.jobs);
            cursor = page.next_cursor;
            if cursor.is_none() {
                return out;
            }
        }
    }

    /// Uploads `rows` rows of [`prefs_jsonl`]; returns the data set's reference.
    pub async fn upload(&self, rows: usize) -> String {
        self.client
            .upload_dataset(prefs_jsonl(rows))
            .await
            .expect("upload")
            .reference
    }

    /// Waits until every checkpoint of job `id` that has sample prompts has its samples too,
    /// and the job's event log says so (the daemon answers them after each checkpoint,
    /// admitted like a generation); returns those checkpoints' names.
    pub async fn wait_samples(&self, id: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = self.client.checkpoints(id).await.expect("checkpoints");
            let has =
                |c: &orpo_api::CheckpointView, name: &str| c.files.iter().any(|f| f.name == name);
            let prompted: Vec<&orpo_api::CheckpointView> = list
                .iter()
                .filter(|c| has(c, "sample_prompts.json"))
                .collect();
            // The file, then the event that says so (appended once the worker has exited).
            let events = self.client.events(id, None).await.expect("events");
            let told = |name: &str| {
                let written = format!("samples of {name} written");
                events.iter().any(|e| e.message == written)
            };
            if prompted
                .iter()
                .all(|c| has(c, "samples.json") && told(&c.name))
            {
                return prompted.iter().map(|c| c.name.clone()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "samples not written: {list:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The steps of a job's logged training records (those with a learning rate), in order.
    pub async fn train_steps(&self, id: u64) -> Vec<usize> {
        self.client
            .metrics(id, None)
            .await
            .expect("metrics")
            .iter()
            .filter(|r| r.learning_rate.is_some())
            .map(|r| r.step)
            .collect()
    }

    /// The ids of [`TestDaemon::all_jobs`].
    pub async fn job_ids(&self) -> Vec<u64> {
        self.all_jobs().await.iter().map(|j| j.id).collect()
    }

    pub async fn wait_state(&self, id: u64, state: JobState, timeout: Duration) -> JobView {
        self.wait_for(id, timeout, state.as_str(), |j| j.state == state)
            .await
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `orpod user add NAME [--admin]` on a stopped daemon's state folder.
pub fn orpod_user_add(exe: &Path, state_dir: &Path, name: &str, admin: bool) {
    let mut cmd = Command::new(exe);
    cmd.args(["user", "add", name, "--state-dir"])
        .arg(state_dir);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().expect("running orpod user add");
    assert!(out.status.success(), "orpod user add {name}: {out:?}");
}

/// `orpod token create --user NAME` on a stopped daemon's state folder; the token.
pub fn orpod_token_create(exe: &Path, state_dir: &Path, user: &str) -> String {
    let out = Command::new(exe)
        .args(["token", "create", "--user", user, "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("running orpod token create");
    assert!(out.status.success(), "orpod token create {user}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A tiny random Llama (the trainer's test model) as a GGUF file with its ChatML tokenizer.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    orpo_trainer::model::testing::write_tiny_gguf(&path, orpo_trainer::model::Arch::Llama, 7)
        .expect("writing the tiny model");
    path
}

/// `n` preference rows of plain text.
pub fn prefs_jsonl(n: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(
            &serde_json::json!({
                "prompt": format!("Question {i}: what is {} plus {}?", i % 7, i % 5),
                "chosen": format!(" The answer is {}.", i % 7 + i % 5),
                "rejected": format!(" Maybe {} or so.", i % 3),
            })
            .to_string(),
        );
        out.push('\n');
    }
    out.into_bytes()
}

/// A job file for the tiny model and an uploaded data set; `train` adds `[train]` keys.
pub fn job_toml(model: &Path, dataset_ref: &str, train: &str) -> String {
    format!(
        "name = \"tiny\"\n[model]\nbase = {:?}\n[data]\ntrain = {:?}\nmax_length = 48\nmax_prompt_length = 24\n\
         [lora]\nr = 4\nalpha = 8\n[train]\nbatch_size = 2\nlog_every = 1\n{train}\n[resources]\ndevice = \"cpu\"\n",
        model.to_string_lossy(),
        dataset_ref
    )
}

/// Uploads `rows` rows and submits a tiny job with `train` settings.
pub async fn submit_tiny(d: &TestDaemon, model: &Path, rows: usize, train: &str) -> JobView {
    let ds = d
        .client
        .upload_dataset(prefs_jsonl(rows))
        .await
        .expect("upload");
    d.client
        .submit(&SubmitJobRequest {
            job_toml: Some(job_toml(model, &ds.reference, train)),
            owner: Some("tester".into()),
            ..Default::default()
        })
        .await
        .expect("submit")
}
