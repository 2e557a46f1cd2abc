//! AdamW, learning-rate schedules and global-norm clipping, written to match PyTorch's
//! `torch.optim.AdamW`, transformers' `get_*_schedule_with_warmup` and
//! `torch.nn.utils.clip_grad_norm_` step for step. candle's own AdamW keeps its moments private,
//! so a run could not be checkpointed and resumed with it; ours keeps them by parameter name.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use orpo_api::spec::LrScheduler;

use crate::Result;

/// Per-parameter AdamW state.
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken so far (PyTorch's `step`, shared by every parameter here).
    pub step: u64,
    /// First and second moments by parameter name.
    pub state: BTreeMap<String, Moments>,
}

impl AdamW {
    /// transformers' defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of every named parameter with its gradient, at learning rate `lr`.
    pub fn step(
        &mut self,
        params: &[(String, &Var)],
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let g = g.to_dtype(DType::F32)?;
            let moments = match self.state.remove(name) {
                Some(s) => s,
                None => Moments {
                    m: g.zeros_like()?,
                    v: g.zeros_like()?,
                },
            };
            let m = ((moments.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((moments.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mut p = var.as_tensor().detach();
            if self.weight_decay != 0.0 {
                p = (p * (1.0 - lr * self.weight_decay))?;
            }
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let p = (p - ((&m / denom)? * (lr / bc1))?)?;
            var.set(&p)?;
            self.state.insert(name.clone(), Moments { m, v });
        }
        Ok(())
    }
}

/// The learning rate of optimizer step `step` (0-based) of `total`, after `warmup` steps of
/// linear warm-up from 0. `Constant` with warm-up is transformers' `constant_with_warmup`.
pub fn learning_rate(
    kind: LrScheduler,
    base: f64,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    let (s, w, n) = (step as f64, warmup as f64, total as f64);
    if step < warmup {
        return base * s / w.max(1.0);
    }
    let progress = (s - w) / (n - w).max(1.0);
    let factor = match kind {
        LrScheduler::Constant => 1.0,
        LrScheduler::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
        LrScheduler::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    base * factor
}

/// The global L2 norm of `grads`; when `max_norm > 0` every gradient is scaled by
/// `min(1, max_norm / (norm + 1e-6))` as `clip_grad_norm_` does. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        let n: f32 = g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar()?;
        sq += n as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        for g in grads.values_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// transformers' schedules: linear warm-up 2 of 10 steps, base 1.0.
    #[test]
    fn schedules_match_transformers() {
        let lr = |k, s| learning_rate(k, 1.0, s, 2, 10);
        assert_eq!(lr(LrScheduler::Linear, 0), 0.0);
        assert_eq!(lr(LrScheduler::Linear, 1), 0.5);
        assert_eq!(lr(LrScheduler::Linear, 2), 1.0);
        assert!((lr(LrScheduler::Linear, 6) - 0.5).abs() < 1e-12);
        assert!((lr(LrScheduler::Cosine, 6) - 0.5).abs() < 1e-12);
        assert!((lr(LrScheduler::Cosine, 4) - 0.853553390593).abs() < 1e-9);
        assert_eq!(lr(LrScheduler::Constant, 9), 1.0);
    }

    /// One AdamW step from zero moments moves each parameter by `lr` against the gradient's
    /// sign (bias correction makes `m_hat / sqrt(v_hat) = sign(g)`), minus decoupled decay.
    #[test]
    fn first_adamw_step_is_a_signed_lr_step() {
        let p = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([(
            "p".to_string(),
            Tensor::new(&[0.5f32, -4.0, 0.0], &Device::Cpu).unwrap(),
        )]);
        let mut opt = AdamW::new(0.1);
        opt.step(&[("p".to_string(), &p)], &grads, 0.01).unwrap();
        let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        let want = [1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 3.0 * 0.999];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut grads = BTreeMap::from([(
            "a".to_string(),
            Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap(),
        )]);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v: Vec<f32> = grads["a"].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
