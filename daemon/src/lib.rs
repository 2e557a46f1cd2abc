//! `orpod`: queues ORPO fine-tune jobs and runs them with `orpo-trainer`; the same binary runs a
//! job in the foreground (`orpod train`) and evaluates adapters (`orpod eval`).
//!
//! # Layout
//! - [`cli`]: the command line (clap).
//! - [`commands`]: one file per verb: `train`, `eval`, `convert`, `export`, `serve`, `worker`,
//!   `openapi`, `calibrate`, `user` and `token` (`users`).
//! - [`server`]: `server::run(config, listener, shutdown)`, the daemon as a library call.
//! - [`config`]: `orpod serve`'s settings and their defaults.
//! - [`store`]: sled: jobs, queue order, events, metrics, data sets; the schema version.
//! - [`supervisor`]: the scheduler and one `orpod worker` process per running job.
//! - [`devices`]: GPUs (NVML) and the CPU host, what each has free; the admission policy.
//! - [`auth`]: users and tokens: the `Caller` every route takes, who may see and change what.
//! - [`limits`]: what one user may ask of a shared daemon, checked at submit.
//! - [`http`]: the v1 API routes, the one error mapping, the OpenAPI document.
//! - [`checkpoints`]: a job's checkpoint folders as the API lists them.
//! - [`charts`]: metric charts as SVG (plotters).
//! - [`disk`]: free space on the state folder, checked before anything a client sends is kept.
//! - [`sdnotify`]: systemd's readiness, watchdog and stopping notifications (`Type=notify`).

pub mod auth;
pub mod charts;
pub mod checkpoints;
pub mod cli;
pub mod commands;
pub mod config;
pub mod devices;
pub mod disk;
pub mod http;
pub mod lengths;
pub mod limits;
pub mod notify;
pub mod sdnotify;
pub mod server;
pub mod store;
pub mod supervisor;

use cli::{Cli, Command};

/// Runs one command line. `main` only maps the result to an exit code.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Openapi => commands::openapi::run(),
        Command::Calibrate(args) => commands::calibrate::run(args),
        Command::User(cmd) => commands::users::user(cmd),
        Command::Token(cmd) => commands::users::token(cmd),
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

/// Now as RFC 3339 in UTC with milliseconds, the API's time format.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
