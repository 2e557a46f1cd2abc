//! `orpoctl`, the client of the orpod daemon: submit ORPO fine-tune jobs from a laptop, watch
//! them, fetch their adapters (docs/design.md#the-client-orpoctl).
//!
//! # Layout
//! - [`cli`]: the verbs and flags (clap).
//! - [`config`]: which server and token: flags, then `ORPOD_URL`/`ORPOD_TOKEN`, then
//!   `~/.config/orpoctl/config.toml`.
//! - [`conn`]: the typed client of `orpo-api`, with errors that say what to check.
//! - [`display`]: tables, sizes, durations, ages, the loss sparkline.
//! - [`commands`]: one module per verb group (`submit`, `jobs`, `watch`, `checkpoints`, `gpus`,
//!   `users`: whoami, users and tokens).
//!
//! Exit codes: 0 ok, 1 an error (the server refused, a missing or refused token, the job
//! failed, it cannot be reached), 2 a usage error (clap's own, or a job file that does not
//! parse).

pub mod cli;
pub mod commands;
pub mod config;
pub mod conn;
pub mod display;

use std::process::ExitCode;

use clap::Parser as _;

/// The user's input is wrong (a job file that does not parse, a missing data file): exits 2,
/// like clap's usage errors, so scripts can tell "fix your input" from "the server said no".
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// What a verb ends with besides success: `watch` exits 1 when the job it followed failed.
pub enum Outcome {
    Ok,
    Failed,
}

/// The whole program: parse, run the verb, map the result to an exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
