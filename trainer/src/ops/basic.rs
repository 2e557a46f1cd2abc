//! The building blocks of the decoder with their own backward: frozen linear, RMSNorm, rope and
//! masked softmax.

use candle_core::{DType, Result, Tensor, D};

use super::with_backward1;
use crate::model::quant::Frozen;

/// `x @ w^T (+ bias)` for a frozen weight `w: [out, in]`: only `x` gets a gradient. A quantized
/// `w` is dequantized a tile at a time in each pass (its backward keeps the quantized weight).
pub fn frozen_linear(x: &Tensor, w: &Frozen, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out_f, in_f) = w.dims2()?;
    let x2 = x.reshape(((), in_f))?;
    let mut y = w.matmul_t(&x2.detach())?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let w = w.clone();
    let y = with_backward1("frozen-linear", &x2, y, move |_, _, g| w.grad_input(g))?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("x has at least one dim") = out_f;
    y.reshape(out_dims)
}

/// RMSNorm over the last dim with a frozen weight, as Hugging Face computes it (in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let y = candle_nn::ops::rms_norm(&x.detach(), w, eps as f32)?;
    let w = w.clone();
    with_backward1("rms-norm", x, y, move |x, _, g| {
        rms_norm_bwd(&x.detach(), g, &w, eps)
    })
}

/// The input gradient of [`rms_norm`]:
/// `dx = rstd * (gw - xhat * mean(gw * xhat))`, `xhat = x * rstd`.
pub(crate) fn rms_norm_bwd(x: &Tensor, g: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(dx) = super::cpu::rms_norm_backward(x, g, w, eps as f32)? {
        return Ok(dx);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let g = g.to_dtype(DType::F32)?;
    let w = w.to_dtype(DType::F32)?;
    let rstd = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = x.broadcast_mul(&rstd)?;
    let gw = g.broadcast_mul(&w)?;
    let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = (gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&rstd)?;
    dx.to_dtype(dtype)
}

/// Rotary embedding in Hugging Face's rotate-half layout. `x: [b, heads, seq, head_dim]`,
/// `cos`/`sin`: `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    with_backward1("rope", x, y, move |x, _, g| {
        rope_backward(g, &cos, &sin, x.dim(2)?)
    })
}

/// The transpose of rope for `g: [b, heads, seq, head_dim]`, with `cos`/`sin` already doubled
/// to `[max_seq, head_dim]`: y = x*cos + rot(x)*sin with rot([a, b]) = [-b, a], whose transpose
/// is [a, b] -> [b, -a].
pub(super) fn rope_backward(g: &Tensor, cos: &Tensor, sin: &Tensor, seq: usize) -> Result<Tensor> {
    let cos = cos.narrow(0, 0, seq)?.to_dtype(g.dtype())?;
    let sin = sin.narrow(0, 0, seq)?.to_dtype(g.dtype())?;
    let gs = g.broadcast_mul(&sin)?;
    let half = gs.dim(D::Minus1)? / 2;
    let (a, b) = (
        gs.narrow(D::Minus1, 0, half)?,
        gs.narrow(D::Minus1, half, half)?,
    );
    let rot_t = Tensor::cat(&[b, a.neg()?], D::Minus1)?;
    g.broadcast_mul(&cos)? + rot_t
}

/// `softmax(scores + bias)` over the last dim, where `bias` is a constant (0 or -inf) mask:
/// the mask gets no gradient, and the backward uses only the saved probabilities.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(&scores.detach().broadcast_add(bias)?)?;
    with_backward1("masked-softmax", scores, p, |_, p, g| {
        let dot = (g * p)?.sum_keepdim(D::Minus1)?;
        p * g.broadcast_sub(&dot)?
    })
}
