//! The model config read from GGUF metadata, Llama 3 rope scaling recovered from `rope_freqs`.

use candle_core::quantized::gguf_file::Content;

use super::meta::Meta;
use super::ROPE_FREQS;
use crate::model::{Arch, Llama3RopeScaling, ModelConfig};
use crate::Result;

pub(super) fn config_from_metadata(
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
pub(crate) fn llama3_divisors(s: &Llama3RopeScaling, theta: f64, head_dim: usize) -> Vec<f64> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::gguf::meta::test_meta as meta;

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
}
