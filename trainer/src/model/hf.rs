//! Loading a Hugging Face model folder: `config.json`, `model.safetensors` or the shards listed
//! in `model.safetensors.index.json`, and the tokenizer files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

use super::{check_weights, expected_weights, file_weight, hold, BaseModel, ModelConfig, Quantize};
use crate::tokenizer::{read_json, TokenizerInfo};
use crate::{Error, Result};

pub(super) fn load(
    dir: &Path,
    dtype: DType,
    device: &Device,
    quantize: Quantize,
) -> Result<BaseModel> {
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let tokenizer = TokenizerInfo::from_hf_dir(dir)?;
    let files = safetensors_files(dir)?;
    let (weights, quantized) = load_weights(dir, &files, &config, (dtype, quantize), device)?;
    tracing::debug!(dir = %dir.display(), tensors = weights.len() + quantized.len(), "loaded Hugging Face model");
    Ok(BaseModel {
        config,
        weights,
        quantized,
        tokenizer,
        source: dir.to_path_buf(),
    })
}

/// The safetensors files of the folder: the shards named by the index, or the single file.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::model(&index_path, "no `weight_map` object"))?;
        // BTreeSet: each shard once, in a stable order.
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(shards.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::model(
        dir,
        "no model.safetensors or model.safetensors.index.json (PyTorch .bin weights are not supported; save with safe_serialization=True)",
    ))
}

/// Loads every tensor the model needs, and only those, cast to `dtype` or quantized one at a
/// time as `quantize` says.
fn load_weights(
    dir: &Path,
    files: &[PathBuf],
    config: &ModelConfig,
    (dtype, quantize): (DType, Quantize),
    device: &Device,
) -> Result<super::Weights> {
    // SAFETY: the files are memory-mapped read-only and must not be changed while we read them,
    // the same assumption candle's own `VarBuilder::from_mmaped_safetensors` makes. Every tensor
    // is copied out (cast and moved to `device`) before the map is dropped.
    let st = unsafe { MmapedSafetensors::multi(files) }
        .map_err(|e| Error::model(dir, format!("cannot read safetensors: {e}")))?;
    let (mut weights, mut quantized) = (HashMap::new(), HashMap::new());
    // A matrix to be quantized is loaded on the CPU (the quantizer runs there).
    let to_quantize = !matches!(quantize, Quantize::Auto | Quantize::None);
    for (name, _) in expected_weights(config) {
        // Absent names are reported all together by `check_weights`.
        let Ok(view) = st.get(&name) else { continue };
        let load_on = match to_quantize && super::is_quantizable(&name) {
            true => &Device::Cpu,
            false => device,
        };
        let held = candle_core::safetensors::Load::load(&view, load_on)
            .and_then(|t| hold(&name, t, quantize, dtype, device))
            .map_err(|e| Error::model(dir, format!("{name}: {e}")))?;
        file_weight(name, held, &mut weights, &mut quantized);
    }
    check_weights(dir, config, &weights, &quantized)?;
    Ok((weights, quantized))
}
