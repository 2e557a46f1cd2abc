//! The one mapping from what went wrong to an HTTP status and the error body
//! `{"error": {"code", "message"}}`. Messages of client errors say what to do next; internal
//! errors are logged in full and answered with a generic message.
//!
//! A client message never carries a backtrace (candle attaches one to its errors when
//! `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` is set, and a model error quotes it) and is at most
//! [`MAX_MESSAGE`] bytes; what is cut goes to the daemon's log.

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
    /// 422: a token for a user who does not exist.
    #[error("{0}")]
    UnknownUser(String),
    /// 422: the job names a data set that was never uploaded.
    #[error("{0}")]
    DatasetNotFound(String),
    /// 401: no token, or one the daemon does not honour; the message says which and where a
    /// client puts one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller is known but may not do this (another user's job, an admin's route).
    #[error("{0}")]
    Forbidden(String),
    /// 403: a job over one of the server's limits of a user (the message names the setting
    /// and its value).
    #[error("{0}")]
    LimitExceeded(String),
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
    /// 413: an upload over one of the size limits (the message names the config key).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429: too many clients at once (event followers); the message names the config key.
    #[error("{0}")]
    TooManyRequests(String),
    /// 507: the state folder's disk is below `min_free_mib`; nothing was stored.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 503: the store is being reopened after a failed write; retry shortly.
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::UnknownUser(_) => "unknown_user",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::LimitExceeded(_) => "limit_exceeded",
            ApiError::JobNotFound(_) => "job_not_found",
            ApiError::CheckpointNotFound(_) => "checkpoint_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::JobNotFound(id),
            StoreError::Rejected(m) => ApiError::Conflict(m),
            StoreError::Limit(m) => ApiError::LimitExceeded(m),
            StoreError::Sled(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::StorageFull => {
                ApiError::InsufficientStorage(
                    "the server's disk is full; nothing was stored, try again when an admin \
                     has made room"
                        .into(),
                )
            }
            e @ StoreError::Unavailable(_) => {
                ApiError::Unavailable(format!("{e}; the disk may be full: try again in a moment"))
            }
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
            // Which users exist is server state, like an id: a name that is none is a 404.
            ApiError::JobNotFound(_)
            | ApiError::CheckpointNotFound(_)
            | ApiError::NotFound(_)
            | ApiError::UnknownUser(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::LimitExceeded(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                "internal error; the daemon's log has the details".to_string()
            }
            e => client_message(e.to_string()),
        };
        let mut resp = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            // RFC 6750: a 401 names the scheme the client should use.
            resp.insert_header(("WWW-Authenticate", "Bearer realm=\"orpod\""));
        }
        resp.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message,
            },
        })
    }
}

/// The longest message a client gets, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// `message` without a backtrace and cut to [`MAX_MESSAGE`] bytes; the whole of it is logged
/// when anything was cut.
pub fn client_message(message: String) -> String {
    // std's `Backtrace` prints frames as `   0: name`; anyhow's `{:?}` heads them with
    // "Stack backtrace:".
    let end = ["\n   0: ", "Stack backtrace:", "stack backtrace:"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .unwrap_or(message.len());
    let mut short = message[..end].to_string();
    short.truncate(short.trim_end().len());
    if short.len() > MAX_MESSAGE {
        const MORE: &str = " … (cut; the daemon's log has all of it)";
        let mut cut = MAX_MESSAGE - MORE.len();
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short.truncate(cut);
        short.push_str(MORE);
    }
    if short != message {
        tracing::warn!("error message shortened for the client: {message}");
    }
    short
}

/// Extractor failures (JSON body, query string, path) as 400s in our error body.
pub fn bad_request(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_lose_backtraces_and_length() {
        let bt = "model m: bad header\n   0: candle_core::error::Error::bt\n             at /src/error.rs:260:25\n   1: main";
        assert_eq!(client_message(bt.into()), "model m: bad header");
        let anyhow_debug = "bad\n\nStack backtrace:\n   0: x at y.rs:1";
        assert_eq!(client_message(anyhow_debug.into()), "bad");
        let long = "é".repeat(2000);
        let short = client_message(long);
        assert!(short.len() <= MAX_MESSAGE, "{}", short.len());
        assert!(short.ends_with("the daemon's log has all of it)"));
        assert_eq!(client_message("plain: line 3".into()), "plain: line 3");
        let resp = ApiError::TooManyRequests("x (max_followers)".into()).error_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
