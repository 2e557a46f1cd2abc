//! Devices and placement (`orpoctl gpus | plan`): every device with what it has free and who uses
//! it, and for a job not yet submitted, its memory estimate and where it would run now.

use actix_web::web;
use orpo_api::{
    DeviceView, ErrorBody, EstimateView, GpusView, PlanView, ProcessView, SubmitJobRequest,
};
use orpo_trainer::estimate::MemoryEstimate;

use super::error::ApiError;
use super::{validate, AppState};
use crate::auth::Caller;

/// List devices
///
/// Each device (GPUs through NVML, and the CPU host with its RAM) with its total, free and used
/// memory, utilization and temperature, the processes using it, the memory still promised to
/// this daemon's jobs that are loading, and what a new job could use now.
#[utoipa::path(get, path = "/v1/gpus", tag = "devices", responses((status = 200, body = GpusView)))]
pub async fn gpus(
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<web::Json<GpusView>, ApiError> {
    let sup = state.supervisor.clone();
    let slurm = match state.config.executor {
        crate::config::Executor::Slurm => Some(sup.slurm_nodes().await),
        crate::config::Executor::Local => None,
    };
    let view = web::block(move || -> anyhow::Result<GpusView> {
        let policy = sup.policy();
        let running = sup.running_on();
        let jobs_by_pid: Vec<(u32, u64)> = sup
            .running()
            .into_iter()
            .filter_map(|id| Some((sup.worker_pid(id)?, id)))
            .collect();
        let devices = sup
            .device_states()?
            .into_iter()
            .map(|d| DeviceView {
                promised_bytes: d.promised_bytes(),
                available_bytes: d.available_bytes(&policy),
                takes_jobs: d.takes_jobs,
                running_jobs: running.get(&d.reading.device).cloned().unwrap_or_default(),
                processes: d
                    .reading
                    .processes
                    .iter()
                    .map(|p| ProcessView {
                        pid: p.pid,
                        used_bytes: p.used_bytes,
                        name: p.name.clone(),
                        job: jobs_by_pid
                            .iter()
                            .find(|(pid, _)| *pid == p.pid)
                            .map(|(_, id)| *id),
                    })
                    .collect(),
                device: d.reading.device,
                name: d.reading.name,
                uuid: d.reading.uuid,
                total_bytes: d.reading.total_bytes,
                free_bytes: d.reading.free_bytes,
                used_bytes: d.reading.used_bytes,
                utilization_percent: d.reading.utilization_percent,
                memory_utilization_percent: d.reading.memory_utilization_percent,
                temperature_c: d.reading.temperature_c,
            })
            .collect();
        let (slurm_nodes, slurm_note) = match slurm {
            None => (Vec::new(), None),
            Some(Ok(nodes)) => (
                nodes,
                Some("training jobs run in Slurm (slurm_nodes); the devices are this host's, for generation".to_string()),
            ),
            Some(Err(e)) => (Vec::new(), Some(format!("slurm: cannot read the nodes: {e:#}"))),
        };
        let note = match (sup.devices.note.clone(), slurm_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        Ok(GpusView {
            devices,
            headroom_bytes: policy.headroom_bytes,
            note,
            slurm_nodes,
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(web::Json(view))
}

/// Plan a job
///
/// Checks the job as a submit would (nothing is stored), estimates its peak memory from the
/// model's config (no weights are loaded) and the token lengths of its data, with a breakdown, and says which device would take it
/// now, or why none would, in numbers.
#[utoipa::path(post, path = "/v1/plan", tag = "devices", request_body = SubmitJobRequest,
    responses((status = 200, body = PlanView),
        (status = 400, description = "Malformed request or job file, or a job its data set cannot train (a prompt that fills data.max_length)", body = ErrorBody),
        (status = 422, description = "Model or data set not found", body = ErrorBody)))]
pub async fn plan(
    state: web::Data<AppState>,
    caller: Caller,
    req: validate::JobRequest,
) -> Result<web::Json<PlanView>, ApiError> {
    let owner = caller.acting_for("owner", req.owner.as_deref(), None)?;
    let mut spec = validate::check(&state, &caller, &req)?;
    crate::limits::check_spec(&state.config, &caller, &spec)?;
    validate::server_data(&state, &caller, &owner, &mut spec).await?;
    crate::limits::check_disk(state.config.clone(), state.store.clone(), owner.clone()).await?;
    let (estimate, _) = state
        .supervisor
        .estimate(&spec)
        .await
        .map_err(ApiError::InvalidJob)?;
    let sup = state.supervisor.clone();
    let plan = web::block(move || sup.plan(&spec, &owner, estimate))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::Internal)?;
    Ok(web::Json(PlanView {
        device: plan.device,
        estimate_bytes: Some(plan.estimate.total_bytes),
        free_bytes: plan.free_bytes,
        starts_now: plan.starts_now,
        reason: plan.reason,
        estimate: Some(estimate_view(&plan.estimate)),
        headroom_bytes: state.supervisor.policy().headroom_bytes,
        queued_ahead: plan.queued_ahead,
    }))
}

fn estimate_view(e: &MemoryEstimate) -> EstimateView {
    EstimateView {
        total_bytes: e.total_bytes,
        weights_bytes: e.weights_bytes,
        lora_bytes: e.lora_bytes,
        optimizer_bytes: e.optimizer_bytes,
        activations_bytes: e.activations_bytes,
        workspace_bytes: e.workspace_bytes,
        logits_bytes: e.logits_bytes,
        overhead_bytes: e.overhead_bytes,
        eval_peak_bytes: e.eval_peak_bytes,
        tokens: e.tokens,
    }
}
