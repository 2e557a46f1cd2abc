//! Base models: loading (Hugging Face folder or GGUF) and the training forward pass.
//!
//! Weights are kept under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`,
//! ...), whatever the source: a GGUF file's Q/K rows are un-permuted at load, so the rest of the
//! trainer and the PEFT adapters it writes see one layout.
//!
//! `model.quantize` decides how the frozen matrices are held ([`Quantize`]): a GGUF base keeps
//! its block-quantized tensors as [`quant::QWeight`]s by default, a Hugging Face base can be
//! quantized on load, and `none` gives every weight in the job's dtype (what exports use).

pub mod config;
pub mod export;
pub mod gguf;
mod hf;
pub mod llama;
pub mod quant;
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
pub use orpo_api::spec::Quantize;

pub use config::{Arch, Llama3RopeScaling, ModelConfig};
pub use export::save_hf_folder;
use quant::{Frozen, QWeight};

use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// A loaded base model: frozen weights by Hugging Face name, its config and tokenizer.
pub struct BaseModel {
    pub config: ModelConfig,
    /// Frozen weights held in full precision, by HF name. Tied models have no `lm_head.weight`.
    pub weights: HashMap<String, Tensor>,
    /// Frozen weights held block-quantized, by HF name (none of them also in `weights`).
    pub quantized: HashMap<String, Arc<QWeight>>,
    pub tokenizer: TokenizerInfo,
    /// Where it was loaded from (folder or .gguf file), for adapter configs and messages.
    pub source: PathBuf,
}

impl BaseModel {
    /// The frozen weight `name`, dense or quantized.
    pub fn frozen(&self, name: &str) -> Option<Frozen> {
        match self.weights.get(name) {
            Some(t) => Some(Frozen::Dense(t.clone())),
            None => self.quantized.get(name).map(|q| Frozen::Quant(q.clone())),
        }
    }

    /// How the base is held, for logs and the job's status: `"f32"`, or the quantized types
    /// and the dense dtype (`"q4_1 + q8_0, f32 norms"`), with the bytes of all weights.
    pub fn precision(&self) -> Precision {
        let dense = self.weights.values().next().map(|t| t.dtype().as_str());
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for q in self.quantized.values() {
            *kinds.entry(quant::ggml_name(q.dtype())).or_default() += 1;
        }
        let name = match (kinds.is_empty(), dense) {
            (true, Some(d)) => d.to_string(),
            (true, None) => "empty".to_string(),
            (false, d) => {
                // The most common type first: "q4_1 + q8_0" for 210 projections and an embedding.
                let mut kinds: Vec<(&str, usize)> = kinds.into_iter().collect();
                kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
                match d {
                    Some(d) => format!("{}, {d} norms", names.join(" + ")),
                    None => names.join(" + "),
                }
            }
        };
        let bytes = self
            .weights
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .chain(self.quantized.values().map(|q| q.bytes()))
            .sum::<usize>() as u64;
        Precision { name, bytes }
    }
}

/// How a loaded base is held: a name for people and the bytes its weights take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precision {
    pub name: String,
    pub bytes: u64,
}

/// Loads a base model from a Hugging Face folder (`config.json` + safetensors), a `.gguf` file,
/// or a folder holding exactly one `.gguf` file. Weights come back as plain (non-`Var`)
/// tensors in `dtype` on `device`, or block-quantized as `quantize` says.
pub fn load_base(
    path: &Path,
    dtype: DType,
    device: &Device,
    quantize: Quantize,
) -> Result<BaseModel> {
    let model = match source_of(path)? {
        Source::Hf(dir) => hf::load(&dir, dtype, device, quantize)?,
        Source::Gguf(file) => gguf::load(&file, dtype, device, quantize)?,
    };
    check_vocab(&model)?;
    Ok(model)
}

/// Where a base model's files are.
enum Source {
    /// A Hugging Face folder (`config.json`, safetensors, tokenizer files).
    Hf(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// What `path` names, as every reader of a base takes it: a Hugging Face folder, a `.gguf`
/// file, a folder holding exactly one `.gguf` file, or an `org/name` id in the Hugging Face
/// cache.
fn source_of(path: &Path) -> Result<Source> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            Ok(Source::Hf(path.to_path_buf()))
        } else {
            single_gguf_in(path).map(Source::Gguf)
        }
    } else if path.is_file() {
        Ok(Source::Gguf(path.to_path_buf()))
    } else if let Some(snapshot) = hf_cache_snapshot(path) {
        Ok(Source::Hf(snapshot))
    } else {
        Err(Error::model(
            path,
            "no such file or folder (nor an \"org/name\" model in the Hugging Face cache)",
        ))
    }
}

/// The config of the model `load_base` would load from `path`, read without loading any
/// weights (config.json, or the GGUF header).
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    match source_of(path)? {
        Source::Hf(dir) => ModelConfig::from_hf_file(&dir.join("config.json")),
        Source::Gguf(file) => gguf::read_config(&file),
    }
}

/// The bytes the frozen base of `cfg` at `path` takes when held as `quantize` says, read from
/// the GGUF header or worked out from the config (no weights are loaded); `None` when every
/// weight is dense, in `dtype_bytes` per value. What the memory estimate counts.
pub fn held_weights(
    path: &Path,
    cfg: &ModelConfig,
    quantize: Quantize,
    dtype_bytes: u64,
) -> Result<Option<HeldWeights>> {
    let stored = match quantize {
        Quantize::None => return Ok(None),
        Quantize::Auto => match source_of(path)? {
            Source::Gguf(file) => gguf::stored_types(&file)?,
            Source::Hf(_) => return Ok(None),
        },
        _ => HashMap::new(),
    };
    let head = match cfg.tie_word_embeddings {
        true => "model.embed_tokens.weight",
        false => "lm_head.weight",
    };
    let mut held = HeldWeights::default();
    for (name, shape) in expected_weights(cfg) {
        let elems = shape.iter().product::<usize>() as u64;
        let block = match (is_quantizable(&name), quantize) {
            (false, _) => None,
            (true, Quantize::Auto) => stored
                .get(&name)
                .copied()
                .filter(|&t| gguf::is_block_type(t)),
            (true, q) => quantize_type(q, shape[1]),
        };
        match block {
            Some(t) => {
                held.bytes += elems / t.block_size() as u64 * t.type_size() as u64;
                held.quantized += 1;
                let tile = (elems * 4).min(quant::tile_f32_bytes(&name) as u64);
                if name == head {
                    held.head_quantized = true;
                    held.head_tile_bytes = tile;
                }
                if name.ends_with("_proj.weight") {
                    held.tile_bytes = held.tile_bytes.max(tile);
                }
            }
            None => held.bytes += elems * dtype_bytes,
        }
    }
    Ok((held.quantized > 0).then_some(held))
}

/// What [`held_weights`] finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldWeights {
    /// Bytes of all frozen weights, quantized and dense.
    pub bytes: u64,
    /// How many matrices are block-quantized.
    pub quantized: usize,
    /// The output head is one of them (it is dequantized for each head pass).
    pub head_quantized: bool,
    /// The largest dequantized f32 tile of a projection ([`quant::TILE_F32_BYTES`] at most).
    pub tile_bytes: u64,
    /// A quantized head's f32 tile (0 when the head is dense).
    pub head_tile_bytes: u64,
}

/// The tokenizer of the model `load_base` would load from `path`, read without any weights:
/// what measuring a data set's token lengths needs before a job is admitted.
pub fn read_tokenizer(path: &Path) -> Result<TokenizerInfo> {
    match source_of(path)? {
        Source::Hf(dir) => TokenizerInfo::from_hf_dir(&dir),
        Source::Gguf(file) => gguf::read_tokenizer(&file),
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

/// Whether `name` is one of the matrices `model.quantize` applies to: the projections, the
/// embedding and the head (norms and biases stay dense).
pub fn is_quantizable(name: &str) -> bool {
    name.ends_with("_proj.weight")
        || name == "model.embed_tokens.weight"
        || name == "lm_head.weight"
}

/// What `quantize` asks for a weight of `cols` columns, `None` for dense: the type itself, its
/// 32-block fallback where rows are not whole K-quant blocks (`quant::quantizable`), or dense
/// when not even that fits.
pub fn quantize_type(quantize: Quantize, cols: usize) -> Option<candle_core::quantized::GgmlDType> {
    use candle_core::quantized::GgmlDType as G;
    let wanted = match quantize {
        Quantize::Auto | Quantize::None => return None,
        Quantize::Q4_0 => G::Q4_0,
        Quantize::Q4_1 => G::Q4_1,
        Quantize::Q5_0 => G::Q5_0,
        Quantize::Q5_1 => G::Q5_1,
        Quantize::Q8_0 => G::Q8_0,
        Quantize::Q4K => G::Q4K,
        Quantize::Q5K => G::Q5K,
        Quantize::Q6K => G::Q6K,
    };
    quant::quantizable(wanted, cols)
}

/// `t` as `quantize` asks: quantized when it is a quantizable matrix and the type fits its
/// rows, else dense in `dtype` on `device`. The dense copy of a quantized weight is dropped here.
fn hold(
    name: &str,
    t: Tensor,
    quantize: Quantize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Frozen> {
    if is_quantizable(name) {
        if let Some(q) = quantize_type(quantize, t.dim(1)?) {
            return Ok(Frozen::Quant(Arc::new(QWeight::quantize(
                &t,
                q,
                device,
                quant::tile_f32_bytes(name),
            )?)));
        }
    }
    Ok(Frozen::Dense(t.to_dtype(dtype)?.to_device(device)?))
}

/// Dense and quantized weights by HF name, as [`BaseModel`] holds them.
pub(crate) type Weights = (HashMap<String, Tensor>, HashMap<String, Arc<QWeight>>);

/// Files a held weight in `weights` or `quantized`.
fn file_weight(
    name: String,
    w: Frozen,
    weights: &mut HashMap<String, Tensor>,
    quantized: &mut HashMap<String, Arc<QWeight>>,
) {
    match w {
        Frozen::Dense(t) => {
            weights.insert(name, t);
        }
        Frozen::Quant(q) => {
            quantized.insert(name, q);
        }
    }
}

/// Checks the weights (dense and quantized) are exactly the expected tensors with the
/// expected shapes, and says which are missing, misshapen or unexpected (a sign of an
/// architecture we do not model).
pub fn check_weights(
    path: &Path,
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    quantized: &HashMap<String, Arc<QWeight>>,
) -> Result<()> {
    let dims = |name: &str| -> Option<Vec<usize>> {
        match weights.get(name) {
            Some(t) => Some(t.dims().to_vec()),
            None => quantized.get(name).map(|q| {
                let (r, c) = q.dims();
                vec![r, c]
            }),
        }
    };
    let expected = expected_weights(cfg);
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, shape) in &expected {
        match dims(name) {
            None => missing.push(name.as_str()),
            Some(d) if d != *shape => {
                problems.push(format!("{name} has shape {d:?}, expected {shape:?}"))
            }
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
        .chain(quantized.keys())
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
