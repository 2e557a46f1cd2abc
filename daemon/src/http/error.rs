//! The one mapping from what went wrong to an HTTP status and the error body
//! `{"error": {"code", "message"}}`. Messages of client errors say what to do next; internal
//! errors are logged in full and answered with a generic message.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use orpo_api::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad query or path values).
    #[error("{0}")]
    BadRequest(String),
    /// 400: the job file does not parse or has a bad value (unknown key, out of range).
    #[error("{0}")]
    InvalidJob(String),
    /// 422: a data set row is malformed; the message names every bad line.
    #[error("{0}")]
    InvalidData(String),
    /// 422: `model.base` (or `lora.init_adapter`) is not on the server.
    #[error("{0}")]
    ModelNotFound(String),
    /// 422: the job names a data set that was never uploaded.
    #[error("{0}")]
    DatasetNotFound(String),
    /// 404
    #[error("job {0} not found")]
    JobNotFound(u64),
    /// 404
    #[error("{0}")]
    CheckpointNotFound(String),
    /// 404: no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the job's state does not allow it (pausing a finished job, ...).
    #[error("{0}")]
    Conflict(String),
    /// 413
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 500: logged, not shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidJob(_) => "invalid_job",
            ApiError::InvalidData(_) => "invalid_data",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::DatasetNotFound(_) => "dataset_not_found",
            ApiError::JobNotFound(_) => "job_not_found",
            ApiError::CheckpointNotFound(_) => "checkpoint_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::JobNotFound(id),
            StoreError::Rejected(m) => ApiError::Conflict(m),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidJob(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidData(_)
            | ApiError::ModelNotFound(_)
            | ApiError::DatasetNotFound(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::JobNotFound(_) | ApiError::CheckpointNotFound(_) | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                "internal error; the daemon's log has the details".to_string()
            }
            e => e.to_string(),
        };
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message,
            },
        })
    }
}

/// Extractor failures (JSON body, query string, path) as 400s in our error body.
pub fn bad_request(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}
