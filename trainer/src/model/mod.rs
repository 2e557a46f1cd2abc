//! Base models: loading (Hugging Face folder or GGUF) and the training forward pass.
//!
//! Weights are kept under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`,
//! ...), whatever the source: a GGUF file is dequantized and its Q/K rows un-permuted at load,
//! so the rest of the trainer and the PEFT adapters it writes see one layout.

pub mod config;
pub mod export;
pub mod gguf;
mod hf;
pub mod llama;
pub mod quant;
pub mod testing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use config::{Arch, Llama3RopeScaling, ModelConfig};
pub use export::save_hf_folder;

use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// A loaded base model: frozen weights by Hugging Face name, its config and tokenizer.
pub struct BaseModel {
    pub config: ModelConfig,
    /// Frozen weights by HF name. Tied models have no `lm_head.weight`.
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: TokenizerInfo,
    /// Where it was loaded from (folder or .gguf file), for adapter configs and messages.
    pub source: PathBuf,
}

/// Loads a base model from a Hugging Face folder (`config.json` + safetensors), a `.gguf` file,
/// or a folder holding exactly one `.gguf` file. Weights come back as plain (non-`Var`)
/// tensors in `dtype` on `device`.
pub fn load_base(path: &Path, dtype: DType, device: &Device) -> Result<BaseModel> {
    let model = if path.is_dir() {
        if path.join("config.json").is_file() {
            hf::load(path, dtype, device)?
        } else {
            gguf::load(&single_gguf_in(path)?, dtype, device)?
        }
    } else if path.is_file() {
        gguf::load(path, dtype, device)?
    } else if let Some(snapshot) = hf_cache_snapshot(path) {
        hf::load(&snapshot, dtype, device)?
    } else {
        return Err(Error::model(
            path,
            "no such file or folder (nor an \"org/name\" model in the Hugging Face cache)",
        ));
    };
    check_vocab(&model)?;
    Ok(model)
}

/// The config of the model `load_base` would load from `path`, read without loading any
/// weights (config.json, or the GGUF header).
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            ModelConfig::from_hf_file(&path.join("config.json"))
        } else {
            gguf::read_config(&single_gguf_in(path)?)
        }
    } else if path.is_file() {
        gguf::read_config(path)
    } else if let Some(snapshot) = hf_cache_snapshot(path) {
        ModelConfig::from_hf_file(&snapshot.join("config.json"))
    } else {
        Err(Error::model(
            path,
            "no such file or folder (nor an \"org/name\" model in the Hugging Face cache)",
        ))
    }
}

/// The tokenizer of the model `load_base` would load from `path`, read without any weights:
/// what measuring a data set's token lengths needs before a job is admitted.
pub fn read_tokenizer(path: &Path) -> Result<TokenizerInfo> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            TokenizerInfo::from_hf_dir(path)
        } else {
            gguf::read_tokenizer(&single_gguf_in(path)?)
        }
    } else if path.is_file() {
        gguf::read_tokenizer(path)
    } else if let Some(snapshot) = hf_cache_snapshot(path) {
        TokenizerInfo::from_hf_dir(&snapshot)
    } else {
        Err(Error::model(
            path,
            "no such file or folder (nor an \"org/name\" model in the Hugging Face cache)",
        ))
    }
}

/// An `org/name` model id resolved offline in the Hugging Face cache
/// (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`): the snapshot that
/// `refs/main` names, or the only snapshot there is. Nothing is downloaded.
fn hf_cache_snapshot(id: &Path) -> Option<PathBuf> {
    let id = id.to_str()?;
    let (org, name) = id.split_once('/')?;
    if org.is_empty() || name.is_empty() || name.contains('/') || id.starts_with('.') {
        return None;
    }
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })?;
    let repo = hub.join(format!("models--{org}--{name}"));
    let snapshots = repo.join("snapshots");
    let by_ref = std::fs::read_to_string(repo.join("refs/main"))
        .ok()
        .map(|r| snapshots.join(r.trim()));
    let snapshot = by_ref.filter(|p| p.is_dir()).or_else(|| {
        let mut all: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        (all.len() == 1).then(|| all.remove(0))
    })?;
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// A folder without `config.json` is accepted when it holds one GGUF file (llama.cpp downloads).
fn single_gguf_in(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::model(
            dir,
            "neither a Hugging Face folder (config.json, model.safetensors, tokenizer.json) nor a folder with a .gguf file",
        )),
        _ => Err(Error::model(dir, format!("{} .gguf files here; name the one to load", ggufs.len()))),
    }
}

/// Every tensor the training model reads, with its shape, by Hugging Face name.
pub fn expected_weights(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut add = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![q, h]);
        add("self_attn.k_proj.weight", vec![kv, h]);
        add("self_attn.v_proj.weight", vec![kv, h]);
        add("self_attn.o_proj.weight", vec![h, q]);
        if cfg.attention_bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
        add("mlp.gate_proj.weight", vec![i, h]);
        add("mlp.up_proj.weight", vec![i, h]);
        add("mlp.down_proj.weight", vec![h, i]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// Checks `weights` holds exactly the expected tensors with the expected shapes, and says which
/// are missing, misshapen or unexpected (a sign of an architecture we do not model).
pub fn check_weights(
    path: &Path,
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
) -> Result<()> {
    let expected = expected_weights(cfg);
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, shape) in &expected {
        match weights.get(name) {
            None => missing.push(name.as_str()),
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.dims()
            )),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        problems.insert(
            0,
            format!(
                "missing {} tensor(s): {}",
                missing.len(),
                abbreviate(&missing)
            ),
        );
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&str> = weights
        .keys()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        problems.push(format!(
            "unexpected tensor(s) the trainer does not model: {}",
            abbreviate(&extra)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::model(path, problems.join("; ")))
    }
}

/// The first few names of a long list, so an error stays readable when a whole family is missing.
fn abbreviate(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let head = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

/// A token id past the embedding table would index out of bounds in the forward pass.
fn check_vocab(model: &BaseModel) -> Result<()> {
    let vocab = model.tokenizer.tokenizer.get_vocab(true);
    let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
    if max_id >= model.config.vocab_size {
        return Err(Error::model(
            &model.source,
            format!(
                "the tokenizer has token id {max_id} but the model only {} embeddings",
                model.config.vocab_size
            ),
        ));
    }
    Ok(())
}
