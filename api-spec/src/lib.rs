//! Wire types shared by `orpod` (the daemon) and `orpoctl` (the client).
//!
//! # Layout
//! - [`spec`]: the job file (`job.toml`) schema with its documented defaults. The trainer, the
//!   daemon and the client all parse job files through this one definition, so a key cannot mean
//!   one thing on the laptop and another on the server.

pub mod spec;

pub use spec::{JobSpec, SpecError};
