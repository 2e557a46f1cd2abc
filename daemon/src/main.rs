//! `orpod`: the ORPO fine-tune daemon and its foreground commands. Parsing and exit codes only;
//! the work is in the library (`orpod::run`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    orpo_trainer::runtime::tune_for_training();
    orpod::init_tracing();
    let cli = orpod::cli::Cli::parse();
    match orpod::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
