//! `orpoctl gpus` and the answer of `orpoctl plan`: where jobs can run, how much memory is
//! free there, who uses it, and a job's memory estimate.
//!
//! The admission-control fields (`available_bytes`, utilization, processes, the estimate's
//! breakdown, `queued_ahead`, ...) are read from the view's JSON by name, each only when present:
//! they are being added to `orpo-api` while this client is written, and this way one renderer
//! shows what any daemon version sends. Once they are settled, typed access can replace it.

use orpo_api::{GpusView, PlanView};
use serde_json::Value;

use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

pub async fn gpus(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let view = conn.client.gpus().await.or_explain(conn)?;
    if json {
        return super::print_json(&view);
    }
    print!("{}", render_gpus(&view));
    Ok(Outcome::Ok)
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn bytes_at(v: &Value, key: &str) -> Option<String> {
    u64_at(v, key).map(display::bytes)
}

pub fn render_gpus(view: &GpusView) -> String {
    let v = serde_json::to_value(view).expect("views serialise");
    let devices = v["devices"].as_array().cloned().unwrap_or_default();
    let has = |k: &str| {
        devices
            .iter()
            .any(|d| d.get(k).is_some_and(|x| !x.is_null()))
    };
    let (avail, util, temp) = (
        has("available_bytes"),
        has("utilization_percent"),
        has("temperature_c"),
    );
    let mut header = vec!["DEVICE", "NAME", "TOTAL", "USED", "FREE"];
    if avail {
        header.push("AVAILABLE");
    }
    if util {
        header.push("UTIL");
    }
    if temp {
        header.push("TEMP");
    }
    header.push("JOBS");
    let mut t = Table::new(&header);
    let mut procs = String::new();
    for d in &devices {
        let dev = d["device"].as_str().unwrap_or("?").to_string();
        let mut row = vec![
            dev.clone(),
            d["name"].as_str().unwrap_or("").to_string(),
            bytes_at(d, "total_bytes").unwrap_or_default(),
            bytes_at(d, "used_bytes").unwrap_or_default(),
            bytes_at(d, "free_bytes").unwrap_or_default(),
        ];
        if avail {
            row.push(bytes_at(d, "available_bytes").unwrap_or_else(|| "-".into()));
        }
        if util {
            row.push(u64_at(d, "utilization_percent").map_or("-".into(), |u| format!("{u}%")));
        }
        if temp {
            row.push(u64_at(d, "temperature_c").map_or("-".into(), |c| format!("{c}°C")));
        }
        let jobs: Vec<String> = d["running_jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .map(|j| j.to_string())
            .collect();
        row.push(if jobs.is_empty() {
            "-".into()
        } else {
            jobs.join(",")
        });
        t.row(row);
        for p in d["processes"].as_array().into_iter().flatten() {
            procs.push_str(&format!(
                "  {dev}  pid {}  {}  {}{}\n",
                u64_at(p, "pid").unwrap_or(0),
                p["name"].as_str().unwrap_or("?"),
                bytes_at(p, "used_bytes").unwrap_or_else(|| "-".into()),
                u64_at(p, "job")
                    .map(|j| format!("  (job {j})"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut out = t.render();
    if !procs.is_empty() {
        out.push_str("\nprocesses:\n");
        out.push_str(&procs);
    }
    if let Some(note) = v.get("note").and_then(Value::as_str) {
        out.push_str(&format!("\nnote: {note}\n"));
    }
    out
}

pub fn render_plan(p: &PlanView) -> String {
    let v = serde_json::to_value(p).expect("views serialise");
    let mut out = String::new();
    let mut kv = |k: &str, val: String| out.push_str(&format!("{k:<11} {val}\n"));
    kv("device", p.device.clone());
    kv(
        "estimate",
        p.estimate_bytes
            .map(display::bytes)
            .unwrap_or_else(|| "- (the server gave no estimate)".into()),
    );
    if let Some(e) = v.get("estimate").filter(|e| e.is_object()) {
        let parts = [
            ("weights", "weights_bytes"),
            ("lora", "lora_bytes"),
            ("optimizer", "optimizer_bytes"),
            ("activations", "activations_bytes"),
            ("workspace", "workspace_bytes"),
            ("logits", "logits_bytes"),
            ("overhead", "overhead_bytes"),
            ("eval peak", "eval_peak_bytes"),
        ];
        for (label, key) in parts {
            if let Some(b) = u64_at(e, key).filter(|b| *b > 0) {
                kv(&format!("  {label}"), display::bytes(b));
            }
        }
    }
    kv("free", display::bytes(p.free_bytes));
    if let Some(h) = u64_at(&v, "headroom_bytes").filter(|h| *h > 0) {
        kv("headroom", display::bytes(h));
    }
    if let Some(q) = u64_at(&v, "queued_ahead") {
        kv("queued", format!("{q} ahead"));
    }
    kv("starts now", if p.starts_now { "yes" } else { "no" }.into());
    kv("reason", p.reason.clone());
    out
}

#[cfg(test)]
mod tests {
    //! These hold whether or not `orpo-api` has the admission fields yet: a field the types do
    //! not have is dropped when the JSON is read, and its column or line is then absent.
    use super::*;

    #[test]
    fn gpus_table_shows_what_the_server_sends() {
        let view: GpusView = serde_json::from_value(serde_json::json!({
            "devices": [{
                "device": "cuda:0", "name": "RTX 3090", "total_bytes": 24u64 << 30,
                "free_bytes": 10u64 << 30, "used_bytes": 14u64 << 30, "running_jobs": [3, 4],
                "available_bytes": 9u64 << 30, "utilization_percent": 97, "temperature_c": 71,
                "processes": [{"pid": 4242, "used_bytes": 2u64 << 30, "name": "python", "job": null}]
            }]
        }))
        .unwrap();
        let text = render_gpus(&view);
        assert!(
            text.starts_with("DEVICE  NAME      TOTAL     USED      FREE      "),
            "{text}"
        );
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("cuda:0  RTX 3090  24.0 GiB  14.0 GiB  10.0 GiB  ")
                && row.ends_with("3,4"),
            "{text}"
        );
        let sent = serde_json::to_value(&view).unwrap();
        if sent["devices"][0].get("available_bytes").is_some() {
            assert!(row.contains("  9.0 GiB    97%   71°C  3,4"), "{text}");
            assert!(
                text.contains("\nprocesses:\n  cuda:0  pid 4242  python  2.0 GiB\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn plan_shows_the_estimate_or_says_there_is_none() {
        let plan: PlanView = serde_json::from_value(serde_json::json!({
            "device": "cpu", "estimate_bytes": null, "free_bytes": 1u64 << 30,
            "starts_now": true, "reason": "cpu is idle"
        }))
        .unwrap();
        let text = render_plan(&plan);
        assert!(text.starts_with("device      cpu\nestimate    - (the server gave no estimate)\nfree        1.0 GiB\n"), "{text}");
        assert!(
            text.ends_with("starts now  yes\nreason      cpu is idle\n"),
            "{text}"
        );

        let plan: PlanView = serde_json::from_value(serde_json::json!({
            "device": "cuda:0", "estimate_bytes": 3u64 << 30, "free_bytes": 2u64 << 30,
            "starts_now": false, "reason": "needs 3.0 GiB; cuda:0 has 2.0 GiB free",
            "estimate": {"total_bytes": 3u64 << 30, "weights_bytes": 2u64 << 30, "lora_bytes": 1u64 << 20,
                "optimizer_bytes": 0, "activations_bytes": 0, "workspace_bytes": 0, "logits_bytes": 0,
                "overhead_bytes": 0, "eval_peak_bytes": 0, "tokens": 0},
            "queued_ahead": 2
        }))
        .unwrap();
        let text = render_plan(&plan);
        assert!(
            text.starts_with("device      cuda:0\nestimate    3.0 GiB\n"),
            "{text}"
        );
        assert!(
            text.ends_with("starts now  no\nreason      needs 3.0 GiB; cuda:0 has 2.0 GiB free\n"),
            "{text}"
        );
        if serde_json::to_value(&plan)
            .unwrap()
            .get("estimate")
            .is_some()
        {
            assert!(
                text.contains("\n  weights   2.0 GiB\n  lora      1.0 MiB\n"),
                "{text}"
            );
            assert!(text.contains("\nqueued      2 ahead\n"), "{text}");
        }
    }
}
