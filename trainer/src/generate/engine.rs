//! The generation engine: candle-transformers' Llama and Qwen2 models, with a KV cache, built
//! from a base's weights with an adapter merged in (PEFT's `merge_and_unload`, the model
//! `transformers` runs on the merged folder), the model's chat template, its stop tokens, and
//! candle-transformers' `LogitsProcessor` for greedy or sampled decoding.
//!
//! The engine holds a dense copy of the weights: a base kept quantized is dequantized to f32
//! (or the dense weights' dtype) here. `orpod generate` runs it in its own process.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, qwen2};

use crate::export::merge::{dense_weights, merged_weights};
use crate::lora::LoraAdapter;
use crate::model::{Arch, BaseModel, ModelConfig};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// How to pick each new token. Greedy unless `temperature` is above zero; `top_k` and `top_p`
/// then narrow the candidates (top-k first, as transformers does), and `seed` makes a sampled
/// answer repeatable.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Re-run the whole sequence for every token instead of using the KV cache: slower, and
    /// there to check that the cache changes nothing.
    pub no_kv_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            temperature: None,
            top_k: None,
            top_p: None,
            seed: 42,
            no_kv_cache: false,
        }
    }
}

impl GenerateOptions {
    /// The settings checked: a temperature, top-p or top-k that no sampler can use is an
    /// error naming it, never a silent greedy answer.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(t) = self.temperature {
            if !t.is_finite() || t < 0.0 {
                return bad(format!(
                    "temperature must be a finite number >= 0 (0: greedy), not {t}"
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], not {p}"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let Some(temperature) = self.temperature.filter(|t| *t > 0.0) else {
            return Sampling::ArgMax;
        };
        match (self.top_k, self.top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model wrote one of its stop tokens (not included in the answer).
    Stop,
    /// `max_new_tokens` were written.
    Length,
    /// The caller's `on_token` asked to stop.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// One answer: its tokens, why it ended, and how long it took.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// From the call to the first new token (the prompt's forward pass).
    pub time_to_first_token_s: f64,
    /// New tokens per second after the first.
    pub tokens_per_s: f64,
}

enum Net {
    Llama {
        model: llama::Llama,
        config: llama::Config,
    },
    Qwen2(qwen2::ModelForCausalLM),
}

/// A model ready to answer: see the module docs.
pub struct Engine {
    net: Net,
    pub tokenizer: TokenizerInfo,
    template: Option<ChatTemplate>,
    /// EOS and the end-of-turn tokens of the chat formats orpod knows.
    pub stop_ids: Vec<u32>,
    dtype: DType,
    device: Device,
    max_positions: usize,
}

impl Engine {
    /// The engine for `base` with `adapter` merged in (none: the base as it is).
    pub fn new(base: &BaseModel, adapter: Option<&LoraAdapter>) -> Result<Engine> {
        let weights = match adapter {
            Some(adapter) => merged_weights(base, adapter)?,
            None => dense_weights(base)?,
        };
        Engine::from_weights(&base.config, base.tokenizer.clone(), weights)
    }

    /// The engine on `weights` (Hugging Face names, dense).
    pub fn from_weights(
        cfg: &ModelConfig,
        tokenizer: TokenizerInfo,
        weights: HashMap<String, Tensor>,
    ) -> Result<Engine> {
        let first = weights
            .values()
            .next()
            .ok_or_else(|| Error::Config("the model has no weights".into()))?;
        let (dtype, device) = (first.dtype(), first.device().clone());
        let vb = VarBuilder::from_tensors(weights, dtype, &device);
        let net = match cfg.arch {
            Arch::Llama => {
                if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
                    return Err(Error::Config(format!(
                        "generation needs head_dim x num_attention_heads = hidden_size \
                         (candle-transformers' Llama); this model has {} x {} != {}",
                        cfg.head_dim, cfg.num_attention_heads, cfg.hidden_size
                    )));
                }
                let config = llama_config(cfg);
                let model = llama::Llama::load(vb, &config)?;
                Net::Llama { model, config }
            }
            Arch::Qwen2 => Net::Qwen2(qwen2::ModelForCausalLM::new(&qwen2_config(cfg), vb)?),
        };
        let template = tokenizer
            .chat_template
            .as_deref()
            .map(|source| ChatTemplate::for_tokenizer(source, &tokenizer))
            .transpose()?;
        let stop_ids = stop_ids(&tokenizer);
        Ok(Engine {
            net,
            tokenizer,
            template,
            stop_ids,
            dtype,
            device,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// The token ids of a user's `prompt` as the model expects it: in its chat template with
    /// the assistant's turn opened (`add_generation_prompt`), else the text as it is; BOS
    /// first where the tokenizer has one, as in training.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = match &self.template {
            Some(t) => t.render(&[Message::new("user", prompt)], true, false)?,
            None => prompt.to_string(),
        };
        let mut ids = self.tokenizer.encode(&text)?;
        self.tokenizer.prepend_bos(&mut ids);
        Ok(ids)
    }

    /// Continues `prompt` (token ids) up to a stop token or `max_new_tokens`, calling
    /// `on_token` with each new token as it comes (false stops).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        opts.check()?;
        if prompt.is_empty() {
            return Err(Error::Config("the prompt has no tokens".into()));
        }
        let room = self.max_positions.saturating_sub(prompt.len());
        if room == 0 {
            return Err(Error::Config(format!(
                "the prompt has {} tokens; the model reads at most {}",
                prompt.len(),
                self.max_positions
            )));
        }
        let max_new = opts.max_new_tokens.min(room);
        let mut sampler = LogitsProcessor::from_sampling(opts.seed, opts.sampling());
        let mut cache = match &mut self.net {
            Net::Llama { config, .. } => Some(llama::Cache::new(
                !opts.no_kv_cache,
                self.dtype,
                config,
                &self.device,
            )?),
            Net::Qwen2(m) => {
                m.clear_kv_cache();
                None
            }
        };
        let started = Instant::now();
        let mut first_at = None;
        let mut seq = prompt.to_vec();
        let mut out = Vec::new();
        let mut finish = Finish::Length;
        while out.len() < max_new {
            // With the cache, only the tokens it has not seen; without, all of them.
            let fed = if opts.no_kv_cache || out.is_empty() {
                0
            } else {
                seq.len() - 1
            };
            let input = Tensor::new(&seq[fed..], &self.device)?.unsqueeze(0)?;
            let logits = match (&mut self.net, cache.as_mut()) {
                (Net::Llama { model, .. }, Some(cache)) => model.forward(&input, fed, cache)?,
                (Net::Qwen2(m), _) => {
                    if opts.no_kv_cache {
                        m.clear_kv_cache();
                    }
                    m.forward(&input, fed)?
                }
                (Net::Llama { .. }, None) => unreachable!("a Llama always has its cache"),
            };
            let logits = logits.squeeze(0)?.flatten_all()?.to_dtype(DType::F32)?;
            let token = sampler.sample(&logits)?;
            first_at.get_or_insert_with(Instant::now);
            if self.stop_ids.contains(&token) {
                finish = Finish::Stop;
                break;
            }
            seq.push(token);
            out.push(token);
            if !on_token(token) {
                finish = Finish::Cancelled;
                break;
            }
        }
        let first_at = first_at.unwrap_or_else(Instant::now);
        let after_first = first_at.elapsed().as_secs_f64();
        Ok(Generation {
            tokens_per_s: if out.len() > 1 && after_first > 0.0 {
                (out.len() - 1) as f64 / after_first
            } else {
                0.0
            },
            time_to_first_token_s: (first_at - started).as_secs_f64(),
            tokens: out,
            finish,
        })
    }
}

/// The peak bytes of a generation process (`orpod generate`) for `cfg` in `dtype_bytes` per
/// value, answering with up to `tokens` positions (prompt and answer): what the daemon admits a
/// generation request on.
///
/// Counted: the base loaded dense and the merged copy [`Engine::new`] builds from it, both
/// held while the engine is made (with no adapter the engine shares the base's tensors, so
/// this is an upper bound); candle-transformers' KV cache and its rotary tables; the prompt's
/// forward pass (one layer's MLP activations and its f32 attention scores, `heads x t x t`,
/// with their softmax and mask); the f32 logits of one position; the process overhead.
pub fn estimate_bytes(cfg: &ModelConfig, dtype_bytes: u64, tokens: u64, cuda: bool) -> Result<u64> {
    cfg.check_values()
        .map_err(|m| Error::Config(format!("model config: {m}")))?;
    let overflow = || {
        Error::Config(format!(
            "the generation estimate overflows for {tokens} positions on this model"
        ))
    };
    let mul = |factors: &[u64]| -> Result<u64> {
        factors
            .iter()
            .try_fold(1u64, |acc, &f| acc.checked_mul(f))
            .ok_or_else(overflow)
    };
    let values: u64 = crate::model::expected_weights(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    let (layers, heads, kv_heads, head_dim) = (
        cfg.num_hidden_layers as u64,
        cfg.num_attention_heads as u64,
        cfg.num_key_value_heads as u64,
        cfg.head_dim as u64,
    );
    let parts = [
        mul(&[2, values, dtype_bytes])?,
        mul(&[layers, 2, kv_heads, head_dim, tokens, dtype_bytes])?,
        mul(&[2, cfg.max_position_embeddings as u64, head_dim, 4])?,
        mul(&[3, heads, tokens, tokens, 4])?,
        mul(&[3, tokens, cfg.intermediate_size as u64, 4])?,
        mul(&[2, cfg.vocab_size as u64, 4])?,
        if cuda {
            crate::estimate::CUDA_OVERHEAD
        } else {
            crate::estimate::CPU_OVERHEAD
        },
    ];
    parts
        .iter()
        .try_fold(0u64, |acc, &p| acc.checked_add(p))
        .ok_or_else(overflow)
}

/// EOS, and the end-of-turn tokens of ChatML and Llama 3 where the vocabulary has them (what
/// the `Modelfile` gives Ollama as stop words).
fn stop_ids(tok: &TokenizerInfo) -> Vec<u32> {
    let mut ids = vec![tok.eos.id];
    for text in ["<|im_end|>", "<|eot_id|>", "<|end_of_text|>"] {
        if let Some(id) = tok.tokenizer.token_to_id(text) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

fn llama_config(cfg: &ModelConfig) -> llama::Config {
    llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: cfg.rope_scaling.as_ref().map(|s| llama::Llama3RopeConfig {
            factor: s.factor as f32,
            low_freq_factor: s.low_freq_factor as f32,
            high_freq_factor: s.high_freq_factor as f32,
            original_max_position_embeddings: s.original_max_position_embeddings,
            rope_type: llama::Llama3RopeType::Llama3,
        }),
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    }
}

fn qwen2_config(cfg: &ModelConfig) -> qwen2::Config {
    qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: cfg.sliding_window.unwrap_or(cfg.max_position_embeddings),
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp, Tensor};
    use orpo_api::spec::LoraSpec;

    use super::*;
    use crate::model::llama::Llama;
    use crate::model::testing::tiny_base;

    /// An adapter whose B is not zero, so that merging it changes the answers.
    fn trained_adapter(base: &BaseModel) -> LoraAdapter {
        let adapter =
            LoraAdapter::new(&base.config, &LoraSpec::default(), 7, &Device::Cpu).unwrap();
        for l in 0..base.config.num_hidden_layers {
            for m in 0..7 {
                if let Some(pair) = adapter.get(l, m) {
                    let b = Tensor::randn(0f32, 0.3, pair.b.shape(), &Device::Cpu).unwrap();
                    pair.b.set(&b).unwrap();
                }
            }
        }
        adapter
    }

    fn greedy(max_new_tokens: usize, no_kv_cache: bool) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            no_kv_cache,
            ..GenerateOptions::default()
        }
    }

    /// The KV cache changes nothing: the same tokens as re-running the whole sequence for
    /// each one, and as orpod's own training forward with the adapter unmerged (an
    /// independent implementation of the same model: candle-transformers' against ours).
    #[test]
    fn cached_decoding_matches_full_reruns_and_the_training_forward() {
        for arch in [Arch::Llama, Arch::Qwen2] {
            let base = tiny_base(arch, 11, DType::F32, &Device::Cpu).unwrap();
            let adapter = trained_adapter(&base);
            let mut engine = Engine::new(&base, Some(&adapter)).unwrap();
            // Random weights write EOS early now and then: 40 tokens whatever they are.
            engine.stop_ids.clear();
            let prompt = engine.prompt_ids("the cat sat on the mat").unwrap();
            let cached = engine
                .generate(&prompt, &greedy(40, false), |_| true)
                .unwrap();
            let rerun = engine
                .generate(&prompt, &greedy(40, true), |_| true)
                .unwrap();
            assert_eq!(cached.tokens.len(), 40, "{arch:?}");
            assert_eq!(cached.finish, Finish::Length);
            assert_eq!(cached.tokens, rerun.tokens, "{arch:?}");

            let model = Llama::new(&base).unwrap();
            let mut ours = prompt.clone();
            for _ in 0..40 {
                let ids = Tensor::new(ours.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let mode = crate::model::llama::LoraMode {
                    adapter: &adapter,
                    train: false,
                    dropout_rng: None,
                    sink: None,
                    checkpoint: false,
                };
                let hidden = model
                    .forward_hidden(&ids, &[ours.len()], Some(mode))
                    .unwrap();
                let last = hidden.i((0, ours.len() - 1)).unwrap().unsqueeze(0).unwrap();
                let logits = model.lm_head().matmul_t(&last).unwrap();
                let next: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
                ours.push(next[0]);
            }
            assert_eq!(&ours[prompt.len()..], cached.tokens.as_slice(), "{arch:?}");
        }
    }

    /// The prompt is the chat template's user turn with the assistant's opened, BOS first;
    /// the answer stops at the model's end-of-turn token, which it does not include.
    #[test]
    fn prompts_use_the_chat_template_and_answers_stop_at_eos() {
        let base = tiny_base(Arch::Llama, 11, DType::F32, &Device::Cpu).unwrap();
        let mut engine = Engine::new(&base, None).unwrap();
        let ids = engine.prompt_ids("hi").unwrap();
        let text = engine.tokenizer.decode(&ids).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(engine.stop_ids, vec![2]);
        // Whatever token comes first, made a stop token, ends the answer at once.
        let first = engine
            .generate(&ids, &greedy(1, false), |_| true)
            .unwrap()
            .tokens[0];
        engine.stop_ids = vec![first];
        let gen = engine.generate(&ids, &greedy(10, false), |_| true).unwrap();
        assert_eq!((gen.tokens.len(), gen.finish), (0, Finish::Stop));
        // The caller may stop it too.
        engine.stop_ids.clear();
        let mut seen = 0;
        let gen = engine
            .generate(&ids, &greedy(10, false), |_| {
                seen += 1;
                seen < 3
            })
            .unwrap();
        assert_eq!((gen.tokens.len(), gen.finish), (3, Finish::Cancelled));
    }

    /// Sampling is repeatable with a seed and differs across seeds; bad settings are errors
    /// that name them.
    #[test]
    fn sampling_follows_its_seed_and_bad_settings_are_named() {
        let base = tiny_base(Arch::Llama, 11, DType::F32, &Device::Cpu).unwrap();
        let mut engine = Engine::new(&base, None).unwrap();
        engine.stop_ids.clear();
        let ids = engine.prompt_ids("hi").unwrap();
        let sampled = |engine: &mut Engine, seed| {
            let opts = GenerateOptions {
                max_new_tokens: 30,
                temperature: Some(1.5),
                top_k: Some(50),
                top_p: Some(0.95),
                seed,
                ..GenerateOptions::default()
            };
            engine.generate(&ids, &opts, |_| true).unwrap().tokens
        };
        let a = sampled(&mut engine, 1);
        assert_eq!(a, sampled(&mut engine, 1));
        assert_ne!(a, sampled(&mut engine, 2));
        for (opts, named) in [
            (
                GenerateOptions {
                    temperature: Some(f64::INFINITY),
                    ..greedy(5, false)
                },
                "temperature",
            ),
            (
                GenerateOptions {
                    temperature: Some(-1.0),
                    ..greedy(5, false)
                },
                "temperature",
            ),
            (
                GenerateOptions {
                    top_p: Some(0.0),
                    ..greedy(5, false)
                },
                "top_p",
            ),
            (
                GenerateOptions {
                    top_p: Some(f64::NAN),
                    ..greedy(5, false)
                },
                "top_p",
            ),
            (
                GenerateOptions {
                    top_k: Some(0),
                    ..greedy(5, false)
                },
                "top_k",
            ),
            (greedy(0, false), "max_new_tokens"),
        ] {
            let err = engine
                .generate(&ids, &opts, |_| true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{err}");
        }
        // A prompt as long as the model's context leaves no room for an answer.
        let long = vec![5u32; base.config.max_position_embeddings];
        let err = engine
            .generate(&long, &greedy(5, false), |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 128"), "{err}");
    }
}
