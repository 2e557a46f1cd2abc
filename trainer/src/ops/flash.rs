//! Causal attention on the CPU in blocks of query rows, FlashAttention's tiling without its
//! online softmax: 64 query rows against every key they can see fit in L2 (128 KiB of scores at
//! 512 keys), so each row's softmax is done in one go. Only the keys a block can see are
//! multiplied (about half a dense product at full length) and no `[b, heads, t, t]` tensor is
//! ever made: the dense path's `q k^T` wrote 75 MB per layer at 8 x 512 tokens and ran at a
//! quarter of the speed of the other matmuls. The forward keeps each row's log-sum-exp; the
//! backward recomputes a block's probabilities from it, as FlashAttention-2 does.
//!
//! Layouts: `q`, `dq`, `o`: `[b, heads.q, t, dim]`; `k`, `v`, `dk`, `dv`: `[b, heads.kv, t, dim]`,
//! contiguous f32, roped already; query head `h` reads key/value head `h / (heads.q / heads.kv)`.

use rayon::prelude::*;

use super::cpu::{matmul, Mat};
use super::fused::{AttnMask, Heads};

/// Query rows per block (measured at 8 x 9 heads x 512 x 64 on this repo's 2-core VM: 32 rows
/// 80 GFLOP/s, 64 rows 100, 128 rows 97).
const BLOCK: usize = 64;

/// The blocks of query rows of one sequence: `(first row, rows, first key, keys)`, the keys
/// being the union of what the block's rows see (both ends grow with the row).
fn blocks(
    mask: &AttnMask,
    bi: usize,
    t: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
    (0..t).step_by(BLOCK).filter_map(move |r0| {
        let m = BLOCK.min(t - r0);
        let (klo, _) = mask.range(bi, r0);
        let (_, khi) = mask.range(bi, r0 + m - 1);
        (khi > klo).then(|| (r0, m, klo, khi - klo))
    })
}

/// Row `i`'s visible keys as offsets into its block's key range `klo .. klo + nk`.
fn span(mask: &AttnMask, bi: usize, i: usize, klo: usize, nk: usize) -> (usize, usize) {
    let (lo, hi) = mask.range(bi, i);
    let clamp = |x: usize| x.clamp(klo, klo + nk) - klo;
    (clamp(lo), clamp(hi).max(clamp(lo)))
}

/// Returns `(o, lse)`: the attention output and each query row's log-sum-exp of its scaled
/// scores (`-inf` for a row that sees no key; its output is 0).
pub(super) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, t): (usize, usize),
    heads: Heads,
    mask: &AttnMask,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let Heads {
        q: nh,
        kv: nkv,
        dim: d,
    } = heads;
    let rep = nh / nkv;
    assert_eq!(q.len(), b * nh * t * d, "flash attention: q shape");
    assert_eq!(k.len(), b * nkv * t * d, "flash attention: k shape");
    let mut o = vec![0f32; q.len()];
    let mut lse = vec![f32::NEG_INFINITY; b * nh * t];
    o.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each_init(
            || vec![0f32; BLOCK * t],
            |s, (bh, (o, lse))| {
                let bi = bh / nh;
                let q = &q[bh * t * d..][..t * d];
                let kv = (bh / rep) * t * d;
                let (k, v) = (&k[kv..][..t * d], &v[kv..][..t * d]);
                for (r0, m, klo, nk) in blocks(mask, bi, t) {
                    let s = &mut s[..m * nk];
                    let keys = &k[klo * d..(klo + nk) * d];
                    let q_blk = Mat::rows(&q[r0 * d..(r0 + m) * d], d);
                    matmul(
                        (m, nk, d),
                        s,
                        nk,
                        false,
                        q_blk,
                        Mat::transposed(keys, d),
                        scale,
                    );
                    for (r, row) in s.chunks_exact_mut(nk).enumerate() {
                        let (a, e) = span(mask, bi, r0 + r, klo, nk);
                        lse[r0 + r] = softmax_row(row, a, e);
                    }
                    let vals = Mat::rows(&v[klo * d..(klo + nk) * d], d);
                    let o_blk = &mut o[r0 * d..(r0 + m) * d];
                    matmul((m, d, nk), o_blk, d, false, Mat::rows(s, nk), vals, 1.0);
                }
            },
        );
    (o, lse)
}

/// Returns `(dq, dk, dv)` for the output gradient `go` (`q`'s layout), given the forward's
/// `lse`. `dq` and `dk` are taken back through the rotary embedding (`cos`, `sin`: `[t, dim / 2]`,
/// what roped `q` and `k`), so they are the gradients of the unroped projections. One rayon task
/// per key/value head accumulates its `dk`, `dv` over the query heads that read it.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    go: &[f32],
    lse: &[f32],
    (cos, sin): (&[f32], &[f32]),
    (b, t): (usize, usize),
    heads: Heads,
    mask: &AttnMask,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Heads {
        q: nh,
        kv: nkv,
        dim: d,
    } = heads;
    let rep = nh / nkv;
    assert!(
        q.len() == b * nh * t * d && go.len() == q.len() && lse.len() == b * nh * t,
        "flash attention: backward shapes"
    );
    assert!(
        cos.len() == t * d / 2 && sin.len() == cos.len(),
        "flash attention: rope tables"
    );
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    dq.par_chunks_mut(rep * t * d)
        .zip(dk.par_chunks_mut(t * d))
        .zip(dv.par_chunks_mut(t * d))
        .enumerate()
        .for_each_init(
            || (vec![0f32; BLOCK * t], vec![0f32; BLOCK * t]),
            |(s, dp), (bg, ((dq, dk), dv))| {
                let bi = bg / nkv;
                let (k, v) = (&k[bg * t * d..][..t * d], &v[bg * t * d..][..t * d]);
                for r in 0..rep {
                    // Heads of one group are consecutive: (bi * nkv + g) * rep + r.
                    let bh = bg * rep + r;
                    let q = &q[bh * t * d..][..t * d];
                    let go = &go[bh * t * d..][..t * d];
                    let lse = &lse[bh * t..][..t];
                    let dq = &mut dq[r * t * d..][..t * d];
                    for (r0, m, klo, nk) in blocks(mask, bi, t) {
                        let (s, dp) = (&mut s[..m * nk], &mut dp[..m * nk]);
                        let rows = r0 * d..(r0 + m) * d;
                        let keys = klo * d..(klo + nk) * d;
                        // p = exp(scale q k^T - lse), 0 outside each row's keys.
                        let q_blk = || Mat::rows(&q[rows.clone()], d);
                        let kt = Mat::transposed(&k[keys.clone()], d);
                        matmul((m, nk, d), s, nk, false, q_blk(), kt, scale);
                        // dp = go v^T
                        let go_blk = || Mat::rows(&go[rows.clone()], d);
                        let vt = Mat::transposed(&v[keys.clone()], d);
                        matmul((m, nk, d), dp, nk, false, go_blk(), vt, 1.0);
                        for (r, (p, dp)) in s
                            .chunks_exact_mut(nk)
                            .zip(dp.chunks_exact_mut(nk))
                            .enumerate()
                        {
                            let (a, e) = span(mask, bi, r0 + r, klo, nk);
                            softmax_backward_row(p, dp, a, e, lse[r0 + r], scale);
                        }
                        // dq = ds k, dk += ds^T q, dv += p^T go
                        let dq_blk = &mut dq[rows.clone()];
                        let kk = Mat::rows(&k[keys.clone()], d);
                        matmul((m, d, nk), dq_blk, d, false, Mat::rows(dp, nk), kk, 1.0);
                        // Both `[keys, dim] += block^T [rows, dim]`.
                        let acc = |dst: &mut [f32], blk: &[f32], rhs: Mat<'_>| {
                            let dst = &mut dst[keys.clone()];
                            matmul((nk, d, m), dst, d, true, Mat::transposed(blk, nk), rhs, 1.0)
                        };
                        acc(dk, dp, q_blk());
                        acc(dv, s, go_blk());
                    }
                    rope_backward(dq, cos, sin, d);
                }
                rope_backward(dk, cos, sin, d);
            },
        );
    (dq, dk, dv)
}

/// The transpose of rotate-half rope, in place on `[t, dim]` rows: rope is
/// `y = x cos + rot(x) sin` with `rot([a, b]) = [-b, a]`, so `g -> g cos + [g_b, -g_a] sin`.
fn rope_backward(g: &mut [f32], cos: &[f32], sin: &[f32], d: usize) {
    let half = d / 2;
    for ((row, c), s) in g
        .chunks_exact_mut(d)
        .zip(cos.chunks_exact(half))
        .zip(sin.chunks_exact(half))
    {
        let (a, b) = row.split_at_mut(half);
        for j in 0..half {
            let (ga, gb) = (a[j], b[j]);
            a[j] = ga * c[j] + gb * s[j];
            b[j] = gb * c[j] - ga * s[j];
        }
    }
}

/// Softmax of `row[a..e]` in place, zeros elsewhere; returns the log-sum-exp.
fn softmax_row(row: &mut [f32], a: usize, e: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { softmax_row_avx2(row, a, e) };
    }
    softmax_row_generic(row, a, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32], a: usize, e: usize) -> f32 {
    softmax_row_generic(row, a, e)
}

/// Lanes of the row loops: 8 independent accumulators so they vectorize.
const L: usize = 8;

#[inline(always)]
fn softmax_row_generic(row: &mut [f32], a: usize, e: usize) -> f32 {
    row[..a].fill(0.0);
    row[e..].fill(0.0);
    if a == e {
        return f32::NEG_INFINITY;
    }
    let seg = &mut row[a..e];
    let n = seg.len() / L * L;
    let mut lanes = [f32::NEG_INFINITY; L];
    for c in seg[..n].chunks_exact(L) {
        for i in 0..L {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let max = seg[n..]
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sums = [0f32; L];
    for c in seg[..n].chunks_exact_mut(L) {
        for i in 0..L {
            c[i] = super::head::exp_neg(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in &mut seg[n..] {
        *x = super::head::exp_neg(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in seg.iter_mut() {
        *x *= inv;
    }
    max + sum.ln()
}

/// Turns a row of scaled scores `s` into probabilities `p = exp(s - lse)` and the matching row
/// of `dp` into `ds = p (dp - sum(p dp)) * scale`, over `a..e`; zeros elsewhere.
fn softmax_backward_row(s: &mut [f32], dp: &mut [f32], a: usize, e: usize, lse: f32, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { softmax_backward_row_avx2(s, dp, a, e, lse, scale) };
    }
    softmax_backward_row_generic(s, dp, a, e, lse, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_backward_row_avx2(
    s: &mut [f32],
    dp: &mut [f32],
    a: usize,
    e: usize,
    lse: f32,
    scale: f32,
) {
    softmax_backward_row_generic(s, dp, a, e, lse, scale)
}

#[inline(always)]
fn softmax_backward_row_generic(
    s: &mut [f32],
    dp: &mut [f32],
    a: usize,
    e: usize,
    lse: f32,
    scale: f32,
) {
    for x in [&mut *s, &mut *dp] {
        x[..a].fill(0.0);
        x[e..].fill(0.0);
    }
    if a == e {
        return;
    }
    let (p, dp) = (&mut s[a..e], &mut dp[a..e]);
    let n = p.len() / L * L;
    let mut dots = [0f32; L];
    for (pc, dc) in p[..n].chunks_exact_mut(L).zip(dp[..n].chunks_exact(L)) {
        for i in 0..L {
            pc[i] = super::head::exp_neg(pc[i] - lse);
            dots[i] = pc[i].mul_add(dc[i], dots[i]);
        }
    }
    let mut dot: f32 = dots.iter().sum();
    for (pv, dv) in p[n..].iter_mut().zip(&dp[n..]) {
        *pv = super::head::exp_neg(*pv - lse);
        dot += *pv * dv;
    }
    for (d, &pv) in dp.iter_mut().zip(p.iter()) {
        *d = pv * (*d - dot) * scale;
    }
}
