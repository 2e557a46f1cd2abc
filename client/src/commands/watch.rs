//! `orpoctl watch` and `orpoctl logs`: follow a job through the daemon's server-sent events.
//!
//! `watch` draws a progress bar (step/total, loss, reward accuracy and margin, tokens/s, ETA,
//! a sparkline of the loss) on a terminal, and one plain line per logged step otherwise, so a
//! `watch` piped into a file or CI log stays readable. Ctrl-C detaches: the job keeps running.
//! The exit code is the job's outcome: 0 when it succeeded, 1 when it failed or was cancelled.

use std::io::IsTerminal as _;
use std::time::Duration;

use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orpo_api::client::ClientError;
use orpo_api::{EventKind, EventView, JobState, JobView, MetricRecord};

use crate::conn::{ApiResult as _, Conn};
use crate::display;
use crate::Outcome;

/// How many losses the sparkline shows.
const SPARK: usize = 24;

pub async fn watch(conn: &Conn, id: u64) -> anyhow::Result<Outcome> {
    let job = conn.client.job(id).await.or_explain(conn)?;
    if job.state.is_terminal() {
        return Ok(finish(&job));
    }
    let mut view = Watcher::new(id, std::io::stderr().is_terminal());
    view.update(conn, &job).await?;
    let detach = tokio::signal::ctrl_c();
    tokio::pin!(detach);
    let mut since = None;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A dropped connection (daemon restart, Wi-Fi) is retried a few times from the last seq.
    let mut retries = 0;
    loop {
        let stream = tokio::select! {
            s = conn.client.follow_events(id, since) => s,
            _ = &mut detach => return Ok(view.detach()),
        };
        let mut stream = match stream {
            Ok(s) => s,
            // A refusal (401, 403, 404) will not change by asking again.
            Err(e) if retries < 5 && !is_refusal(&e) => {
                retries += 1;
                view.note(&format!("lost the daemon ({:#}); retrying", conn.error(e)));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(conn.error(e)),
        };
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = &mut detach => return Ok(view.detach()),
                // Training steps are not events (only evaluations are), so progress and new
                // metric records are polled while the events stream in.
                _ = poll.tick() => {
                    let job = conn.client.job(id).await.or_explain(conn)?;
                    view.update(conn, &job).await?;
                    continue;
                }
            };
            match next {
                Some(Ok(ev)) => {
                    retries = 0;
                    since = Some(ev.seq);
                    view.event(conn, &ev).await?;
                }
                Some(Err(_)) | None => break,
            }
        }
        let job = conn.client.job(id).await.or_explain(conn)?;
        if job.state.is_terminal() {
            view.bar.finish_and_clear();
            return Ok(finish(&job));
        }
        retries += 1;
        if retries > 5 {
            anyhow::bail!("the event stream of job {id} keeps ending while the job is {}; `orpoctl status {id}` shows it", job.state);
        }
    }
}

/// The daemon answered with a 4xx: the request itself is refused (no token, not the caller's
/// job, no such job), so retrying it cannot help.
fn is_refusal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            status: 400..=499,
            ..
        }
    )
}

/// The last line of `watch`: the outcome, the final loss, what to do next.
fn finish(job: &JobView) -> Outcome {
    let id = job.id;
    let loss = job
        .metrics
        .as_ref()
        .and_then(|m| m.metrics.get("loss"))
        .map(|l| format!(", loss {}", display::metric(Some(*l))))
        .unwrap_or_default();
    match job.state {
        JobState::Succeeded => {
            println!(
                "job {id} succeeded: {} steps in {}{loss}",
                job.progress.step,
                display::duration(job.progress.elapsed_s)
            );
            eprintln!("fetch the adapter with `orpoctl download {id} -o DIR`");
            Outcome::Ok
        }
        JobState::Failed => {
            let why = job
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind, e.message))
                .unwrap_or_else(|| "no reason recorded".into());
            println!("job {id} failed: {why}");
            eprintln!("`orpoctl logs {id}` shows what the worker said");
            Outcome::Failed
        }
        _ => {
            println!("job {id} was {}", job.state);
            Outcome::Failed
        }
    }
}

struct Watcher {
    id: u64,
    bar: ProgressBar,
    tty: bool,
    losses: Vec<f64>,
    last_step: Option<usize>,
}

impl Watcher {
    fn new(id: u64, tty: bool) -> Watcher {
        let bar = if tty {
            // No length until the worker has counted the steps: indicatif then draws no bar
            // rather than a full one.
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:28.cyan/blue}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("job {id}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        Watcher {
            id,
            bar,
            tty,
            losses: Vec::new(),
            last_step: None,
        }
    }

    /// A line above the bar (or on stderr when there is no bar).
    fn note(&self, line: &str) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    async fn event(&mut self, conn: &Conn, ev: &EventView) -> anyhow::Result<()> {
        match ev.kind {
            EventKind::Metrics => {
                let job = conn.client.job(self.id).await.or_explain(conn)?;
                self.update(conn, &job).await?;
            }
            EventKind::State => {
                self.note(&format!("state: {}", ev.message));
                let job = conn.client.job(self.id).await.or_explain(conn)?;
                self.update(conn, &job).await?;
            }
            EventKind::Checkpoint => self.note(&format!(
                "checkpoint {} saved",
                ev.checkpoint.as_deref().unwrap_or("?")
            )),
            EventKind::Log => self.note(&ev.message),
        }
        Ok(())
    }

    /// Reads the records logged since the last update and redraws.
    async fn update(&mut self, conn: &Conn, job: &JobView) -> anyhow::Result<()> {
        let new = conn
            .client
            .metrics(self.id, self.last_step)
            .await
            .or_explain(conn)?;
        for r in &new {
            if r.learning_rate.is_some() {
                if let Some(l) = r.metrics.get("loss") {
                    self.losses.push(*l);
                }
                if !self.tty {
                    eprintln!("{}", step_line(r, job));
                }
            }
            self.last_step = Some(r.step);
        }
        let p = &job.progress;
        if p.total_steps > 0 {
            self.bar.set_length(p.total_steps as u64);
        }
        self.bar.set_position(p.step as u64);
        self.bar.set_message(status_message(job, &self.losses));
        Ok(())
    }

    fn detach(&self) -> Outcome {
        self.bar.abandon();
        eprintln!(
            "detached; job {} keeps running (`orpoctl watch {}` follows it again, `orpoctl cancel {}` stops it)",
            self.id, self.id, self.id
        );
        Outcome::Ok
    }
}

/// `loss 0.6931 acc 0.50 margin 0.0012 | 812 tok/s | ETA 3m05s ▇▅▃▂▁`
fn status_message(job: &JobView, losses: &[f64]) -> String {
    if !matches!(job.state, JobState::Running) {
        let why = job.pending_reason.as_deref().unwrap_or("");
        return format!("{} {why}", job.state).trim_end().to_string();
    }
    let mut parts = Vec::new();
    if job.metrics.is_none() {
        parts.push("running the first step".to_string());
    }
    if let Some(m) = &job.metrics {
        let g = |k: &str| m.metrics.get(k).copied();
        parts.push(format!(
            "loss {} acc {} margin {}",
            display::metric(g("loss")),
            g("rewards/accuracies")
                .map(|v| format!("{v:.2}"))
                .unwrap_or("-".into()),
            display::metric(g("rewards/margins"))
        ));
    }
    let p = &job.progress;
    if p.elapsed_s > 0.0 && p.tokens > 0 {
        parts.push(format!("{:.0} tok/s", p.tokens as f64 / p.elapsed_s));
    }
    if let Some(eta) = p.eta_s {
        parts.push(format!("ETA {}", display::duration(eta)));
    }
    let spark = display::sparkline(losses, SPARK);
    format!("{} {spark}", parts.join(" | "))
        .trim_end()
        .to_string()
}

/// One plain line per logged step, for a `watch` whose stderr is not a terminal.
fn step_line(r: &MetricRecord, job: &JobView) -> String {
    let g = |k: &str| display::metric(r.metrics.get(k).copied());
    format!(
        "step {}/{} loss {} rewards/accuracies {} rewards/margins {}",
        r.step,
        job.progress.total_steps,
        g("loss"),
        g("rewards/accuracies"),
        g("rewards/margins")
    )
}

pub async fn logs(conn: &Conn, id: u64, follow: bool, json: bool) -> anyhow::Result<Outcome> {
    let print = |ev: &EventView| {
        if json {
            println!("{}", serde_json::to_string(ev).expect("events serialise"));
        } else {
            println!("{}", log_line(ev));
        }
    };
    if !follow {
        let events = conn.client.events(id, None).await.or_explain(conn)?;
        events.iter().for_each(print);
        return Ok(Outcome::Ok);
    }
    let mut stream = conn.client.follow_events(id, None).await.or_explain(conn)?;
    let detach = tokio::signal::ctrl_c();
    tokio::pin!(detach);
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(ev) => print(&ev.or_explain(conn)?),
                None => return Ok(Outcome::Ok),
            },
            _ = &mut detach => return Ok(Outcome::Ok),
        }
    }
}

/// `2026-11-27T06:48:22Z  state       running`
pub fn log_line(ev: &EventView) -> String {
    let kind = match ev.kind {
        EventKind::State => "state",
        EventKind::Log => "log",
        EventKind::Checkpoint => "checkpoint",
        EventKind::Metrics => "metrics",
    };
    // Log lines come from workers and job names from users: shown, never obeyed.
    format!(
        "{}  {kind:<10}  {}",
        crate::display::escape(&ev.time),
        crate::display::escape_lines(&ev.message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_drive_the_terminal() {
        let ev = EventView {
            seq: 1,
            time: "2026-12-01T00:00:00Z".into(),
            kind: EventKind::Log,
            message: "loss \x1b[2J\rgone".into(),
            state: None,
            checkpoint: None,
        };
        let line = log_line(&ev);
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
        assert!(line.ends_with("loss \\e[2J\\rgone"), "{line:?}");
    }

    #[test]
    fn bar_message_of_a_running_job() {
        let mut job: JobView = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "n", "owner": "o", "state": "running", "pending_reason": null,
            "device": "cpu", "progress": {"step": 3, "total_steps": 10, "epoch": 0.3,
            "tokens": 1200, "elapsed_s": 6.0, "eta_s": 14.0}, "metrics": null,
            "eval_metrics": null, "memory": {"estimate_bytes": null, "peak_bytes": null},
            "error": null, "attempts": 1, "created_at": "2026-11-27T11:58:30Z",
            "started_at": null, "finished_at": null,
            "spec": {"model": {"base": "m"}, "data": {"train": "t"}}
        }))
        .unwrap();
        assert_eq!(
            status_message(&job, &[]),
            "running the first step | 200 tok/s | ETA 14s"
        );
        job.metrics = Some(MetricRecord {
            metrics: [
                ("loss", 0.75),
                ("rewards/accuracies", 0.5),
                ("rewards/margins", 0.25),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..Default::default()
        });
        assert_eq!(
            status_message(&job, &[1.0, 0.9, 0.75]),
            "loss 0.7500 acc 0.50 margin 0.2500 | 200 tok/s | ETA 14s █▅▁"
        );
        job.state = JobState::Queued;
        job.pending_reason = Some("needs 6.1 GiB; cuda:0 has 3.2 GiB free".into());
        assert_eq!(
            status_message(&job, &[]),
            "queued needs 6.1 GiB; cuda:0 has 3.2 GiB free"
        );
    }
}
