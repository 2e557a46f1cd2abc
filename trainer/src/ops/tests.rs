//! Each op against the composite candle path: values and gradients.

use super::*;
use candle_core::{DType, Device, Var, D};

use crate::model::quant::Frozen;

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
        .to_dtype(DType::F32)
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
fn check(shape: &[usize], ours: impl Fn(&Tensor) -> Tensor, reference: impl Fn(&Tensor) -> Tensor) {
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
        |x| frozen_linear(x, &Frozen::Dense(w.clone()), Some(&b)).unwrap(),
        |x| {
            x.broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
        },
    );
    let x = Var::from_tensor(&randn(&[3, 8], 1)).unwrap();
    let grads = frozen_linear(x.as_tensor(), &Frozen::Dense(w.clone()), None)
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
        |h| target_logprobs(h, &Frozen::Dense(w.clone()), &t).unwrap(),
        |h| {
            let lsm = candle_nn::ops::log_softmax(&h.matmul(&w.t().unwrap()).unwrap(), D::Minus1)
                .unwrap();
            lsm.gather(&t.unsqueeze(1).unwrap(), 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
        },
    );
}

/// The CPU kernel over several chunks (3 rows each, the last one short) and a vocabulary that
/// is not a multiple of its 8 lanes, against the composite log-softmax.
#[test]
fn target_logprobs_in_chunks_match_log_softmax_and_gather() {
    let w = randn(&[37, 6], 9);
    let t = Tensor::new(&[3u32, 0, 36, 7, 20, 35, 1], &Device::Cpu).unwrap();
    check(
        &[7, 6],
        |h| head::target_logprobs_chunked(h, &Frozen::Dense(w.clone()), &t, 3).unwrap(),
        |h| {
            let lsm = candle_nn::ops::log_softmax(&h.matmul(&w.t().unwrap()).unwrap(), D::Minus1)
                .unwrap();
            lsm.gather(&t.unsqueeze(1).unwrap(), 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
        },
    );
}

/// A quantized head read a vocabulary tile at a time (tiles of 7 rows over 37, the last
/// short; chunks of 3 rows) against the composite log-softmax of the same weight dequantized.
#[test]
fn target_logprobs_over_a_tiled_quantized_head_match_the_dequantized_one() {
    use crate::model::quant::QWeight;
    use candle_core::quantized::{GgmlDType, QTensor};
    let w = randn(&[37, 32], 9);
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let qw = QWeight::tiled(
        &q.data().unwrap(),
        GgmlDType::Q8_0,
        (37, 32),
        None,
        &Device::Cpu,
        7,
    )
    .unwrap();
    assert_eq!(qw.n_tiles(), 6);
    let dense = qw.dequantize(DType::F32).unwrap();
    let head = Frozen::Quant(std::sync::Arc::new(qw));
    let t = Tensor::new(&[3u32, 0, 36, 7, 20, 35, 1], &Device::Cpu).unwrap();
    check(
        &[7, 32],
        |h| head::target_logprobs_chunked(h, &head, &t, 3).unwrap(),
        |h| {
            let lsm =
                candle_nn::ops::log_softmax(&h.matmul(&dense.t().unwrap()).unwrap(), D::Minus1)
                    .unwrap();
            lsm.gather(&t.unsqueeze(1).unwrap(), 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
        },
    );
}

#[test]
fn target_logprobs_reject_targets_outside_the_vocabulary() {
    let w = randn(&[5, 4], 3);
    let h = randn(&[2, 4], 4);
    let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let err = target_logprobs(&h, &Frozen::Dense(w.clone()), &t)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 5 outside the vocabulary of 5"),
        "{err}"
    );
}

/// Hand-computed vectors of docs/orpo.md#test-vectors (beta = 0.1, float64).
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

/// Compares `ours` with `reference` on the same Vars: values, and the gradient of every Var
/// under a fixed random projection of the output.
fn check_many(vars: &[&Var], ours: impl Fn() -> Tensor, reference: impl Fn() -> Tensor, tol: f32) {
    let (y1, y2) = (ours(), reference());
    assert!(
        max_diff(&y1, &y2) < tol,
        "values differ by {}",
        max_diff(&y1, &y2)
    );
    let proj = randn(y1.dims(), 99);
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
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (
            g1.get(v.as_tensor()).unwrap(),
            g2.get(v.as_tensor()).unwrap(),
        );
        assert!(
            max_diff(a, b) < tol,
            "grad of input {i} differs by {}",
            max_diff(a, b)
        );
    }
}

#[test]
fn lora_linear_matches_the_composite_path() {
    let w = randn(&[6, 8], 11);
    let bias = randn(&[6], 12);
    let x = Var::from_tensor(&randn(&[2, 3, 8], 13)).unwrap();
    let a = Var::from_tensor(&randn(&[4, 8], 14)).unwrap();
    let b = Var::from_tensor(&randn(&[6, 4], 15)).unwrap();
    let mask = randn(&[6, 8], 16)
        .ge(0.0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(2.0, 0.0)
        .unwrap();
    for m in [None, Some(&mask)] {
        let lw = LoraWeights {
            a: a.as_tensor(),
            b: b.as_tensor(),
            scale: 0.5,
            dropout_mask: m,
        };
        check_many(
            &[&x, &a, &b],
            || lora_linear(x.as_tensor(), &Frozen::Dense(w.clone()), Some(&bias), &lw).unwrap(),
            || {
                let x2 = x.as_tensor().reshape((6, 8)).unwrap();
                let xl = match m {
                    Some(m) => (&x2 * m).unwrap(),
                    None => x2.clone(),
                };
                let base = x2
                    .matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap();
                let delta = xl
                    .matmul(&a.as_tensor().t().unwrap())
                    .unwrap()
                    .matmul(&b.as_tensor().t().unwrap())
                    .unwrap();
                (base + (delta * 0.5).unwrap())
                    .unwrap()
                    .reshape((2, 3, 6))
                    .unwrap()
            },
            1e-5,
        );
    }
}

/// The dense reference: rope, repeated kv heads, softmax over `scale q k^T + bias`.
fn attention_reference(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    bias: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    heads: Heads,
) -> Tensor {
    let (b, t, _) = q.dims3().unwrap();
    let Heads {
        q: nh,
        kv: nkv,
        dim: d,
    } = heads;
    let split = |x: &Tensor, n: usize| {
        x.reshape((b, t, n, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let qr = candle_nn::rotary_emb::rope_slow(&split(q, nh), cos, sin).unwrap();
    let kr = candle_nn::rotary_emb::rope_slow(&split(k, nkv), cos, sin).unwrap();
    // Query head h reads kv head h / rep: repeat each kv head rep times in a row.
    let rep = |x: Tensor| {
        x.unsqueeze(2)
            .unwrap()
            .repeat((1, 1, nh / nkv, 1, 1))
            .unwrap()
            .reshape((b, nh, t, d))
            .unwrap()
    };
    let (kr, vh) = (rep(kr), rep(split(v, nkv)));
    // A finite mask (exp underflows to exactly 0), and rows that see no key (padded queries
    // under a window) multiplied by 0, as the kernel makes them: -inf would give NaN there.
    let dt = q.dtype();
    let seen = bias
        .max_keepdim(D::Minus1)
        .unwrap()
        .eq(0.0)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let finite = bias.clamp(-1e9, 0.0).unwrap().to_dtype(dt).unwrap();
    let s = (qr.matmul(&kr.t().unwrap()).unwrap() * (1.0 / (d as f64).sqrt()))
        .unwrap()
        .broadcast_add(&finite)
        .unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1)
        .unwrap()
        .broadcast_mul(&seen)
        .unwrap();
    p.matmul(&vh)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, nh * d))
        .unwrap()
}

/// Both attention paths (the CPU blocked kernel; the dense one CUDA takes, run here on f64)
/// against the dense reference: several query blocks, padding, GQA, a sliding window, and rows
/// that see no key.
#[test]
fn attention_matches_the_composite_path() {
    // (t, query heads, kv heads, head size), the sequences' real lengths, the window.
    type Case = (
        (usize, usize, usize, usize),
        &'static [usize],
        Option<usize>,
    );
    let cases: [Case; 3] = [
        ((5, 4, 2, 4), &[5, 3], None),
        ((150, 6, 2, 8), &[150, 97], None),
        ((140, 4, 4, 8), &[140, 70], Some(33)),
    ];
    for (case, &((t, nh, nkv, d), lens, window)) in cases.iter().enumerate() {
        let b = lens.len();
        let seed = 20 + 10 * case as u64;
        let q = Var::from_tensor(&randn(&[b, t, nh * d], seed)).unwrap();
        let k = Var::from_tensor(&randn(&[b, t, nkv * d], seed + 1)).unwrap();
        let v = Var::from_tensor(&randn(&[b, t, nkv * d], seed + 2)).unwrap();
        let cos = randn(&[t, d / 2], seed + 3);
        let sin = randn(&[t, d / 2], seed + 4);
        let mask = AttnMask::causal(lens, t, window, &Device::Cpu);
        let heads = Heads {
            q: nh,
            kv: nkv,
            dim: d,
        };
        let bias = mask.bias().unwrap();
        let reference = || {
            attention_reference(
                (q.as_tensor(), k.as_tensor(), v.as_tensor()),
                &bias,
                (&cos, &sin),
                heads,
            )
        };
        let run = |[q, k, v]: [&Var; 3], cos: &Tensor, sin: &Tensor| {
            let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            attention(q, k, v, &mask, cos, sin, heads).unwrap()
        };
        let ours = || run([&q, &k, &v], &cos, &sin);
        check_many(&[&q, &k, &v], ours, reference, 2e-5);
        // The dense path, taken for anything but f32 on the CPU (f64 here). It gives NaN for
        // rows that see no key (no real model has them), which only the windowed case has.
        if window.is_some() {
            continue;
        }
        let to64 = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
        let [q, k, v] = [&q, &k, &v].map(|x| Var::from_tensor(&to64(x.as_tensor())).unwrap());
        let (cos, sin) = (to64(&cos), to64(&sin));
        let to32 = |x: Tensor| x.to_dtype(DType::F32).unwrap();
        check_many(
            &[&q, &k, &v],
            || to32(run([&q, &k, &v], &cos, &sin)),
            || {
                to32(attention_reference(
                    (q.as_tensor(), k.as_tensor(), v.as_tensor()),
                    &bias,
                    (&cos, &sin),
                    heads,
                ))
            },
            1e-6,
        );
    }
}

#[test]
fn swiglu_matches_the_composite_path() {
    let g = Var::from_tensor(&randn(&[3, 7], 31)).unwrap();
    let u = Var::from_tensor(&randn(&[3, 7], 32)).unwrap();
    check_many(
        &[&g, &u],
        || swiglu(g.as_tensor(), u.as_tensor()).unwrap(),
        || (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap(),
        1e-6,
    );
}
