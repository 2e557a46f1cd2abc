//! The Llama-family decoder written for training: Llama 2/3, Mistral, SmolLM2 and Qwen2 (q/k/v
//! bias), tied or untied embeddings, grouped-query attention.
//!
//! It follows Hugging Face's `LlamaModel` (rotate-half rope, RMSNorm in f32, right padding with
//! default positions) but every op on the path to the loss comes from [`crate::ops`]: frozen
//! projections give no weight gradients, rope/norm/softmax keep their backward, and the caller
//! takes log-probs only at the positions that have labels. LoRA is applied on the target
//! projections when an adapter is given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor, TensorId, Var};
use orpo_api::spec::LORA_MODULES;
use rand::{RngCore, SeedableRng};

use super::{BaseModel, ModelConfig};
use crate::lora::LoraAdapter;
use crate::ops;
use crate::{Error, Result};

/// One frozen projection (`[out, in]` weight, optional bias).
#[derive(Clone)]
struct Proj {
    w: Tensor,
    b: Option<Tensor>,
}

/// One decoder layer's frozen weights. Cloning shares the tensors (they are reference-counted),
/// so a checkpointed layer can own a copy for its recomputation.
#[derive(Clone)]
struct Layer {
    index: usize,
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k, v, o, gate, up, down: the `LORA_MODULES` order.
    proj: [Proj; 7],
}

pub struct Llama {
    pub cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding matrix itself when tied.
    lm_head: Tensor,
    /// Mean of the head's rows, `[hidden]` f32: `h . mean_row` is the mean logit at `h`, which gives
    /// TRL's `logits/chosen` metric without making the logits.
    head_row_mean: Tensor,
    dtype: DType,
    device: Device,
}

/// Gradients of LoRA tensors computed inside checkpointed layers, by tensor id. They never pass
/// through the outer graph, so [`crate::loss::lora_gradients`] merges them into the result.
pub type GradSink = Arc<Mutex<HashMap<TensorId, Tensor>>>;

/// How a forward pass treats the adapter.
pub struct LoraMode<'a> {
    pub adapter: &'a LoraAdapter,
    /// Record the graph through the LoRA weights (training) or use them detached (evaluation).
    pub train: bool,
    /// Source of the dropout masks of the LoRA inputs (training only). One seed is drawn per
    /// forward pass and every mask derives from it, so a recomputed layer sees the same masks.
    pub dropout_rng: Option<&'a mut dyn RngCore>,
    /// Gradient checkpointing: keep only each layer's input in the forward pass and recompute
    /// the layer in the backward pass; LoRA gradients land in this sink.
    pub checkpoint: Option<GradSink>,
}

/// What every layer of one forward pass shares: the batch geometry, the attention mask and the
/// rope tables.
#[derive(Clone)]
struct Pass {
    cfg: Arc<ModelConfig>,
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// The adapter weights one layer uses, tracked or detached.
#[derive(Clone)]
struct LayerLora {
    /// `(A, B)` per module, `LORA_MODULES` order.
    pairs: [Option<(Tensor, Tensor)>; 7],
    scale: f64,
    /// `(p, seed)` when dropout is on.
    dropout: Option<(f64, u64)>,
}

impl LayerLora {
    fn new(
        adapter: &LoraAdapter,
        layer: usize,
        tracked: bool,
        dropout: Option<(f64, u64)>,
    ) -> Self {
        let pairs = std::array::from_fn(|m| {
            adapter.get(layer, m).map(|p| {
                if tracked {
                    (p.a.as_tensor().clone(), p.b.as_tensor().clone())
                } else {
                    (p.a.as_detached_tensor(), p.b.as_detached_tensor())
                }
            })
        });
        LayerLora {
            pairs,
            scale: adapter.scale,
            dropout,
        }
    }

    /// The same weights, detached: a checkpointed layer's forward records no graph.
    fn detached(&self) -> Self {
        LayerLora {
            pairs: self
                .pairs
                .clone()
                .map(|p| p.map(|(a, b)| (a.detach(), b.detach()))),
            ..self.clone()
        }
    }
}

impl Llama {
    /// Takes the weights of `base` (they are reference-counted, nothing is copied).
    pub fn new(base: &BaseModel) -> Result<Self> {
        let cfg = base.config.clone();
        let get = |name: &str| -> Result<Tensor> {
            base.weights
                .get(name)
                .cloned()
                .ok_or_else(|| Error::model(&base.source, format!("missing tensor {name}")))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let proj = |m: usize| -> Result<Proj> {
                let block = if m < 4 { "self_attn" } else { "mlp" };
                let name = format!("{p}.{block}.{}", LORA_MODULES[m]);
                let b = if cfg.attention_bias && m < 3 {
                    Some(get(&format!("{name}.bias"))?)
                } else {
                    None
                };
                Ok(Proj {
                    w: get(&format!("{name}.weight"))?,
                    b,
                })
            };
            layers.push(Layer {
                index: l,
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                proj: [
                    proj(0)?,
                    proj(1)?,
                    proj(2)?,
                    proj(3)?,
                    proj(4)?,
                    proj(5)?,
                    proj(6)?,
                ],
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            get("lm_head.weight")?
        };
        let head_row_mean = lm_head.to_dtype(DType::F32)?.mean(0)?;
        Ok(Llama {
            dtype: embed.dtype(),
            device: embed.device().clone(),
            embed,
            layers,
            norm: get("model.norm.weight")?,
            lm_head,
            head_row_mean,
            cfg,
        })
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    pub fn head_row_mean(&self) -> &Tensor {
        &self.head_row_mean
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Hidden states after the final norm, `[batch, seq, hidden]`, for right-padded `ids`
    /// (`[batch, seq]` u32) whose real lengths are `lens`.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        lens: &[usize],
        lora: Option<LoraMode<'_>>,
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let (cos, sin) = self.rope_tables(t)?;
        let pass = Pass {
            cfg: Arc::new(self.cfg.clone()),
            mask: self.attention_bias(lens, t)?,
            cos,
            sin,
        };
        let mut h =
            candle_nn::Embedding::new(self.embed.clone(), self.cfg.hidden_size).forward(ids)?;
        let (mut lora, checkpoint) = match lora {
            Some(mut mode) => {
                let dropout = match (mode.dropout_rng.as_deref_mut(), mode.adapter.dropout > 0.0) {
                    (Some(rng), true) => Some((mode.adapter.dropout, rng.next_u64())),
                    _ => None,
                };
                let tracked = mode.train;
                let adapter = mode.adapter;
                let per_layer = move |l: usize| LayerLora::new(adapter, l, tracked, dropout);
                (Some(per_layer), mode.checkpoint.take().filter(|_| tracked))
            }
            None => (None, None),
        };
        if checkpoint.is_some() {
            // A checkpointed layer records its backward only when its input is in the graph;
            // the embedding output is not (the table is frozen), so make it a leaf.
            h = Var::from_tensor(&h)?.as_tensor().clone();
        }
        for layer in &self.layers {
            let ll = lora.as_mut().map(|f| f(layer.index));
            h = match &checkpoint {
                Some(sink) => checkpointed_layer(layer, &pass, &h, ll, sink.clone())?,
                None => layer_forward(layer, &pass, &h, ll.as_ref())?,
            };
        }
        Ok(ops::rms_norm(&h, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// `[batch, 1, seq, seq]` additive mask: key `j` is visible from query `i` when `j <= i`, `j`
    /// is a real token (Hugging Face masks padded keys for every query, padded queries included),
    /// and, with a sliding window, `i - j < window`.
    fn attention_bias(&self, lens: &[usize], t: usize) -> Result<Tensor> {
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let mut v = Vec::with_capacity(lens.len() * t * t);
        for &len in lens {
            for i in 0..t {
                for j in 0..t {
                    let visible = j <= i && j < len && i - j < window;
                    v.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Ok(Tensor::from_vec(v, (lens.len(), 1, t, t), &self.device)?)
    }

    /// cos/sin tables `[seq, head_dim / 2]` for positions `0..seq`, computed in f32 as
    /// transformers does (inv_freq, then the product with the position).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim;
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| {
                let f = 1.0 / (self.cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32);
                self.scale_frequency(f)
            })
            .collect();
        let mut cos = Vec::with_capacity(t * hd / 2);
        let mut sin = Vec::with_capacity(t * hd / 2);
        for p in 0..t {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, hd / 2), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (t, hd / 2), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Llama 3.x frequency scaling (transformers' `_compute_llama3_parameters`).
    fn scale_frequency(&self, f: f32) -> f32 {
        let Some(s) = &self.cfg.rope_scaling else {
            return f;
        };
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor as f32;
        let high_wavelen = old / s.high_freq_factor as f32;
        let wavelen = 2.0 * std::f32::consts::PI / f;
        if wavelen > low_wavelen {
            f / s.factor as f32
        } else if wavelen < high_wavelen {
            f
        } else {
            let smooth = (old / wavelen - s.low_freq_factor as f32)
                / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
            (1.0 - smooth) * f / s.factor as f32 + smooth * f
        }
    }
}

/// One decoder layer (pre-norm attention and SwiGLU MLP, each with a residual).
fn layer_forward(
    layer: &Layer,
    pass: &Pass,
    h: &Tensor,
    lora: Option<&LayerLora>,
) -> Result<Tensor> {
    let cfg = &pass.cfg;
    let lin = |m: usize, x: &Tensor| linear(layer, m, x, lora);
    let x = ops::rms_norm(h, &layer.input_norm, cfg.rms_norm_eps)?;
    let heads = ops::Heads {
        q: cfg.num_attention_heads,
        kv: cfg.num_key_value_heads,
        dim: cfg.head_dim,
    };
    let o = ops::attention(
        &lin(0, &x)?,
        &lin(1, &x)?,
        &lin(2, &x)?,
        &pass.mask,
        &pass.cos,
        &pass.sin,
        heads,
    )?;
    let h = (h + lin(3, &o)?)?;
    let x = ops::rms_norm(&h, &layer.post_norm, cfg.rms_norm_eps)?;
    let mlp = lin(6, &ops::swiglu(&lin(4, &x)?, &lin(5, &x)?)?)?;
    Ok((h + mlp)?)
}

/// `W x (+ b)`, plus `scale * B A dropout(x)` when the adapter targets this projection.
fn linear(layer: &Layer, m: usize, x: &Tensor, lora: Option<&LayerLora>) -> Result<Tensor> {
    let proj = &layer.proj[m];
    let pair = lora.and_then(|l| l.pairs[m].as_ref().map(|p| (l, p)));
    let Some((lora, (a, b))) = pair else {
        return Ok(ops::frozen_linear(x, &proj.w, proj.b.as_ref())?);
    };
    let mask = match lora.dropout {
        Some((p, seed)) => {
            let seed = seed ^ ((layer.index * 7 + m) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let in_f = proj.w.dim(1)?;
            Some(dropout_mask(
                x.elem_count() / in_f,
                in_f,
                p,
                seed,
                x.device(),
            )?)
        }
        None => None,
    };
    let weights = ops::LoraWeights {
        a,
        b,
        scale: lora.scale,
        dropout_mask: mask.as_ref(),
    };
    Ok(ops::lora_linear(x, &proj.w, proj.b.as_ref(), &weights)?)
}

/// A layer under gradient checkpointing. The forward runs detached and keeps only the layer's
/// input; the backward recomputes the layer with the graph from that input, back-propagates the
/// output gradient through it, returns the input gradient and sends the LoRA gradients to `sink`.
/// Activation memory is then one layer's worth instead of all layers'.
fn checkpointed_layer(
    layer: &Layer,
    pass: &Pass,
    h: &Tensor,
    lora: Option<LayerLora>,
    sink: GradSink,
) -> Result<Tensor> {
    let out = layer_forward(
        layer,
        pass,
        &h.detach(),
        lora.as_ref().map(LayerLora::detached).as_ref(),
    )?;
    let (layer, pass) = (layer.clone(), pass.clone());
    Ok(ops::with_backward1(
        "checkpointed-layer",
        h,
        out,
        move |h, _, grad| {
            let input = Var::from_tensor(&h.detach())?;
            let out = layer_forward(&layer, &pass, input.as_tensor(), lora.as_ref())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let grads = (out * grad.detach())?.sum_all()?.backward()?;
            let mut sink = sink
                .lock()
                .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
            for (a, b) in lora.iter().flat_map(|l| l.pairs.iter().flatten()) {
                for w in [a, b] {
                    if let Some(g) = grads.get(w) {
                        let sum = match sink.remove(&w.id()) {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        };
                        sink.insert(w.id(), sum);
                    }
                }
            }
            match grads.get(input.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => input.as_tensor().zeros_like(),
            }
        },
    )?)
}

/// An inverted-dropout mask `[rows, cols]` (entries 0 or `1 / (1 - p)`) from a seeded RNG, so a
/// seeded run, and a recomputed layer, draw the same mask.
fn dropout_mask(rows: usize, cols: usize, p: f64, seed: u64, device: &Device) -> Result<Tensor> {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..rows * cols)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(mask, (rows, cols), device)?)
}
