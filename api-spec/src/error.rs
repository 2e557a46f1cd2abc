//! The error body of every failed request: `{"error": {"code": "...", "message": "..."}}`.
//! `code` is stable and machine-readable; `message` says what to do next.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` is one of: `bad_request`, `invalid_job`, `invalid_data`, `model_not_found`,
/// `dataset_not_found`, `job_not_found`, `checkpoint_not_found`, `conflict`, `payload_too_large`,
/// `not_found`, `internal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
