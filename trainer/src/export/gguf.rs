//! Writing a model as one GGUF file that llama.cpp (and so Ollama, LM Studio) loads, laid out as
//! llama.cpp's `convert_hf_to_gguf.py` writes it: llama.cpp tensor names, the Q/K rows of
//! llama-arch models permuted back to llama.cpp's interleaved rope order, 2-D weights in f16 or
//! q8_0 and 1-D ones (norms, biases) in f32, and the hyper-parameters, tokenizer and chat
//! template in the metadata.
//!
//! The tokenizer metadata is copied from the base when the base is a GGUF file (exactly what
//! llama.cpp wrote); from a Hugging Face folder it is rebuilt from `tokenizer.json` (byte-level
//! BPE only, as the GGUF loader).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use orpo_api::spec::GgufExport;
use serde_json::Value as Json;

use crate::model::gguf::{gguf_name, llama3_divisors, permute};
use crate::model::{Arch, BaseModel, ModelConfig};
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// llama.cpp's `llama_ftype`: MOSTLY_F16 and MOSTLY_Q8_0.
const FTYPE_F16: u32 = 1;
const FTYPE_Q8_0: u32 = 7;

/// llama.cpp's `llama_token_type`.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// `f16` / `q8_0`, or `None` for `GgufExport::None`.
pub fn type_name(kind: GgufExport) -> Option<&'static str> {
    match kind {
        GgufExport::None => None,
        GgufExport::F16 => Some("f16"),
        GgufExport::Q8_0 => Some("q8_0"),
    }
}

/// Writes `weights` (Hugging Face names, e.g. merged ones) with `base`'s config and tokenizer to
/// the GGUF file `path`, through a temporary file renamed at the end.
pub fn write_gguf(
    base: &BaseModel,
    weights: &HashMap<String, Tensor>,
    path: &Path,
    kind: GgufExport,
) -> Result<()> {
    let (ftype, weight_type) = match kind {
        GgufExport::F16 => (FTYPE_F16, GgmlDType::F16),
        GgufExport::Q8_0 => (FTYPE_Q8_0, GgmlDType::Q8_0),
        GgufExport::None => return Err(Error::Config("export.gguf: no GGUF type given".into())),
    };
    crate::model::check_weights(path, &base.config, weights, &Default::default())?;
    let cfg = &base.config;
    let mut metadata = model_metadata(base, ftype, path)?;
    metadata.extend(tokenizer_metadata(base, path)?);
    let tensors = gguf_tensors(cfg, weights, weight_type)?;
    write_gguf_file(path, &metadata, &tensors)
}

/// Writes a GGUF file through a temporary file beside it, synced and renamed at the end, so
/// `path` is complete or absent.
pub(super) fn write_gguf_file(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut w, &md, &ts)
            .map_err(|e| Error::model(path, format!("cannot write GGUF: {e}")))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub(super) fn arch_name(cfg: &ModelConfig) -> &'static str {
    match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    }
}

/// `general.*` and `<arch>.*` keys with the value types llama.cpp's loader checks.
fn model_metadata(base: &BaseModel, ftype: u32, path: &Path) -> Result<Vec<(String, Value)>> {
    let cfg = &base.config;
    let arch = arch_name(cfg);
    let u32v = |n: usize| Value::U32(n as u32);
    let name = base
        .source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".to_string(), Value::String("model".into())),
        ("general.name".to_string(), Value::String(name)),
        ("general.file_type".to_string(), Value::U32(ftype)),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    let mut arch_key = |k: &str, v: Value| md.push((format!("{arch}.{k}"), v));
    arch_key("vocab_size", u32v(cfg.vocab_size));
    arch_key("context_length", u32v(cfg.max_position_embeddings));
    arch_key("embedding_length", u32v(cfg.hidden_size));
    arch_key("block_count", u32v(cfg.num_hidden_layers));
    arch_key("feed_forward_length", u32v(cfg.intermediate_size));
    arch_key("attention.head_count", u32v(cfg.num_attention_heads));
    arch_key("attention.head_count_kv", u32v(cfg.num_key_value_heads));
    arch_key("attention.key_length", u32v(cfg.head_dim));
    arch_key("attention.value_length", u32v(cfg.head_dim));
    arch_key("rope.dimension_count", u32v(cfg.head_dim));
    arch_key("rope.freq_base", Value::F32(cfg.rope_theta as f32));
    arch_key(
        "attention.layer_norm_rms_epsilon",
        Value::F32(cfg.rms_norm_eps as f32),
    );
    if cfg.sliding_window.is_some() {
        // llama.cpp's llama arch has no sliding window; a Mistral export attends to the whole
        // context, which only differs past the window (4096 tokens for Mistral 7B v0.1).
        tracing::warn!(path = %path.display(), "sliding window not representable in a llama GGUF");
    }
    Ok(md)
}

/// Tensors under llama.cpp's names, in llama.cpp's order (embedding, blocks, output).
fn gguf_tensors(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    weight_type: GgmlDType,
) -> Result<Vec<(String, QTensor)>> {
    let mut named: Vec<(String, &String, &Tensor)> = weights
        .iter()
        .map(|(hf, t)| {
            gguf_name(hf)
                .map(|g| (g, hf, t))
                .ok_or_else(|| Error::model(hf.as_str(), "no llama.cpp name for this tensor"))
        })
        .collect::<Result<_>>()?;
    named.sort_by_key(|(g, _, _)| tensor_order(g));
    let mut out = Vec::with_capacity(named.len() + 1);
    if let Some(s) = &cfg.rope_scaling {
        let divisors: Vec<f32> = llama3_divisors(s, cfg.rope_theta, cfg.head_dim)
            .into_iter()
            .map(|d| d as f32)
            .collect();
        let t = Tensor::from_vec(divisors, cfg.head_dim / 2, &Device::Cpu)?;
        out.push((
            "rope_freqs.weight".to_string(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
    }
    for (gguf, hf, t) in named {
        let mut t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if cfg.arch == Arch::Llama {
            if hf.contains(".self_attn.q_proj.") {
                t = permute(&t, cfg.num_attention_heads, cfg.head_dim)?;
            } else if hf.contains(".self_attn.k_proj.") {
                t = permute(&t, cfg.num_key_value_heads, cfg.head_dim)?;
            }
        }
        let dtype = match t.rank() {
            1 => GgmlDType::F32,
            // q8_0 blocks run along rows; llama.cpp's converter falls back to f16 likewise.
            _ if t.dims()[t.rank() - 1] % weight_type.block_size() != 0 => GgmlDType::F16,
            _ => weight_type,
        };
        out.push((gguf, QTensor::quantize(&t.contiguous()?, dtype)?));
    }
    Ok(out)
}

/// `token_embd` first, then blocks by number, then `output_norm` and `output`.
fn tensor_order(name: &str) -> (usize, usize, String) {
    if name.starts_with("token_embd") {
        return (0, 0, name.to_string());
    }
    match name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| (n, rest)))
    {
        Some((n, rest)) => (1, n, rest.to_string()),
        None => (2, 0, name.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// `tokenizer.*` keys: the base GGUF's own, or rebuilt from the Hugging Face tokenizer.
fn tokenizer_metadata(base: &BaseModel, path: &Path) -> Result<Vec<(String, Value)>> {
    if let Some(gguf) = source_gguf(&base.source) {
        let mut reader = BufReader::new(File::open(&gguf).map_err(|e| Error::io(&gguf, e))?);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| Error::model(&gguf, format!("not a readable GGUF file: {e}")))?;
        let mut md: Vec<(String, Value)> = content
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(md);
    }
    hf_tokenizer_metadata(&base.tokenizer, base.config.vocab_size, path)
}

/// The GGUF file a base was loaded from, if it was one (a file, or a folder holding one).
fn source_gguf(source: &Path) -> Option<PathBuf> {
    let is_gguf = |p: &Path| p.extension().is_some_and(|e| e == "gguf");
    if source.is_file() && is_gguf(source) {
        return Some(source.to_path_buf());
    }
    if source.is_dir() && !source.join("config.json").is_file() {
        let mut found = std::fs::read_dir(source)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_gguf(p));
        let one = found.next()?;
        return found.next().is_none().then_some(one);
    }
    None
}

/// llama.cpp's `gpt2` tokenizer keys from a byte-level BPE `tokenizer.json`, as
/// `convert_hf_to_gguf.py` (`get_vocab_base`) builds them: ids past the tokenizer up to the
/// embedding size become `[PADn]` unused tokens, special added tokens are control tokens,
/// other added tokens user-defined.
fn hf_tokenizer_metadata(
    tok: &TokenizerInfo,
    vocab_size: usize,
    path: &Path,
) -> Result<Vec<(String, Value)>> {
    let bad = |m: String| Error::model(path, m);
    let json: Json = serde_json::from_str(
        &tok.tokenizer
            .to_string(false)
            .map_err(|e| bad(format!("tokenizer: {e}")))?,
    )
    .map_err(|e| bad(format!("tokenizer: {e}")))?;
    let model = &json["model"];
    let byte_level = json["decoder"]["type"] == "ByteLevel"
        || json["pre_tokenizer"].to_string().contains("\"ByteLevel\"");
    if model["type"] != "BPE" || !byte_level {
        return Err(bad(
            "GGUF export supports byte-level BPE tokenizers only (Llama 3, SmolLM2, Qwen2, Mistral Nemo); this one is not".into(),
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![TOKEN_NORMAL; vocab_size];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(format!(
                "token id {id} is past the embedding size {vocab_size}"
            ))
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    if let Some(vocab) = model["vocab"].as_object() {
        for (text, id) in vocab {
            place(id.as_u64().unwrap_or(u64::MAX), text, TOKEN_NORMAL)?;
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let ty = if added["special"].as_bool().unwrap_or(false) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        let text = added["content"].as_str().unwrap_or_default();
        place(added["id"].as_u64().unwrap_or(u64::MAX), text, ty)?;
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[i] = TOKEN_UNUSED;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) if pair.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            ))),
            other => Err(bad(format!("tokenizer merge {other} is not a pair"))),
        })
        .collect::<Result<_>>()?;
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "cannot name this tokenizer's pre-tokenizer for llama.cpp (tokenizer.ggml.pre): {}",
            json["pre_tokenizer"]
        ))
    })?;
    let mut md = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos.id)),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(tok.pad_id),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tok.adds_bos()),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            Value::Bool(tok.adds_eos()),
        ),
    ];
    if let Some(bos) = &tok.bos {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos.id)));
    }
    if let Some(t) = &tok.chat_template {
        md.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(md)
}

/// llama.cpp's `tokenizer.ggml.pre` for the pre-tokenizers orpod's GGUF loader knows.
/// llama.cpp itself identifies them by hashing the tokenization of a probe text; these are the
/// structures behind the names it prints.
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    let parts: Vec<&Json> = match pre["type"].as_str()? {
        "Sequence" => pre["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    match kinds.as_slice() {
        ["ByteLevel"] => Some("gpt-2"),
        ["Digits", "ByteLevel"] if parts[0]["individual_digits"] == true => Some("smollm"),
        ["Split", "ByteLevel"] => {
            let regex = parts[0]["pattern"]["Regex"].as_str()?;
            if regex.contains(r"\p{N}{1,3}") {
                Some("llama-bpe")
            } else if regex.contains(r"\p{N}") {
                Some("qwen2")
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_order_is_llama_cpp_order() {
        let mut names = vec![
            "output_norm.weight",
            "blk.10.attn_q.weight",
            "blk.2.attn_q.weight",
            "token_embd.weight",
        ];
        names.sort_by_key(|n| tensor_order(n));
        assert_eq!(
            names,
            [
                "token_embd.weight",
                "blk.2.attn_q.weight",
                "blk.10.attn_q.weight",
                "output_norm.weight"
            ]
        );
    }

    #[test]
    fn pre_tokenizers_are_named() {
        let smol = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false}]});
        assert_eq!(pre_tokenizer_name(&smol), Some("smollm"));
        let gpt2 = serde_json::json!({"type": "ByteLevel"});
        assert_eq!(pre_tokenizer_name(&gpt2), Some("gpt-2"));
        let l3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"}},
            {"type": "ByteLevel"}]});
        assert_eq!(pre_tokenizer_name(&l3), Some("llama-bpe"));
        let unknown = serde_json::json!({"type": "Whitespace"});
        assert_eq!(pre_tokenizer_name(&unknown), None);
    }
}
