//! The job file (`job.toml`): every key, its default, and the checks that run before a job is
//! accepted. Names follow TRL's `ORPOConfig` where the concept is the same (`beta`, `max_length`,
//! `max_prompt_length`, ...). Unknown keys are an error: a typo must not silently train with a
//! default (DESIGN.md §3).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Optional label shown in listings.
    #[serde(default)]
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
    pub base: String,
    #[serde(default)]
    pub dtype: Dtype,
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
    /// JSONL rows `{"prompt","chosen","rejected"}`: strings, or lists of chat messages.
    pub train: String,
    /// Optional JSONL file for evaluation.
    #[serde(default)]
    pub eval: String,
    /// Fraction of `train` split off for evaluation (with the seed) when `eval` is empty.
    #[serde(default)]
    pub eval_fraction: f64,
    /// `auto`: the model's template for conversational rows; `none`; or a path to a .jinja file.
    #[serde(default = "default_chat_template")]
    pub chat_template: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_max_prompt_length")]
    pub max_prompt_length: usize,
    /// Which end of a too-long prompt is kept (TRL 0.25's `truncation_mode`).
    #[serde(default)]
    pub truncation_mode: TruncationMode,
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
            max_prompt_length: default_max_prompt_length(),
            truncation_mode: TruncationMode::default(),
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
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_target_modules")]
    pub target_modules: Vec<String>,
    /// A PEFT adapter folder to start from instead of a fresh adapter.
    #[serde(default)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_epochs")]
    pub epochs: f64,
    /// > 0 overrides `epochs`.
    #[serde(default)]
    pub max_steps: usize,
    /// Preference pairs per micro-batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub lr_scheduler: LrScheduler,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    /// Global-norm clipping; 0 turns it off.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub gradient_checkpointing: bool,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "one")]
    pub log_every: usize,
    /// 0: evaluate at the end only.
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default)]
    pub eval_at_start: bool,
    /// 0: final checkpoint only.
    #[serde(default)]
    pub save_every: usize,
    #[serde(default = "default_keep_checkpoints")]
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
}

impl Default for ExportSpec {
    fn default() -> Self {
        ExportSpec {
            adapter: true,
            merged: false,
            gguf: GgufExport::default(),
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
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default = "default_device")]
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
fn default_max_prompt_length() -> usize {
    512
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
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
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
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        fn check(ok: bool, key: &'static str, msg: &str) -> Result<(), (&'static str, String)> {
            if ok {
                Ok(())
            } else {
                Err((key, msg.to_string()))
            }
        }
        check(
            !self.model.base.is_empty(),
            "model.base",
            "must name a model folder or .gguf file",
        )?;
        check(
            !self.data.train.is_empty(),
            "data.train",
            "must name a JSONL file",
        )?;
        check(
            (0.0..1.0).contains(&self.data.eval_fraction),
            "data.eval_fraction",
            "must be in [0, 1)",
        )?;
        check(
            self.data.max_length >= 2,
            "data.max_length",
            "must be at least 2",
        )?;
        check(
            self.data.max_prompt_length < self.data.max_length,
            "data.max_prompt_length",
            &format!(
                "must be smaller than data.max_length ({} >= {})",
                self.data.max_prompt_length, self.data.max_length
            ),
        )?;
        check(
            self.orpo.beta >= 0.0 && self.orpo.beta.is_finite(),
            "orpo.beta",
            "must be >= 0",
        )?;
        check(self.lora.r > 0, "lora.r", "must be > 0")?;
        check(self.lora.alpha > 0.0, "lora.alpha", "must be > 0")?;
        check(
            (0.0..1.0).contains(&self.lora.dropout),
            "lora.dropout",
            "must be in [0, 1)",
        )?;
        check(
            !self.lora.target_modules.is_empty(),
            "lora.target_modules",
            "must name at least one module",
        )?;
        for m in &self.lora.target_modules {
            if !LORA_MODULES.contains(&m.as_str()) {
                return Err((
                    "lora.target_modules",
                    format!("unknown module {m:?}; known: {}", LORA_MODULES.join(", ")),
                ));
            }
        }
        let t = &self.train;
        check(
            t.epochs > 0.0 || t.max_steps > 0,
            "train.epochs",
            "must be > 0 (or set train.max_steps)",
        )?;
        check(t.batch_size > 0, "train.batch_size", "must be > 0")?;
        check(
            t.eval_batch_size > 0,
            "train.eval_batch_size",
            "must be > 0",
        )?;
        check(t.grad_accum > 0, "train.grad_accum", "must be > 0")?;
        check(
            t.learning_rate >= 0.0 && t.learning_rate.is_finite(),
            "train.learning_rate",
            "must be >= 0",
        )?;
        check(t.weight_decay >= 0.0, "train.weight_decay", "must be >= 0")?;
        check(
            t.max_grad_norm >= 0.0,
            "train.max_grad_norm",
            "must be >= 0 (0 turns clipping off)",
        )?;
        check(t.log_every > 0, "train.log_every", "must be > 0")?;
        check(
            t.keep_checkpoints > 0,
            "train.keep_checkpoints",
            "must be > 0",
        )?;
        let d = self.resources.device.as_str();
        let device_ok = matches!(d, "auto" | "cpu" | "cuda")
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        check(
            device_ok,
            "resources.device",
            "must be auto, cpu, cuda or cuda:N",
        )?;
        Ok(())
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
        assert_eq!(s.data.max_prompt_length, 512);
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
