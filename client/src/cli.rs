//! The verbs and flags of `orpoctl` (docs/design.md#the-client-orpoctl). Global flags come
//! first so that `orpoctl --server http://gpu-box:8750 list` reads like
//! `cargo --config ... build`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use orpo_api::{NotifyFormat, NotifyOn};

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
    /// Draw one metric of a job against the step as an SVG chart
    Chart {
        id: u64,
        /// `loss`, `nll_loss`, `rewards/accuracies`, `rewards/margins`, `log_odds_ratio`,
        /// `logps/chosen`, `learning_rate`, `grad_norm`, ... (eval points are marked)
        metric: String,
        /// Write the SVG here (default: stdout, when it is not a terminal)
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Ask a job's checkpoint (the newest, or --checkpoint) and print its answers as they come
    Generate {
        id: u64,
        /// The prompts, each answered on its own in the model's chat template
        #[arg(required = true)]
        prompt: Vec<String>,
        /// `step-N` or `final`
        #[arg(long, short)]
        checkpoint: Option<String>,
        /// Answer with the job's base model too and print the two side by side
        #[arg(long)]
        compare_base: bool,
        /// The most new tokens per answer
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Sample at this temperature (0 or none: greedy)
        #[arg(long)]
        temperature: Option<f64>,
        /// Sample only from the smallest set of tokens whose probabilities add up to P
        #[arg(long)]
        top_p: Option<f64>,
        /// Sample only from the K most likely tokens
        #[arg(long)]
        top_k: Option<usize>,
        /// Seed of the sampler
        #[arg(long)]
        seed: Option<u64>,
        /// Print every event of the answer stream as one JSON object per line
        #[arg(long)]
        json: bool,
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
    /// Who the daemon takes you for: your token's user, or anonymous on an open daemon
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Users of the daemon: add, list and remove them (admins)
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens: create one (shown only once), list them, revoke one
    #[command(subcommand)]
    Token(TokenCommand),
    /// Where the daemon tells you that a job ended or waits long: webhooks (ntfy, Slack,
    /// Discord, JSON)
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Print a shell completion script (e.g. `orpoctl completions bash > ~/.local/share/bash-completion/completions/orpoctl`)
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (admins); `orpoctl token create --user NAME` then makes their token
    Add {
        /// 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit
        #[arg(value_parser = user_name)]
        name: String,
        /// May add users, manage everyone's tokens and jobs
        #[arg(long)]
        admin: bool,
    },
    /// List the users (admins)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user (admins): their tokens stop working; refused while they have unfinished jobs
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(value_parser = user_name)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only the token, on stdout: `TOKEN=$(orpoctl token create)`);
    /// it is shown only this once
    Create {
        /// Whose token (admins may name another user); default: yours
        #[arg(long, value_parser = user_name)]
        user: Option<String>,
        /// How long it works: e.g. 90d, 12h, 2w, 3600 (seconds), or never
        #[arg(long, value_name = "LIFETIME", default_value = "never", value_parser = lifetime)]
        expires: Lifetime,
        /// Print the token and its id, user and expiry as JSON
        #[arg(long)]
        json: bool,
    },
    /// List tokens: yours (an admin's: everyone's); never the tokens themselves
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (as `token list` shows it): it stops working at once
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Add an endpoint: the daemon posts there when your jobs succeed, fail or wait long
    /// (the URL must be under a prefix the server's operator allows)
    Add {
        url: String,
        /// json, ntfy, slack or discord; default: guessed from the URL
        #[arg(long, value_parser = notify_format)]
        format: Option<NotifyFormat>,
        /// Which events, comma-separated: succeeded, failed, cancelled, waiting
        /// [default: succeeded,failed,waiting]
        #[arg(long, value_delimiter = ',', value_parser = notify_on)]
        on: Option<Vec<NotifyOn>>,
        /// Whose endpoint (admins may name another user); default: yours
        #[arg(long, value_parser = user_name)]
        user: Option<String>,
    },
    /// List your endpoints (an admin's: everyone's)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint by its id (as `notify list` shows it)
    Rm { id: String },
    /// Send a test notification to an endpoint now and say how it went
    Test { id: String },
}

fn notify_format(text: &str) -> Result<NotifyFormat, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?} is not a format: use json, ntfy, slack or discord"))
}

fn notify_on(text: &str) -> Result<NotifyOn, String> {
    text.parse()
}

/// A token's lifetime in seconds; `None`: it never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub Option<u64>);

/// `--expires`, checked here so that a bad one is a usage error (exit 2) before anything is sent.
fn lifetime(text: &str) -> Result<Lifetime, String> {
    orpo_api::parse_lifetime(text).map(Lifetime)
}

fn user_name(text: &str) -> Result<String, String> {
    orpo_api::check_user_name(text).map(|()| text.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn token_lifetimes_and_user_names_are_checked_here() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&[
            "orpoctl",
            "token",
            "create",
            "--user",
            "bob",
            "--expires",
            "90d",
        ])
        .unwrap();
        match cli.command {
            Command::Token(TokenCommand::Create { user, expires, .. }) => {
                assert_eq!(user.as_deref(), Some("bob"));
                assert_eq!(expires, Lifetime(Some(90 * 86_400)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["orpoctl", "token", "create"]).unwrap().command {
            Command::Token(TokenCommand::Create { user, expires, .. }) => {
                assert_eq!((user, expires), (None, Lifetime(None)));
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&["orpoctl", "token", "create", "--expires", "1y"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .contains("\"1y\" is not a lifetime: write e.g. 90d, 12h, 30m, 2w or never"),
            "{e}"
        );
        let e = parse(&["orpoctl", "user", "add", "-x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["orpoctl", "user", "add", "al ice"]).unwrap_err();
        assert!(e.to_string().contains("is not valid"), "{e}");
        assert!(parse(&["orpoctl", "user", "add", "alice", "--admin"]).is_ok());
    }
}
