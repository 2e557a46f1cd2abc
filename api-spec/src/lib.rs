//! Wire types shared by `orpod` (the daemon) and `orpoctl` (the client).
//!
//! # Layout
//! - [`spec`]: the job file (`job.toml`) schema with its documented defaults. The trainer, the
//!   daemon and the client all parse job files through this one definition, so a key cannot mean
//!   one thing on the laptop and another on the server.
//! - [`jobs`]: `SubmitJobRequest`, `JobView` and its parts, events, metrics, checkpoints.
//! - [`datasets`]: uploaded JSONL data, named by sha256.
//! - [`gpus`]: devices and placement (`/v1/gpus`, `/v1/plan`).
//! - [`generate`]: answers from a job's checkpoint (`/v1/jobs/{id}/generate`).
//! - [`health`]: the `/healthz` answer.
//! - [`users`]: users and API tokens (`/v1/me`, `/v1/users`, `/v1/tokens`).
//! - [`notify`]: webhook endpoints told when a job ends (`/v1/notify`).
//! - [`label`]: the rule for free text shown to others (job names, owners).
//! - [`error`]: the error body every failed request carries.
//! - `client` (feature `client`): a typed reqwest client of the v1 API.
//!
//! Feature `schema` derives `utoipa::ToSchema` on every type; the daemon builds
//! `api-spec/openapi.json` from them and a test fails when the committed file differs.

pub mod datasets;
pub mod error;
pub mod generate;
pub mod gpus;
pub mod health;
pub mod jobs;
pub mod label;
pub mod notify;
pub mod spec;
pub mod users;

#[cfg(feature = "client")]
pub mod client;

pub use datasets::{
    is_server_data, parse_dataset_ref, parse_server_data, ChatMessage, ChatRole, ChatRow,
    DatasetView, PreferenceRow, TextRow, DATASET_REF_PREFIX, SERVER_DATA_PREFIX,
};
pub use error::{ErrorBody, ErrorDetail};
pub use generate::{GenerateEvent, GenerateRequest};
pub use gpus::{DeviceView, EstimateView, GpusView, PlanView, ProcessView, SlurmNodeView};
pub use health::HealthView;
pub use jobs::{
    CheckpointView, EventKind, EventView, FileView, JobError, JobList, JobState, JobView, Memory,
    MetricRecord, Progress, SubmitJobRequest,
};
pub use label::{check_label, NAME_MAX_CHARS, OWNER_MAX_CHARS};
pub use notify::{
    NewNotify, Notification, NotifyFormat, NotifyOn, NotifyTestView, NotifyView,
    MAX_NOTIFY_PER_USER, NOTIFY_URL_MAX_BYTES,
};
pub use spec::{JobSpec, SpecError};
pub use users::{
    check_user_name, parse_lifetime, CallerView, CreatedToken, NewToken, NewUser, TokenView,
    UserView, MAX_TOKEN_LIFETIME_S,
};
