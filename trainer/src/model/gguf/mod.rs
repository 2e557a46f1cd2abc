//! Loading a llama.cpp GGUF file as a training base: every tensor renamed to its Hugging Face
//! name and llama.cpp's Q/K rope permutation undone, block-quantized matrices kept as they are
//! stored (`model.quantize = "auto"`) or dequantized, the config and the byte-level BPE
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

use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::quant::{self, Frozen, QWeight};
use super::{check_weights, file_weight, hold, Arch, BaseModel, ModelConfig, Quantize};
use crate::{Error, Result};
use config::config_from_metadata;
use meta::Meta;
use tokenizer::tokenizer_from_metadata;

pub use names::{gguf_name, hf_name, permute, unpermute, unpermute_rows};
pub(crate) use tokenizer::byte_level_alphabet;

/// llama.cpp stores Llama 3.1+ rope scaling as per-frequency divisors in this tensor.
const ROPE_FREQS: &str = "rope_freqs.weight";

pub(crate) fn load(
    path: &Path,
    dtype: DType,
    device: &Device,
    quantize: Quantize,
) -> Result<BaseModel> {
    let (mut reader, content, config) = read_header(path)?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let tokenizer = tokenizer_from_metadata(&meta, config.arch)?;
    let (weights, quantized) = load_weights(
        path,
        &mut reader,
        &content,
        &config,
        (dtype, quantize),
        device,
    )?;
    check_weights(path, &config, &weights, &quantized)?;
    tracing::debug!(path = %path.display(), dense = weights.len(), quantized = quantized.len(), "loaded GGUF model");
    Ok(BaseModel {
        config,
        weights,
        quantized,
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

/// The stored type of every tensor, by Hugging Face name, from the header alone.
pub(crate) fn stored_types(path: &Path) -> Result<HashMap<String, GgmlDType>> {
    let (_, content, _) = read_header(path)?;
    Ok(content
        .tensor_infos
        .iter()
        .filter_map(|(name, info)| hf_name(name).map(|hf| (hf, info.ggml_dtype)))
        .collect())
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
    (dtype, quantize): (DType, Quantize),
    device: &Device,
) -> Result<super::Weights> {
    // In file order, so the reads go forward through the file.
    let mut names: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| *n != ROPE_FREQS)
        .collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let (mut weights, mut quantized) = (HashMap::new(), HashMap::new());
    for gguf_name in names {
        let hf = hf_name(gguf_name).ok_or_else(|| {
            Error::model(
                path,
                format!("tensor {gguf_name} is not part of the models the trainer supports"),
            )
        })?;
        let stored = content.tensor_infos[gguf_name].ggml_dtype;
        let kept =
            quantize == Quantize::Auto && is_block_type(stored) && super::is_quantizable(&hf);
        let held = if kept {
            Frozen::Quant(Arc::new(keep_quantized(
                path, reader, content, config, gguf_name, &hf, device,
            )?))
        } else {
            let tensor = dequantize(path, reader, content, gguf_name)?;
            let tensor = match rope_heads(config, &hf) {
                Some(heads) => unpermute(&tensor, heads, config.head_dim)?,
                None => tensor,
            };
            hold(&hf, tensor, quantize, dtype, device)
                .map_err(|e| Error::model(path, format!("{gguf_name}: {e}")))?
        };
        file_weight(hf, held, &mut weights, &mut quantized);
    }
    Ok((weights, quantized))
}

/// Whether a stored type is a block quantization (not a float a dense tensor holds anyway).
pub(crate) fn is_block_type(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// A quantized tensor as it is stored, its Q/K rows un-permuted by row order.
fn keep_quantized(
    path: &Path,
    reader: &mut BufReader<File>,
    content: &Content,
    config: &ModelConfig,
    gguf_name: &str,
    hf_name: &str,
    device: &Device,
) -> Result<QWeight> {
    let mut read = || -> candle_core::Result<QWeight> {
        let q = content.tensor(reader, gguf_name, &Device::Cpu)?;
        let (rows, cols) = q.shape().dims2()?;
        let order = rope_heads(config, hf_name).map(|h| unpermute_rows(h, config.head_dim));
        QWeight::from_bytes(
            &q.data()?,
            q.dtype(),
            (rows, cols),
            order.as_deref(),
            device,
            quant::tile_f32_bytes(hf_name),
        )
    };
    read().map_err(|e| Error::model(path, format!("{gguf_name}: {e}")))
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
