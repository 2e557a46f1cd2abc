//! The Llama-family decoder written for training: Llama 2/3, Mistral, SmolLM2 and Qwen2 (q/k/v
//! bias), tied or untied embeddings, grouped-query attention.
//!
//! It follows Hugging Face's `LlamaModel` (rotate-half rope, RMSNorm in f32, right padding with
//! default positions) but every op on the path to the loss comes from [`crate::ops`]: frozen
//! projections give no weight gradients, rope/norm/softmax keep their backward, and the caller
//! takes log-probs only at the positions that have labels. LoRA is applied on the target
//! projections when an adapter is given. In training each decoder layer is one graph node whose
//! backward chains the ops' backward halves by hand (`trained_layer`), with or without
//! gradient checkpointing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, TensorId, Var};
use rand::{RngCore, SeedableRng};

use super::quant::Frozen;
use super::{BaseModel, ModelConfig};
use crate::lora::LoraAdapter;
use crate::ops;
use crate::{Error, Result};

/// One frozen projection (`[out, in]` weight, dense or quantized, optional bias).
#[derive(Clone)]
struct Proj {
    w: Frozen,
    b: Option<Tensor>,
}

/// One decoder layer's frozen weights. Cloning shares the tensors (they are reference-counted),
/// so a trained layer's backward can own a copy.
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
    embed: Frozen,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding matrix itself when tied.
    lm_head: Frozen,
    /// Mean of the head's rows, `[hidden]` f32: `h . mean_row` is the mean logit at `h`, which gives
    /// TRL's `logits/chosen` metric without making the logits.
    head_row_mean: Tensor,
    dtype: DType,
    device: Device,
}

/// Gradients of LoRA tensors computed by the layers' own backward, by tensor id. They never pass
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
    /// Where the LoRA gradients land in training: each layer is one graph node with a
    /// hand-written backward (`trained_layer`), so they never pass through candle's graph.
    pub sink: Option<GradSink>,
    /// Gradient checkpointing: keep only each layer's input in the forward pass and recompute
    /// the layer in the backward pass.
    pub checkpoint: bool,
}

/// What every layer of one forward pass shares: the config, and the attention with its mask
/// (causal, right padding, sliding window) and rope tables.
#[derive(Clone)]
struct Pass {
    cfg: Arc<ModelConfig>,
    attention: Arc<ops::Attention>,
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
}

impl Llama {
    /// Takes the weights of `base` (they are reference-counted, nothing is copied).
    pub fn new(base: &BaseModel) -> Result<Self> {
        let cfg = base.config.clone();
        let frozen = |name: &str| -> Result<Frozen> {
            base.frozen(name)
                .ok_or_else(|| Error::model(&base.source, format!("missing tensor {name}")))
        };
        let get = |name: &str| -> Result<Tensor> {
            match frozen(name)? {
                Frozen::Dense(t) => Ok(t),
                Frozen::Quant(_) => Err(Error::model(
                    &base.source,
                    format!("{name} is quantized; only matrices may be"),
                )),
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let proj = |m: usize| -> Result<Proj> {
                let name = crate::lora::module_path(l, m);
                let b = if cfg.attention_bias && m < 3 {
                    Some(get(&format!("{name}.bias"))?)
                } else {
                    None
                };
                Ok(Proj {
                    w: frozen(&format!("{name}.weight"))?,
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
        let embed = frozen("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            frozen("lm_head.weight")?
        };
        let head_row_mean = lm_head.row_mean()?;
        // The norms are always dense, in the job's dtype.
        let norm = get("model.norm.weight")?;
        Ok(Llama {
            dtype: norm.dtype(),
            device: norm.device().clone(),
            embed,
            layers,
            norm,
            lm_head,
            head_row_mean,
            cfg,
        })
    }

    pub fn lm_head(&self) -> &Frozen {
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
        let mask = ops::AttnMask::causal(lens, t, self.cfg.sliding_window, &self.device);
        let heads = ops::Heads {
            q: self.cfg.num_attention_heads,
            kv: self.cfg.num_key_value_heads,
            dim: self.cfg.head_dim,
        };
        let pass = Pass {
            cfg: Arc::new(self.cfg.clone()),
            attention: Arc::new(ops::Attention::new(&mask, &cos, &sin, heads)?),
        };
        let mut h = self.embed.embedding(ids, self.dtype)?;
        let (mut lora, training) = match lora {
            Some(mut mode) => {
                let dropout = match (mode.dropout_rng.as_deref_mut(), mode.adapter.dropout > 0.0) {
                    (Some(rng), true) => Some((mode.adapter.dropout, rng.next_u64())),
                    _ => None,
                };
                let tracked = mode.train;
                let adapter = mode.adapter;
                let per_layer = move |l: usize| LayerLora::new(adapter, l, tracked, dropout);
                let sink = mode.sink.take().filter(|_| tracked);
                (Some(per_layer), sink.map(|s| (s, mode.checkpoint)))
            }
            None => (None, None),
        };
        if training.is_some() {
            // A layer records its backward only when its input is in the graph; the embedding
            // output is not (the table is frozen), so make it a leaf.
            h = Var::from_tensor(&h)?.as_tensor().clone();
        }
        for layer in &self.layers {
            let ll = lora.as_mut().map(|f| f(layer.index));
            h = match &training {
                Some((sink, ckpt)) => trained_layer(layer, &pass, &h, ll, sink.clone(), *ckpt)?,
                None => layer_forward(layer, &pass, &h, ll.as_ref())?,
            };
        }
        Ok(ops::rms_norm(&h, &self.norm, self.cfg.rms_norm_eps)?)
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
    let o = pass
        .attention
        .apply(&lin(0, &x)?, &lin(1, &x)?, &lin(2, &x)?)?;
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
    let mask = module_dropout(layer, m, x, lora)?;
    let weights = ops::LoraWeights {
        a,
        b,
        scale: lora.scale,
        dropout_mask: mask.as_ref(),
    };
    Ok(ops::lora_linear(x, &proj.w, proj.b.as_ref(), &weights)?)
}

/// The dropout mask of module `m`'s LoRA input, from the pass's seed: the same in a forward
/// and in the backward that recomputes it.
fn module_dropout(layer: &Layer, m: usize, x: &Tensor, lora: &LayerLora) -> Result<Option<Tensor>> {
    let Some((p, seed)) = lora.dropout else {
        return Ok(None);
    };
    let seed = seed ^ ((layer.index * 7 + m) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let in_f = layer.proj[m].w.dims2()?.1;
    let rows = x.elem_count() / in_f;
    Ok(Some(dropout_mask(rows, in_f, p, seed, x.device())?))
}

/// What one layer's backward reads, as `[tokens, features]` matrices: the layer input, the
/// first norm's output, q, k, v, the attention output (and its saved row statistics), the
/// residual after attention, the second norm's output, gate, up and their SwiGLU. The same set
/// candle's graph kept when each op was its own node.
struct Acts {
    h: Tensor,
    x1: Tensor,
    qkv: [Tensor; 3],
    att: ops::AttnSaved,
    o: Tensor,
    h2: Tensor,
    x2: Tensor,
    gate: Tensor,
    up: Tensor,
    s: Tensor,
}

/// The forward of one decoder layer on detached `h: [b, t, hidden]`, with what its backward
/// needs. Records no graph.
fn layer_acts(
    layer: &Layer,
    pass: &Pass,
    h: &Tensor,
    lora: Option<&LayerLora>,
) -> Result<(Tensor, Acts)> {
    let (b, t, hid) = h.dims3()?;
    let eps = pass.cfg.rms_norm_eps;
    let lin = |m: usize, x: &Tensor| lin_fwd(layer, m, x, lora);
    let h = h.reshape((b * t, hid))?;
    let x1 = ops::rms_norm(&h, &layer.input_norm, eps)?;
    let qkv = [lin(0, &x1)?, lin(1, &x1)?, lin(2, &x1)?];
    let [q, k, v] = qkv.each_ref().map(|x| x.reshape((b, t, ())));
    let (o, att) = pass.attention.fwd(&q?, &k?, &v?)?;
    let o = o.reshape((b * t, ()))?;
    let h2 = ops::add(&h, &lin(3, &o)?)?;
    let x2 = ops::rms_norm(&h2, &layer.post_norm, eps)?;
    let (gate, up) = (lin(4, &x2)?, lin(5, &x2)?);
    let s = ops::swiglu_fwd(&gate, &up)?;
    let out = ops::add(&h2, &lin(6, &s)?)?.reshape((b, t, hid))?;
    let acts = Acts {
        h,
        x1,
        qkv,
        att,
        o,
        h2,
        x2,
        gate,
        up,
        s,
    };
    Ok((out, acts))
}

/// The input gradient of one layer for the output gradient `g: [b, t, hidden]`, with the LoRA
/// gradients added to `sink`. The first layer's input gradient is not needed (the embedding is
/// frozen) and comes back as zeros.
fn layer_backward(
    layer: &Layer,
    pass: &Pass,
    acts: &Acts,
    lora: Option<&LayerLora>,
    g: &Tensor,
    sink: &GradSink,
) -> Result<Tensor> {
    let (b, t, hid) = g.dims3()?;
    let eps = pass.cfg.rms_norm_eps;
    let g = g.reshape((b * t, hid))?;
    let mut grads = Vec::new();
    let mut lin = |m: usize, x: &Tensor, g: &Tensor, need_dx: bool| {
        lin_bwd(layer, m, x, g, lora, need_dx, &mut grads)
    };
    let some = |x: Option<Tensor>| x.ok_or_else(|| internal("missing input gradient"));
    // MLP: out = h2 + down(swiglu(gate(x2), up(x2))), x2 = norm(h2).
    let ds = some(lin(6, &acts.s, &g, true)?)?;
    let (dgate, dup) = ops::swiglu_bwd(&acts.gate, &acts.up, &ds)?;
    let dx2 = ops::add(
        &some(lin(4, &acts.x2, &dgate, true)?)?,
        &some(lin(5, &acts.x2, &dup, true)?)?,
    )?;
    let dh2 = ops::add(
        &g,
        &ops::rms_norm_bwd(&acts.h2, &dx2, &layer.post_norm, eps)?,
    )?;
    // Attention: h2 = h + o_proj(attention(q(x1), k(x1), v(x1))), x1 = norm(h).
    let do_ = some(lin(3, &acts.o, &dh2, true)?)?.reshape((b, t, ()))?;
    let [q, k, v] = acts.qkv.each_ref().map(|x| x.reshape((b, t, ())));
    let (dq, dk, dv) = pass
        .attention
        .bwd((&q?, &k?, &v?), &do_, &acts.att, [true; 3])?;
    let input_grad = layer.index > 0;
    let mut dx1: Option<Tensor> = None;
    for (m, d) in [dq, dk, dv].into_iter().enumerate() {
        let d = some(d)?.reshape((b * t, ()))?;
        if let Some(dx) = lin(m, &acts.x1, &d, input_grad)? {
            dx1 = Some(match dx1 {
                Some(acc) => ops::add(&acc, &dx)?,
                None => dx,
            });
        }
    }
    let dh = match dx1 {
        Some(dx1) => ops::add(
            &dh2,
            &ops::rms_norm_bwd(&acts.h, &dx1, &layer.input_norm, eps)?,
        )?,
        None => dh2.zeros_like()?,
    };
    let mut sink = sink
        .lock()
        .map_err(|_| internal("gradient sink poisoned"))?;
    for (id, g) in grads {
        let sum = match sink.remove(&id) {
            Some(acc) => (acc + g)?,
            None => g,
        };
        sink.insert(id, sum);
    }
    Ok(dh.reshape((b, t, hid))?)
}

/// The LoRA weights of module `m`, detached for computing, with the ids their gradients are
/// filed under.
fn module_lora(
    layer: &Layer,
    m: usize,
    x: &Tensor,
    lora: Option<&LayerLora>,
) -> Result<Option<(ops::LoraOwned, [TensorId; 2])>> {
    let Some((lora, (a, b))) = lora.and_then(|l| l.pairs[m].as_ref().map(|p| (l, p))) else {
        return Ok(None);
    };
    let owned = ops::LoraOwned {
        a: a.detach(),
        b: b.detach(),
        scale: lora.scale,
        dropout_mask: module_dropout(layer, m, x, lora)?,
    };
    Ok(Some((owned, [a.id(), b.id()])))
}

/// Projection `m` of `x: [tokens, in]`, no graph.
fn lin_fwd(layer: &Layer, m: usize, x: &Tensor, lora: Option<&LayerLora>) -> Result<Tensor> {
    let proj = &layer.proj[m];
    match module_lora(layer, m, x, lora)? {
        Some((l, _)) => Ok(ops::lora_linear_fwd(
            x,
            &proj.w,
            proj.b.as_ref(),
            &l.weights(),
        )?),
        None => {
            let y = proj.w.matmul_t(x)?;
            Ok(match &proj.b {
                Some(bias) => y.broadcast_add(bias)?,
                None => y,
            })
        }
    }
}

/// The input gradient of projection `m` (when `need_dx`), its LoRA gradients pushed to `grads`.
fn lin_bwd(
    layer: &Layer,
    m: usize,
    x: &Tensor,
    g: &Tensor,
    lora: Option<&LayerLora>,
    need_dx: bool,
    grads: &mut Vec<(TensorId, Tensor)>,
) -> Result<Option<Tensor>> {
    let w = &layer.proj[m].w;
    let Some((l, [a_id, b_id])) = module_lora(layer, m, x, lora)? else {
        return Ok(if need_dx {
            Some(w.grad_input(g)?)
        } else {
            None
        });
    };
    let (dx, da, db) = ops::lora_linear_bwd(x, g, w, &l.weights(), [need_dx, true, true])?;
    grads.extend(da.map(|d| (a_id, d)));
    grads.extend(db.map(|d| (b_id, d)));
    Ok(dx)
}

/// One decoder layer in training: a single graph node whose backward is [`layer_backward`], so
/// candle's autograd sees one node per layer instead of dozens, and makes none of its
/// per-operand zero tensors and sums inside the layer. Without checkpointing the activations
/// ([`Acts`]) are kept from the forward pass; with it only the layer's input is, and the
/// backward recomputes them first, so activation memory is one layer's worth instead of all
/// layers'.
fn trained_layer(
    layer: &Layer,
    pass: &Pass,
    h: &Tensor,
    lora: Option<LayerLora>,
    sink: GradSink,
    checkpoint: bool,
) -> Result<Tensor> {
    let (out, acts) = layer_acts(layer, pass, &h.detach(), lora.as_ref())?;
    let kept = (!checkpoint).then_some(acts);
    let (layer, pass) = (layer.clone(), pass.clone());
    let backward = move |h: &Tensor, g: &Tensor| -> Result<Tensor> {
        let recomputed;
        let acts = match &kept {
            Some(acts) => acts,
            None => {
                recomputed = layer_acts(&layer, &pass, &h.detach(), lora.as_ref())?.1;
                &recomputed
            }
        };
        layer_backward(&layer, &pass, acts, lora.as_ref(), g, &sink)
    };
    Ok(ops::with_backward1(
        "decoder-layer",
        h,
        out,
        move |h, _, g| backward(h, g).map_err(|e| candle_core::Error::Msg(e.to_string())),
    )?)
}

fn internal(message: &str) -> Error {
    candle_core::Error::Msg(message.into()).into()
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
