//! Gradient checkpointing (`train.gradient_checkpointing = true`) recomputes each decoder layer
//! in the backward pass; it must change memory, not numbers.

mod common;

use common::{assert_close, fixture, job_for_case, run_case_spec};
use orpo_trainer::data::TokenizedPair;
use orpo_trainer::train::Session;
use rand::SeedableRng;

fn grads(
    checkpointing: bool,
    dropout: f64,
) -> std::collections::BTreeMap<String, candle_core::Tensor> {
    let mut spec = job_for_case(&fixture("tiny_ga_clip"));
    spec.train.gradient_checkpointing = checkpointing;
    let mut session = Session::load(&spec, &candle_core::Device::Cpu).unwrap();
    session.adapter.dropout = dropout;
    let pairs: Vec<&TokenizedPair> = session.train.iter().take(2).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    session.micro_batch(&pairs, 1, &mut rng).unwrap().0
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    for dropout in [0.0, 0.3] {
        let plain = grads(false, dropout);
        let ckpt = grads(true, dropout);
        assert_eq!(plain.len(), 28, "every LoRA tensor has a gradient");
        assert_eq!(
            ckpt.len(),
            28,
            "every LoRA tensor has a gradient under checkpointing"
        );
        for (name, g) in &plain {
            let diff: f32 = (g - &ckpt[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let scale: f32 = g.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(scale > 0.0, "{name}: zero gradient");
            assert!(
                diff <= 1e-5 * scale,
                "{name} (dropout {dropout}): differs by {diff} (max {scale})"
            );
        }
    }
}

/// The five TRL steps of the gradient-accumulation case, with checkpointing on.
#[test]
fn checkpointed_training_still_matches_trl() {
    let fx = fixture("tiny_ga_clip");
    let mut spec = job_for_case(&fx);
    spec.train.gradient_checkpointing = true;
    let (records, _) = run_case_spec(&spec);
    let logs = fx["train_logs"].as_array().unwrap();
    let train: Vec<_> = records
        .iter()
        .filter(|r| r.learning_rate.is_some())
        .collect();
    assert_eq!(train.len(), logs.len());
    for (ours, theirs) in train.iter().zip(logs) {
        assert_close(
            ours.grad_norm.unwrap(),
            theirs["grad_norm"].as_f64().unwrap(),
            1e-3,
            "grad_norm",
        );
        for (name, value) in &ours.metrics {
            assert_close(
                *value,
                theirs[name].as_f64().unwrap(),
                1e-3,
                &format!("step {} {name}", ours.step),
            );
        }
    }
}
