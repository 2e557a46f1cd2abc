//! `GET /healthz`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HealthView {
    /// `ok`.
    pub status: String,
    pub version: String,
    /// The store's schema version.
    pub schema_version: u32,
    pub jobs_running: usize,
    pub jobs_queued: usize,
}
