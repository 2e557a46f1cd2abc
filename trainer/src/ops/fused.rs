//! Fused ops of the decoder layer. Each keeps only its inputs for the backward pass and
//! recomputes the rest there: the LoRA product `x A^T` (rank r, cheap), the attention scores and
//! probabilities (as FlashAttention does), the SiLU. candle would otherwise keep every
//! intermediate of a composite op alive until the backward pass ends.

use candle_core::{DType, Result, Tensor, D};

use super::basic::rope_backward;
use super::{cpu, with_backward2, with_backward3};

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

/// `x W^T (+ bias) + scale * B A (mask * x)`, PEFT's LoRA linear, with `W` frozen: gradients go
/// to `x`, `A` and `B`. The LoRA branch runs in f32 whatever the base dtype.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: &LoraWeights<'_>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out_f, in_f) = w.dims2()?;
    let x2 = x.reshape(((), in_f))?;
    let dtype = x.dtype();
    let lora_input = |x2: &Tensor, mask: Option<&Tensor>| -> Result<Tensor> {
        let xf = x2.to_dtype(DType::F32)?;
        match mask {
            Some(m) => xf * m,
            None => Ok(xf),
        }
    };
    let (a, b, scale) = (lora.a.detach(), lora.b.detach(), lora.scale);
    let xd = x2.detach();
    let mut y = xd.matmul(&w.t()?)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let u = lora_input(&xd, lora.dropout_mask)?.matmul(&a.t()?)?;
    // The scale goes on B (`[out, r]`), not on the `[tokens, out]` product: one pass fewer.
    let y = add(&y, &u.matmul(&(&b * scale)?.t()?)?.to_dtype(dtype)?)?;
    let (w, mask) = (w.clone(), lora.dropout_mask.cloned());
    let y = with_backward3(
        "lora-linear",
        (&x2, lora.a, lora.b),
        y,
        move |x2, a, b, g| {
            let xl = lora_input(&x2.detach(), mask.as_ref())?;
            let (a_d, b_d) = (a.detach(), b.detach());
            let g32 = g.to_dtype(DType::F32)?;
            let du = (g32.matmul(&b_d)? * scale)?;
            let dx = if x2.track_op() {
                let mut dl = du.matmul(&a_d)?;
                if let Some(m) = &mask {
                    dl = (dl * m)?;
                }
                Some(add(&g.matmul(&w)?, &dl.to_dtype(g.dtype())?)?)
            } else {
                None
            };
            let da = if a.track_op() {
                Some(du.t()?.matmul(&xl)?)
            } else {
                None
            };
            let db = if b.track_op() {
                let u = xl.matmul(&a_d.t()?)?;
                Some((g32.t()?.matmul(&u)? * scale)?)
            } else {
                None
            };
            Ok((dx, da, db))
        },
    )?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("x has at least one dim") = out_f;
    y.reshape(out_dims)
}

/// Head counts of an attention call: query heads, key/value heads, head size.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// Causal grouped-query attention with rotate-half rope, on projection outputs
/// `q: [b, t, heads.q * dim]`, `k`, `v: [b, t, heads.kv * dim]`; `mask` is the additive
/// `[b, 1, t, t]` bias, `cos`/`sin` are `[t, dim / 2]`. Returns `[b, t, heads.q * dim]`.
/// The backward pass recomputes rope, scores and probabilities from q, k and v.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
) -> Result<Tensor> {
    let inner = AttnInner {
        heads,
        mask: mask.clone(),
        cos: cos.clone(),
        sin: sin.clone(),
        cos2: Tensor::cat(&[cos, cos], D::Minus1)?,
        sin2: Tensor::cat(&[sin, sin], D::Minus1)?,
    };
    let fwd = inner.forward(&q.detach(), &k.detach(), &v.detach())?;
    let out = fwd.out;
    with_backward3("attention", (q, k, v), out, move |q, k, v, g| {
        inner.backward(q, k, v, g)
    })
}

struct AttnInner {
    heads: Heads,
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
    cos2: Tensor,
    sin2: Tensor,
}

/// What the forward pass computes and the backward pass recomputes.
struct AttnState {
    /// Roped q grouped by kv head: `[b, kv, rep * t, dim]`.
    qg: Tensor,
    /// Roped k, and v: `[b, kv, t, dim]`.
    kr: Tensor,
    vh: Tensor,
    /// Probabilities, f32, `[b, heads.q, t, t]`.
    p: Tensor,
    out: Tensor,
}

impl AttnInner {
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

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttnState> {
        let Heads {
            q: nh,
            kv: nkv,
            dim,
        } = self.heads;
        let (b, t, _) = q.dims3()?;
        let rep = nh / nkv;
        let qr = candle_nn::rotary_emb::rope(&self.split(q, nh)?, &self.cos, &self.sin)?;
        let kr = candle_nn::rotary_emb::rope(&self.split(k, nkv)?, &self.cos, &self.sin)?;
        let vh = self.split(v, nkv)?;
        let qg = qr.reshape((b, nkv, rep * t, dim))?;
        let scale = 1.0 / (dim as f64).sqrt();
        let scores = qg.matmul(&kr.t()?)?.reshape((b, nh, t, t))?;
        let p = if scores.dtype() == DType::F32
            && cpu::masked_softmax_in_place(&scores, &self.mask, scale as f32)?
        {
            scores
        } else {
            candle_nn::ops::softmax_last_dim(
                &(scores * scale)?
                    .to_dtype(DType::F32)?
                    .broadcast_add(&self.mask)?,
            )?
        };
        let o = p
            .to_dtype(q.dtype())?
            .reshape((b, nkv, rep * t, t))?
            .matmul(&vh)?
            .reshape((b, nh, t, dim))?;
        let out = self.merge(&o)?;
        Ok(AttnState { qg, kr, vh, p, out })
    }

    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Heads {
            q: nh,
            kv: nkv,
            dim,
        } = self.heads;
        let (b, t, _) = q.dims3()?;
        let rep = nh / nkv;
        let s = self.forward(&q.detach(), &k.detach(), &v.detach())?;
        let dtype = q.dtype();
        let go = self.split(g, nh)?.reshape((b, nkv, rep * t, dim))?;
        let pg = s.p.to_dtype(dtype)?.reshape((b, nkv, rep * t, t))?;
        let dv = pg.t()?.matmul(&go)?;
        let dp = go
            .matmul(&s.vh.t()?)?
            .reshape((b, nh, t, t))?
            .to_dtype(DType::F32)?;
        let scale = 1.0 / (dim as f64).sqrt();
        let ds = if cpu::softmax_backward_in_place(&dp, &s.p, scale as f32)? {
            dp
        } else {
            let dot = (&dp * &s.p)?.sum_keepdim(D::Minus1)?;
            ((&s.p * dp.broadcast_sub(&dot)?)? * scale)?
        };
        let ds = ds.to_dtype(dtype)?.reshape((b, nkv, rep * t, t))?;
        let dq = ds.matmul(&s.kr)?.reshape((b, nh, t, dim))?;
        let dk = ds.t()?.matmul(&s.qg)?;
        let dq = rope_backward(&dq, &self.cos2, &self.sin2, t)?;
        let dk = rope_backward(&dk, &self.cos2, &self.sin2, t)?;
        let keep = |x: &Tensor, d: Tensor| -> Result<Option<Tensor>> {
            Ok(if x.track_op() {
                Some(self.merge(&d)?)
            } else {
                None
            })
        };
        Ok((keep(q, dq)?, keep(k, dk)?, keep(v, dv)?))
    }
}

/// `silu(gate) * up`, the SwiGLU of the MLP. On the CPU, one parallel pass each way.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (gd, ud) = (gate.detach(), up.detach());
    let out = match cpu::swiglu(&gd, &ud)? {
        Some(out) => out,
        None => (gd.silu()? * ud)?,
    };
    with_backward2("swiglu", gate, up, out, |gate, up, g| {
        let keep = |x: &Tensor, d: Tensor| x.track_op().then_some(d);
        if let Some((dgate, dup)) = cpu::swiglu_backward(&gate.detach(), &up.detach(), g)? {
            return Ok((keep(gate, dgate), keep(up, dup)));
        }
        let sig = candle_nn::ops::sigmoid(&gate.detach())?;
        let silu = (gate * &sig)?;
        let dup = if up.track_op() {
            Some((g * &silu)?)
        } else {
            None
        };
        let dgate = if gate.track_op() {
            // silu'(x) = sig(x) * (1 + x * (1 - sig(x)))
            let one_minus = sig.affine(-1.0, 1.0)?;
            let dsilu = (&sig * ((gate * one_minus)? + 1.0)?)?;
            Some(((g * up)? * dsilu)?)
        } else {
            None
        };
        Ok((dgate, dup))
    })
}

/// `a + b`, in parallel on the CPU.
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match cpu::add(a, b)? {
        Some(y) => Ok(y),
        None => a + b,
    }
}
