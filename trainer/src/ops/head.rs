//! The loss end of the model: log-probs of the target tokens through the frozen output head, and
//! ORPO's odds-ratio term.

use candle_core::{DType, Result, Tensor, D};
use rayon::prelude::*;

use super::cpu::{self, matmul_par, Mat};
use super::{with_backward1, with_backward2};
use crate::model::quant::Frozen;

/// Bytes of f32 logits per chunk in [`target_logprobs`]: 512 rows for SmolLM2's 49k
/// vocabulary, 196 for Llama 3's 128k. On the CPU one buffer of this size serves every chunk
/// (no fresh pages to fault in), and gemm runs the head 20-35% faster at 512 rows than at 128.
const HEAD_CHUNK_BYTES: usize = 96 << 20;

/// Rows per chunk of [`target_logprobs`] for `vocab` logits per row (the memory estimate
/// counts the same slice). Total for any `vocab`: an empty vocabulary (a broken config) gets the
/// most rows instead of a division by zero, a huge one the fewest instead of an overflow.
pub fn head_chunk_rows(vocab: usize) -> usize {
    (HEAD_CHUNK_BYTES / vocab.saturating_mul(4).max(1)).clamp(64, 1024)
}

/// `log_softmax(h @ w^T)[target]` for each row of `h: [m, hidden]`, with `w: [vocab, hidden]` the
/// frozen output head. Logits are made a chunk of rows at a time, in f32, and never kept.
///
/// Each output depends on its own row of `h` only, and the upstream gradient of a row is a
/// scalar, so the forward pass computes the whole Jacobian of each row at once,
/// `d lp / d h = (onehot(target) - softmax(logits)) @ w` (`[m, hidden]`, small), and the backward
/// pass only scales it: the head costs two vocabulary-sized matmuls, as in PyTorch, with no
/// `[m, vocab]` tensor alive between the passes. On the CPU in f32 (`cpu_head`) one kernel
/// turns each chunk of logits into `onehot - softmax` in place.
///
/// A quantized head is dequantized a vocabulary tile at a time on the CPU (each tile twice per
/// chunk of rows: once for the logits, once for the Jacobian); elsewhere it is dequantized
/// whole for this call and dropped at its end (one weight, never the model).
pub fn target_logprobs(h: &Tensor, w: &Frozen, targets: &Tensor) -> Result<Tensor> {
    target_logprobs_chunked(h, w, targets, head_chunk_rows(w.dims2()?.0))
}

pub(super) fn target_logprobs_chunked(
    h: &Tensor,
    w: &Frozen,
    targets: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    let hd = h.detach();
    let need_grad = h.track_op();
    let (out, jac) = match cpu_head(&hd, w, targets, rows, need_grad)? {
        Some(done) => done,
        None => match w {
            Frozen::Dense(w) => composite_head(&hd, w, targets, rows, need_grad)?,
            Frozen::Quant(q) => {
                let dense = q.dequantize(hd.dtype())?;
                composite_head(&hd, &dense, targets, rows, need_grad)?
            }
        },
    };
    let Some(jac) = jac else { return Ok(out) };
    with_backward1("target-logprobs", h, out, move |_, _, g| {
        jac.broadcast_mul(&g.to_dtype(jac.dtype())?.unsqueeze(1)?)
    })
}

/// Log-probs `[m]` and, with `grad`, the Jacobian `[m, hidden]`.
type HeadOut = (Tensor, Option<Tensor>);

/// Calls `f(vocab rows, their f32 data)` for the whole of a dense head, or for each tile of a
/// quantized one in turn (dequantized for the call, then dropped).
fn each_tile(w: &Frozen, mut f: impl FnMut(std::ops::Range<usize>, &[f32])) -> Result<()> {
    let not_f32 = || candle_core::Error::Msg("target-logprobs: head is not f32".into());
    match w {
        Frozen::Dense(w) => {
            let vocab = w.dim(0)?;
            cpu::with_data([w], |[w]| f(0..vocab, w)).ok_or_else(not_f32)
        }
        Frozen::Quant(q) => {
            for i in 0..q.n_tiles() {
                let tile = q.dequantize_tile(i, DType::F32)?;
                cpu::with_data([&tile], |[t]| f(q.tile_rows(i), t)).ok_or_else(not_f32)?;
            }
            Ok(())
        }
    }
}

/// The CPU f32 path: each chunk's logits go into one reused buffer (a quantized head's tiles
/// each fill their columns), the rows become `onehot - softmax` in place in parallel
/// ([`softmax_row`]), and the Jacobian rows are written straight into the result (summed over
/// the tiles). `None` when not f32 on the CPU.
fn cpu_head(
    h: &Tensor,
    w: &Frozen,
    targets: &Tensor,
    rows: usize,
    grad: bool,
) -> Result<Option<HeadOut>> {
    let dense_f32 = w.dense().is_none_or(|w| w.dtype() == DType::F32);
    if h.dtype() != DType::F32 || !dense_f32 || !h.device().is_cpu() {
        return Ok(None);
    }
    let ((vocab, hidden), m) = (w.dims2()?, h.dim(0)?);
    let targets = targets.to_vec1::<u32>()?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target-logprobs: target {t} outside the vocabulary of {vocab}");
    }
    let h = h.contiguous()?;
    // The rows are read in place (the weight's tiles are read inside, each in turn).
    let done = cpu::with_data([&h], |[hv]| -> Result<(Vec<f32>, Vec<f32>)> {
        // Equal chunks (768 rows: 2 x 384, not 512 + 256): gemm is slower on a short tail.
        let chunks = m.div_ceil(rows).max(1);
        let rows = m.div_ceil(chunks).max(1);
        let mut logits = vec![0f32; rows * vocab];
        let mut lp = Vec::with_capacity(m);
        let mut jac = vec![0f32; if grad { m * hidden } else { 0 }];
        for start in (0..m).step_by(rows) {
            let len = rows.min(m - start);
            let buf = &mut logits[..len * vocab];
            let h_rows = &hv[start * hidden..(start + len) * hidden];
            each_tile(w, |r, w| {
                matmul_par(
                    (len, r.len(), hidden),
                    &mut buf[r.start..],
                    vocab,
                    false,
                    Mat::rows(h_rows, hidden),
                    Mat::transposed(w, hidden),
                );
            })?;
            let mut part = Vec::with_capacity(len);
            buf.par_chunks_mut(vocab)
                .zip(targets[start..start + len].par_iter())
                .map(|(row, &t)| softmax_row(row, t as usize, grad))
                .collect_into_vec(&mut part);
            lp.extend(part);
            if grad {
                let dst = &mut jac[start * hidden..(start + len) * hidden];
                let mut first = true;
                each_tile(w, |r, w| {
                    matmul_par(
                        (len, hidden, r.len()),
                        dst,
                        hidden,
                        !first,
                        Mat::rows(&buf[r.start..], vocab),
                        Mat::rows(w, hidden),
                    );
                    first = false;
                })?;
            }
        }
        Ok((lp, jac))
    });
    let Some(done) = done else {
        return Ok(None);
    };
    let (lp, jac) = done?;
    let lp = Tensor::from_vec(lp, m, h.device())?;
    let jac = if grad {
        Some(Tensor::from_vec(jac, (m, hidden), h.device())?)
    } else {
        None
    };
    Ok(Some((lp, jac)))
}

/// The same with candle ops, a chunk at a time (CUDA, and bf16 heads).
fn composite_head(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    rows: usize,
    grad: bool,
) -> Result<HeadOut> {
    let m = h.dim(0)?;
    let (mut parts, mut jac) = (Vec::new(), Vec::new());
    for start in (0..m).step_by(rows) {
        let len = rows.min(m - start);
        let logits = h
            .narrow(0, start, len)?
            .to_dtype(w.dtype())?
            .matmul(&w.t()?)?
            .to_dtype(DType::F32)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let lse = logsumexp(&logits)?;
        parts.push((logits.gather(&t, 1)?.squeeze(1)? - &lse)?);
        if !grad {
            continue;
        }
        let p = logits.broadcast_sub(&lse.unsqueeze(1)?)?.exp()?;
        drop(logits);
        let ones = Tensor::ones((len, 1), DType::F32, p.device())?;
        let dlogits = p.neg()?.scatter_add(&t, &ones, 1)?;
        jac.push(
            dlogits
                .to_dtype(w.dtype())?
                .matmul(w)?
                .to_dtype(h.dtype())?,
        );
    }
    let jac = if grad {
        Some(Tensor::cat(&jac, 0)?)
    } else {
        None
    };
    Ok((Tensor::cat(&parts, 0)?, jac))
}

fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    (sum.log()? + max)?.squeeze(D::Minus1)
}

/// One row of [`cpu_head`]: returns `logits[target] - logsumexp(logits)` and, with `grad`,
/// overwrites the row with `onehot(target) - softmax(logits)`. The AVX2 build of the same code
/// where the CPU has it (the loops are written in 8 lanes so they vectorize).
fn softmax_row(row: &mut [f32], target: usize, grad: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { softmax_row_avx2(row, target, grad) };
    }
    softmax_row_generic(row, target, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32], target: usize, grad: bool) -> f32 {
    softmax_row_generic(row, target, grad)
}

#[inline(always)]
fn softmax_row_generic(row: &mut [f32], target: usize, grad: bool) -> f32 {
    const L: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; L];
    let (body, tail) = row.split_at(row.len() / L * L);
    for c in body.chunks_exact(L) {
        for i in 0..L {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let logit = row[target];
    // Sums in f64 lanes: 128k terms in f32 would lose digits TRL's log_softmax keeps.
    let mut sums = [0f64; L];
    let n = row.len() / L * L;
    for c in row[..n].chunks_exact_mut(L) {
        for i in 0..L {
            let e = exp_neg(c[i] - max);
            if grad {
                c[i] = e;
            }
            sums[i] += e as f64;
        }
    }
    let mut sum: f64 = sums.iter().sum();
    for x in &mut row[n..] {
        let e = exp_neg(*x - max);
        if grad {
            *x = e;
        }
        sum += e as f64;
    }
    if grad {
        let s = (-1.0 / sum) as f32;
        for x in row.iter_mut() {
            *x *= s;
        }
        row[target] += 1.0;
    }
    (logit as f64 - max as f64 - sum.ln()) as f32
}

/// `e^x` for `x <= 0` (a logit minus the row's max), within 2 ulp of libm's `expf` (Cephes'
/// polynomial after `x = n ln 2 + r`); written branch-free so the row loops vectorize. Inputs
/// below -87 give `e^-87` (1.6e-38) instead of less: nothing a sum of at least one 1.0 can see.
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x > -87.0 { x } else { -87.0 };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `log(1 - e^x)` for `x < 0`, branching at -ln 2 as TRL's `log1mexp` (PR #4763) to avoid
/// cancellation: `log1p(-e^x)` below, `log(-expm1(x))` above.
pub fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// `log(sigmoid(z))`, stable for large |z|.
pub fn log_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        -(-z).exp().ln_1p()
    } else {
        z - z.exp().ln_1p()
    }
}

/// The odds-ratio term of ORPO for average completion log-probs `c` (chosen) and `r`
/// (rejected), both `[n]`: returns `log sigmoid(z)` per example as a tensor in the graph, and the
/// log odds ratios `z` themselves. The scalar math runs in f64 on the host (n is the batch
/// size), with the gradients `dz/dc = 1/(1-e^c)`, `dz/dr = -1/(1-e^r)`, `d logsig(z)/dz = sig(-z)`.
pub fn odds_ratio(c: &Tensor, r: &Tensor) -> Result<(Tensor, Vec<f64>)> {
    let cv: Vec<f64> = c.to_dtype(DType::F64)?.to_vec1()?;
    let rv: Vec<f64> = r.to_dtype(DType::F64)?.to_vec1()?;
    let z: Vec<f64> = cv
        .iter()
        .zip(&rv)
        .map(|(&c, &r)| (c - r) - (log1mexp(c) - log1mexp(r)))
        .collect();
    let ratio: Vec<f32> = z.iter().map(|&z| log_sigmoid(z) as f32).collect();
    let out = Tensor::new(ratio, c.device())?;
    let zs = z.clone();
    let t = with_backward2("odds-ratio", c, r, out, move |c, _, g| {
        let gv: Vec<f64> = g.to_dtype(DType::F64)?.to_vec1()?;
        let mut gc = Vec::with_capacity(gv.len());
        let mut gr = Vec::with_capacity(gv.len());
        for (i, &g) in gv.iter().enumerate() {
            let dl_dz = g * (1.0 / (1.0 + zs[i].exp()));
            gc.push((dl_dz / -cv[i].exp_m1()) as f32);
            gr.push((-dl_dz / -rv[i].exp_m1()) as f32);
        }
        let dev = c.device();
        Ok((
            Some(Tensor::new(gc, dev)?.to_dtype(c.dtype())?),
            Some(Tensor::new(gr, dev)?.to_dtype(c.dtype())?),
        ))
    })?;
    Ok((t, z))
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

    /// Against libm's `expf` over the range a logit minus its row's max takes: within 2 ulp.
    #[test]
    fn exp_neg_is_within_two_ulp_of_expf() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (ours, libm) = (exp_neg(x), x.exp());
            worst = worst.max((ours - libm).abs() / (libm * f32::EPSILON));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-200.0) < 2e-38);
    }
}
