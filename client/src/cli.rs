//! The verbs and flags of `orpoctl` (docs/design.md#the-client-orpoctl). Global flags come
//! first so that `orpoctl --server http://gpu-box:8750 list` reads like
//! `cargo --config ... build`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "orpoctl",
    bin_name = "orpoctl",
    version,
    about = "Submit, watch and fetch ORPO fine-tune jobs of an orpod daemon",
    after_help = "The server is --server, else ORPOD_URL, else `server` in \
                  ~/.config/orpoctl/config.toml, else http://127.0.0.1:8750."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The daemon's URL, e.g. http://gpu-box:8750 [env: ORPOD_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Sent as `Authorization: Bearer TOKEN` [env: ORPOD_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a job file, upload its data, queue the job
    Submit {
        /// The job file (every key is shown in examples/job.toml; paths are relative to it)
        job: PathBuf,
        /// Follow the job after submitting it (as `orpoctl watch`)
        #[arg(long, short)]
        watch: bool,
        /// Override the job's `name`
        #[arg(long)]
        name: Option<String>,
        /// Override the job's `priority` (higher runs first)
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Print the new job as JSON
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first
    List {
        /// Only jobs in this state (queued, running, succeeded, ...)
        #[arg(long)]
        state: Option<orpo_api::JobState>,
        /// Only jobs of this owner
        #[arg(long)]
        owner: Option<String>,
        /// At most this many jobs
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one job
    Status {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// The logged training steps and evaluations of a job
    Metrics {
        id: u64,
        /// How many of the last records the table shows
        #[arg(long, short = 'n', default_value_t = 10)]
        last: usize,
        /// Every record as JSON
        #[arg(long)]
        json: bool,
    },
    /// Follow a job live: progress bar, loss, ETA (Ctrl-C detaches, the job keeps running)
    Watch { id: u64 },
    /// A job's event log: state changes, worker lines, checkpoints
    Logs {
        id: u64,
        /// Keep following new events until the job ends
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job for good
    Cancel { id: u64 },
    /// Checkpoint a running job and free its device; `resume` queues it again
    Pause { id: u64 },
    /// Queue a paused job again; it continues from its checkpoint
    Resume { id: u64 },
    /// Delete finished jobs with their history, checkpoints and adapter
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// A job's checkpoints and their files
    Checkpoints {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Download a checkpoint (the newest, or `final` when there is one) into a folder
    Download {
        id: u64,
        /// `step-N` or `final`
        #[arg(long, short)]
        checkpoint: Option<String>,
        /// The folder to write the files into (created if missing)
        #[arg(long, short)]
        output: PathBuf,
    },
    /// The devices jobs run on, their memory and jobs
    Gpus {
        #[arg(long)]
        json: bool,
    },
    /// Check a job file and ask where it would run now and what memory it needs, without queueing it
    Plan {
        job: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `orpoctl completions bash > ~/.local/share/bash-completion/completions/orpoctl`)
    Completions { shell: clap_complete::Shell },
}
