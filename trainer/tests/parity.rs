//! Parity with TRL's ORPOTrainer on the tiny random models in `tests/fixtures/`.
//!
//! Every number compared here comes from `tests/parity/trl_reference.py` (TRL 1.16.0,
//! transformers 5.24.0, torch 2.15.0, peft 0.21.2, CPU, f32), stored in
//! `tests/fixtures/parity/<case>.json` with the exact configuration it ran. The Rust side builds
//! the same job from that configuration, starts from the same initial adapter (TRL saved it) and
//! reads the rows in the same order (`data.shuffle = false`; TRL with a SequentialSampler).
//!
//! `tiny_truncate` runs with max_length 64 on rows written to be cut by TRL 1.x's rule (whole
//! prompt kept, each answer cut to `max_length - prompt`); the other cases cut nothing.

mod common;

use common::{assert_close, fixture, job_for_case, run_case};
use orpo_trainer::data::TokenizedPair;
use orpo_trainer::train::Session;

const CASES: [&str; 4] = ["tiny_fresh", "tiny_ga_clip", "tiny_qwen2", "tiny_truncate"];

/// TRL's tokenization (chat template, BOS/EOS rules, prompt/answer split, labels) row by row.
#[test]
fn tokenization_matches_trl() {
    for case in CASES {
        let fx = fixture(case);
        let spec = job_for_case(&fx);
        let session = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
        for (which, ours, theirs) in [
            ("train", &session.train, &fx["tokenized_train"]),
            ("eval", &session.eval, &fx["tokenized_eval"]),
        ] {
            let theirs = theirs.as_array().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{case} {which}: row count");
            for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
                check_row(o, t, &format!("{case} {which} row {i}"));
            }
        }
    }
}

fn check_row(ours: &TokenizedPair, trl: &serde_json::Value, what: &str) {
    let ids = |k: &str| -> Vec<i64> { serde_json::from_value(trl[k].clone()).unwrap() };
    let as_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    assert_eq!(
        as_i64(&ours.prompt_ids),
        ids("prompt_input_ids"),
        "{what}: prompt ids"
    );
    assert_eq!(
        as_i64(&ours.chosen_ids),
        ids("chosen_input_ids"),
        "{what}: chosen ids"
    );
    assert_eq!(
        ours.chosen_labels,
        ids("chosen_labels"),
        "{what}: chosen labels"
    );
    assert_eq!(
        as_i64(&ours.rejected_ids),
        ids("rejected_input_ids"),
        "{what}: rejected ids"
    );
    assert_eq!(
        ours.rejected_labels,
        ids("rejected_labels"),
        "{what}: rejected labels"
    );
}

/// `trainer.evaluate()` at the base weights: within 1e-4 absolute, accuracies exactly.
#[test]
fn eval_at_base_weights_matches_trl() {
    for case in CASES {
        let fx = fixture(case);
        let session = Session::load(&job_for_case(&fx), &candle_core::Device::Cpu).unwrap();
        let ours = session.evaluate(false).unwrap();
        compare_eval(&ours, &fx["eval_base"]["metrics"], &format!("{case} base"));
    }
}

/// `trainer.evaluate()` with TRL's own trained adapter (saved after its 5 steps), loaded from
/// the PEFT folder: checks adapter loading and the LoRA forward apart from our training.
#[test]
fn eval_with_trls_final_adapter_matches_trl() {
    for case in CASES {
        let fx = fixture(case);
        let mut spec = job_for_case(&fx);
        spec.lora.init_adapter = common::fixtures()
            .join("parity")
            .join(fx["final_adapter"].as_str().unwrap())
            .to_string_lossy()
            .into_owned();
        let session = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
        let ours = session.evaluate(true).unwrap();
        compare_eval(
            &ours,
            &fx["eval_final"]["metrics"],
            &format!("{case} final adapter"),
        );
    }
}

fn compare_eval(
    ours: &std::collections::BTreeMap<String, f64>,
    theirs: &serde_json::Value,
    what: &str,
) {
    let mut compared = 0;
    let mut worst = (0.0f64, String::new());
    for (name, value) in ours {
        let Some(want) = theirs[name].as_f64() else {
            continue;
        };
        if name.ends_with("accuracies") {
            // TRL averages in f32: compare at that precision, exactly.
            assert_eq!(*value as f32, want as f32, "{what} {name}");
        } else {
            let diff = (value - want).abs();
            assert!(diff < 1e-4, "{what} {name}: ours {value} vs TRL {want}");
            if diff > worst.0 {
                worst = (diff, name.clone());
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 12, "{what}: every TRL eval metric is compared");
    eprintln!(
        "{what}: eval, largest |orpod - TRL| = {:.2e} ({})",
        worst.0, worst.1
    );
}

/// The first five optimizer steps: loss, grad_norm, learning rate, epoch and every ORPO metric
/// within 1e-3 relative.
#[test]
fn first_five_steps_match_trl() {
    for case in CASES {
        let fx = fixture(case);
        let (records, _) = run_case(&fx);
        let logs = fx["train_logs"].as_array().unwrap();
        let mut worst = 0.0f64;
        let train: Vec<_> = records
            .iter()
            .filter(|r| r.learning_rate.is_some())
            .collect();
        assert_eq!(train.len(), logs.len(), "{case}: logged steps");
        for (ours, theirs) in train.iter().zip(logs) {
            let step = ours.step;
            assert_eq!(step as u64, theirs["global_step"].as_u64().unwrap());
            assert_close(
                ours.grad_norm.unwrap(),
                theirs["grad_norm"].as_f64().unwrap(),
                1e-3,
                &format!("{case} step {step} grad_norm"),
            );
            assert_close(
                ours.learning_rate.unwrap(),
                theirs["learning_rate"].as_f64().unwrap(),
                1e-9,
                &format!("{case} step {step} learning_rate"),
            );
            assert_close(
                ours.epoch,
                theirs["epoch"].as_f64().unwrap(),
                1e-9,
                &format!("{case} step {step} epoch"),
            );
            for (name, value) in &ours.metrics {
                let want = theirs[name]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{case}: TRL logged no {name}"));
                assert_close(*value, want, 1e-3, &format!("{case} step {step} {name}"));
                worst = worst.max((value - want).abs() / want.abs().max(1e-6));
            }
        }
        eprintln!("{case}: 5 steps, largest relative |orpod - TRL| over all metrics = {worst:.2e}");
    }
}

/// Clipping must really act in the case that tests it, or the test proves nothing about it.
#[test]
fn clipping_case_clips() {
    let fx = fixture("tiny_ga_clip");
    let max = fx["orpo_config_kwargs"]["max_grad_norm"].as_f64().unwrap();
    let clipped = fx["train_logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["grad_norm"].as_f64().unwrap() > max)
        .count();
    assert!(
        clipped >= 1,
        "no logged step of tiny_ga_clip has grad_norm > {max}"
    );
    assert_eq!(fx["orpo_config_kwargs"]["gradient_accumulation_steps"], 2);
}

/// The truncation case must really cut, or it proves nothing about truncation: some sequences
/// of TRL's tokenization end at max_length with answer tokens (labels) removed, in training and
/// in eval, and no prompt alone fills max_length (orpod refuses those rows).
#[test]
fn truncation_case_truncates() {
    let fx = fixture("tiny_truncate");
    let max = fx["orpo_config_kwargs"]["max_length"].as_u64().unwrap() as usize;
    assert!(max < 256, "tiny_truncate runs with a small max_length");
    for which in ["train", "eval"] {
        let lengths = fx["truncation"][which].as_array().unwrap();
        let rows = fx[format!("tokenized_{which}")].as_array().unwrap();
        assert_eq!(lengths.len(), rows.len());
        let mut cut = 0;
        for (i, (l, row)) in lengths.iter().zip(rows).enumerate() {
            let len = |k: &str| l[k].as_u64().unwrap() as usize;
            assert!(
                len("prompt_len") < max,
                "{which} row {i}: the prompt fills max_length"
            );
            for side in ["chosen", "rejected"] {
                let ids = row[format!("{side}_input_ids")].as_array().unwrap().len();
                let labels = row[format!("{side}_labels")].as_array().unwrap().len();
                assert_eq!(ids, len(&format!("{side}_len")), "{which} row {i} {side}");
                assert_eq!(labels, ids, "{which} row {i} {side}");
                let full = len(&format!("{side}_len_untruncated"));
                assert_eq!(
                    ids,
                    full.min(max),
                    "{which} row {i} {side}: TRL 1.x keeps min(len, max_length)"
                );
                cut += usize::from(full > max);
            }
        }
        assert!(cut >= 3, "{which}: only {cut} sequences were cut");
    }
    let fills = fx["prompt_fills_max_length"].as_array().unwrap();
    assert!(!fills.is_empty());
    for f in fills {
        assert!(f["prompt_len"].as_u64().unwrap() as usize >= max);
        assert!(f["chosen_labels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x == -100));
    }
}

/// A fused op without a backward would cut the graph silently; with a non-zero initial B
/// (`init_lora_weights=False`) every A and B tensor must get a non-zero gradient in step one.
#[test]
fn every_lora_tensor_gets_a_gradient() {
    let fx = fixture("tiny_ga_clip");
    let session = Session::load(&job_for_case(&fx), &candle_core::Device::Cpu).unwrap();
    let pairs: Vec<&TokenizedPair> = session.train.iter().take(2).collect();
    let mut rng = rand::SeedableRng::seed_from_u64(0);
    let (grads, _, _) = session.micro_batch(&pairs, 1, &mut rng).unwrap();
    let names = session.adapter.named_vars();
    assert_eq!(names.len(), 28, "2 layers x 7 modules x (A, B)");
    for (name, _) in names {
        let g = grads
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}
