//! The loss end of the model: log-probs of the target tokens through the frozen output head, and
//! ORPO's odds-ratio term.

use candle_core::{DType, Result, Tensor, D};

use super::{with_backward1, with_backward2};

/// Rows of hidden states per chunk in [`target_logprobs`]: bounds the `[rows, vocab]` logits
/// held at once (1024 x 128k vocab x 4 bytes = 512 MiB for Llama 3; 200 MiB for SmolLM2).
const HEAD_CHUNK_ROWS: usize = 1024;

/// `log_softmax(h @ w^T)[target]` for each row of `h: [m, hidden]`, with `w: [vocab, hidden]` the
/// frozen output head. Logits are made a chunk of rows at a time, in f32, and never kept.
///
/// Each output depends on its own row of `h` only, and the upstream gradient of a row is a
/// scalar, so the forward pass computes the whole Jacobian of each row at once,
/// `d lp / d h = (onehot(target) - softmax(logits)) @ w` (`[m, hidden]`, small), and the backward
/// pass only scales it: the head costs two vocabulary-sized matmuls, as in PyTorch, with no
/// `[m, vocab]` tensor alive between the passes.
pub fn target_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let m = h.dim(0)?;
    let hd = h.detach();
    let need_grad = h.track_op();
    let (mut parts, mut jac) = (Vec::new(), Vec::new());
    for start in (0..m).step_by(HEAD_CHUNK_ROWS) {
        let len = HEAD_CHUNK_ROWS.min(m - start);
        let logits = head_logits(&hd.narrow(0, start, len)?, w)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let lse = logsumexp(&logits)?;
        parts.push((logits.gather(&t, 1)?.squeeze(1)? - &lse)?);
        if need_grad {
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
    }
    let out = Tensor::cat(&parts, 0)?;
    if !need_grad {
        return Ok(out);
    }
    let jac = Tensor::cat(&jac, 0)?;
    with_backward1("target-logprobs", h, out, move |_, _, g| {
        jac.broadcast_mul(&g.to_dtype(jac.dtype())?.unsqueeze(1)?)
    })
}

fn head_logits(h: &Tensor, w: &Tensor) -> Result<Tensor> {
    h.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)
}

fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    (sum.log()? + max)?.squeeze(D::Minus1)
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
