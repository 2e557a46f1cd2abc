//! `orpod`: queues ORPO fine-tune jobs and runs them with `orpo-trainer`; the same binary runs a
//! job in the foreground (`orpod train`) and evaluates adapters (`orpod eval`).
//!
//! # Layout
//! - [`cli`]: the command line (clap).
//! - [`commands`]: one file per verb: `train`, `eval`, `convert`.

pub mod cli;
pub mod commands;

use cli::{Cli, Command};

/// Runs one command line. `main` only maps the result to an exit code.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Convert(args) => commands::convert::run(args),
    }
}

/// Logs to stderr at `info` (or `RUST_LOG`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
