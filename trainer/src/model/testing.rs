//! Tiny random models for tests: a config, seeded random weights and a byte-level BPE tokenizer
//! with ChatML specials, all built in memory so unit tests need no files or downloads.
//! Not meant for anything but tests.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::{expected_weights, gguf, Arch, BaseModel, ModelConfig};
use crate::tokenizer::{SpecialToken, TokenizerInfo};
use crate::Result;

/// The embedding rows of [`tiny_config`]: room for [`tiny_tokenizer`]'s 267 tokens and padding.
pub const TINY_VOCAB: usize = 288;

/// ChatML, as Qwen2 and SmolLM2 use it (without SmolLM2's default system message).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Two layers, hidden 32, 4 query heads over 2 KV heads (GQA), head_dim 8. Llama is untied like
/// Llama 2; Qwen2 is tied with q/k/v bias like Qwen2-0.5B. Change fields freely before
/// [`tiny_random`].
pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        model_type: match arch {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
        .to_string(),
        vocab_size: TINY_VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: arch == Arch::Qwen2,
        attention_bias: arch == Arch::Qwen2,
        sliding_window: None,
    }
}

/// Seeded random f32 weights for every tensor `cfg` needs, on `device`. Matrices are uniform with
/// standard deviation 1/sqrt(fan-in) so activations keep their scale through the layers; norm
/// weights are near 1.
pub fn tiny_random(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut weights = HashMap::new();
    for (name, shape) in expected_weights(cfg) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
        } else {
            let half_width = match shape.as_slice() {
                [_, fan_in] if !name.contains("embed_tokens") => (3.0 / *fan_in as f32).sqrt(),
                _ => 0.5,
            };
            (0..n)
                .map(|_| rng.random_range(-half_width..half_width))
                .collect()
        };
        weights.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(weights)
}

/// A whole model from [`tiny_config`], [`tiny_random`] and [`tiny_tokenizer`], in `dtype`.
pub fn tiny_base(arch: Arch, seed: u64, dtype: DType, device: &Device) -> Result<BaseModel> {
    let config = tiny_config(arch);
    let weights = tiny_random(&config, seed, device)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let tokenizer = match arch {
        Arch::Llama => tiny_tokenizer(),
        Arch::Qwen2 => tiny_tokenizer_without_bos(),
    };
    Ok(BaseModel {
        config,
        weights,
        quantized: Default::default(),
        tokenizer,
        source: PathBuf::from("<tiny random model>"),
    })
}

/// SmolLM2-style specials: BOS `<|im_start|>` (1), EOS and pad `<|im_end|>` (2), and
/// `<|endoftext|>` (0). Any text encodes (all 256 bytes are tokens), with a few merges so BPE
/// does merge ("the" -> one token, " the" -> one token).
pub fn tiny_tokenizer() -> TokenizerInfo {
    TokenizerInfo {
        bos: Some(special("<|im_start|>", 1)),
        eos: special("<|im_end|>", 2),
        pad_id: 2,
        chat_template: Some(CHATML_TEMPLATE.to_string()),
        tokenizer: tiny_bpe(),
    }
}

/// Qwen2-style specials: no BOS, EOS `<|im_end|>` (2), pad `<|endoftext|>` (0).
pub fn tiny_tokenizer_without_bos() -> TokenizerInfo {
    TokenizerInfo {
        bos: None,
        pad_id: 0,
        ..tiny_tokenizer()
    }
}

fn special(text: &str, id: u32) -> SpecialToken {
    SpecialToken {
        text: text.to_string(),
        id,
    }
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("t", "he"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
];

fn tiny_bpe() -> Tokenizer {
    let bytes = gguf::byte_level_alphabet().into_iter();
    let merged = MERGES.iter().map(|(a, b)| format!("{a}{b}"));
    let tokens: Vec<String> = SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(bytes.map(String::from))
        .chain(merged)
        .collect();
    let vocab: Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges = MERGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .expect("the tiny vocabulary holds every merge result");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .add_special_tokens(SPECIALS.map(|s| AddedToken::from(s, true)))
        .expect("specials are in the vocabulary");
    tokenizer
}

/// Writes the model of [`tiny_base`] as llama.cpp would convert it: llama.cpp tensor names, f32
/// tensors, Q/K rows permuted for llama, tokenizer and config in the metadata (`gpt2` BPE,
/// pre-tokenizer "default"), `output.weight` only when untied. For tests of GGUF loading.
pub fn write_tiny_gguf(path: &std::path::Path, arch: Arch, seed: u64) -> Result<()> {
    write_tiny_gguf_as(path, arch, seed, candle_core::quantized::GgmlDType::F32)
}

/// [`write_tiny_gguf`] with the matrices (projections, embedding, head) stored as `matrices`,
/// e.g. Q8_0 or Q4_1, as a quantized llama.cpp file has them; norms and biases stay f32.
pub fn write_tiny_gguf_as(
    path: &std::path::Path,
    arch: Arch,
    seed: u64,
    matrices: candle_core::quantized::GgmlDType,
) -> Result<()> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let base = tiny_base(arch, seed, DType::F32, &Device::Cpu)?;
    let metadata = tiny_gguf_metadata(&base);
    let mut tensors = Vec::new();
    for (hf_name, tensor) in &base.weights {
        let heads = match hf_name {
            n if arch == Arch::Llama && n.contains("q_proj") => {
                Some(base.config.num_attention_heads)
            }
            n if arch == Arch::Llama && n.contains("k_proj") => {
                Some(base.config.num_key_value_heads)
            }
            _ => None,
        };
        let tensor = match heads {
            Some(h) => gguf::permute(tensor, h, base.config.head_dim)?,
            None => tensor.clone(),
        };
        tensors.push((
            gguf::gguf_name(hf_name).expect("every tiny tensor has a llama.cpp name"),
            QTensor::quantize(
                &tensor,
                match super::is_quantizable(hf_name) {
                    true => matrices,
                    false => GgmlDType::F32,
                },
            )?,
        ));
    }
    let mut file = std::fs::File::create(path).map_err(|e| crate::Error::io(path, e))?;
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors)?;
    Ok(())
}

fn tiny_gguf_metadata(base: &BaseModel) -> Vec<(String, candle_core::quantized::gguf_file::Value)> {
    use candle_core::quantized::gguf_file::Value;
    let cfg = &base.config;
    let arch = cfg.model_type.clone();
    let tok = &base.tokenizer;
    let mut vocab: Vec<(String, u32)> = tok.tokenizer.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let token_type = |t: &str| if SPECIALS.contains(&t) { 3 } else { 1 };
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.clone()),
        ),
        (
            format!("{arch}.block_count"),
            Value::U32(cfg.num_hidden_layers as u32),
        ),
        (
            format!("{arch}.context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.rope.dimension_count"),
            Value::U32(cfg.head_dim as u32),
        ),
        (
            format!("{arch}.vocab_size"),
            Value::U32(cfg.vocab_size as u32),
        ),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("default".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(vocab.iter().map(|(t, _)| t.clone()).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(
                vocab
                    .iter()
                    .map(|(t, _)| Value::I32(token_type(t)))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            strings(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ),
        (
            "tokenizer.ggml.eos_token_id".to_string(),
            Value::U32(tok.eos.id),
        ),
        (
            "tokenizer.ggml.padding_token_id".to_string(),
            Value::U32(tok.pad_id),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(false),
        ),
        (
            "tokenizer.chat_template".to_string(),
            Value::String(CHATML_TEMPLATE.into()),
        ),
    ];
    if let Some(bos) = &tok.bos {
        md.push((
            "tokenizer.ggml.bos_token_id".to_string(),
            Value::U32(bos.id),
        ));
    }
    md
}
