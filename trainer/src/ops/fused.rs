//! Fused ops of the decoder layer. Each keeps only its inputs for the backward pass and
//! recomputes the rest there: the LoRA product `x A^T` (rank r, cheap), the attention
//! probabilities (as FlashAttention does), the SiLU. candle would otherwise keep every
//! intermediate of a composite op alive until the backward pass ends. Each op is a graph-free
//! `*_fwd`/`*_bwd` pair (or [`Attention::fwd`]/[`Attention::bwd`]) wrapped into a graph node.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Result, Tensor, D};

use super::basic::rope_backward;
use super::{cpu, flash, with_backward2, with_backward3};
use crate::model::quant::Frozen;

/// The adapter of one projection as [`lora_linear`] uses it.
pub struct LoraWeights<'a> {
    /// `[r, in]`, f32.
    pub a: &'a Tensor,
    /// `[out, r]`, f32.
    pub b: &'a Tensor,
    /// `alpha / r`.
    pub scale: f64,
    /// Inverted-dropout mask for the LoRA input, `x`'s shape flattened to `[tokens, in]`, f32.
    pub dropout_mask: Option<&'a Tensor>,
}

/// [`LoraWeights`] that own their tensors.
pub(crate) struct LoraOwned {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout_mask: Option<Tensor>,
}

impl LoraOwned {
    pub(crate) fn weights(&self) -> LoraWeights<'_> {
        LoraWeights {
            a: &self.a,
            b: &self.b,
            scale: self.scale,
            dropout_mask: self.dropout_mask.as_ref(),
        }
    }
}

/// `x W^T (+ bias) + scale * B A (mask * x)`, PEFT's LoRA linear, with `W` frozen: gradients go
/// to `x`, `A` and `B`. The LoRA branch runs in f32 whatever the base dtype.
pub fn lora_linear(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
    lora: &LoraWeights<'_>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out_f, in_f) = w.dims2()?;
    let x2 = x.reshape(((), in_f))?;
    let y = lora_linear_fwd(&x2.detach(), w, bias, lora)?;
    let (w, mask, scale) = (w.clone(), lora.dropout_mask.cloned(), lora.scale);
    let y = with_backward3(
        "lora-linear",
        (&x2, lora.a, lora.b),
        y,
        move |x2, a, b, g| {
            let lora = LoraWeights {
                a: &a.detach(),
                b: &b.detach(),
                scale,
                dropout_mask: mask.as_ref(),
            };
            let need = [x2.track_op(), a.track_op(), b.track_op()];
            lora_linear_bwd(&x2.detach(), g, &w, &lora, need)
        },
    )?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("x has at least one dim") = out_f;
    y.reshape(out_dims)
}

/// The forward of [`lora_linear`] on `x: [tokens, in]`, no graph.
pub(crate) fn lora_linear_fwd(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
    lora: &LoraWeights<'_>,
) -> Result<Tensor> {
    let merged = merged(w, lora);
    let mut y = match merged {
        Some(w) => x.matmul(&effective_weight(w, lora)?.t()?)?,
        None => w.matmul_t(x)?,
    };
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    if merged.is_none() {
        let u = lora_input(x, lora.dropout_mask)?.matmul(&lora.a.t()?)?;
        // The scale goes on B (`[out, r]`), not on the `[tokens, out]` product: one pass fewer.
        y = add(
            &y,
            &u.matmul(&(lora.b * lora.scale)?.t()?)?
                .to_dtype(x.dtype())?,
        )?;
    }
    Ok(y)
}

/// The gradients of [`lora_linear`] for `x: [tokens, in]` and `g: [tokens, out]`: `(dx, dA,
/// dB)`, each computed only where `need` says so.
pub(crate) fn lora_linear_bwd(
    x: &Tensor,
    g: &Tensor,
    w: &Frozen,
    lora: &LoraWeights<'_>,
    need: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let xl = lora_input(x, lora.dropout_mask)?;
    let (a, b, scale) = (lora.a, lora.b, lora.scale);
    let g32 = g.to_dtype(DType::F32)?;
    let du = (g32.matmul(b)? * scale)?;
    let dx = match (need[0], merged(w, lora)) {
        (false, _) => None,
        (true, Some(w)) => Some(g.matmul(&effective_weight(w, lora)?)?),
        (true, None) => {
            let mut dl = du.matmul(a)?;
            if let Some(m) = lora.dropout_mask {
                dl = (dl * m)?;
            }
            Some(add(&w.grad_input(g)?, &dl.to_dtype(g.dtype())?)?)
        }
    };
    // `(xl^T du)^T`: gemm runs the `[in, r]` product twice as fast as `du^T xl`.
    let da = if need[1] {
        Some(xl.t()?.matmul(&du)?.t()?.contiguous()?)
    } else {
        None
    };
    let db = if need[2] {
        let u = xl.matmul(&a.t()?)?;
        Some((g32.t()?.matmul(&u)? * scale)?)
    } else {
        None
    };
    Ok((dx, da, db))
}

/// Without dropout and with an f32 base, `x W^T + s (x A^T) B^T = x (W + s B A)^T`: one
/// weight-sized product (`out x in x r`, ~0.1% of the token-sized ones at 4096 tokens) and one
/// matmul per pass instead of three plus a `[tokens, out]` sum each way. A bf16 base would round
/// the adapter's small delta away, so it keeps the separate branch; so does a quantized one
/// (`W` exists only a tile at a time). The dense `W` when merging.
fn merged<'w>(w: &'w Frozen, lora: &LoraWeights<'_>) -> Option<&'w Tensor> {
    w.dense()
        .filter(|w| lora.dropout_mask.is_none() && w.dtype() == DType::F32)
}

/// `W + scale * B A`.
fn effective_weight(w: &Tensor, lora: &LoraWeights<'_>) -> Result<Tensor> {
    add(w, &(lora.b * lora.scale)?.matmul(lora.a)?)
}

/// The LoRA branch's input: `x` in f32, times the dropout mask.
fn lora_input(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    match mask {
        Some(m) => xf * m,
        None => Ok(xf),
    }
}

/// Head counts of an attention call: query heads, key/value heads, head size.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// Which keys each query of a right-padded batch sees: key `j` is visible from query `i` when
/// `j <= i`, `j` is a real token (Hugging Face masks padded keys for every query, padded queries
/// included), and, with a sliding window, `i - j < window`. The CPU kernel reads these ranges;
/// the other paths add the `[b, 1, t, t]` bias, made on first use. Cloning shares both.
#[derive(Clone)]
pub struct AttnMask(Arc<MaskInner>);

struct MaskInner {
    lens: Vec<usize>,
    t: usize,
    window: usize,
    device: Device,
    bias: OnceLock<Tensor>,
}

impl AttnMask {
    /// For sequences of real lengths `lens` padded to `t`.
    pub fn causal(lens: &[usize], t: usize, window: Option<usize>, device: &Device) -> Self {
        AttnMask(Arc::new(MaskInner {
            lens: lens.to_vec(),
            t,
            window: window.unwrap_or(usize::MAX),
            device: device.clone(),
            bias: OnceLock::new(),
        }))
    }

    /// Query `i` of sequence `b` sees keys `lo..hi` (empty when `lo >= hi`).
    pub(super) fn range(&self, b: usize, i: usize) -> (usize, usize) {
        let m = &self.0;
        ((i + 1).saturating_sub(m.window), (i + 1).min(m.lens[b]))
    }

    /// The additive mask `[b, 1, t, t]`: 0 where visible, -inf elsewhere.
    pub fn bias(&self) -> Result<Tensor> {
        let m = &self.0;
        if let Some(b) = m.bias.get() {
            return Ok(b.clone());
        }
        let t = m.t;
        let mut v = vec![f32::NEG_INFINITY; m.lens.len() * t * t];
        for (b, rows) in v.chunks_exact_mut(t * t).enumerate() {
            for (i, row) in rows.chunks_exact_mut(t).enumerate() {
                let (lo, hi) = self.range(b, i);
                row[lo.min(hi)..hi].fill(0.0);
            }
        }
        let bias = Tensor::from_vec(v, (m.lens.len(), 1, t, t), &m.device)?;
        Ok(m.bias.get_or_init(|| bias).clone())
    }
}

/// Causal grouped-query attention with rotate-half rope, on projection outputs
/// `q: [b, t, heads.q * dim]`, `k`, `v: [b, t, heads.kv * dim]`; `cos`/`sin` are
/// `[t, dim / 2]`. Returns `[b, t, heads.q * dim]`. On the CPU in f32 it runs the blocked kernel
/// of `flash` (causal blocks only, no scores tensor); elsewhere the dense product with the
/// mask's bias. The backward recomputes rope and the probabilities.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
) -> Result<Tensor> {
    Arc::new(Attention::new(mask, cos, sin, heads)?).apply(q, k, v)
}

/// What the attention forward keeps for its backward: each query row's log-sum-exp on the
/// CPU path, nothing on the dense one (it recomputes the probabilities).
pub(crate) struct AttnSaved(Option<Vec<f32>>);

/// One attention call's constants: heads, mask, rope tables.
pub(crate) struct Attention {
    heads: Heads,
    mask: AttnMask,
    cos: Tensor,
    sin: Tensor,
    cos2: Tensor,
    sin2: Tensor,
}

impl Attention {
    pub(crate) fn new(mask: &AttnMask, cos: &Tensor, sin: &Tensor, heads: Heads) -> Result<Self> {
        Ok(Attention {
            heads,
            mask: mask.clone(),
            cos: cos.clone(),
            sin: sin.clone(),
            cos2: Tensor::cat(&[cos, cos], D::Minus1)?,
            sin2: Tensor::cat(&[sin, sin], D::Minus1)?,
        })
    }

    /// [`attention`] with these constants: the output as a graph node.
    pub(crate) fn apply(self: &Arc<Self>, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (out, saved) = self.fwd(&q.detach(), &k.detach(), &v.detach())?;
        let att = Arc::clone(self);
        with_backward3("attention", (q, k, v), out, move |q, k, v, g| {
            let need = [q.track_op(), k.track_op(), v.track_op()];
            att.bwd((&q.detach(), &k.detach(), &v.detach()), g, &saved, need)
        })
    }

    /// The output `[b, t, heads.q * dim]` of detached `q`, `k`, `v`.
    pub(crate) fn fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, AttnSaved)> {
        if q.dtype() == DType::F32 && q.device().is_cpu() {
            let (out, lse) = self.flash_forward(q, k, v)?;
            return Ok((out, AttnSaved(Some(lse))));
        }
        Ok((self.forward(q, k, v)?, AttnSaved(None)))
    }

    /// `(dq, dk, dv)` for the output gradient `g`, each where `need` says so.
    pub(crate) fn bwd(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        g: &Tensor,
        saved: &AttnSaved,
        need: [bool; 3],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match &saved.0 {
            Some(lse) => self.flash_backward(q, k, v, g, lse, need),
            None => self.backward(q, k, v, g, need),
        }
    }

    /// `[b, t, n * dim]` -> `[b, n, t, dim]`, contiguous.
    fn split(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, n, self.heads.dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `[b, n, t, dim]` -> `[b, t, n * dim]`.
    fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, t, d) = x.dims4()?;
        x.transpose(1, 2)?.reshape((b, t, n * d))
    }

    /// Roped q and k, and v, split into heads: `[b, heads, t, dim]` each, contiguous.
    fn heads_of(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let Heads { q: nh, kv: nkv, .. } = self.heads;
        Ok((
            candle_nn::rotary_emb::rope(&self.split(q, nh)?, &self.cos, &self.sin)?,
            candle_nn::rotary_emb::rope(&self.split(k, nkv)?, &self.cos, &self.sin)?,
            self.split(v, nkv)?,
        ))
    }

    fn scale(&self) -> f64 {
        1.0 / (self.heads.dim as f64).sqrt()
    }

    /// The CPU f32 path: returns the merged output and the rows' log-sum-exp.
    fn flash_forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Vec<f32>)> {
        let (b, t, _) = q.dims3()?;
        let (qr, kr, vh) = self.heads_of(q, k, v)?;
        let (o, lse) = cpu::with_data([&qr, &kr, &vh], |[q, k, v]| {
            flash::forward(q, k, v, (b, t), self.heads, &self.mask, self.scale() as f32)
        })
        .ok_or_else(not_cpu_f32)?;
        let o = Tensor::from_vec(o, qr.shape(), q.device())?;
        Ok((self.merge(&o)?, lse))
    }

    fn flash_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
        lse: &[f32],
        need: [bool; 3],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, _) = q.dims3()?;
        let (qr, kr, vh) = self.heads_of(q, k, v)?;
        let go = self.split(&g.to_dtype(DType::F32)?, self.heads.q)?;
        let (cos, sin) = (self.cos.contiguous()?, self.sin.contiguous()?);
        let (dq, dk, dv) =
            cpu::with_data([&qr, &kr, &vh, &go, &cos, &sin], |[q, k, v, go, c, s]| {
                let scale = self.scale() as f32;
                flash::backward(
                    q,
                    k,
                    v,
                    go,
                    lse,
                    (c, s),
                    (b, t),
                    self.heads,
                    &self.mask,
                    scale,
                )
            })
            .ok_or_else(not_cpu_f32)?;
        let dev = q.device();
        let keep = |i: usize, d: Vec<f32>, like: &Tensor| -> Result<Option<Tensor>> {
            if !need[i] {
                return Ok(None);
            }
            Ok(Some(self.merge(&Tensor::from_vec(
                d,
                like.shape(),
                dev,
            )?)?))
        };
        Ok((keep(0, dq, &qr)?, keep(1, dk, &kr)?, keep(2, dv, &vh)?))
    }

    /// The dense path's probabilities of one kv group (the `rep` query heads sharing kv head
    /// `g`), f32 `[b, rep, t, t]`: `qg`, `kr` are that group's `[b, 1, rep * t, dim]` and
    /// `[b, 1, t, dim]`. One group at a time keeps `rep` heads' scores alive instead of all
    /// heads' (Llama 3 8B at 2 x 2048 tokens: 128 MiB instead of 1 GiB per copy).
    fn group_probs(&self, qg: &Tensor, kr: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, _, rows, _) = qg.dims4()?;
        let t = kr.dim(2)?;
        let scores = qg.matmul(&kr.t()?)?.reshape((b, rows / t, t, t))?;
        candle_nn::ops::softmax_last_dim(
            &(scores * self.scale())?
                .to_dtype(DType::F32)?
                .broadcast_add(bias)?,
        )
    }

    /// Roped q grouped by kv head `[b, kv, rep * t, dim]`, roped k and v `[b, kv, t, dim]`.
    fn grouped(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = q.dims3()?;
        let (qr, kr, vh) = self.heads_of(q, k, v)?;
        let Heads { q: nh, kv, dim } = self.heads;
        Ok((qr.reshape((b, kv, nh / kv * t, dim))?, kr, vh))
    }

    /// Kv group `g` of a grouped tensor, contiguous `[b, 1, rows, dim]`.
    fn group(x: &Tensor, g: usize) -> Result<Tensor> {
        x.narrow(1, g, 1)?.contiguous()
    }

    /// The dense path's output `[b, t, heads.q * dim]`, one kv group at a time.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let Heads {
            q: nh,
            kv: nkv,
            dim,
        } = self.heads;
        let (b, t, _) = q.dims3()?;
        let (qg, kr, vh) = self.grouped(q, k, v)?;
        let bias = self.mask.bias()?;
        let mut outs = Vec::with_capacity(nkv);
        for g in 0..nkv {
            let p = self.group_probs(&Self::group(&qg, g)?, &Self::group(&kr, g)?, &bias)?;
            let rows = p.dim(1)? * t;
            outs.push(
                p.to_dtype(q.dtype())?
                    .reshape((b, 1, rows, t))?
                    .matmul(&Self::group(&vh, g)?)?,
            );
        }
        self.merge(&Tensor::cat(&outs, 1)?.reshape((b, nh, t, dim))?)
    }

    /// The dense path's backward, one kv group at a time: each group's probabilities are
    /// recomputed and dropped before the next group's.
    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
        need: [bool; 3],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Heads {
            q: nh,
            kv: nkv,
            dim,
        } = self.heads;
        let (b, t, _) = q.dims3()?;
        let rep = nh / nkv;
        let dtype = q.dtype();
        let (qg, kr, vh) = self.grouped(q, k, v)?;
        let go = self.split(g, nh)?.reshape((b, nkv, rep * t, dim))?;
        let bias = self.mask.bias()?;
        let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
        for grp in 0..nkv {
            let (qg, kr, vh, go) = (
                Self::group(&qg, grp)?,
                Self::group(&kr, grp)?,
                Self::group(&vh, grp)?,
                Self::group(&go, grp)?,
            );
            let p = self.group_probs(&qg, &kr, &bias)?;
            let pg = p.to_dtype(dtype)?.reshape((b, 1, rep * t, t))?;
            dvs.push(pg.t()?.matmul(&go)?);
            let dp = go
                .matmul(&vh.t()?)?
                .reshape((b, rep, t, t))?
                .to_dtype(DType::F32)?;
            let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            let ds = ((&p * dp.broadcast_sub(&dot)?)? * self.scale())?;
            let ds = ds.to_dtype(dtype)?.reshape((b, 1, rep * t, t))?;
            dqs.push(ds.matmul(&kr)?);
            dks.push(ds.t()?.matmul(&qg)?);
        }
        let dq = Tensor::cat(&dqs, 1)?.reshape((b, nh, t, dim))?;
        let dk = Tensor::cat(&dks, 1)?;
        let dv = Tensor::cat(&dvs, 1)?;
        let dq = rope_backward(&dq, &self.cos2, &self.sin2, t)?;
        let dk = rope_backward(&dk, &self.cos2, &self.sin2, t)?;
        let keep = |i: usize, d: Tensor| -> Result<Option<Tensor>> {
            Ok(if need[i] { Some(self.merge(&d)?) } else { None })
        };
        Ok((keep(0, dq)?, keep(1, dk)?, keep(2, dv)?))
    }
}

fn not_cpu_f32() -> candle_core::Error {
    candle_core::Error::Msg("attention: inputs are not f32 on the CPU".into())
}

/// `silu(gate) * up`, the SwiGLU of the MLP. On the CPU, one parallel pass each way.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let out = swiglu_fwd(&gate.detach(), &up.detach())?;
    with_backward2("swiglu", gate, up, out, |gate, up, g| {
        let (dgate, dup) = swiglu_bwd(&gate.detach(), &up.detach(), g)?;
        Ok((
            gate.track_op().then_some(dgate),
            up.track_op().then_some(dup),
        ))
    })
}

pub(crate) fn swiglu_fwd(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match cpu::swiglu(gate, up)? {
        Some(out) => Ok(out),
        None => gate.silu()? * up,
    }
}

/// `(d gate, d up)` of [`swiglu`] for the output gradient `g`.
pub(crate) fn swiglu_bwd(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(grads) = cpu::swiglu_backward(gate, up, g)? {
        return Ok(grads);
    }
    let sig = candle_nn::ops::sigmoid(gate)?;
    let silu = (gate * &sig)?;
    // silu'(x) = sig(x) * (1 + x * (1 - sig(x)))
    let one_minus = sig.affine(-1.0, 1.0)?;
    let dsilu = (&sig * ((gate * one_minus)? + 1.0)?)?;
    Ok((((g * up)? * dsilu)?, (g * &silu)?))
}

/// `a + b`, in parallel on the CPU.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match cpu::add(a, b)? {
        Some(y) => Ok(y),
        None => a + b,
    }
}
