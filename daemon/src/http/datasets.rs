//! `POST /v1/datasets`: upload a JSONL preference file. Every row is checked (with its line
//! number) before anything is stored; the bytes are kept under their sha256, so uploading the
//! same file again stores nothing new. `GET /v1/datasets/{sha256}` tells a client whether the
//! server already has a file, so `orpoctl submit` can skip uploading it.

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use orpo_api::{parse_dataset_ref, DatasetView, ErrorBody, DATASET_REF_PREFIX};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::supervisor::spawn::dataset_path;

/// Upload a data set
///
/// The body is the JSONL file: one `{"prompt", "chosen", "rejected"}` object per line (strings
/// or chat message lists). Answers 201 with its reference `sha256:<hex>`, or 200 when it was
/// already stored.
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The JSONL file"),
    responses((status = 201, body = DatasetView), (status = 200, body = DatasetView),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, description = "Bad rows, with line numbers", body = ErrorBody)))]
pub async fn upload(
    state: web::Data<AppState>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limit = state.config.max_upload_bytes;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "data sets are limited to {limit} bytes (max_upload_bytes)"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = bytes.freeze();
    let dir = state.config.state_dir.clone();
    let store = state.store.clone();
    let (view, created) = web::block(move || -> Result<(DatasetView, bool), ApiError> {
        let sha256 = hex(&Sha256::digest(&bytes));
        if let Some(view) = store.dataset(&sha256)? {
            return Ok((view, false));
        }
        let rows = orpo_trainer::data::parse_rows(&bytes, std::path::Path::new("upload.jsonl"))
            .map_err(|e| ApiError::InvalidData(e.to_string()))?;
        if rows.is_empty() {
            return Err(ApiError::InvalidData("upload.jsonl: no rows".into()));
        }
        let path = dataset_path(&dir, &sha256);
        write_atomic(&path, &bytes).map_err(ApiError::Internal)?;
        let view = DatasetView {
            reference: format!("{DATASET_REF_PREFIX}{sha256}"),
            sha256,
            rows: rows.len(),
            size_bytes: bytes.len() as u64,
        };
        store.put_dataset(&view)?;
        Ok((view, true))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    state.store.flush().await?;
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// Look up a data set
///
/// The stored data set with this sha256 (lower-case hex), or 404 when the server does not have
/// it: upload it with `POST /v1/datasets`.
#[utoipa::path(get, path = "/v1/datasets/{sha256}", tag = "datasets",
    params(("sha256" = String, Path, description = "Hex sha256 of the file")),
    responses((status = 200, body = DatasetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    sha256: web::Path<String>,
) -> Result<web::Json<DatasetView>, ApiError> {
    let reference = format!("{DATASET_REF_PREFIX}{sha256}");
    if parse_dataset_ref(&reference).is_none() {
        return Err(ApiError::BadRequest(format!(
            "{sha256:?} is not a sha256: expected 64 lower-case hex digits"
        )));
    }
    match state.store.dataset(&sha256)? {
        Some(view) => Ok(web::Json(view)),
        None => Err(ApiError::NotFound(format!(
            "no data set with sha256 {sha256}; upload it with POST /v1/datasets"
        ))),
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Temporary file, fsync, rename: a stored data set is complete or absent.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = path.parent().expect("datasets folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
