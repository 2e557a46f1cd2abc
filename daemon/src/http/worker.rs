//! `POST /internal/v1/jobs/{id}/events`: where a worker running in Slurm reports its events
//! (`orpod worker --report URL`). Not part of the public API (absent from the OpenAPI document):
//! only the job's worker holds the secret that opens it, a fresh one for each attempt, so a
//! user's token opens nothing here and a stale worker of an earlier attempt is turned away.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::supervisor::protocol::WorkerReport;
use crate::supervisor::slurm::ReportError;

/// Largest report: a resumed worker sends the whole metric history of its job at once.
pub const MAX_REPORT_BYTES: usize = 64 << 20;

pub async fn report(
    state: web::Data<AppState>,
    id: web::Path<u64>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let secret = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::auth::bearer)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "a worker's report needs `Authorization: Bearer <its job's secret>`".into(),
            )
        })?;
    let report: WorkerReport = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a worker report: {e}")))?;
    match state.supervisor.take_report(id, secret, report).await {
        Ok(applied) => Ok(HttpResponse::Ok().json(serde_json::json!({ "applied": applied }))),
        Err(ReportError::NoWorker(why)) => Err(ApiError::NotFound(why)),
        Err(ReportError::WrongSecret) => Err(ApiError::Forbidden(format!(
            "not the secret of job {id}'s current worker"
        ))),
        Err(ReportError::Store(e)) => Err(e.into()),
    }
}
