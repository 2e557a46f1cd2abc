//! The `orpod` binary under this package's name, for the end-to-end suite (same `main`).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    orpod::init_tracing();
    match orpod::run(orpod::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
