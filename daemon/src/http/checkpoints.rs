//! A job's checkpoints and their files (`orpoctl checkpoints | download`). Downloads support
//! HTTP Range requests, so a broken transfer of a large adapter resumes.

use actix_web::{web, HttpRequest, HttpResponse};
use orpo_api::{CheckpointView, ErrorBody};

use super::error::ApiError;
use super::jobs::owned_job;
use super::AppState;
use crate::auth::Caller;
use crate::checkpoints;
use crate::supervisor::spawn::job_dir;

/// List checkpoints
///
/// Complete checkpoints (`step-N`), oldest first, then `final` once the job has succeeded.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints", tag = "checkpoints", operation_id = "list_checkpoints",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    responses((status = 200, body = Vec<CheckpointView>, links(
            ("DownloadFirstFile" = (operation_id = "download_checkpoint_file",
                parameters(("id" = "$request.path.id"), ("name" = "$response.body#/0/name"),
                    ("file" = "$response.body#/0/files/0/name")),
                description = "The first file of the oldest checkpoint")))),
        (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<web::Json<Vec<CheckpointView>>, ApiError> {
    owned_job(&state, &caller, *id, "list its checkpoints")?;
    let dir = job_dir(&state.config.state_dir, *id);
    let list = checkpoints::list(&dir).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(web::Json(list))
}

/// Download a checkpoint file
///
/// The bytes of one file of a checkpoint; `Range: bytes=a-b` gives part of it (206).
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints/{name}/files/{file}", tag = "checkpoints",
    operation_id = "download_checkpoint_file",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64),
        ("name" = String, Path, description = "Checkpoint name (`step-N` or `final`)"),
        ("file" = String, Path, description = "File name")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "Part of the file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad id or parameters", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(u64, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, name, file) = path.into_inner();
    owned_job(&state, &caller, id, "download its checkpoints")?;
    let dir = job_dir(&state.config.state_dir, id);
    let Some(file_path) = checkpoints::file_path(&dir, &name, &file) else {
        return Err(ApiError::CheckpointNotFound(format!(
            "job {id} has no file {file:?} in checkpoint {name:?}; GET /v1/jobs/{id}/checkpoints lists them"
        )));
    };
    let named = actix_files::NamedFile::open_async(&file_path)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .use_etag(true)
        .use_last_modified(true);
    Ok(named.into_response(&req))
}
