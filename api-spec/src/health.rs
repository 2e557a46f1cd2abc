//! `GET /healthz`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HealthView {
    /// `ok`, or `degraded` when a part of the daemon is not working (see `problems`).
    pub status: String,
    /// What is not working, in words (empty when `ok`): e.g. the scheduler is not running.
    #[serde(default)]
    pub problems: Vec<String>,
    pub version: String,
    /// The store's schema version.
    pub schema_version: u32,
    pub jobs_running: usize,
    pub jobs_queued: usize,
}
