//! The Llama-family decoder written for training: Llama 2/3, Mistral, SmolLM2 and Qwen2 (q/k/v
//! bias), tied or untied embeddings, grouped-query attention.
//!
//! It follows Hugging Face's `LlamaModel` (rotate-half rope, RMSNorm in f32, right padding with
//! default positions) but every op on the path to the loss comes from [`crate::ops`]: frozen
//! projections give no weight gradients, rope/norm/softmax keep their backward, and the caller
//! takes log-probs only at the positions that have labels. LoRA is applied on the target
//! projections when an adapter is given.

use candle_core::{DType, Device, Module, Tensor};
use orpo_api::spec::LORA_MODULES;

use super::{BaseModel, ModelConfig};
use crate::lora::LoraAdapter;
use crate::ops;
use crate::{Error, Result};

/// One frozen projection (`[out, in]` weight, optional bias).
struct Proj {
    w: Tensor,
    b: Option<Tensor>,
}

struct Layer {
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

/// How a forward pass treats the adapter.
pub struct LoraMode<'a> {
    pub adapter: &'a LoraAdapter,
    /// Record the graph through the LoRA weights (training) or use them detached (evaluation).
    pub train: bool,
    /// Dropout masks for the LoRA inputs, drawn from the trainer's seeded RNG (training only).
    pub dropout_rng: Option<&'a mut rand::rngs::StdRng>,
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
        mut lora: Option<LoraMode<'_>>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let mask = self.attention_bias(lens, t)?;
        let (cos, sin) = self.rope_tables(t)?;
        let mut h =
            candle_nn::Embedding::new(self.embed.clone(), self.cfg.hidden_size).forward(ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            h = self.layer_forward(l, layer, &h, &mask, &cos, &sin, b, t, lora.as_mut())?;
        }
        Ok(ops::rms_norm(&h, &self.norm, self.cfg.rms_norm_eps)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        l: usize,
        layer: &Layer,
        h: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        b: usize,
        t: usize,
        mut lora: Option<&mut LoraMode<'_>>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let x = ops::rms_norm(h, &layer.input_norm, cfg.rms_norm_eps)?;
        let mut lin =
            |m: usize, x: &Tensor| self.linear(l, m, &layer.proj[m], x, lora.as_deref_mut());
        let q = lin(0, &x)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let k = lin(1, &x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = lin(2, &x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let q = ops::rope(&q.contiguous()?, cos, sin)?;
        let k = ops::rope(&k.contiguous()?, cos, sin)?;
        // Grouped-query attention without copying k/v per head: the `rep` query heads that share
        // a kv head are stacked along the sequence axis of that kv head.
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.reshape((b, nh, t, t))?;
        let p = ops::masked_softmax(&scores.to_dtype(DType::F32)?, mask)?.to_dtype(self.dtype)?;
        let o = p
            .reshape((b, nkv, rep * t, t))?
            .matmul(&v.contiguous()?)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let h = (h + lin(3, &o)?)?;
        let x = ops::rms_norm(&h, &layer.post_norm, cfg.rms_norm_eps)?;
        let gate = lin(4, &x)?;
        let up = lin(5, &x)?;
        let mlp = lin(6, &(gate.silu()? * up)?)?;
        Ok((h + mlp)?)
    }

    /// `W x (+ b)`, plus `scale * B A dropout(x)` when the adapter targets this projection. The
    /// LoRA branch runs in f32 whatever the base dtype (PEFT keeps adapters in f32 too).
    fn linear(
        &self,
        l: usize,
        m: usize,
        proj: &Proj,
        x: &Tensor,
        lora: Option<&mut LoraMode<'_>>,
    ) -> Result<Tensor> {
        let y = ops::frozen_linear(x, &proj.w, proj.b.as_ref())?;
        let Some(mode) = lora else { return Ok(y) };
        let Some(pair) = mode.adapter.get(l, m) else {
            return Ok(y);
        };
        let (a, bm) = if mode.train {
            (pair.a.as_tensor().clone(), pair.b.as_tensor().clone())
        } else {
            (pair.a.as_detached_tensor(), pair.b.as_detached_tensor())
        };
        let mut xl = x.to_dtype(DType::F32)?;
        if let (Some(rng), true) = (mode.dropout_rng.as_deref_mut(), mode.adapter.dropout > 0.0) {
            xl = dropout(&xl, mode.adapter.dropout, rng)?;
        }
        let delta =
            (xl.broadcast_matmul(&a.t()?)?.broadcast_matmul(&bm.t()?)? * mode.adapter.scale)?;
        Ok((y + delta.to_dtype(self.dtype)?)?)
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

/// Inverted dropout with a mask drawn from `rng`, so a seeded run is reproducible.
fn dropout(x: &Tensor, p: f64, rng: &mut rand::rngs::StdRng) -> Result<Tensor> {
    use rand::Rng;
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    Ok((x * mask)?)
}
