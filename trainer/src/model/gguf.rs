//! Loading a llama.cpp GGUF file as a training base: every tensor dequantized and renamed to its
//! Hugging Face name, llama.cpp's Q/K rope permutation undone, the config and the byte-level BPE
//! tokenizer rebuilt from the metadata.
//!
//! The tokenizer follows transformers' own GGUF conversion (`integrations/gguf`), except where
//! the model's real `tokenizer.json` differs from it: SmolLM2's digit splitting, Qwen2's NFC and
//! missing BOS.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{check_weights, Arch, BaseModel, Llama3RopeScaling, ModelConfig};
use crate::tokenizer::{SpecialToken, TokenizerInfo};
use crate::{Error, Result};

/// llama.cpp stores Llama 3.1+ rope scaling as per-frequency divisors in this tensor.
const ROPE_FREQS: &str = "rope_freqs.weight";

pub(crate) fn load(path: &Path, dtype: DType, device: &Device) -> Result<BaseModel> {
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

// ---------------------------------------------------------------------------------------------
// Config

fn config_from_metadata(
    meta: &Meta,
    content: &Content,
    rope_freqs: Option<&[f32]>,
) -> Result<ModelConfig> {
    let name = meta.required_string("general.architecture")?;
    let (arch, model_type) = match name {
        "llama" => (Arch::Llama, "llama"),
        "mistral" => (Arch::Llama, "mistral"),
        "qwen2" => (Arch::Qwen2, "qwen2"),
        other => {
            return Err(meta.error(format!(
                "GGUF architecture {other:?} is not supported; supported: llama (also SmolLM2, Mistral), qwen2"
            )))
        }
    };
    let key = |k: &str| format!("{name}.{k}");
    let hidden_size = meta.required_usize(&key("embedding_length"))?;
    let heads = meta.required_usize(&key("attention.head_count"))?;
    let head_dim = match meta.usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if heads > 0 => hidden_size / heads,
        None => return Err(meta.error("attention.head_count is 0")),
    };
    if let Some(rotary) = meta.usize(&key("rope.dimension_count"))? {
        if rotary != head_dim {
            return Err(meta.error(format!(
                "partial rotary embeddings ({rotary} of {head_dim} dims) are not supported"
            )));
        }
    }
    if let Some(kind) = meta.string(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(meta.error(format!(
                "rope scaling {kind:?} is not supported; supported: none, llama3"
            )));
        }
    }
    let rope_theta = meta.f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let vocab_size = match meta.usize(&key("vocab_size"))? {
        Some(n) => n,
        None => meta.strings("tokenizer.ggml.tokens")?.len(),
    };
    let config = ModelConfig {
        arch,
        model_type: model_type.to_string(),
        vocab_size,
        hidden_size,
        intermediate_size: meta.required_usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.required_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: meta
            .usize(&key("attention.head_count_kv"))?
            .unwrap_or(heads),
        head_dim,
        rms_norm_eps: meta.required_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta,
        rope_scaling: rope_freqs
            .map(|f| llama3_scaling(meta, f, rope_theta, head_dim))
            .transpose()?,
        max_position_embeddings: meta.required_usize(&key("context_length"))?,
        // llama.cpp writes `output.weight` only when it is not the embedding matrix.
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: arch == Arch::Qwen2,
        // The window is not in the metadata; llama.cpp ignores it too.
        sliding_window: None,
    };
    config.validate(meta.path)?;
    Ok(config)
}

/// Recovers Llama 3 rope scaling from llama.cpp's `rope_freqs` divisors. Only the factor is free:
/// every Llama 3.x release uses low 1, high 4 over 8192 positions, and llama.cpp's converter
/// assumes 8192 as well. Anything else is refused rather than guessed.
fn llama3_scaling(
    meta: &Meta,
    divisors: &[f32],
    theta: f64,
    head_dim: usize,
) -> Result<Llama3RopeScaling> {
    let factor = divisors.iter().copied().fold(1.0f32, f32::max) as f64;
    let scaling = Llama3RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let expected = llama3_divisors(&scaling, theta, head_dim);
    let close = |(a, b): (&f32, &f64)| ((*a as f64) - b).abs() <= 1e-3 * b.abs();
    if expected.len() == divisors.len() && divisors.iter().zip(&expected).all(close) {
        Ok(scaling)
    } else {
        Err(meta.error(format!(
            "{ROPE_FREQS} does not match Llama 3 rope scaling (factor {factor}, low 1, high 4, 8192 positions); load the Hugging Face folder instead"
        )))
    }
}

/// llama.cpp `convert_hf_to_gguf.py` (LlamaModel.generate_extra_tensors): the divisor of each
/// rotary frequency under Llama 3 scaling.
fn llama3_divisors(s: &Llama3RopeScaling, theta: f64, head_dim: usize) -> Vec<f64> {
    let old = s.original_max_position_embeddings as f64;
    let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            }
        })
        .collect()
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

/// Whole-model tensors: (llama.cpp name, Hugging Face name).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer modules: (llama.cpp `blk.N.` module, Hugging Face `model.layers.N.` module).
const LAYER_MODULES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// llama.cpp's tensor name to Hugging Face's (`blk.0.attn_q.weight` ->
/// `model.layers.0.self_attn.q_proj.weight`); `None` for tensors the trainer does not model.
pub fn hf_name(gguf: &str) -> Option<String> {
    rename(gguf, "blk.", "model.layers.", |(g, h)| (g, h))
}

/// Hugging Face's tensor name to llama.cpp's, the inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    rename(hf, "model.layers.", "blk.", |(g, h)| (h, g))
}

/// Renames through the tables; `orient` picks which column is the source.
fn rename(
    name: &str,
    from_layer: &str,
    to_layer: &str,
    orient: fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some((_, to)) = MODEL_TENSORS
        .map(orient)
        .into_iter()
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (layer, rest) = name.strip_prefix(from_layer)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, to) = LAYER_MODULES
        .map(orient)
        .into_iter()
        .find(|(from, _)| *from == module)?;
    matches!(kind, "weight" | "bias").then(|| format!("{to_layer}{layer}.{to}.{kind}"))
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

/// Undoes llama.cpp's `LlamaModel.permute` of q/k rows (weights or biases): llama.cpp pairs
/// rotary dims (2i, 2i+1) within a head, HF pairs (i, i + head_dim/2).
pub fn unpermute(t: &Tensor, n_head: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    t.reshape((n_head, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape(dims)
}

/// llama.cpp's `LlamaModel.permute` (`w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`), for
/// writing llama-arch GGUF files; the inverse of [`unpermute`].
pub fn permute(t: &Tensor, n_head: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    t.reshape((n_head, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .reshape(dims)
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// Split regexes by `tokenizer.ggml.pre`, as transformers' GGUF loader and the models'
/// `tokenizer.json` files have them.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `llama_token_type`.
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

fn tokenizer_from_metadata(meta: &Meta, arch: Arch) -> Result<TokenizerInfo> {
    match meta.required_string("tokenizer.ggml.model")? {
        "gpt2" => {}
        "llama" => {
            return Err(meta.error(
                "SentencePiece GGUF tokenizers (tokenizer.ggml.model = \"llama\") are not supported yet; use the model's Hugging Face folder",
            ))
        }
        other => return Err(meta.error(format!("GGUF tokenizer model {other:?} is not supported; supported: gpt2 (byte-level BPE)"))),
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta.ints("tokenizer.ggml.token_type")?;
    let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let mut tokenizer = byte_level_bpe(meta, &tokens)?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(meta, pre)?));
    if QWEN2_PRES.contains(&pre) {
        // Qwen2's tokenizer.json normalizes to NFC (transformers' GGUF loader leaves it out).
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_marked_tokens(&mut tokenizer, &tokens, &types)
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;

    let special = |key: &str| -> Result<Option<SpecialToken>> {
        let Some(id) = meta.usize(key)? else {
            return Ok(None);
        };
        let text = tokens
            .get(id)
            .ok_or_else(|| meta.error(format!("{key} {id} is past the {} tokens", tokens.len())))?;
        Ok(Some(SpecialToken {
            text: text.to_string(),
            id: id as u32,
        }))
    };
    let eos = special("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
        meta.error("no tokenizer.ggml.eos_token_id: the trainer needs EOS to end completions")
    })?;
    // llama.cpp copies Qwen2's config.json `bos_token_id` (<|endoftext|>), but Qwen2's tokenizer
    // has no BOS and TRL must not add one.
    let bos = match arch {
        Arch::Qwen2 => None,
        Arch::Llama => special("tokenizer.ggml.bos_token_id")?,
    };
    let pad = special("tokenizer.ggml.padding_token_id")?;
    let mut specials: Vec<&SpecialToken> = [bos.as_ref(), Some(&eos), pad.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    specials.dedup();
    tokenizer
        .add_special_tokens(
            specials
                .iter()
                .map(|t| AddedToken::from(t.text.clone(), true)),
        )
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if let Some(template) = bos_eos_template(
        bos.as_ref().filter(|_| add_bos),
        Some(&eos).filter(|_| add_eos),
    )? {
        tokenizer.with_post_processor(Some(template));
    }
    Ok(TokenizerInfo {
        tokenizer,
        pad_id: pad.as_ref().map_or(eos.id, |p| p.id),
        bos,
        eos,
        chat_template: meta.string("tokenizer.chat_template")?.map(str::to_string),
    })
}

const QWEN2_PRES: [&str; 3] = ["qwen2", "deepseek-r1-qwen", "megrez"];

fn pre_tokenizer(meta: &Meta, pre: &str) -> Result<PreTokenizerWrapper> {
    let split = match pre {
        // SmolLM2's tokenizer.json: every digit on its own, then GPT-2's regex (llama.cpp "smollm").
        "smollm" => {
            return Ok(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into())
        }
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" | "dbrx"
        | "lfm2" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        p if QWEN2_PRES.contains(&p) => QWEN2_SPLIT,
        "gpt2" | "default" => return Ok(ByteLevel::new(false, true, true).into()),
        other => {
            tracing::warn!(pre = other, "unknown tokenizer.ggml.pre; using GPT-2's split, token ids may differ from the original tokenizer");
            return Ok(ByteLevel::new(false, true, true).into());
        }
    };
    let split = Split::new(
        SplitPattern::Regex(split.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| meta.error(format!("tokenizer split regex: {e}")))?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// The BPE model. Tokens outside the byte-level alphabet (a few GGUFs store added tokens as raw
/// text) are respelled byte by byte, as transformers does, so the merges find them.
fn byte_level_bpe(meta: &Meta, tokens: &[&str]) -> Result<Tokenizer> {
    let spelling = byte_level_alphabet();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = match t.chars().all(|c| alphabet.contains(&c)) {
                true => t.to_string(),
                false => t.bytes().map(|b| spelling[b as usize]).collect(),
            };
            (spelled, id as u32)
        })
        .collect();
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| meta.error(format!("bad merge {m:?} in tokenizer.ggml.merges")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    Ok(Tokenizer::new(bpe))
}

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
pub(crate) fn byte_level_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("256..324 are valid chars")
        };
    }
    out
}

/// Control tokens become special added tokens and user-defined ones plain added tokens, so both
/// are matched whole in text (transformers' `add_gguf_special_tokens`). A control token outside
/// the byte-level alphabet is a llama.cpp mislabel and is skipped, as transformers does.
fn add_marked_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[u64],
) -> tokenizers::Result<()> {
    let alphabet: HashSet<char> = byte_level_alphabet().into_iter().collect();
    let marked = |kind: u64| {
        tokens
            .iter()
            .zip(types)
            .filter(move |(_, t)| **t == kind)
            .map(|(tok, _)| *tok)
    };
    let control: Vec<AddedToken> = marked(TOKEN_CONTROL)
        .filter(|t| t.chars().all(|c| alphabet.contains(&c)))
        .map(|t| AddedToken::from(t, true))
        .collect();
    tokenizer.add_special_tokens(control)?;
    let user: Vec<AddedToken> = marked(TOKEN_USER_DEFINED)
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    tokenizer.add_tokens(user)?;
    Ok(())
}

/// The post-processor for `add_bos_token` / `add_eos_token`, as transformers builds it.
fn bos_eos_template(
    bos: Option<&SpecialToken>,
    eos: Option<&SpecialToken>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let piece = |t: Option<&SpecialToken>, type_id: u8| t.map(|t| format!("{}:{type_id}", t.text));
    let single: Vec<String> = [piece(bos, 0), Some("$A:0".into()), piece(eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let second: Vec<String> = [piece(bos, 1), Some("$B:1".into()), piece(eos, 1)]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<String> = single.iter().chain(&second).cloned().collect();
    let specials: Vec<(String, u32)> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|t| (t.text.clone(), t.id))
        .collect();
    let err = |e: String| Error::Tokenizer(format!("BOS/EOS template: {e}"));
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(err)?
        .try_pair(pair)
        .map_err(err)?
        .special_tokens(specials)
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(Some(template))
}

// ---------------------------------------------------------------------------------------------
// Metadata access

/// Typed access to GGUF metadata with errors that name the file and the key. Integers are
/// accepted in any width: writers differ (u32 vs i32 vs u64) for the same key.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl<'a> Meta<'a> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::model(self.path, message)
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Error {
        self.error(format!("metadata `{key}` is not {expected}"))
    }

    fn missing(&self, key: &str) -> Error {
        self.error(format!("metadata `{key}` is missing"))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    fn required_string(&self, key: &str) -> Result<&'a str> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.md
            .get(key)
            .map(|v| {
                as_u64(v)
                    .map(|n| n as usize)
                    .ok_or_else(|| self.wrong_type(key, "an integer"))
            })
            .transpose()
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.md
            .get(key)
            .map(|v| match v {
                // The shortest decimal of the f32 is the value config.json had (1e-5, not
                // 9.99999974e-6), so an export writes back what the original said.
                Value::F32(x) => Ok(x.to_string().parse().expect("a float's Display parses")),
                Value::F64(x) => Ok(*x),
                other => as_u64(other)
                    .map(|n| n as f64)
                    .ok_or_else(|| self.wrong_type(key, "a number")),
            })
            .transpose()
    }

    fn required_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.md.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.wrong_type(key, "an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.wrong_type(key, "an array of strings")),
            })
            .collect()
    }

    /// An optional integer array (token types); absent is empty.
    fn ints(&self, key: &str) -> Result<Vec<u64>> {
        if !self.md.contains_key(key) {
            return Ok(Vec::new());
        }
        self.array(key)?
            .iter()
            .map(|v| as_u64(v).ok_or_else(|| self.wrong_type(key, "an array of integers")))
            .collect()
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(md: &HashMap<String, Value>) -> Meta<'_> {
        Meta {
            path: Path::new("test.gguf"),
            md,
        }
    }

    #[test]
    fn llama3_scaling_is_recovered_from_rope_freqs() {
        let md = HashMap::new();
        // Llama 3.1 8B (factor 8, head_dim 128) and Llama 3.2 1B (factor 32, head_dim 64).
        for (factor, head_dim) in [(8.0, 128), (32.0, 64)] {
            let want = Llama3RopeScaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            };
            let divisors: Vec<f32> = llama3_divisors(&want, 500_000.0, head_dim)
                .into_iter()
                .map(|d| d as f32)
                .collect();
            assert_eq!(divisors[0], 1.0);
            assert_eq!(*divisors.last().unwrap(), factor as f32);
            let got = llama3_scaling(&meta(&md), &divisors, 500_000.0, head_dim).unwrap();
            assert_eq!(got, want);
            // Another low/high split is refused rather than guessed.
            let other = Llama3RopeScaling {
                high_freq_factor: 2.0,
                ..want
            };
            let divisors: Vec<f32> = llama3_divisors(&other, 500_000.0, head_dim)
                .into_iter()
                .map(|d| d as f32)
                .collect();
            assert!(llama3_scaling(&meta(&md), &divisors, 500_000.0, head_dim).is_err());
        }
    }

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.12.attn_q.bias",
                "model.layers.12.self_attn.q_proj.bias",
            ),
            (
                "blk.0.ffn_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
        ];
        for (g, h) in pairs {
            assert_eq!(hf_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(hf_name("blk.0.attn_q_norm.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn permute_round_trips_and_interleaves_rotary_pairs() {
        // One head, head_dim 4, one input column: HF rows (0, 1, 2, 3) pair (0, 2) and (1, 3);
        // llama.cpp keeps pairs adjacent: (0, 2, 1, 3).
        let hf = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
        let ggml = permute(&hf, 1, 4).unwrap();
        assert_eq!(
            ggml.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 2., 1., 3.]
        );
        let back = unpermute(&ggml, 1, 4).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3.]
        );
    }

    #[test]
    fn split_regexes_compile_with_fancy_regex() {
        let md = HashMap::new();
        for pre in ["llama-bpe", "qwen2", "tekken", "smollm", "gpt2"] {
            pre_tokenizer(&meta(&md), pre).unwrap();
        }
    }
}
