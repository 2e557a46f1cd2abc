//! `orpoctl list | status | metrics | chart | cancel | pause | resume`: reading jobs and changing their
//! state. The renderers are pure functions of the views (and the clock), so their output is
//! pinned by the tests below.

use std::time::SystemTime;

use orpo_api::client::ListJobs;
use orpo_api::{CheckpointView, JobState, JobView, MetricRecord};

use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

/// The metrics shown in `status` and the `metrics` table, in this order (TRL's names).
pub const KEY_METRICS: [&str; 6] = [
    "loss",
    "nll_loss",
    "log_odds_ratio",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
];

pub async fn list(
    conn: &Conn,
    state: Option<JobState>,
    owner: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<Outcome> {
    let q = ListJobs {
        state,
        owner,
        limit: Some(limit),
        cursor: None,
    };
    let page = conn.client.list(&q).await.or_explain(conn)?;
    if json {
        return super::print_json(&page.jobs);
    }
    if page.jobs.is_empty() {
        eprintln!(
            "no jobs{}; submit one with `orpoctl submit job.toml`",
            match state {
                Some(s) => format!(" in state {s}"),
                None => String::new(),
            }
        );
        return Ok(Outcome::Ok);
    }
    print!("{}", render_list(&page.jobs, SystemTime::now()));
    if page.next_cursor.is_some() {
        eprintln!("(more jobs: use --limit or --state to see others)");
    }
    Ok(Outcome::Ok)
}

/// The widest NAME and OWNER cells of `list`; longer ones end in an ellipsis (`status` shows
/// them whole).
const NAME_WIDTH: usize = 40;
const OWNER_WIDTH: usize = 24;

pub fn render_list(jobs: &[JobView], now: SystemTime) -> String {
    let mut t = Table::new(&[
        "ID", "NAME", "OWNER", "STATE", "PROGRESS", "DEVICE", "MEMORY", "AGE",
    ]);
    for j in jobs {
        t.row(vec![
            j.id.to_string(),
            display::truncate(&display::or_dash(Some(&j.name)), NAME_WIDTH),
            display::truncate(&j.owner, OWNER_WIDTH),
            j.state.to_string(),
            display::progress(&j.progress),
            display::or_dash(j.device.as_deref()),
            memory_cell(j),
            display::age(&j.created_at, now),
        ]);
    }
    t.render()
}

/// The peak when one was seen, else the estimate marked with `~`.
fn memory_cell(j: &JobView) -> String {
    match (j.memory.peak_bytes, j.memory.estimate_bytes) {
        (Some(p), _) => display::bytes(p),
        (None, Some(e)) => format!("~{}", display::bytes(e)),
        (None, None) => "-".into(),
    }
}

pub async fn status(conn: &Conn, id: u64, json: bool) -> anyhow::Result<Outcome> {
    let job = conn.client.job(id).await.or_explain(conn)?;
    if json {
        return super::print_json(&job);
    }
    // Another user's job comes without its spec; its checkpoints are its owner's too.
    let ckpts = if job.spec.is_some() {
        conn.client.checkpoints(id).await.or_explain(conn)?
    } else {
        Vec::new()
    };
    print!("{}", render_status(&job, &ckpts, SystemTime::now()));
    Ok(Outcome::Ok)
}

pub fn render_status(j: &JobView, ckpts: &[CheckpointView], now: SystemTime) -> String {
    let mut out = String::new();
    // Every value is the daemon's (or another user's) text: escaped before it is printed.
    let mut kv =
        |k: &str, v: String| out.push_str(&format!("{k:<11} {}\n", display::escape_lines(&v)));
    kv(
        "job",
        format!("{} ({})", j.id, display::or_dash(Some(&j.name))),
    );
    kv("owner", j.owner.clone());
    kv("state", j.state.to_string());
    if let Some(r) = &j.pending_reason {
        kv("waiting", r.clone());
    }
    if let Some(e) = &j.error {
        if e.message.is_empty() {
            kv("error", e.kind.clone());
        } else {
            kv("error", format!("{}: {}", e.kind, e.message));
        }
    }
    kv("device", display::or_dash(j.device.as_deref()));
    if let Some(held) = &j.base_precision {
        kv("base", held.clone());
    }
    let p = &j.progress;
    let mut prog = format!("{}, epoch {:.2}", display::progress(p), p.epoch);
    if p.tokens > 0 {
        prog.push_str(&format!(", {} tokens", p.tokens));
    }
    if p.elapsed_s > 0.0 {
        prog.push_str(&format!(", {} elapsed", display::duration(p.elapsed_s)));
    }
    if let Some(eta) = p.eta_s.filter(|_| !j.state.is_terminal()) {
        prog.push_str(&format!(", ETA {}", display::duration(eta)));
    }
    kv("progress", prog);
    let b = |v: Option<u64>| v.map(display::bytes).unwrap_or_else(|| "-".into());
    kv(
        "memory",
        format!(
            "estimate {}, peak {}",
            b(j.memory.estimate_bytes),
            b(j.memory.peak_bytes)
        ),
    );
    match &j.spec {
        Some(spec) => {
            kv("model", spec.model.base.clone());
            kv("data", data_line(spec));
        }
        None => kv("spec", HIDDEN_SPEC.into()),
    }
    kv(
        "created",
        format!(
            "{} ({} ago)",
            j.created_at,
            display::age(&j.created_at, now)
        ),
    );
    if let Some(t) = &j.started_at {
        kv("started", t.clone());
    }
    if let Some(t) = &j.finished_at {
        kv("finished", t.clone());
    }
    kv("attempts", j.attempts.to_string());
    if let Some(m) = &j.metrics {
        out.push_str(&format!("\nlatest metrics (step {}):\n", m.step));
        out.push_str(&metric_lines(m));
    }
    if let Some(m) = &j.eval_metrics {
        out.push_str(&format!("\neval metrics (step {}):\n", m.step));
        out.push_str(&metric_lines(m));
    }
    if !ckpts.is_empty() {
        out.push_str("\ncheckpoints:\n");
        for c in ckpts {
            let size: u64 = c.files.iter().map(|f| f.size_bytes).sum();
            out.push_str(&format!(
                "  {:<10} {} files, {}\n",
                display::escape(&c.name),
                c.files.len(),
                display::bytes(size)
            ));
        }
    }
    out
}

/// What `status` says instead of the model and data of another user's job (the daemon sends
/// no spec, metrics or error message for it).
pub const HIDDEN_SPEC: &str =
    "visible only to its owner and admins (with its metrics, logs and checkpoints)";

fn data_line(spec: &orpo_api::JobSpec) -> String {
    let short = |r: &str| {
        orpo_api::parse_dataset_ref(r)
            .map(|h| format!("sha256:{}", &h[..12]))
            .unwrap_or_else(|| r.to_string())
    };
    let mut s = format!("train {}", short(&spec.data.train));
    if !spec.data.eval.is_empty() {
        s.push_str(&format!(", eval {}", short(&spec.data.eval)));
    }
    s
}

fn metric_lines(m: &MetricRecord) -> String {
    let mut out = String::new();
    for (k, v) in &m.metrics {
        out.push_str(&format!(
            "  {:<22} {}\n",
            display::escape(k),
            display::metric(Some(*v))
        ));
    }
    if let Some(lr) = m.learning_rate {
        out.push_str(&format!(
            "  {:<22} {}\n",
            "learning_rate",
            display::metric(Some(lr))
        ));
    }
    if let Some(g) = m.grad_norm {
        out.push_str(&format!(
            "  {:<22} {}\n",
            "grad_norm",
            display::metric(Some(g))
        ));
    }
    out
}

/// `orpoctl chart ID METRIC [-o FILE]`: the daemon's SVG chart, to a file or a pipe.
pub async fn chart(
    conn: &Conn,
    id: u64,
    metric: &str,
    output: Option<&std::path::Path>,
) -> anyhow::Result<Outcome> {
    use std::io::IsTerminal as _;
    if output.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!("give -o FILE.svg: an SVG printed on a terminal is no chart");
    }
    let svg = conn.client.chart(id, metric).await.or_explain(conn)?;
    match output {
        Some(path) => {
            std::fs::write(path, &svg)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} of job {id} to {}",
                display::escape(metric),
                path.display()
            );
        }
        None => print!("{svg}"),
    }
    Ok(Outcome::Ok)
}

pub async fn metrics(conn: &Conn, id: u64, last: usize, json: bool) -> anyhow::Result<Outcome> {
    let records = conn.client.metrics(id, None).await.or_explain(conn)?;
    if json {
        return super::print_json(&records);
    }
    if records.is_empty() {
        let job = conn.client.job(id).await.or_explain(conn)?;
        eprintln!("job {id} has logged no steps yet (it is {})", job.state);
        return Ok(Outcome::Ok);
    }
    print!("{}", render_metrics(&records, last));
    Ok(Outcome::Ok)
}

/// The last `last` training records as a table; evaluation records get their own rows with
/// `eval` in the STEP column, as TRL's log shows them between steps.
pub fn render_metrics(records: &[MetricRecord], last: usize) -> String {
    let mut header = vec!["STEP", "EPOCH"];
    header.extend(KEY_METRICS);
    header.extend(["LR", "GRAD_NORM"]);
    let mut t = Table::new(&header);
    for r in &records[records.len().saturating_sub(last)..] {
        let eval = r.learning_rate.is_none();
        let mut row = vec![
            if eval {
                format!("{} eval", r.step)
            } else {
                r.step.to_string()
            },
            format!("{:.2}", r.epoch),
        ];
        for k in KEY_METRICS {
            let key = if eval {
                format!("eval_{k}")
            } else {
                k.to_string()
            };
            row.push(display::metric(r.metrics.get(&key).copied()));
        }
        row.push(display::metric(r.learning_rate));
        row.push(display::metric(r.grad_norm));
        t.row(row);
    }
    t.render()
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Cancel,
    Pause,
    Resume,
}

pub async fn control(conn: &Conn, id: u64, verb: Verb) -> anyhow::Result<Outcome> {
    let c = &conn.client;
    let job = match verb {
        Verb::Cancel => c.cancel(id).await,
        Verb::Pause => c.pause(id).await,
        Verb::Resume => c.resume(id).await,
    }
    .or_explain(conn)?;
    match (verb, job.state) {
        // Cancel answers before the worker is gone: say it is on its way.
        (Verb::Cancel, st) if !st.is_terminal() => {
            println!("cancelling job {id} (it was {st})");
            eprintln!("`orpoctl status {id}` shows when it has stopped");
        }
        (Verb::Pause, st) => {
            println!("job {id} is {st}");
            eprintln!("it checkpoints and frees its device; `orpoctl resume {id}` queues it again");
        }
        (_, st) => {
            println!("job {id} is {st}");
            if let Some(r) = &job.pending_reason {
                eprintln!("{}", display::escape_lines(r));
            }
        }
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests;

/// Hostile text in the views reaches the terminal escaped (the snapshots are in `tests`).
#[cfg(test)]
mod escaping_tests {
    use super::*;

    #[test]
    fn names_owners_and_messages_cannot_drive_the_terminal() {
        let mut job: JobView = serde_json::from_value(serde_json::json!({
            "id": 7, "name": format!("x\x1b[2J\rfake{}", "n".repeat(100)),
            "owner": "eve\x1b]0;title\x07", "state": "failed", "pending_reason": null,
            "device": "cpu", "progress": {"step": 0, "total_steps": 0, "epoch": 0.0,
            "tokens": 0, "elapsed_s": 0.0, "eta_s": null}, "metrics": null,
            "eval_metrics": null, "memory": {"estimate_bytes": null, "peak_bytes": null},
            "error": {"kind": "data", "message": "line 1\nline 2\x1b[1A\r"}, "attempts": 1,
            "created_at": "2026-11-27T11:58:30Z", "started_at": null, "finished_at": null,
            "spec": {"model": {"base": "/m\x1b[31m"}, "data": {"train": "t"}}
        }))
        .unwrap();
        let now = humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap();
        let list = render_list(std::slice::from_ref(&job), now);
        let status = render_status(&job, &[], now);
        for out in [&list, &status] {
            assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        }
        assert!(list.contains("x\\e[2J\\rfake"), "{list}");
        assert!(list.contains('…'), "a 100-character name is cut: {list}");
        assert!(
            status.contains("nnnnnnnnnn)"),
            "status shows the whole name: {status}"
        );
        assert!(status.contains("line 1\nline 2\\e[1A\\r"), "{status}");
        assert!(status.contains("/m\\e[31m"), "{status}");
        job.name = "plain".into();
        assert!(render_list(&[job], now).contains("  plain  "));
    }
}
