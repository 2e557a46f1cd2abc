//! `orpoctl gpus` and the answer of `orpoctl plan`: where jobs can run and how much memory
//! is free there.

use orpo_api::{GpusView, PlanView};

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

pub fn render_gpus(view: &GpusView) -> String {
    let mut t = Table::new(&["DEVICE", "NAME", "TOTAL", "USED", "FREE", "JOBS"]);
    for d in &view.devices {
        let jobs: Vec<String> = d.running_jobs.iter().map(|j| j.to_string()).collect();
        t.row(vec![
            d.device.clone(),
            d.name.clone(),
            display::bytes(d.total_bytes),
            display::bytes(d.used_bytes),
            display::bytes(d.free_bytes),
            if jobs.is_empty() {
                "-".into()
            } else {
                jobs.join(",")
            },
        ]);
    }
    t.render()
}

pub fn render_plan(p: &PlanView) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<11} {v}\n"));
    kv("device", p.device.clone());
    kv(
        "estimate",
        p.estimate_bytes
            .map(display::bytes)
            .unwrap_or_else(|| "- (no estimate from the server)".into()),
    );
    kv("free", display::bytes(p.free_bytes));
    kv("starts now", if p.starts_now { "yes" } else { "no" }.into());
    kv("reason", p.reason.clone());
    out
}
