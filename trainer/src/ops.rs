//! Ops with their own backward pass.
//!
//! candle's autograd computes a gradient for every operand of a recorded op, frozen or not, and
//! its fused kernels (rms_norm, rope, softmax_last_dim) have no backward at all: they silently
//! cut the graph (candle-training.md §1.3-1.4). The training path therefore uses these ops: each
//! runs candle's fast forward on detached inputs, then attaches a hand-written backward that
//! returns only the gradient the LoRA parameters need. A frozen weight never gets a
//! weight-sized gradient, a mask never gets a scores-sized one, and the output head never holds
//! the full `[tokens, vocab]` log-softmax.
//!
//! Each op is checked against the composite candle path (values and gradients) in the tests below.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, D,
};

type Bwd1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;
type Bwd2 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync>;

/// An op whose output was computed eagerly on detached inputs. Its forward hands that output to
/// the graph (one copy); its backward is the closure. The output is taken on the forward call so
/// the graph does not keep a second reference to it.
struct Eager<B> {
    name: &'static str,
    out: Mutex<Option<Tensor>>,
    bwd: B,
}

impl<B> Eager<B> {
    fn take(&self) -> Result<Tensor> {
        self.out
            .lock()
            .map_err(|_| candle_core::Error::Msg("eager op lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    fn cpu_out(&self) -> Result<(CpuStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.affine(layout, 1.0, 0.0)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: output is not on the CPU", self.name),
        }
    }

    fn cuda_out(&self) -> Result<(CudaStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.affine(layout, 1.0, 0.0)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: output is not on a CUDA device", self.name),
        }
    }
}

impl CustomOp1 for Eager<Bwd1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu_out()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        (self.bwd)(arg, res, grad).map(Some)
    }
}

impl CustomOp2 for Eager<Bwd2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_out()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ga, gb) = (self.bwd)(a, b, grad)?;
        let _ = res;
        Ok((Some(ga), Some(gb)))
    }
}

/// Records `out = f(x)` with the backward `bwd(x, out, grad_out) -> grad_x`. When `x` needs no
/// gradient, `out` is returned as it is and nothing is recorded.
pub(crate) fn with_backward1(
    name: &'static str,
    x: &Tensor,
    out: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(out);
    }
    let op: Eager<Bwd1> = Eager {
        name,
        out: Mutex::new(Some(out)),
        bwd: Box::new(bwd),
    };
    x.apply_op1(op)
}

/// Two-input version of [`with_backward1`]: `bwd(a, b, grad_out) -> (grad_a, grad_b)`.
fn with_backward2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    out: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(out);
    }
    let op: Eager<Bwd2> = Eager {
        name,
        out: Mutex::new(Some(out)),
        bwd: Box::new(bwd),
    };
    a.apply_op2(b, op)
}

/// `x @ w^T (+ bias)` for a frozen weight `w: [out, in]`: only `x` gets a gradient.
pub fn frozen_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out_f, in_f) = w.dims2()?;
    let x2 = x.reshape(((), in_f))?;
    let mut y = x2.detach().matmul(&w.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let w = w.clone();
    let y = with_backward1("frozen-linear", &x2, y, move |_, _, g| g.matmul(&w))?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("x has at least one dim") = out_f;
    y.reshape(out_dims)
}

/// RMSNorm over the last dim with a frozen weight, as Hugging Face computes it (in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let y = candle_nn::ops::rms_norm(&x.detach(), w, eps as f32)?;
    let w = w.clone();
    with_backward1("rms-norm", x, y, move |x, _, g| {
        // y = w * x * rstd;  dx = rstd * (gw - xhat * mean(gw * xhat)),  xhat = x * rstd.
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
    })
}

/// Rotary embedding in Hugging Face's rotate-half layout. `x: [b, heads, seq, head_dim]`,
/// `cos`/`sin`: `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    with_backward1("rope", x, y, move |x, _, g| {
        // y = x*cos + rot(x)*sin with rot([a, b]) = [-b, a]; its transpose is [a, b] -> [b, -a].
        let seq = x.dim(2)?;
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
    })
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

/// Rows of hidden states per chunk in [`target_logprobs`]: bounds the `[rows, vocab]` logits
/// held at once (1024 x 128k vocab x 4 bytes = 512 MiB for Llama 3; 200 MiB for SmolLM2).
const HEAD_CHUNK_ROWS: usize = 1024;

/// `log_softmax(h @ w^T)[target]` for each row of `h: [m, hidden]`, with `w: [vocab, hidden]` the
/// frozen output head. Logits are made a chunk of rows at a time, in f32, and recomputed in the
/// backward pass, so the full `[m, vocab]` matrix and its log-softmax are never kept.
pub fn target_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let m = h.dim(0)?;
    let hd = h.detach();
    let mut parts = Vec::new();
    for start in (0..m).step_by(HEAD_CHUNK_ROWS) {
        let len = HEAD_CHUNK_ROWS.min(m - start);
        let logits = head_logits(&hd.narrow(0, start, len)?, w)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let lse = logsumexp(&logits)?;
        parts.push((logits.gather(&t, 1)?.squeeze(1)? - lse)?);
    }
    let out = Tensor::cat(&parts, 0)?;
    let (w, targets) = (w.clone(), targets.clone());
    with_backward1("target-logprobs", h, out, move |h, _, g| {
        // d lp / d logits = onehot(target) - softmax(logits).
        let mut grads = Vec::new();
        for start in (0..m).step_by(HEAD_CHUNK_ROWS) {
            let len = HEAD_CHUNK_ROWS.min(m - start);
            let logits = head_logits(&h.narrow(0, start, len)?, &w)?;
            let p = candle_nn::ops::softmax_last_dim(&logits)?;
            let gc = g
                .narrow(0, start, len)?
                .to_dtype(DType::F32)?
                .unsqueeze(1)?;
            let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
            let dlogits = p.broadcast_mul(&gc.neg()?)?.scatter_add(&t, &gc, 1)?;
            grads.push(
                dlogits
                    .to_dtype(w.dtype())?
                    .matmul(&w)?
                    .to_dtype(h.dtype())?,
            );
        }
        Tensor::cat(&grads, 0)
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
            Tensor::new(gc, dev)?.to_dtype(c.dtype())?,
            Tensor::new(gr, dev)?.to_dtype(c.dtype())?,
        ))
    })?;
    Ok((t, z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Runs `ours` and `reference` on the same Var and compares outputs and input gradients
    /// (the loss is a fixed random projection of the output, so every element matters).
    fn check(
        shape: &[usize],
        ours: impl Fn(&Tensor) -> Tensor,
        reference: impl Fn(&Tensor) -> Tensor,
    ) {
        let x = Var::from_tensor(&randn(shape, 1)).unwrap();
        let y1 = ours(x.as_tensor());
        let y2 = reference(x.as_tensor());
        assert!(
            max_diff(&y1, &y2) < 1e-5,
            "values differ by {}",
            max_diff(&y1, &y2)
        );
        let proj = randn(y1.dims(), 2);
        let g1 = (&y1 * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&y2 * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(
            max_diff(g1, g2) < 1e-4,
            "grads differ by {}",
            max_diff(g1, g2)
        );
    }

    #[test]
    fn frozen_linear_matches_matmul_and_leaves_no_weight_grad() {
        let w = randn(&[5, 8], 3);
        let b = randn(&[5], 4);
        check(
            &[2, 3, 8],
            |x| frozen_linear(x, &w, Some(&b)).unwrap(),
            |x| {
                x.broadcast_matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap()
            },
        );
        let x = Var::from_tensor(&randn(&[3, 8], 1)).unwrap();
        let grads = frozen_linear(x.as_tensor(), &w, None)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            grads.get(&w).is_none(),
            "the frozen weight must get no gradient"
        );
    }

    #[test]
    fn rms_norm_matches_the_composite_path() {
        let w = randn(&[16], 5);
        check(
            &[2, 3, 16],
            |x| rms_norm(x, &w, 1e-5).unwrap(),
            |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-5).unwrap(),
        );
    }

    #[test]
    fn rope_matches_the_composite_path() {
        let cos = randn(&[6, 4], 6);
        let sin = randn(&[6, 4], 7);
        check(
            &[2, 3, 5, 8],
            |x| rope(x, &cos, &sin).unwrap(),
            |x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin).unwrap(),
        );
    }

    #[test]
    fn masked_softmax_matches_the_composite_path() {
        let mask: Vec<f32> = (0..25)
            .map(|i| {
                if i % 5 > i / 5 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, 5, 5), &Device::Cpu).unwrap();
        check(
            &[2, 3, 5, 5],
            |x| masked_softmax(x, &mask).unwrap(),
            |x| candle_nn::ops::softmax(&x.broadcast_add(&mask).unwrap(), D::Minus1).unwrap(),
        );
    }

    #[test]
    fn target_logprobs_match_log_softmax_and_gather() {
        let w = randn(&[11, 6], 8);
        let t = Tensor::new(&[3u32, 0, 10, 7], &Device::Cpu).unwrap();
        check(
            &[4, 6],
            |h| target_logprobs(h, &w, &t).unwrap(),
            |h| {
                let lsm =
                    candle_nn::ops::log_softmax(&h.matmul(&w.t().unwrap()).unwrap(), D::Minus1)
                        .unwrap();
                lsm.gather(&t.unsqueeze(1).unwrap(), 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
            },
        );
    }

    /// Hand-computed vectors of orpo-reference.md §1.1 (beta = 0.1, float64).
    #[test]
    fn odds_ratio_matches_the_reference_vectors() {
        let cases = [
            (-0.5, -1.0, 0.974077, -0.320300, 2.541494, -1.581977),
            (-1.2, -0.9, -0.463453, -0.951485, 1.431013, -1.685118),
            (-0.01, -2.0, 6.454753, -0.001572, 100.500833, -1.156518),
        ];
        for (c, r, z_ref, ls_ref, dzdc, dzdr) in cases {
            let cv = Var::new(&[c as f32], &Device::Cpu).unwrap();
            let rv = Var::new(&[r as f32], &Device::Cpu).unwrap();
            let (ratio, z) = odds_ratio(cv.as_tensor(), rv.as_tensor()).unwrap();
            assert!((z[0] - z_ref).abs() < 1e-5, "z {} vs {z_ref}", z[0]);
            let ls: f32 = ratio.to_vec1::<f32>().unwrap()[0];
            assert!((ls as f64 - ls_ref).abs() < 1e-5);
            let grads = ratio.sum_all().unwrap().backward().unwrap();
            let sig = 1.0 / (1.0 + z_ref.exp());
            let gc: f32 = grads.get(cv.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
            let gr: f32 = grads.get(rv.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
            assert!((gc as f64 - sig * dzdc).abs() < 1e-4 * dzdc.abs(), "{gc}");
            assert!((gr as f64 - sig * dzdr).abs() < 1e-4 * dzdr.abs(), "{gr}");
        }
    }
}
