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
    /// Train a job in the foreground: metrics to DIR/metrics.jsonl, checkpoints to
    /// DIR/checkpoints/step-N/, the adapter and exports to DIR/final/. Continues from the newest
    /// checkpoint in DIR when there is one.
    Train(TrainArgs),
    /// Evaluate the job's eval data at the base weights (or an adapter's) with TRL's metric names.
    Eval(EvalArgs),
    /// Turn a GGUF model into a Hugging Face folder (dequantized; config, safetensors, tokenizer).
    Convert(ConvertArgs),
    /// Merge a checkpoint's adapter into its base: a Hugging Face folder and/or a GGUF file.
    Export(ExportArgs),
    /// Answer a prompt in the foreground: a checkpoint (its adapter merged into its base), a
    /// job file's base, or a model. Greedy unless a temperature is given; the answer alone on
    /// stdout, streamed as it is written.
    Generate(GenerateArgs),
    /// Run the daemon: the job queue and the HTTP API (default 127.0.0.1:8750).
    Serve(ServeArgs),
    /// Run one job for the daemon (started by `orpod serve`, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Print the OpenAPI document of the HTTP API (as committed in api-spec/openapi.json).
    Openapi,
    /// Check the memory estimate against measured peaks: trains a matrix of small configs on the
    /// CPU, each in its own process, and prints estimate, measured peak RSS and error.
    Calibrate(CalibrateArgs),
    /// Users of a shared daemon, in its state folder while it is stopped (how the first admin
    /// is made); while it runs an admin uses `orpoctl user`.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens, in the daemon's state folder while it is stopped; while it runs, `orpoctl
    /// token`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Which state folder `orpod user` and `orpod token` work on: as for `orpod serve`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The daemon's config file (its `state_dir` is used).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State folder (default as for `orpod serve`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The first one should be an admin: once a user exists, every request needs
    /// a token.
    Add {
        /// 1-32 letters, digits, '.', '_' or '-'.
        name: String,
        /// May add users, manage everyone's tokens and jobs, and raise priorities.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Remove a user: their tokens stop working, their notification endpoints and data set
    /// claims go; finished jobs stay. Refused while they have unfinished jobs, and for the
    /// last admin while other users remain.
    #[command(visible_alias = "remove")]
    Rm {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user and print it (only the token, on stdout). It is shown only
    /// this once: the daemon keeps its hash.
    Create {
        #[arg(long)]
        user: String,
        /// How long it works: e.g. 90d, 12h, 2w, or never.
        #[arg(long, default_value = "never")]
        expires: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// List tokens (ids, users, expiry; never the tokens).
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Revoke a token by its id: it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The base model (a .gguf file or a Hugging Face folder), e.g. SmolLM2-135M-Instruct.
    pub model: PathBuf,
    /// Values of data.max_length.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    pub lengths: Vec<usize>,
    /// Values of train.batch_size (preference pairs).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub batches: Vec<usize>,
    /// Values of lora.r.
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    pub ranks: Vec<usize>,
    /// Values of train.gradient_checkpointing.
    #[arg(long, value_delimiter = ',', default_value = "false,true")]
    pub checkpointing: Vec<bool>,
    /// Data sets: `full` (synthetic rows cut to exactly max_length, over the whole matrix) and
    /// generated sets of mixed real lengths, `short` (question-and-answer chat pairs), `long`
    /// (most rows cut at max_length) and `skewed` (mostly short, a few long), each trained
    /// with evaluation at the longest of --lengths and the largest of --ranks.
    #[arg(long, value_delimiter = ',', default_value = "full,short,long,skewed")]
    pub data: Vec<crate::commands::calibrate::DataKind>,
    /// train.batch_size and train.eval_batch_size of the mixed-length runs.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    pub mixed_batches: Vec<usize>,
    /// Values of model.quantize: `auto` keeps a GGUF base's quantized matrices, `none` holds
    /// the base in f32.
    #[arg(long, value_delimiter = ',', default_value = "auto,none", value_parser = orpo_api::spec::Quantize::parse)]
    pub quantize: Vec<orpo_api::spec::Quantize>,
    /// Optimizer steps per config (AdamW's moments exist from the second on).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Keep each config's run and measured peak here; a later call with the same configs
    /// reuses the peaks instead of training again (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file (keys as in systemd/orpod.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, `host:port` (default 127.0.0.1:8750).
    #[arg(long)]
    pub listen: Option<String>,
    /// State folder (default $STATE_DIRECTORY, $XDG_STATE_HOME/orpod or ~/.local/state/orpod).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The job's folder: job.toml in, checkpoints and final/ out.
    #[arg(long)]
    pub job_dir: PathBuf,
    /// Report events to the daemon at this URL (a worker Slurm started, maybe on another
    /// node) instead of on stdout, with the secret in `JOB_DIR/worker.secret`.
    #[arg(long)]
    pub report: Option<String>,
    /// Seconds to wait at the end for an unreachable daemon to take the last events.
    #[arg(long, default_value_t = 120)]
    pub report_wait_s: u64,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The job file (job.toml).
    pub job: PathBuf,
    /// Output folder: metrics.jsonl, checkpoints/ and final/ (the PEFT adapter, exports).
    #[arg(long)]
    pub out: PathBuf,
    /// Leave the checkpoints' sample prompts unanswered (`orpod generate CHECKPOINT --samples`
    /// answers them later); without it they are answered after training, with the generation
    /// engine's memory (a dense merged copy of the model) on top of nothing else.
    #[arg(long)]
    pub no_samples: bool,
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

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint folder (DIR/checkpoints/step-N, DIR/final) or any PEFT adapter folder.
    pub checkpoint: PathBuf,
    /// Write the merged model as a Hugging Face folder (config.json, model.safetensors,
    /// tokenizer files, generation_config.json).
    #[arg(long, value_name = "DIR")]
    pub merged: Option<PathBuf>,
    /// Write the merged model as one GGUF file for llama.cpp / Ollama.
    #[arg(long, value_name = "FILE.gguf")]
    pub gguf: Option<PathBuf>,
    /// The GGUF weight type.
    #[arg(long = "type", value_enum, default_value = "f16")]
    pub r#type: GgufType,
    /// Write the adapter alone as a GGUF LoRA file (llama.cpp `--lora`, Ollama `ADAPTER`),
    /// with a `Modelfile` beside it.
    #[arg(long, value_name = "FILE.gguf")]
    pub gguf_adapter: Option<PathBuf>,
    /// The base model (default: base_model_name_or_path of the adapter's config).
    #[arg(long)]
    pub base: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A checkpoint folder (DIR/checkpoints/step-N, DIR/final, any PEFT adapter folder), a
    /// job file (job.toml: its model.base), or a model (Hugging Face folder or .gguf file).
    pub model: PathBuf,
    /// The user's message, put in the model's chat template (repeat for several prompts,
    /// answered in turn).
    #[arg(long, required_unless_present_any = ["prompts_stdin", "samples"])]
    pub prompt: Vec<String>,
    /// Read the prompts from stdin, as a JSON array of strings, instead of --prompt.
    #[arg(long, conflicts_with = "prompt")]
    pub prompts_stdin: bool,
    /// Answer each prompt with the base model alone first, then with the checkpoint.
    #[arg(long)]
    pub compare_base: bool,
    /// Answer the checkpoint's own sample prompts (its sample_prompts.json, written by the
    /// trainer), greedy, and write them to its samples.json: what the daemon runs after each
    /// checkpoint.
    #[arg(long, conflicts_with_all = ["prompt", "prompts_stdin", "compare_base", "events"])]
    pub samples: bool,
    /// The most new tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sample at this temperature (0 or none: greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample only from the smallest set of tokens whose probabilities add up to P.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample only from the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The base model (default: the checkpoint's base_model_name_or_path).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The weights' dtype while answering: auto (bf16 on CUDA, f32 on the CPU), f32, f16, bf16.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeArg,
    /// Re-run the whole sequence for each token instead of using the KV cache (a check).
    #[arg(long)]
    pub no_kv_cache: bool,
    /// Print one JSON object per prompt (prompt and answer token ids, text, why it stopped,
    /// time to first token, tokens per second) instead of the streamed text.
    #[arg(long)]
    pub json: bool,
    /// Print the token and answer events of the daemon's generate stream as JSON lines (what
    /// the daemon's generation worker writes).
    #[arg(long, conflicts_with = "json")]
    pub events: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for orpo_api::spec::Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::Auto => Self::Auto,
            DtypeArg::F32 => Self::F32,
            DtypeArg::F16 => Self::F16,
            DtypeArg::Bf16 => Self::Bf16,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GgufType {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}
