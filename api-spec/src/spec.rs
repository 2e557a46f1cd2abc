//! The job file (`job.toml`): every key, its default, and the checks that run before a job is
//! accepted. Names follow TRL's `ORPOConfig` where the concept is the same (`beta`, `max_length`,
//! `max_prompt_length`, ...). Unknown keys are an error: a typo must not silently train with a
//! default (docs/job-file.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datasets::is_server_data;
use crate::label::{label_problem, NAME_MAX_CHARS};

/// Why a job file was refused. The message names the file and, for parse errors, the line and
/// column (the `toml` crate's own report).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid job file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid job file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// One ORPO fine-tune: what to train, on what, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Optional label shown in listings: printable text (no control characters or bidi
    /// overrides) of at most 128 characters.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub name: String,
    /// Higher runs first; ties run in submit order.
    #[serde(default)]
    pub priority: i32,
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub orpo: OrpoSpec,
    #[serde(default)]
    pub lora: LoraSpec,
    #[serde(default)]
    pub train: TrainSpec,
    #[serde(default)]
    pub export: ExportSpec,
    #[serde(default)]
    pub resources: ResourcesSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a `.gguf` file.
    /// On the daemon: a path inside its `model_roots` (a relative one is taken inside the first).
    #[cfg_attr(
        feature = "schema",
        schema(
            min_length = 1,
            max_length = 4096,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub base: String,
    #[serde(default)]
    pub dtype: Dtype,
    /// How the frozen base's weights are held: as the file stores them (`auto`), all in
    /// `dtype` (`none`), or block-quantized on load to one GGUF type (the projections, the
    /// embedding and the head; norms stay in `dtype`).
    #[serde(default)]
    pub quantize: Quantize,
}

/// The block-quantized form of a frozen base (`model.quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Quantize {
    /// A GGUF base keeps its quantized tensors as stored; a Hugging Face base stays in `dtype`.
    #[default]
    Auto,
    /// Every weight in `dtype` (a GGUF base is dequantized on load).
    None,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl Quantize {
    pub const ALL: [Quantize; 10] = [
        Quantize::Auto,
        Quantize::None,
        Quantize::Q4_0,
        Quantize::Q4_1,
        Quantize::Q5_0,
        Quantize::Q5_1,
        Quantize::Q8_0,
        Quantize::Q4K,
        Quantize::Q5K,
        Quantize::Q6K,
    ];

    /// The value of its job-file name (`"q4_k"`).
    pub fn parse(name: &str) -> Result<Quantize, String> {
        Quantize::ALL
            .into_iter()
            .find(|q| q.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Quantize::ALL.iter().map(|q| q.as_str()).collect();
                format!("{name:?} is not one of {}", names.join(", "))
            })
    }

    /// The name job files use (`"q4_k"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Quantize::Auto => "auto",
            Quantize::None => "none",
            Quantize::Q4_0 => "q4_0",
            Quantize::Q4_1 => "q4_1",
            Quantize::Q5_0 => "q5_0",
            Quantize::Q5_1 => "q5_1",
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4K => "q4_k",
            Quantize::Q5K => "q5_k",
            Quantize::Q6K => "q6_k",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bf16 on CUDA, f32 on CPU (bf16 matmuls on CPU widen to f32 on every call).
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// JSONL rows `{"prompt","chosen","rejected"}`: strings, or lists of chat messages. On the
    /// daemon: an uploaded data set, `sha256:<hex>` (see `POST /v1/datasets`), or
    /// `server:<path>`, a file inside the daemon's `data_roots`.
    #[cfg_attr(
        feature = "schema",
        schema(pattern = r"^(sha256:[0-9a-f]{64}|server:.+)$")
    )]
    pub train: String,
    /// Optional JSONL file for evaluation. On the daemon: empty, an uploaded data set or a
    /// `server:` file.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schema(pattern = r"^(sha256:[0-9a-f]{64}|server:.+)?$")
    )]
    pub eval: String,
    /// Fraction of `train` split off for evaluation (with the seed) when `eval` is empty.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0, exclusive_maximum = 1.0))]
    pub eval_fraction: f64,
    /// `auto`: the model's template for conversational rows; `none`; or a path to a .jinja file
    /// (not on the daemon, which takes `auto` or `none`).
    #[serde(default = "default_chat_template")]
    #[cfg_attr(feature = "schema", schema(pattern = "^(auto|none)$"))]
    pub chat_template: String,
    /// Tokens of prompt plus answer. A longer row is cut: with `max_prompt_length` unset as
    /// TRL 1.x does (the whole prompt is kept, each answer keeps what is left), else as TRL 0.25.
    #[serde(default = "default_max_length")]
    #[cfg_attr(feature = "schema", schema(minimum = 2, maximum = 1048576))]
    pub max_length: usize,
    /// TRL 0.25's prompt limit: a prompt that does not fit with its longer answer keeps this
    /// many tokens, and the answers keep `max_length - max_prompt_length`. Unset: TRL 1.x's rule.
    /// Must be below `max_length` (a rule between two keys that the schema cannot state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 1048575))]
    pub max_prompt_length: Option<usize>,
    /// Which end of a cut prompt is kept (TRL 0.25's `truncation_mode`, default `keep_end`);
    /// only with `max_prompt_length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation_mode: Option<TruncationMode>,
    /// `false` keeps rows in file order (exact comparisons with a reference run).
    #[serde(default = "yes")]
    pub shuffle: bool,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            train: String::new(),
            eval: String::new(),
            eval_fraction: 0.0,
            chat_template: default_chat_template(),
            max_length: default_max_length(),
            max_prompt_length: None,
            truncation_mode: None,
            shuffle: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    #[default]
    KeepEnd,
    KeepStart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrpoSpec {
    /// TRL's `beta`, the paper's lambda: the weight of the odds-ratio term.
    #[serde(default = "default_beta")]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub beta: f64,
    #[serde(default)]
    pub nll_scope: NllScope,
}

impl Default for OrpoSpec {
    fn default() -> Self {
        OrpoSpec {
            beta: default_beta(),
            nll_scope: NllScope::default(),
        }
    }
}

/// Which tokens of the chosen answer the NLL term averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NllScope {
    /// Prompt and completion, as TRL's ORPOTrainer (every release since v0.9.3).
    #[default]
    Full,
    /// Completion only (LLaMA-Factory, TRL PR #2502).
    Completion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    #[serde(default = "default_r")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 65536))]
    pub r: usize,
    #[serde(default = "default_alpha")]
    #[cfg_attr(feature = "schema", schema(exclusive_minimum = 0.0))]
    pub alpha: f64,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0, exclusive_maximum = 1.0))]
    pub dropout: f64,
    /// The projections to adapt, each at most once.
    #[serde(default = "default_target_modules")]
    #[cfg_attr(feature = "schema", schema(schema_with = target_modules_schema))]
    pub target_modules: Vec<String>,
    /// A PEFT adapter folder to start from instead of a fresh adapter (on the daemon: inside
    /// its `model_roots`, like `model.base`).
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schema(
            max_length = 4096,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub init_adapter: String,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_target_modules(),
            init_adapter: String::new(),
        }
    }
}

/// The projections a LoRA adapter may attach to (Llama/Qwen2 module names, as PEFT spells them).
pub const LORA_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// `lora.target_modules` in the OpenAPI document: modules of [`LORA_MODULES`], at least one,
/// none twice (what [`JobSpec::validate`] checks).
#[cfg(feature = "schema")]
fn target_modules_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .description(Some("The projections to adapt, each at most once."))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(LORA_MODULES)),
        )
        .min_items(Some(1))
        .unique_items(true)
        .build()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// 0 only with `max_steps` > 0.
    #[serde(default = "default_epochs")]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0, maximum = 1000000.0))]
    pub epochs: f64,
    /// > 0 overrides `epochs`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1099511627776usize))]
    pub max_steps: usize,
    /// Preference pairs per micro-batch.
    #[serde(default = "default_batch_size")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 65536))]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch_size")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 65536))]
    pub eval_batch_size: usize,
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 65536))]
    pub grad_accum: usize,
    #[serde(default = "default_learning_rate")]
    #[cfg_attr(feature = "schema", schema(exclusive_minimum = 0.0))]
    pub learning_rate: f64,
    #[serde(default)]
    pub lr_scheduler: LrScheduler,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1099511627776usize))]
    pub warmup_steps: usize,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub weight_decay: f64,
    /// Global-norm clipping; 0 turns it off.
    #[serde(default = "default_max_grad_norm")]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub gradient_checkpointing: bool,
    #[serde(default = "default_seed")]
    #[cfg_attr(
        feature = "schema",
        schema(minimum = 0, maximum = 18446744073709551615u64)
    )]
    pub seed: u64,
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 1099511627776usize))]
    pub log_every: usize,
    /// 0: evaluate at the end only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1099511627776usize))]
    pub eval_every: usize,
    #[serde(default)]
    pub eval_at_start: bool,
    /// 0: final checkpoint only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1099511627776usize))]
    pub save_every: usize,
    #[serde(default = "default_keep_checkpoints")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 65536))]
    pub keep_checkpoints: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            epochs: default_epochs(),
            max_steps: 0,
            batch_size: default_batch_size(),
            eval_batch_size: default_eval_batch_size(),
            grad_accum: 1,
            learning_rate: default_learning_rate(),
            lr_scheduler: LrScheduler::default(),
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: default_max_grad_norm(),
            gradient_checkpointing: false,
            seed: default_seed(),
            log_every: 1,
            eval_every: 0,
            eval_at_start: false,
            save_every: 0,
            keep_checkpoints: default_keep_checkpoints(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    #[default]
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    #[serde(default = "yes")]
    pub adapter: bool,
    #[serde(default)]
    pub merged: bool,
    #[serde(default)]
    pub gguf: GgufExport,
    /// The adapter alone as a GGUF LoRA file (`adapter.gguf`, for llama.cpp's `--lora` and
    /// Ollama's `ADAPTER`) with a `Modelfile` beside it.
    #[serde(default)]
    pub gguf_adapter: bool,
}

impl Default for ExportSpec {
    fn default() -> Self {
        ExportSpec {
            adapter: true,
            merged: false,
            gguf: GgufExport::default(),
            gguf_adapter: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GgufExport {
    #[default]
    None,
    F16,
    Q8_0,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// `auto` | `cpu` | `cuda` | `cuda:N` (N at most 65535).
    #[serde(default = "default_device")]
    #[cfg_attr(
        feature = "schema",
        schema(
            pattern = r"^(auto|cpu|cuda|cuda:0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))$"
        )
    )]
    pub device: String,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            device: default_device(),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_chat_template() -> String {
    "auto".into()
}
fn default_max_length() -> usize {
    1024
}
fn default_beta() -> f64 {
    0.1
}
fn default_r() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_target_modules() -> Vec<String> {
    LORA_MODULES.iter().map(|s| s.to_string()).collect()
}
fn default_epochs() -> f64 {
    1.0
}
fn default_batch_size() -> usize {
    4
}
fn default_eval_batch_size() -> usize {
    8
}
fn default_learning_rate() -> f64 {
    2e-4
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_keep_checkpoints() -> usize {
    3
}
fn default_device() -> String {
    "auto".into()
}

impl JobSpec {
    /// Reads, parses and checks a job file; relative paths in it become relative to the file.
    pub fn load(path: &Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = JobSpec::parse(&text, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        spec.resolve_paths(dir);
        Ok(spec)
    }

    /// Parses and checks job file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        spec.validate()
            .map_err(|(key, message)| SpecError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(spec)
    }

    /// Makes the file paths of the spec absolute against `dir` (the job file's folder).
    /// `model.base` stays as written when it does not exist there: it may be a path on the
    /// server, checked where the job runs.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let join = |p: &mut String| {
            if !p.is_empty() && !is_server_data(p) && Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        join(&mut self.data.train);
        join(&mut self.data.eval);
        join(&mut self.lora.init_adapter);
        if self.data.chat_template != "auto" && self.data.chat_template != "none" {
            join(&mut self.data.chat_template);
        }
        if Path::new(&self.model.base).is_relative() && dir.join(&self.model.base).exists() {
            self.model.base = dir.join(&self.model.base).to_string_lossy().into_owned();
        }
    }

    /// Checks the values serde cannot: ranges and combinations. Returns the key and the reason.
    ///
    /// Every number must be finite and within its meaningful range, and every size small enough
    /// that no product of them overflows: a spec that passes is stored as JSON (which has no
    /// `inf` or `NaN`) and reads back equal. `priority` takes any `i32`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        text("name", &self.name, NAME_MAX_CHARS)?;
        required(
            "model.base",
            &self.model.base,
            "a model folder or .gguf file",
        )?;

        let d = &self.data;
        required("data.train", &d.train, "a JSONL file")?;
        text("data.eval", &d.eval, MAX_PATH_CHARS)?;
        float("data.eval_fraction", d.eval_fraction, "in [0, 1)", |v| {
            (0.0..1.0).contains(&v)
        })?;
        text("data.chat_template", &d.chat_template, MAX_PATH_CHARS)?;
        int("data.max_length", d.max_length, 2..=MAX_TOKENS)?;
        if let Some(prompt) = d.max_prompt_length {
            if !(1..d.max_length).contains(&prompt) {
                return Err((
                    "data.max_prompt_length",
                    format!(
                        "must be from 1 to data.max_length - 1 ({}), found {prompt}: it leaves \
                         the answers data.max_length - data.max_prompt_length tokens; lower it, \
                         raise data.max_length, or remove data.max_prompt_length to keep whole \
                         prompts as TRL 1.x does",
                        d.max_length.saturating_sub(1)
                    ),
                ));
            }
        } else if d.truncation_mode.is_some() {
            return Err((
                "data.truncation_mode",
                "applies only with data.max_prompt_length (TRL 0.25's prompt cut); set \
                 data.max_prompt_length too, or remove data.truncation_mode"
                    .into(),
            ));
        }

        // 0 is allowed: the NLL term alone (plain SFT on the chosen answers).
        float("orpo.beta", self.orpo.beta, ">= 0", |v| v >= 0.0)?;

        let l = &self.lora;
        int("lora.r", l.r, 1..=MAX_LORA_RANK)?;
        float("lora.alpha", l.alpha, "> 0", |v| v > 0.0)?;
        float("lora.dropout", l.dropout, "in [0, 1)", |v| {
            (0.0..1.0).contains(&v)
        })?;
        if l.target_modules.is_empty() {
            return Err((
                "lora.target_modules",
                "must name at least one module".into(),
            ));
        }
        for (i, m) in l.target_modules.iter().enumerate() {
            if !LORA_MODULES.contains(&m.as_str()) {
                return Err((
                    "lora.target_modules",
                    format!(
                        "unknown module {}; known: {}",
                        shown(m),
                        LORA_MODULES.join(", ")
                    ),
                ));
            }
            if l.target_modules[..i].contains(m) {
                return Err(("lora.target_modules", format!("{m:?} is listed twice")));
            }
        }
        text("lora.init_adapter", &l.init_adapter, MAX_PATH_CHARS)?;

        let t = &self.train;
        float(
            "train.epochs",
            t.epochs,
            &format!("in [0, {MAX_EPOCHS}]"),
            |v| (0.0..=MAX_EPOCHS).contains(&v),
        )?;
        int("train.max_steps", t.max_steps, 0..=MAX_STEPS)?;
        check(
            t.epochs > 0.0 || t.max_steps > 0,
            "train.epochs",
            "> 0 (or set train.max_steps)",
            format_args!("{:?}", t.epochs),
        )?;
        int("train.batch_size", t.batch_size, 1..=MAX_BATCH)?;
        int("train.eval_batch_size", t.eval_batch_size, 1..=MAX_BATCH)?;
        int("train.grad_accum", t.grad_accum, 1..=MAX_BATCH)?;
        float("train.learning_rate", t.learning_rate, "> 0", |v| v > 0.0)?;
        int("train.warmup_steps", t.warmup_steps, 0..=MAX_STEPS)?;
        float("train.weight_decay", t.weight_decay, ">= 0", |v| v >= 0.0)?;
        float(
            "train.max_grad_norm",
            t.max_grad_norm,
            ">= 0 (0 turns clipping off)",
            |v| v >= 0.0,
        )?;
        int("train.log_every", t.log_every, 1..=MAX_STEPS)?;
        int("train.eval_every", t.eval_every, 0..=MAX_STEPS)?;
        int("train.save_every", t.save_every, 0..=MAX_STEPS)?;
        int(
            "train.keep_checkpoints",
            t.keep_checkpoints,
            1..=MAX_KEEP_CHECKPOINTS,
        )?;

        let device = self.resources.device.as_str();
        let device_ok = matches!(device, "auto" | "cpu" | "cuda")
            || device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u16>().is_ok());
        check(
            device_ok,
            "resources.device",
            "auto, cpu, cuda or cuda:N",
            shown(device),
        )?;
        Ok(())
    }
}

/// The longest sequence a job may ask for (`data.max_length`): a million tokens.
pub const MAX_TOKENS: usize = 1 << 20;
/// The most pairs in a micro-batch or evaluation batch, and the most micro-batches accumulated.
pub const MAX_BATCH: usize = 1 << 16;
/// The largest LoRA rank (`lora.r`).
pub const MAX_LORA_RANK: usize = 1 << 16;
/// The most steps a job may name (`train.max_steps`, `warmup_steps`, the `*_every` intervals).
pub const MAX_STEPS: usize = 1 << 40;
/// The most epochs (`train.epochs`): more than any real run, and a bound on the steps they make.
pub const MAX_EPOCHS: f64 = 1e6;
/// The most checkpoints kept (`train.keep_checkpoints`).
pub const MAX_KEEP_CHECKPOINTS: usize = 1 << 16;
/// The longest path or dataset reference in a job file, in characters (Linux's `PATH_MAX`).
pub const MAX_PATH_CHARS: usize = 4096;

type Invalid = (&'static str, String);

/// `Err` naming `key`, what it accepts and the `found` value unless `ok`.
fn check(
    ok: bool,
    key: &'static str,
    accepted: impl std::fmt::Display,
    found: impl std::fmt::Display,
) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key, format!("must be {accepted}, found {found}")))
    }
}

/// A float that is finite (JSON has no `inf` or `NaN`) and `ok`.
fn float(
    key: &'static str,
    v: f64,
    accepted: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), Invalid> {
    // `{:?}`: `1e300` rather than 301 digits, and `-1.0` as written.
    check(
        v.is_finite() && ok(v),
        key,
        format_args!("finite and {accepted}"),
        format_args!("{v:?}"),
    )
}

fn int(key: &'static str, v: usize, range: std::ops::RangeInclusive<usize>) -> Result<(), Invalid> {
    let accepted = format!("from {} to {}", range.start(), range.end());
    check(range.contains(&v), key, accepted, v)
}

/// Printable text of at most `max_chars` characters (`label`'s rule), possibly empty.
fn text(key: &'static str, v: &str, max_chars: usize) -> Result<(), Invalid> {
    label_problem(v, max_chars).map_or(Ok(()), |problem| Err((key, problem)))
}

/// A path or reference that must be given.
fn required(key: &'static str, v: &str, what: &str) -> Result<(), Invalid> {
    if v.is_empty() {
        return Err((key, format!("must name {what}")));
    }
    text(key, v, MAX_PATH_CHARS)
}

/// `value` quoted for an error message, cut short: the message must not carry a huge value.
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}... ({} bytes)", &value[..end], value.len()),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nbase = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = JobSpec::parse(MINIMAL, Path::new("job.toml")).unwrap();
        assert_eq!(s.orpo.beta, 0.1);
        assert_eq!(s.data.max_length, 1024);
        assert_eq!(s.data.max_prompt_length, None);
        assert_eq!(s.data.truncation_mode, None);
        assert_eq!(s.lora.r, 16);
        assert_eq!(s.lora.alpha, 32.0);
        assert_eq!(s.lora.target_modules.len(), 7);
        assert_eq!(s.train.batch_size, 4);
        assert_eq!(s.train.learning_rate, 2e-4);
        assert!(s.data.shuffle);
        assert!(s.export.adapter);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = format!("{MINIMAL}[train]\nlearning_rat = 1e-4\n");
        let err = JobSpec::parse(&text, Path::new("job.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning_rat"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let text = format!("{MINIMAL}[lora]\ntarget_modules = [\"qproj\"]\n");
        let err = JobSpec::parse(&text, Path::new("job.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lora.target_modules") && err.contains("qproj"),
            "{err}"
        );
        let text =
            "[model]\nbase = \"m\"\n[data]\ntrain = \"t\"\nmax_length = 8\nmax_prompt_length = 8\n";
        let err = JobSpec::parse(text, Path::new("j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.max_prompt_length"), "{err}");
    }

    /// Finding (issue 13): `max_length = 128` alone was refused against the old 512-token
    /// prompt default. TRL 1.x has no prompt limit, so a job written for it must parse.
    #[test]
    fn max_length_alone_is_a_trl_1_job() {
        let s = JobSpec::parse(
            &format!(
                "{MINIMAL}max_length = 128
"
            ),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!((s.data.max_length, s.data.max_prompt_length), (128, None));
    }

    #[test]
    fn contradictory_lengths_name_both_keys_and_the_fix() {
        let err = refused(&format!(
            "{MINIMAL}max_length = 128
max_prompt_length = 512
"
        ));
        assert!(
            err.contains("data.max_prompt_length")
                && err.contains("data.max_length")
                && err.contains("remove data.max_prompt_length"),
            "{err}"
        );
        let err = refused(&format!("{MINIMAL}truncation_mode = \"keep_start\"\n"));
        assert!(
            err.contains("data.truncation_mode") && err.contains("data.max_prompt_length"),
            "{err}"
        );
    }

    fn refused(text: &str) -> String {
        JobSpec::parse(text, Path::new("job.toml"))
            .unwrap_err()
            .to_string()
    }

    /// Finding: `epochs = inf` was accepted, stored as JSON `null`, and the job could not be
    /// read back. Every non-finite or out-of-range number is refused, naming its key.
    #[test]
    fn non_finite_and_absurd_numbers_name_the_key() {
        for (table, line, key) in [
            ("train", "epochs = inf", "train.epochs"),
            ("train", "epochs = -inf", "train.epochs"),
            ("train", "epochs = nan", "train.epochs"),
            ("train", "epochs = -1.0", "train.epochs"),
            ("train", "epochs = 1e300", "train.epochs"),
            ("train", "learning_rate = nan", "train.learning_rate"),
            ("train", "learning_rate = 0.0", "train.learning_rate"),
            ("train", "weight_decay = inf", "train.weight_decay"),
            ("train", "max_grad_norm = nan", "train.max_grad_norm"),
            ("train", "batch_size = 0", "train.batch_size"),
            ("train", "batch_size = 65537", "train.batch_size"),
            (
                "train",
                "eval_batch_size = 1000000",
                "train.eval_batch_size",
            ),
            (
                "train",
                "grad_accum = 4611686018427387904",
                "train.grad_accum",
            ),
            (
                "train",
                "max_steps = 4611686018427387904",
                "train.max_steps",
            ),
            (
                "train",
                "warmup_steps = 4611686018427387904",
                "train.warmup_steps",
            ),
            (
                "train",
                "save_every = 4611686018427387904",
                "train.save_every",
            ),
            ("train", "keep_checkpoints = 0", "train.keep_checkpoints"),
            ("orpo", "beta = inf", "orpo.beta"),
            ("orpo", "beta = -0.5", "orpo.beta"),
            ("lora", "alpha = nan", "lora.alpha"),
            ("lora", "r = 4611686018427387904", "lora.r"),
            ("lora", "dropout = nan", "lora.dropout"),
            ("data", "eval_fraction = nan", "data.eval_fraction"),
            (
                "data",
                "max_length = 4611686018427387904",
                "data.max_length",
            ),
            ("data", "max_length = 1048577", "data.max_length"),
            ("data", "max_prompt_length = 0", "data.max_prompt_length"),
            ("resources", "device = \"cuda:+1\"", "resources.device"),
        ] {
            // [data] is already open in MINIMAL; other tables are added after it.
            let text = match table {
                "data" => format!("{MINIMAL}{line}\n"),
                _ => format!("{MINIMAL}[{table}]\n{line}\n"),
            };
            let err = refused(&text);
            assert!(err.contains(key), "{line}: {err}");
            let value = line.split(" = ").nth(1).unwrap();
            let found = value.trim_matches('"').replace("nan", "NaN");
            assert!(
                err.contains(&found),
                "{line}: the message names the value: {err}"
            );
        }
        // The largest accepted sizes pass.
        let text = format!(
            "{MINIMAL}max_length = 1048576\nmax_prompt_length = 1048575\n\
             [train]\nbatch_size = 65536\nmax_steps = 1099511627776\nepochs = 0.0\n"
        );
        JobSpec::parse(&text, Path::new("job.toml")).unwrap();
    }

    /// A spec given as JSON (`SubmitJobRequest::spec`) is checked by `validate` alone.
    #[test]
    fn a_json_spec_is_refused_the_same_way() {
        let good = JobSpec::parse(MINIMAL, Path::new("job.toml")).unwrap();
        type Spoil = fn(&mut JobSpec);
        let cases: [(&str, Spoil); 5] = [
            ("train.epochs", |s| s.train.epochs = f64::INFINITY),
            ("train.learning_rate", |s| s.train.learning_rate = f64::NAN),
            ("data.max_length", |s| s.data.max_length = 1 << 62),
            ("lora.r", |s| s.lora.r = usize::MAX),
            ("name", |s| s.name = "\u{1b}]0;pwned\u{7}".into()),
        ];
        for (key, spoil) in cases {
            let mut spec = good.clone();
            spoil(&mut spec);
            let (k, msg) = spec.validate().unwrap_err();
            assert_eq!(k, key, "{msg}");
        }
        // JSON has no literal for them; a huge exponent is refused by the JSON parser itself.
        let mut json = serde_json::to_value(&good).unwrap();
        json["data"]["max_length"] = serde_json::json!(1u64 << 62);
        let spec: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(spec.validate().unwrap_err().0, "data.max_length");
        let text = serde_json::to_string(&good)
            .unwrap()
            .replace("\"epochs\":1.0", "\"epochs\":1e400");
        assert!(serde_json::from_str::<JobSpec>(&text).is_err());
    }

    /// Finding: names were stored with escape sequences and 900 KB of text.
    #[test]
    fn names_and_paths_are_short_printable_text() {
        for (line, key) in [
            ("name = \"\\u001b[2Jhello\"", "name"),
            ("name = \"two\\nlines\"", "name"),
            ("name = \"evil\\u202Efdp\"", "name"),
            ("name = \"\\u009b31m\"", "name"),
        ] {
            let err = refused(&format!("{line}\n{MINIMAL}"));
            assert!(
                err.contains(&format!(": {key}: has the unprintable character U+")),
                "{line}: {err}"
            );
        }
        let long = format!("name = \"{}\"\n{MINIMAL}", "x".repeat(900 << 10));
        let err = refused(&long);
        assert!(err.contains("name: is longer than 128"), "{err}");
        assert!(err.len() < 300, "the message does not echo the name");
        let name = format!("name = \"{}\"\n{MINIMAL}", "é".repeat(128));
        JobSpec::parse(&name, Path::new("job.toml")).unwrap();

        let path = MINIMAL.replace("t.jsonl", &"p/".repeat(2049));
        assert!(refused(&path).contains("data.train: is longer than 4096"));
        let module = format!(
            "{MINIMAL}[lora]\ntarget_modules = [\"{}\"]\n",
            "q".repeat(900 << 10)
        );
        let err = refused(&module);
        assert!(
            err.contains("lora.target_modules") && err.len() < 400,
            "{err}"
        );
        let twice = format!("{MINIMAL}[lora]\ntarget_modules = [\"q_proj\", \"q_proj\"]\n");
        assert!(refused(&twice).contains("\"q_proj\" is listed twice"));
    }

    /// What `validate` accepts is what the daemon can store: JSON and back gives the same spec.
    /// (Bit for bit for every float only with serde_json's `float_roundtrip`, which the trainer
    /// turns on: without it `0.9999999999999999` reads back as `1.0`.)
    #[test]
    fn a_valid_spec_round_trips_through_json() {
        let text = "name = \"résumé \\\" 🙂\"\npriority = -2147483648\n\
            [model]\nbase = \"/m\"\ndtype = \"bf16\"\n\
            [data]\ntrain = \"sha256:ab\"\neval_fraction = 0.30000000000000004\n\
            max_length = 1048576\nmax_prompt_length = 1\ntruncation_mode = \"keep_start\"\n\
            [orpo]\nbeta = 0.0\nnll_scope = \"completion\"\n\
            [lora]\nr = 65536\nalpha = 1e-300\ndropout = 0.95\n\
            target_modules = [\"down_proj\"]\n\
            [train]\nepochs = 1000000.0\nmax_steps = 1099511627776\nlearning_rate = 5e-324\n\
            weight_decay = 1.7976931348623157e308\nmax_grad_norm = 0.1\nseed = 9223372036854775807\n\
            [resources]\ndevice = \"cuda:65535\"\n";
        let spec = JobSpec::parse(text, Path::new("job.toml")).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec, "{json}");
        back.validate().unwrap();
        let defaults = JobSpec::parse(MINIMAL, Path::new("job.toml")).unwrap();
        let json = serde_json::to_string(&defaults).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), defaults);
    }

    #[test]
    fn relative_paths_follow_the_job_file() {
        let mut s = JobSpec::parse(MINIMAL, Path::new("job.toml")).unwrap();
        s.resolve_paths(Path::new("/srv/jobs"));
        assert_eq!(s.data.train, "/srv/jobs/t.jsonl");
        assert_eq!(
            s.model.base, "m",
            "a base that is not there stays as written"
        );
    }
}
