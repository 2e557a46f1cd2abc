//! Loading a llama.cpp GGUF file as a training base: every tensor dequantized and renamed to its
//! Hugging Face name, llama.cpp's Q/K rope permutation undone, the config and the byte-level BPE
//! tokenizer rebuilt from the metadata.
//!
//! The tokenizer follows transformers' own GGUF conversion (`integrations/gguf`), except where
//! the model's real `tokenizer.json` differs from it: SmolLM2's digit splitting, Qwen2's NFC and
//! missing BOS.
//!
//! Layout: this file reads the file and its tensors; `config` turns the metadata into a
//! [`ModelConfig`], `names` maps tensor names and undoes the rope permutation, `tokenizer`
//! rebuilds the tokenizer and `meta` gives typed access to the metadata.

mod config;

pub(crate) use config::llama3_divisors;
mod meta;
mod names;
mod tokenizer;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};

use super::{check_weights, Arch, BaseModel, ModelConfig};
use crate::{Error, Result};
use config::config_from_metadata;
use meta::Meta;
use tokenizer::tokenizer_from_metadata;

pub use names::{gguf_name, hf_name, permute, unpermute};
pub(crate) use tokenizer::byte_level_alphabet;

/// llama.cpp stores Llama 3.1+ rope scaling as per-frequency divisors in this tensor.
const ROPE_FREQS: &str = "rope_freqs.weight";

pub(crate) fn load(path: &Path, dtype: DType, device: &Device) -> Result<BaseModel> {
    let (mut reader, content, config) = read_header(path)?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let tokenizer = tokenizer_from_metadata(&meta, config.arch)?;
    let weights = load_weights(path, &mut reader, &content, &config, dtype, device)?;
    check_weights(path, &config, &weights)?;
    tracing::debug!(path = %path.display(), tensors = weights.len(), "loaded GGUF model");
    Ok(BaseModel {
        config,
        weights,
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// The model config from the GGUF header alone: metadata and tensor infos are read, tensor data
/// is not (except the small `rope_freqs` vector of Llama 3 files). The memory estimate uses it
/// before a job is admitted, when loading gigabytes of weights is what we must not do.
pub(crate) fn read_config(path: &Path) -> Result<ModelConfig> {
    Ok(read_header(path)?.2)
}

/// The tokenizer from the GGUF metadata alone (no tensor data is read).
pub(crate) fn read_tokenizer(path: &Path) -> Result<crate::tokenizer::TokenizerInfo> {
    let (_, content, config) = read_header(path)?;
    tokenizer_from_metadata(
        &Meta {
            path,
            md: &content.metadata,
        },
        config.arch,
    )
}

/// Opens a GGUF file and reads its header and the model config in it; the reader is left for
/// the tensor data.
fn read_header(path: &Path) -> Result<(BufReader<File>, Content, ModelConfig)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader)
        .map_err(|e| Error::model(path, format!("not a readable GGUF file: {e}")))?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let rope_freqs = match content.tensor_infos.contains_key(ROPE_FREQS) {
        true => Some(dequantize(path, &mut reader, &content, ROPE_FREQS)?.to_vec1::<f32>()?),
        false => None,
    };
    let config = config_from_metadata(&meta, &content, rope_freqs.as_deref())?;
    Ok((reader, content, config))
}

// ---------------------------------------------------------------------------------------------
// Weights

fn load_weights(
    path: &Path,
    reader: &mut BufReader<File>,
    content: &Content,
    config: &ModelConfig,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    // In file order, so the reads go forward through the file.
    let mut names: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| *n != ROPE_FREQS)
        .collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut weights = HashMap::new();
    for gguf_name in names {
        let hf = hf_name(gguf_name).ok_or_else(|| {
            Error::model(
                path,
                format!("tensor {gguf_name} is not part of the models the trainer supports"),
            )
        })?;
        let tensor = dequantize(path, reader, content, gguf_name)?;
        let tensor = match rope_heads(config, &hf) {
            Some(heads) => unpermute(&tensor, heads, config.head_dim)?,
            None => tensor,
        };
        weights.insert(hf, tensor.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(weights)
}

/// Dequantizes on the CPU: every GGML type is supported there, and the f32 copy is transient.
fn dequantize(
    path: &Path,
    reader: &mut BufReader<File>,
    content: &Content,
    name: &str,
) -> Result<Tensor> {
    content
        .tensor(reader, name, &Device::Cpu)
        .and_then(|q| q.dequantize(&Device::Cpu))
        .map_err(|e| Error::model(path, format!("{name}: {e}")))
}

/// The head count to un-permute `hf_name` with, if llama.cpp permuted it: q and k of llama-arch
/// files (`LlamaModel.permute`, weights and biases alike). Qwen2 files keep HF's layout.
fn rope_heads(config: &ModelConfig, hf_name: &str) -> Option<usize> {
    if config.arch != Arch::Llama {
        return None;
    }
    if hf_name.contains(".self_attn.q_proj.") {
        Some(config.num_attention_heads)
    } else if hf_name.contains(".self_attn.k_proj.") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}
