//! The architecture hyper-parameters the training model needs, read from a Hugging Face
//! `config.json` (GGUF metadata is read in [`super::gguf`]) and written back for exports.
//! Field names follow `config.json`.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// The model families we train. Anything else is refused with a clear error at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM2: no biases.
    Llama,
    /// Qwen2: bias on q/k/v projections.
    Qwen2,
}

/// Llama 3.x rope frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The `model_type` to write back into exported config.json files ("llama", "mistral", "qwen2").
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (Qwen2).
    pub attention_bias: bool,
    /// Mistral's sliding window; `None` is full causal attention.
    pub sliding_window: Option<usize>,
}

/// The largest value of each size, by `config.json` key: far above any released model (Llama
/// 3.1 405B has hidden 16384, intermediate 53248, 126 layers, 128 heads; Gemma a 256k
/// vocabulary), and small enough that the weights, the per-token activations and the memory
/// estimate's products of them stay far inside 64 bits.
pub const SIZE_LIMITS: [(&str, usize); 6] = [
    ("vocab_size", 1 << 24),
    ("hidden_size", 1 << 20),
    ("intermediate_size", 1 << 22),
    ("num_hidden_layers", 1 << 12),
    ("num_attention_heads", 1 << 12),
    ("head_dim", 1 << 12),
];

/// The `model_type` values we can train, as the error message lists them.
const SUPPORTED: &str = "llama (also SmolLM2), mistral, qwen2";

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&json, path)
    }

    /// Parses the contents of a `config.json`; `path` is only used in error messages.
    ///
    /// Defaults are the ones transformers' config classes use when a key is absent.
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| Error::model(path, "config.json is not a JSON object"))?;
        let cfg = Fields { path, obj };
        let model_type = cfg.string("model_type")?.unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::model(
                    path,
                    format!("model_type {other:?} is not supported; supported: {SUPPORTED}"),
                ))
            }
        };
        cfg.refuse_unsupported(&model_type)?;

        let hidden_size = cfg.required_usize("hidden_size")?;
        let num_attention_heads = cfg.required_usize("num_attention_heads")?;
        let head_dim = match cfg.usize("head_dim")? {
            Some(d) => d,
            None => divide(path, hidden_size, num_attention_heads)?,
        };
        let config = ModelConfig {
            arch,
            vocab_size: cfg.required_usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.required_usize("intermediate_size")?,
            num_hidden_layers: cfg.required_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: cfg
                .usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: cfg.f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta(&cfg)?,
            rope_scaling: rope_scaling(&cfg)?,
            max_position_embeddings: cfg
                .usize("max_position_embeddings")?
                .unwrap_or(default_max_positions(&model_type)),
            // transformers defaults to untied for all three; SmolLM2 and small Qwen2 say `true`.
            tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: arch == Arch::Qwen2,
            // Qwen2 has a window too, but only with `use_sliding_window`, refused above.
            sliding_window: match model_type.as_str() {
                "mistral" => cfg.usize("sliding_window")?,
                _ => None,
            },
            model_type,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the config describes a network that can be built and whose sizes multiply
    /// without overflow; the error names the file and the `config.json` key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.check_values()
            .map_err(|message| Error::model(path, message))
    }

    /// What is wrong with the config's values, naming the `config.json` key: a size of 0 or
    /// past [`SIZE_LIMITS`], query heads that do not split evenly over the KV heads (GQA), an
    /// odd `head_dim`, a norm epsilon or rope setting that is not a positive finite number.
    pub fn check_values(&self) -> std::result::Result<(), String> {
        // In the order of `SIZE_LIMITS`.
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.head_dim,
        ];
        for ((key, max), value) in SIZE_LIMITS.into_iter().zip(sizes) {
            if !(1..=max).contains(&value) {
                return Err(format!("`{key}` is {value}; accepted: 1 to {max}"));
            }
        }
        let kv = self.num_key_value_heads;
        if kv == 0 || self.num_attention_heads % kv != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("`sliding_window` is 0; accepted: at least 1, or null".into());
        }
        let mut floats = vec![
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        if let Some(s) = &self.rope_scaling {
            floats.extend([
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
            ]);
            if s.original_max_position_embeddings == 0 {
                return Err(
                    "`rope_scaling.original_max_position_embeddings` is 0; accepted: at least 1"
                        .into(),
                );
            }
        }
        for (key, value) in floats {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "`{key}` is {value:?}; accepted: a finite number > 0"
                ));
            }
        }
        Ok(())
    }

    /// The `architectures` entry transformers needs to pick the model class.
    pub fn hf_architecture(&self) -> &'static str {
        match (self.arch, self.model_type.as_str()) {
            (Arch::Qwen2, _) => "Qwen2ForCausalLM",
            (Arch::Llama, "mistral") => "MistralForCausalLM",
            (Arch::Llama, _) => "LlamaForCausalLM",
        }
    }

    /// A `config.json` that transformers 4.x and 5.x both load (rope settings in the 4.x keys,
    /// which 5.x converts to `rope_parameters` itself).
    pub fn to_hf_json(
        &self,
        torch_dtype: &str,
        bos_token_id: Option<u32>,
        eos_token_id: u32,
    ) -> Value {
        let rope_scaling = self.rope_scaling.as_ref().map(|s| {
            json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        let mut cfg = json!({
            "architectures": [self.hf_architecture()],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "use_cache": true,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
        });
        let extra = match self.model_type.as_str() {
            "mistral" => json!({ "sliding_window": self.sliding_window }),
            "qwen2" => json!({ "use_sliding_window": false, "sliding_window": null }),
            _ => json!({ "attention_bias": false, "mlp_bias": false }),
        };
        if let (Some(cfg), Value::Object(extra)) = (cfg.as_object_mut(), extra) {
            cfg.extend(extra);
        }
        cfg
    }
}

/// transformers' defaults for `max_position_embeddings` (LlamaConfig, MistralConfig, Qwen2Config).
fn default_max_positions(model_type: &str) -> usize {
    match model_type {
        "mistral" => 4096 * 32,
        "qwen2" => 32768,
        _ => 2048,
    }
}

fn divide(path: &Path, hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::model(
            path,
            format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}; set head_dim"),
        ));
    }
    Ok(hidden / heads)
}

/// transformers 4.x writes `rope_theta` at the top level; 5.x moves it into `rope_parameters`.
fn rope_theta(cfg: &Fields) -> Result<f64> {
    if let Some(theta) = cfg.f64("rope_theta")? {
        return Ok(theta);
    }
    match cfg.object("rope_parameters")? {
        Some(params) => Ok(params.f64("rope_theta")?.unwrap_or(10_000.0)),
        None => Ok(10_000.0),
    }
}

/// Rope scaling from `rope_scaling` (4.x) or `rope_parameters` (5.x, which also holds the
/// theta). Only Llama 3's scheme is implemented; the others would silently change positions.
fn rope_scaling(cfg: &Fields) -> Result<Option<Llama3RopeScaling>> {
    let Some(params) = cfg
        .object("rope_scaling")?
        .or(cfg.object("rope_parameters")?)
    else {
        return Ok(None);
    };
    // Old configs say `type`, newer ones `rope_type`.
    let kind = match params.string("rope_type")? {
        Some(kind) => Some(kind),
        None => params.string("type")?,
    };
    match kind.as_deref() {
        None | Some("default") => Ok(None),
        Some("llama3") => Ok(Some(Llama3RopeScaling {
            factor: params.required_f64("factor")?,
            low_freq_factor: params.required_f64("low_freq_factor")?,
            high_freq_factor: params.required_f64("high_freq_factor")?,
            original_max_position_embeddings: params
                .required_usize("original_max_position_embeddings")?,
        })),
        Some(other) => Err(Error::model(
            cfg.path,
            format!("rope type {other:?} is not supported; supported: default, llama3"),
        )),
    }
}

/// Typed access to one JSON object of a config file, with errors that name the file and key.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The value at `key`, treating JSON `null` as absent (transformers writes `null` defaults).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Error {
        Error::model(
            self.path,
            format!("`{key}` must be {expected}, found {}", self.obj[key]),
        )
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
            })
            .transpose()
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong_type(key, "a number")))
            .transpose()
    }

    fn required_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong_type(key, "true or false"))
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.wrong_type(key, "a string"))
            })
            .transpose()
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'a>>> {
        self.get(key)
            .map(|v| {
                v.as_object()
                    .map(|obj| Fields {
                        path: self.path,
                        obj,
                    })
                    .ok_or_else(|| self.wrong_type(key, "an object"))
            })
            .transpose()
    }

    fn missing(&self, key: &str) -> Error {
        Error::model(self.path, format!("config.json has no `{key}`"))
    }

    /// Settings that change the network in ways our one model implementation does not cover.
    fn refuse_unsupported(&self, model_type: &str) -> Result<()> {
        if let Some(act) = self.string("hidden_act")? {
            if act != "silu" {
                return Err(self.unsupported(format!("hidden_act {act:?} (only silu)")));
            }
        }
        // Llama's `attention_bias` also puts a bias on o_proj, which Qwen2 never has.
        if model_type == "llama" && self.bool("attention_bias")? == Some(true) {
            return Err(self.unsupported("attention_bias = true on a llama model".into()));
        }
        if self.bool("mlp_bias")? == Some(true) {
            return Err(self.unsupported("mlp_bias = true".into()));
        }
        if model_type == "qwen2" && self.bool("use_sliding_window")? == Some(true) {
            return Err(self.unsupported("use_sliding_window = true on qwen2".into()));
        }
        Ok(())
    }

    fn unsupported(&self, what: String) -> Error {
        Error::model(self.path, format!("{what} is not supported by the trainer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(change: impl FnOnce(&mut Value)) -> Result<ModelConfig> {
        let mut json = json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0
        });
        change(&mut json);
        ModelConfig::from_hf_json(&json, Path::new("config.json"))
    }

    /// Finding: `vocab_size: 0` loaded and later divided by zero. Zero, absurd and non-positive
    /// values are refused at read time, naming the key.
    #[test]
    fn impossible_values_are_refused_naming_the_key() {
        config(|_| {}).unwrap();
        for (key, value) in [
            ("vocab_size", json!(0)),
            ("vocab_size", json!(1u64 << 40)),
            ("hidden_size", json!(0)),
            ("intermediate_size", json!(0)),
            ("num_hidden_layers", json!(0)),
            ("num_hidden_layers", json!(u64::MAX)),
            ("head_dim", json!(0)),
            ("num_key_value_heads", json!(0)),
            ("num_key_value_heads", json!(3)),
            ("rms_norm_eps", json!(0.0)),
            ("rope_theta", json!(-1.0)),
            ("sliding_window", json!(0)),
        ] {
            let err = config(|j| {
                j[key] = value.clone();
                if key == "sliding_window" {
                    j["model_type"] = json!("mistral");
                }
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{key} = {value}: {err}");
        }
    }
}
