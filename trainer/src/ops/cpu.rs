//! CPU kernels for the fused ops, on rayon's threads: element-wise passes, and a checked f32
//! matmul on slices (the `gemm` crate candle itself calls) for the ops that tile their own.
//!
//! candle runs element-wise ops on the calling thread (see `runtime`: its own pool cost more
//! than it saved), one op per pass over memory. For the few places where a decoder layer does
//! several passes over `[tokens, intermediate]` tensors (SwiGLU and its gradient, the LoRA
//! sum), these kernels do one pass, in parallel, in 8-lane loops that vectorize (AVX2 where the
//! CPU has it). Each returns `None` when its inputs are not contiguous f32 CPU tensors of one
//! shape: the caller then takes the composite path.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Device, Result, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise the task, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// Runs `f` on the contiguous f32 data of each tensor, if they all have it and one shape.
fn with_slices<const N: usize, R>(ts: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> R) -> Option<R> {
    let shape = ts[0].shape();
    if ts.iter().any(|t| t.shape() != shape) {
        return None;
    }
    with_data(ts, f)
}

/// Runs `f` on the contiguous f32 data of each tensor, if they all are contiguous f32 CPU
/// tensors (of any shapes).
pub(super) fn with_data<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Option<R> {
    let guards = ts.map(|t| t.storage_and_layout());
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let (Storage::Cpu(CpuStorage::F32(v)), Some((lo, hi))) =
            (&**storage, layout.contiguous_offsets())
        else {
            return None;
        };
        *slot = &v[lo..hi];
    }
    Some(f(slices))
}

/// A row-major view: data, row stride, column stride (in elements).
pub(super) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    pub(super) fn rows(data: &'a [f32], rs: usize) -> Self {
        Mat { data, rs, cs: 1 }
    }

    /// The transpose of a row-major matrix with row stride `rs`.
    pub(super) fn transposed(data: &'a [f32], rs: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: rs,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] = beta * lhs[m, k] rhs[k, n]` (`+=` with `acc`), on the calling thread; `dst` is
/// row-major with row stride `dst_rs`. For products inside a rayon task.
pub(super) fn matmul(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
) {
    gemm_f32(mnk, dst, dst_rs, acc, lhs, rhs, beta, Parallelism::None)
}

/// [`matmul`] on all of rayon's threads, for one large product (`beta` 1).
pub(super) fn matmul_par(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) {
    let par = Parallelism::Rayon(rayon::current_num_threads());
    gemm_f32(mnk, dst, dst_rs, acc, lhs, rhs, 1.0, par)
}

#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    beta: f32,
    parallelism: Parallelism,
) {
    let out = Mat::rows(dst, dst_rs);
    assert!(
        out.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n),
        "matmul operand out of bounds"
    );
    // SAFETY: the assert above keeps every index the product reads or writes inside its slice,
    // and `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `K` outputs of `f` applied element by element to `N` inputs of one shape.
fn zip_map<const N: usize, const K: usize>(
    ts: [&Tensor; N],
    f: impl Fn([f32; N]) -> [f32; K] + Sync,
) -> Result<Option<[Tensor; K]>> {
    let shape = ts[0].shape().clone();
    let outs = with_slices(ts, |xs| {
        let n = xs[0].len();
        let mut outs: [Vec<f32>; K] = std::array::from_fn(|_| Vec::with_capacity(n));
        {
            let mut spare: Vec<&mut [MaybeUninit<f32>]> = outs
                .iter_mut()
                .map(|o| &mut o.spare_capacity_mut()[..n])
                .collect();
            let mut chunks: Vec<Vec<&mut [MaybeUninit<f32>]>> = Vec::new();
            for s in spare.iter_mut() {
                for (i, c) in s.chunks_mut(CHUNK).enumerate() {
                    if chunks.len() <= i {
                        chunks.push(Vec::with_capacity(K));
                    }
                    chunks[i].push(c);
                }
            }
            chunks.into_par_iter().enumerate().for_each(|(i, mut dst)| {
                let lo = i * CHUNK;
                fill(&xs, lo, &mut dst, &f);
            });
        }
        for o in outs.iter_mut() {
            // SAFETY: every element below n was written by exactly one chunk above.
            unsafe { o.set_len(n) };
        }
        outs
    });
    let Some(outs) = outs else { return Ok(None) };
    let mut tensors = Vec::with_capacity(K);
    for o in outs {
        tensors.push(Tensor::from_vec(o, shape.clone(), &Device::Cpu)?);
    }
    Ok(Some(tensors.try_into().expect("K outputs")))
}

/// One chunk: the AVX2 build of [`fill_generic`] where the CPU has it.
fn fill<const N: usize, const K: usize>(
    xs: &[&[f32]; N],
    lo: usize,
    dst: &mut [&mut [MaybeUninit<f32>]],
    f: &(impl Fn([f32; N]) -> [f32; K] + Sync),
) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { fill_avx2(xs, lo, dst, f) };
    }
    fill_generic(xs, lo, dst, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fill_avx2<const N: usize, const K: usize>(
    xs: &[&[f32]; N],
    lo: usize,
    dst: &mut [&mut [MaybeUninit<f32>]],
    f: &(impl Fn([f32; N]) -> [f32; K] + Sync),
) {
    fill_generic(xs, lo, dst, f)
}

#[inline(always)]
fn fill_generic<const N: usize, const K: usize>(
    xs: &[&[f32]; N],
    lo: usize,
    dst: &mut [&mut [MaybeUninit<f32>]],
    f: &(impl Fn([f32; N]) -> [f32; K] + Sync),
) {
    let len = dst[0].len();
    let ins: [&[f32]; N] = std::array::from_fn(|j| &xs[j][lo..lo + len]);
    for i in 0..len {
        let y = f(std::array::from_fn(|j| ins[j][i]));
        for (k, d) in dst.iter_mut().enumerate() {
            d[i].write(y[k]);
        }
    }
}

/// `a + b`.
pub(super) fn add(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    Ok(zip_map([a, b], |[a, b]| [a + b])?.map(|[y]| y))
}

/// `silu(gate) * up`.
pub(super) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    Ok(zip_map([gate, up], |[x, u]| [x * sigmoid(x) * u])?.map(|[y]| y))
}

/// The gradients of [`swiglu`] for the upstream gradient `g`: `(d gate, d up)`.
pub(super) fn swiglu_backward(
    gate: &Tensor,
    up: &Tensor,
    g: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let grads = zip_map([gate, up, g], |[x, u, g]| {
        let s = sigmoid(x);
        // silu'(x) = sig(x) * (1 + x * (1 - sig(x)))
        [g * u * s * (1.0 + x * (1.0 - s)), g * x * s]
    })?;
    Ok(grads.map(|[dgate, dup]| (dgate, dup)))
}

/// `1 / (1 + e^-x)` from `e^-|x|`, so the exponential never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = super::head::exp_neg(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

/// The input gradient of RMSNorm (`y = w * x * rstd`, in f32) for `x`, `g: [.., n]` and
/// `w: [n]`: `dx = rstd * (g w - xhat * mean(g w xhat))`, `xhat = x * rstd`, one pass per row.
pub(super) fn rms_norm_backward(
    x: &Tensor,
    g: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<Option<Tensor>> {
    let n = w.dim(0)?;
    let shape = x.shape().clone();
    if g.shape() != x.shape() {
        return Ok(None);
    }
    let out = with_data([x, g, w], |[x, g, w]| {
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(dx, (x, g))| rms_norm_backward_row(dx, x, g, w, eps));
        dx
    });
    match out {
        Some(dx) => Ok(Some(Tensor::from_vec(dx, shape, &Device::Cpu)?)),
        None => Ok(None),
    }
}

fn rms_norm_backward_row(dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
    let n = x.len() as f32;
    let (mut ss, mut gwx) = (0f32, 0f32);
    for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
        ss += x * x;
        gwx += g * w * x;
    }
    let rstd = 1.0 / (ss / n + eps).sqrt();
    // mean(g w xhat) * rstd, with xhat = x * rstd.
    let k = gwx / n * rstd * rstd;
    for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
        *dx = rstd * (g * w - x * k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several rayon chunks and a ragged tail, values from -30 to 30, against candle's ops.
    #[test]
    fn swiglu_and_its_gradient_match_candle_across_chunks() {
        let n = 2 * CHUNK + 1234;
        let ramp = |k: f32| -> Tensor {
            let v: Vec<f32> = (0..n).map(|i| ((i as f32 * k) % 60.0) - 30.0).collect();
            Tensor::from_vec(v, (n / 2, 2), &Device::Cpu).unwrap()
        };
        let (x, u, g) = (ramp(0.37), ramp(0.11), ramp(0.05));
        let close = |a: &Tensor, b: &Tensor| {
            let d: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 2e-5 * 900.0, "max diff {d}");
        };
        let y = swiglu(&x, &u).unwrap().unwrap();
        close(&y, &(x.silu().unwrap() * &u).unwrap());
        let (dgate, dup) = swiglu_backward(&x, &u, &g).unwrap().unwrap();
        let sig = candle_nn::ops::sigmoid(&x).unwrap();
        close(&dup, &((&g * &x).unwrap() * &sig).unwrap());
        let dsilu =
            (&sig * ((&x * sig.affine(-1.0, 1.0).unwrap()).unwrap() + 1.0).unwrap()).unwrap();
        close(&dgate, &(((&g * &u).unwrap()) * dsilu).unwrap());
        let s = add(&x, &u).unwrap().unwrap();
        close(&s, &(&x + &u).unwrap());
        assert!(
            add(&x, &x.t().unwrap()).unwrap().is_none(),
            "a transposed input takes the composite path"
        );
    }
}
