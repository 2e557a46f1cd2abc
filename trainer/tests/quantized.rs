//! Quantized frozen bases (`model.quantize`): a base kept block-quantized must train exactly
//! like the same weights dequantized, since both compute `x·deq(W)ᵀ` and `dy·deq(W)`; only the
//! order of f32 sums differs (a tile at a time), so values and gradients agree to f32 rounding.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{fixture, job_for_case, pair_logps};
use orpo_api::spec::{JobSpec, Quantize};
use orpo_trainer::data::TokenizedPair;
use orpo_trainer::model::testing::{tiny_base, write_tiny_gguf_as};
use orpo_trainer::model::{held_weights, load_base, save_hf_folder, Arch, BaseModel};
use orpo_trainer::train::Session;
use rand::{Rng, SeedableRng};

/// The tiny fixture job (its data and hyper-parameters) on the model at `base`, with a fresh
/// adapter whose B is made non-zero below (a fresh B is zero and would hide A's gradients).
fn job_on(base: &Path, quantize: Quantize) -> JobSpec {
    let mut spec = job_for_case(&fixture("tiny_ga_clip"));
    spec.model.base = base.to_string_lossy().into_owned();
    spec.model.quantize = quantize;
    spec.lora.init_adapter = String::new();
    spec.train.gradient_checkpointing = true;
    spec
}

fn session(spec: &JobSpec, dropout: f64) -> Session {
    let mut s = Session::load(spec, &Device::Cpu).unwrap();
    s.adapter.dropout = dropout;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for l in 0..s.base.config.num_hidden_layers {
        for m in 0..7 {
            if let Some(pair) = s.adapter.get(l, m) {
                let dims = pair.b.dims().to_vec();
                let n: usize = dims.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
                pair.b
                    .set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
    }
    s
}

fn grads(s: &Session) -> BTreeMap<String, Tensor> {
    let pairs: Vec<&TokenizedPair> = s.train.iter().take(2).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    s.micro_batch(&pairs, 1, &mut rng).unwrap().0
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// Kept and dense sessions give the same log-probs (within `tol`) and LoRA gradients (within
/// 1e-5 of each tensor's largest entry), with and without LoRA dropout.
fn assert_same_training(kept: &JobSpec, dense: &JobSpec, tol: f64, what: &str) {
    for dropout in [0.0, 0.3] {
        let (k, d) = (session(kept, dropout), session(dense, dropout));
        assert!(
            !k.base.quantized.is_empty(),
            "{what}: nothing was kept quantized"
        );
        assert!(
            d.base.quantized.is_empty(),
            "{what}: the dense copy has quantized weights"
        );
        let (lk, ld) = (pair_logps(&k), pair_logps(&d));
        assert_eq!(lk.len(), ld.len());
        for (i, (a, b)) in lk.iter().zip(&ld).enumerate() {
            assert!((a - b).abs() <= tol, "{what}: log-prob {i}: {a} vs {b}");
        }
        let (gk, gd) = (grads(&k), grads(&d));
        assert_eq!(gk.len(), gd.len(), "{what}: gradient count");
        assert_eq!(gk.len(), 28, "{what}: every LoRA tensor has a gradient");
        for (name, g) in &gd {
            let scale = max_abs(g);
            let diff = max_abs(&(g - &gk[name]).unwrap());
            assert!(scale > 0.0, "{what}: {name}: zero gradient");
            assert!(
                diff <= 1e-5 * scale,
                "{what} (dropout {dropout}): {name} differs by {diff} (max {scale})"
            );
        }
    }
}

/// The memory estimate's weight bytes, worked out from the header or config alone, are the
/// bytes the loaded base really holds.
fn assert_held_as_estimated(path: &Path, base: &BaseModel, quantize: Quantize) {
    let held = held_weights(path, &base.config, quantize, 4)
        .unwrap()
        .expect("some weights are quantized");
    assert_eq!(held.bytes, base.precision().bytes, "{}", path.display());
    assert_eq!(held.quantized, base.quantized.len());
    let head = match base.config.tie_word_embeddings {
        true => "model.embed_tokens.weight",
        false => "lm_head.weight",
    };
    assert_eq!(held.head_quantized, base.quantized.contains_key(head));
    assert_eq!(
        held_weights(path, &base.config, Quantize::None, 4).unwrap(),
        None
    );
}

/// A llama.cpp-style GGUF whose matrices are Q8_0 or Q4_1 (Q/K rows permuted for llama), kept
/// as stored against the same file dequantized on load (`quantize = "none"`).
#[test]
fn kept_gguf_matrices_train_like_their_dequantized_copy() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, dtype) in [
        (Arch::Llama, GgmlDType::Q8_0),
        (Arch::Qwen2, GgmlDType::Q4_1),
    ] {
        let path = tmp.path().join(format!("tiny-{arch:?}.gguf"));
        write_tiny_gguf_as(&path, arch, 5, dtype).unwrap();
        let base = load_base(&path, DType::F32, &Device::Cpu, Quantize::Auto).unwrap();
        // 7 projections x 2 layers, the embedding, and Llama's untied head.
        let want = 14 + 1 + usize::from(arch == Arch::Llama);
        assert_eq!(base.quantized.len(), want, "{arch:?}");
        let name = format!(
            "{}, f32 norms",
            orpo_trainer::model::quant::ggml_name(dtype)
        );
        assert_eq!(base.precision().name, name);
        assert_held_as_estimated(&path, &base, Quantize::Auto);
        let what = format!("{arch:?} {dtype:?}");
        assert_same_training(
            &job_on(&path, Quantize::Auto),
            &job_on(&path, Quantize::None),
            1e-5,
            &what,
        );
    }
}

/// A Hugging Face base quantized on load (`quantize = "q8_0"`, and `"q4_k"`, which falls back to
/// Q5_0 where rows are not whole 256-blocks, as llama.cpp's quantizer does) against a folder
/// holding the same quantized weights dequantized.
#[test]
fn hf_base_quantized_on_load_trains_like_its_dequantized_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    let tiny = tiny_base(Arch::Llama, 3, DType::F32, &Device::Cpu).unwrap();
    save_hf_folder(&tiny, &tiny.weights, &src).unwrap();
    for (quantize, held) in [(Quantize::Q8_0, "q8_0"), (Quantize::Q4K, "q5_0")] {
        let kept = load_base(&src, DType::F32, &Device::Cpu, quantize).unwrap();
        assert_eq!(kept.precision().name, format!("{held}, f32 norms"));
        assert_held_as_estimated(&src, &kept, quantize);
        let q_bytes: usize = kept.quantized.values().map(|q| q.bytes()).sum();
        let f32_bytes: usize = kept
            .quantized
            .values()
            .map(|q| q.dims().0 * q.dims().1 * 4)
            .sum();
        assert!(
            q_bytes * 3 < f32_bytes,
            "{held}: {q_bytes} of {f32_bytes} bytes"
        );
        let mut dense = kept.weights.clone();
        for (name, q) in &kept.quantized {
            dense.insert(name.clone(), q.dequantize(DType::F32).unwrap());
        }
        let copy = tmp.path().join(format!("dequantized-{held}"));
        save_hf_folder(&tiny, &dense, &copy).unwrap();
        assert_same_training(
            &job_on(&src, quantize),
            &job_on(&copy, Quantize::None),
            1e-5,
            held,
        );
    }
}

/// `model.quantize` as job files spell it, and a clear error for a type we do not offer.
#[test]
fn quantize_names_parse_as_job_files_write_them() {
    for (text, want) in [
        ("auto", Quantize::Auto),
        ("none", Quantize::None),
        ("q4_0", Quantize::Q4_0),
        ("q8_0", Quantize::Q8_0),
        ("q4_k", Quantize::Q4K),
        ("q6_k", Quantize::Q6K),
    ] {
        let job =
            format!("[model]\nbase = \"m\"\nquantize = \"{text}\"\n[data]\ntrain = \"t.jsonl\"\n");
        let spec = JobSpec::parse(&job, Path::new("job.toml")).unwrap();
        assert_eq!(spec.model.quantize, want);
        assert_eq!(want.as_str(), text);
    }
    let err = JobSpec::parse(
        "[model]\nbase = \"m\"\nquantize = \"nf4\"\n[data]\ntrain = \"t.jsonl\"\n",
        Path::new("job.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("quantize") && err.contains("q4_k"), "{err}");
}

/// Finding (the interop run): the exports at the end of training merged the job's own base,
/// kept quantized, and panicked looking for its weights among the dense ones. A kept base now
/// merges in full precision: the same merged weights as the dequantized base, and the final
/// folder (adapter, GGUF adapter, merged folder, f16 GGUF) is written.
#[test]
fn a_kept_base_merges_and_exports_like_its_dequantized_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    write_tiny_gguf_as(&path, Arch::Llama, 5, GgmlDType::Q8_0).unwrap();
    let mut spec = job_on(&path, Quantize::Auto);
    spec.export.merged = true;
    spec.export.gguf_adapter = true;
    spec.export.gguf = orpo_api::spec::GgufExport::F16;
    let (k, d) = (
        session(&spec, 0.0),
        session(&job_on(&path, Quantize::None), 0.0),
    );
    let (mk, md) = (
        orpo_trainer::export::merged_weights(&k.base, &k.adapter).unwrap(),
        orpo_trainer::export::merged_weights(&d.base, &d.adapter).unwrap(),
    );
    assert_eq!(mk.len(), md.len());
    for (name, w) in &md {
        assert_eq!(max_abs(&(w - &mk[name]).unwrap()), 0.0, "{name}");
    }
    let out = tmp.path().join("final");
    orpo_trainer::export::write_final(&k, &out).unwrap();
    for file in [
        "adapter_model.safetensors",
        "merged/model.safetensors",
        "model-f16.gguf",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
}
