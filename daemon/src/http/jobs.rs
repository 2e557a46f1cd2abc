//! Job routes: submit, list, view, cancel, pause, resume (`orpoctl submit | list | status |
//! cancel | pause | resume`).

use actix_web::{web, HttpRequest, HttpResponse};
use orpo_api::{ErrorBody, JobList, JobState, JobView, SubmitJobRequest};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use super::error::ApiError;
use super::{validate, AppState};
use crate::auth::Caller;
use crate::store::{Idempotency, Inserted, JobFilter, NewJob};

/// Submit a job
///
/// Checks the job file, the model path on the server and the uploaded data sets it names,
/// estimates its memory, then stores the job as `queued`. The answer comes only after the
/// store has flushed the job to disk, so an acknowledged job survives a crash. With an
/// `Idempotency-Key` header a retried submit (same key, same request) returns the job the
/// first one created (200, `Idempotent-Replayed: true`) instead of a second job; the same key
/// with a different request is refused (409).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "submit_job", request_body = SubmitJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
        description = "A key of your choosing (1-255 visible ASCII characters) that makes retrying this submit safe")),
    responses((status = 201, description = "Queued", body = JobView, links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("PauseJob" = (operation_id = "pause_job", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("ResumeJob" = (operation_id = "resume_job", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("DeleteJob" = (operation_id = "delete_job", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("JobMetrics" = (operation_id = "job_metrics", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("JobEvents" = (operation_id = "job_events", parameters(("id" = "$response.body#/id")), description = "The new job")),
            ("JobCheckpoints" = (operation_id = "list_checkpoints", parameters(("id" = "$response.body#/id")), description = "The new job")))),
        (status = 200, description = "An earlier submit with this Idempotency-Key created the job", body = JobView),
        (status = 400, description = "Malformed request or job file, or a job its data set cannot train (a prompt that fills data.max_length)", body = ErrorBody),
        (status = 409, description = "Idempotency-Key used for another request", body = ErrorBody),
        (status = 422, description = "Model or data set not found", body = ErrorBody),
        (status = 507, description = "The server's disk is below min_free_mib; nothing was stored", body = ErrorBody)))]
pub async fn submit(
    state: web::Data<AppState>,
    caller: Caller,
    http: HttpRequest,
    req: validate::JobRequest,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency(&http, &req)?;
    let owner = caller.acting_for("owner", req.owner.as_deref(), None)?;
    crate::disk::ensure_free(&state.config.state_dir, state.config.min_free_mib, 0)
        .map_err(ApiError::InsufficientStorage)?;
    let mut spec = validate::check(&state, &caller, &req)?;
    crate::limits::check_spec(&state.config, &caller, &spec)?;
    validate::server_data(&state, &caller, &owner, &mut spec).await?;
    let (estimate, steps) = state
        .supervisor
        .estimate(&spec)
        .await
        .map_err(ApiError::InvalidJob)?;
    crate::limits::check_disk(state.config.clone(), state.store.clone(), owner.clone()).await?;
    let ahead = state.store.queue_len() + state.supervisor.running().len();
    let inserted = state
        .store
        .insert_job(NewJob {
            owner,
            spec,
            pending_reason: Some(if ahead == 0 {
                "starting".into()
            } else {
                format!("waiting for a free slot ({ahead} job(s) ahead or running)")
            }),
            estimate_bytes: Some(estimate.total_bytes),
            total_steps: steps,
            idempotency,
            caps: Some(crate::limits::UserCaps::of(&state.config)),
        })
        .await?;
    state.store.flush().await?;
    Ok(match inserted {
        Inserted::New(view) => {
            state.supervisor.wake();
            HttpResponse::Created().json(view)
        }
        Inserted::Existing(view) => HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(view),
    })
}

/// The request's `Idempotency-Key`, with a fingerprint of the request it came with.
fn idempotency(
    http: &HttpRequest,
    req: &SubmitJobRequest,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = http.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    let body = serde_json::to_vec(req).map_err(|e| ApiError::Internal(e.into()))?;
    let fingerprint = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(Idempotency {
        key: key.to_string(),
        fingerprint,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// Only jobs of this owner.
    owner: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page (digits; one past every job's id lists from the newest).
    #[param(pattern = "^[0-9]+$")]
    cursor: Option<String>,
}

/// List jobs
///
/// Newest first, filtered by state and owner, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ListQuery>,
) -> Result<web::Json<JobList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    // A cursor lists the jobs with ids below it, so one past every id (even past u64) lists all.
    let cursor = match &q.cursor {
        Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => {
            Some(c.parse::<u64>().unwrap_or(u64::MAX))
        }
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "cursor {c:?} is not one this daemon gave out"
            )))
        }
        None => None,
    };
    let filter = JobFilter {
        state: q.state,
        owner: q.owner.clone(),
        limit,
        cursor,
    };
    let (jobs, next) = web::block(move || state.store.list_jobs(&filter))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(web::Json(JobList {
        jobs: jobs.into_iter().map(|j| caller.view(j)).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// Show a job
///
/// State, why it waits or failed, progress with ETA, the latest metrics.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job", params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, body = JobView), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<JobView>, ApiError> {
    Ok(web::Json(caller.view(state.store.job(*id)?)))
}

/// The job, when the caller owns it (or is an admin); `doing` completes "only its owner or an
/// admin may ...".
pub fn owned_job(
    state: &AppState,
    caller: &Caller,
    id: u64,
    doing: &str,
) -> Result<JobView, ApiError> {
    let job = state.store.job(id)?;
    caller.check_job(&job, doing)?;
    Ok(job)
}

/// Cancel a job
///
/// A queued or paused job is cancelled at once; a running one gets SIGTERM and, after the
/// grace period, SIGKILL. Poll the job for its final state.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job", params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, body = JobView), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<JobView>, ApiError> {
    owned_job(&state, &caller, *id, "cancel it")?;
    Ok(web::Json(state.supervisor.cancel(*id).await?))
}

/// Pause a job
///
/// A running job finishes its step, writes a checkpoint and frees its device (`pausing`, then
/// `paused`); a queued job leaves the queue.
#[utoipa::path(post, path = "/v1/jobs/{id}/pause", tag = "jobs", operation_id = "pause_job", params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, body = JobView), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<JobView>, ApiError> {
    owned_job(&state, &caller, *id, "pause it")?;
    Ok(web::Json(state.supervisor.pause(*id).await?))
}

/// Resume a job
///
/// Puts a paused (or interrupted) job back in the queue; it continues from its newest checkpoint.
#[utoipa::path(post, path = "/v1/jobs/{id}/resume", tag = "jobs", operation_id = "resume_job", params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, body = JobView), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<JobView>, ApiError> {
    owned_job(&state, &caller, *id, "resume it")?;
    Ok(web::Json(state.supervisor.resume(*id).await?))
}

/// Delete a job
///
/// Removes a finished job (succeeded, failed or cancelled) with its events, metrics,
/// checkpoints and adapter. A job that has not finished is refused (409): cancel it first.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "delete_job", params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, description = "Deleted; the job as it was", body = JobView), (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<JobView>, ApiError> {
    owned_job(&state, &caller, *id, "delete it")?;
    Ok(web::Json(state.supervisor.delete(*id).await?))
}
