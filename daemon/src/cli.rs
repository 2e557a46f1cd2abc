//! The `orpod` command line. Doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "orpod",
    version,
    about = "ORPO fine-tunes with LoRA on a shared GPU box"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a job in the foreground: metrics to DIR/metrics.jsonl, the adapter to DIR/final/.
    Train(TrainArgs),
    /// Evaluate the job's eval data at the base weights (or an adapter's) with TRL's metric names.
    Eval(EvalArgs),
    /// Turn a GGUF model into a Hugging Face folder (dequantized; config, safetensors, tokenizer).
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The job file (job.toml).
    pub job: PathBuf,
    /// Output folder: metrics.jsonl and final/ (the PEFT adapter).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The job file (job.toml); its data.eval (or eval_fraction) is evaluated.
    pub job: PathBuf,
    /// A PEFT adapter folder to evaluate instead of the base weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Print one JSON object (the default prints a table).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The .gguf file.
    pub gguf: PathBuf,
    /// The Hugging Face folder to write.
    #[arg(long)]
    pub out: PathBuf,
}
