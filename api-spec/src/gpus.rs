//! Devices and placement: `GET /v1/gpus` and `POST /v1/plan`. Until admission control lands the
//! daemon reports the CPU host (its RAM from /proc/meminfo) and places every job there.

use serde::{Deserialize, Serialize};

/// One device jobs can run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DeviceView {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Jobs of this daemon running there.
    pub running_jobs: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct GpusView {
    pub devices: Vec<DeviceView>,
}

/// `POST /v1/plan`: the job is checked as a submit would check it, nothing is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PlanView {
    /// Where it would run now.
    pub device: String,
    /// Absent until the memory estimator lands.
    pub estimate_bytes: Option<u64>,
    pub free_bytes: u64,
    /// Whether a submit now would start at once (nothing else queued or running).
    pub starts_now: bool,
    pub reason: String,
}
