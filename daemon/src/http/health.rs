//! `GET /healthz` for load balancers and systemd checks, `GET /metrics` for Prometheus.

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::{web, HttpResponse};
use orpo_api::{HealthView, JobState};

use super::error::ApiError;
use super::events;
use super::AppState;
use crate::store::SCHEMA_VERSION;

/// Health
///
/// `ok` (200) while the daemon serves and schedules; `degraded` (503) with the problems in
/// words when the scheduler is not running, is stuck, or its last round failed, or when the
/// store is being reopened after a failed write (a full disk). With the store's schema version
/// and queue figures.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = HealthView), (status = 503, description = "Degraded", body = HealthView)))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let problems: Vec<String> = [state.supervisor.scheduler_health(), state.store.health()]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    let view = HealthView {
        status: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        problems,
        version: env!("CARGO_PKG_VERSION").into(),
        schema_version: SCHEMA_VERSION,
        jobs_running: state.supervisor.running().len(),
        jobs_queued: state.store.queue_len(),
    };
    if view.problems.is_empty() {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::ServiceUnavailable().json(view)
    }
}

/// Prometheus metrics
///
/// Jobs by state, workers, and the step, total steps and latest loss of each running job, in
/// the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let running = state.supervisor.running();
    let panics = state.supervisor.scheduler_panics();
    let generations = state.supervisor.generations_running();
    let text = web::block(move || -> Result<String, ApiError> {
        let mut by_state: BTreeMap<&str, u64> =
            JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for job in store.all_jobs()? {
            *by_state.entry(job.state.as_str()).or_default() += 1;
        }
        let mut out = String::new();
        let _ = writeln!(out, "# HELP orpod_build_info The running orpod's version.");
        let _ = writeln!(out, "# TYPE orpod_build_info gauge");
        let _ = writeln!(
            out,
            "orpod_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(out, "# HELP orpod_jobs Jobs in the store by state.");
        let _ = writeln!(out, "# TYPE orpod_jobs gauge");
        for (s, n) in &by_state {
            let _ = writeln!(out, "orpod_jobs{{state=\"{s}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP orpod_workers Worker processes running.");
        let _ = writeln!(out, "# TYPE orpod_workers gauge");
        let _ = writeln!(out, "orpod_workers {}", running.len());
        let _ = writeln!(
            out,
            "# HELP orpod_scheduler_panics_total Scheduling rounds that panicked (each was logged; \
             the next round ran)."
        );
        let _ = writeln!(out, "# TYPE orpod_scheduler_panics_total counter");
        let _ = writeln!(out, "orpod_scheduler_panics_total {panics}");
        let _ = writeln!(
            out,
            "# HELP orpod_event_followers Clients following job events."
        );
        let _ = writeln!(out, "# TYPE orpod_event_followers gauge");
        let _ = writeln!(out, "orpod_event_followers {}", events::follower_count());
        let _ = writeln!(
            out,
            "# HELP orpod_generations_running Generation requests with a worker process."
        );
        let _ = writeln!(out, "# TYPE orpod_generations_running gauge");
        let _ = writeln!(out, "orpod_generations_running {generations}");
        let mut gauges = [
            (
                "orpod_job_step",
                "Optimizer steps done by a running job.",
                String::new(),
            ),
            (
                "orpod_job_total_steps",
                "Optimizer steps a running job will take.",
                String::new(),
            ),
            (
                "orpod_job_loss",
                "Latest logged training loss of a running job.",
                String::new(),
            ),
        ];
        for id in running {
            let Ok(job) = store.job(id) else { continue };
            let _ = writeln!(
                gauges[0].2,
                "orpod_job_step{{job=\"{id}\"}} {}",
                job.progress.step
            );
            let _ = writeln!(
                gauges[1].2,
                "orpod_job_total_steps{{job=\"{id}\"}} {}",
                job.progress.total_steps
            );
            if let Some(loss) = job.metrics.as_ref().and_then(|m| m.metrics.get("loss")) {
                let _ = writeln!(gauges[2].2, "orpod_job_loss{{job=\"{id}\"}} {loss}");
            }
        }
        for (name, help, lines) in &gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{lines}");
        }
        Ok(out.replace("\n\n", "\n"))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
