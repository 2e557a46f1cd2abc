//! Devices and placement (`orpoctl gpus | plan`). Until admission control (NVML per GPU) lands,
//! the daemon knows one device: the CPU host, with its memory from /proc/meminfo.

use actix_web::web;
use orpo_api::{DeviceView, ErrorBody, GpusView, JobState, PlanView, SubmitJobRequest};

use super::error::ApiError;
use super::{validate, AppState};

/// List devices
///
/// Each device with its total, free and used memory and this daemon's jobs running on it.
#[utoipa::path(get, path = "/v1/gpus", tag = "devices", responses((status = 200, body = GpusView)))]
pub async fn gpus(state: web::Data<AppState>) -> Result<web::Json<GpusView>, ApiError> {
    Ok(web::Json(GpusView {
        devices: vec![cpu_host(&state)?],
    }))
}

/// Plan a job
///
/// Checks the job as a submit would (nothing is stored) and says where it would run now and
/// whether it would start at once.
#[utoipa::path(post, path = "/v1/plan", tag = "devices", request_body = SubmitJobRequest,
    responses((status = 200, body = PlanView), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn plan(
    state: web::Data<AppState>,
    req: web::Json<SubmitJobRequest>,
) -> Result<web::Json<PlanView>, ApiError> {
    validate::check(&state, &req)?;
    let host = cpu_host(&state)?;
    let running = state.supervisor.running().len();
    let queued = state.store.queue_len();
    let free_slots = state.config.max_running.max(1).saturating_sub(running);
    let starts_now = free_slots > 0 && queued == 0;
    let reason = if starts_now {
        "a slot is free and nothing is queued: it would start at once".to_string()
    } else {
        format!(
            "{running} job(s) running (max_running {}), {queued} queued ahead of it",
            state.config.max_running
        )
    };
    Ok(web::Json(PlanView {
        device: host.device,
        estimate_bytes: None,
        free_bytes: host.free_bytes,
        starts_now,
        reason,
    }))
}

fn cpu_host(state: &AppState) -> Result<DeviceView, ApiError> {
    let (total, free) = meminfo().map_err(ApiError::Internal)?;
    let running_jobs = state
        .supervisor
        .running()
        .into_iter()
        .filter(|id| {
            state
                .store
                .job(*id)
                .map(|v| v.state == JobState::Running || v.state == JobState::Starting)
                .unwrap_or(false)
        })
        .collect();
    Ok(DeviceView {
        device: "cpu".into(),
        name: format!(
            "CPU host ({} cores)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        total_bytes: total,
        free_bytes: free,
        used_bytes: total.saturating_sub(free),
        running_jobs,
    })
}

/// `(MemTotal, MemAvailable)` in bytes.
fn meminfo() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no {name}"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/meminfo: unreadable {name}"))?;
        Ok(kib * 1024)
    };
    Ok((field("MemTotal:")?, field("MemAvailable:")?))
}
