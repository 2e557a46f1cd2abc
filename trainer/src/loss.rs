//! The ORPO objective on one micro-batch, with TRL's metric names and definitions
//! (docs/orpo.md#the-loss, docs/orpo.md#metrics).
//!
//! TRL runs `[chosen; rejected]` right-padded to one length through the model, takes
//! length-averaged log-probs of the completion tokens of each row (`c`, `r`), the token-pooled NLL
//! of the chosen rows (prompt and completion), and returns
//! `loss = nll - beta * mean(log sigmoid(z))` with `z` the log odds ratio. We do the same, but take
//! the output head only at the positions that have a target, in chunks ([`ops::target_logprobs`]).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use orpo_api::spec::NllScope;

use crate::data::TokenizedPair;
use crate::lora::LoraAdapter;
use crate::model::llama::{GradSink, Llama, LoraMode};
use crate::ops;
use crate::Result;

/// A collated micro-batch: `2B` rows (chosen first), right-padded to the longest row.
pub struct OrpoBatch {
    ids: Tensor,
    lens: Vec<usize>,
    pairs: usize,
    seq_len: usize,
    /// Flat `row * seq_len + t` positions whose next token is a target, and those targets.
    positions: Tensor,
    targets: Tensor,
    /// Per position: `1 / n_nll` where the position counts for the NLL term, else 0.
    nll_weights: Tensor,
    /// `[2B, positions]`: `1 / n_i` where the position is a completion target of row `i`.
    completion_weights: Tensor,
    /// Real (non-pad) tokens in the batch.
    pub tokens: usize,
}

impl OrpoBatch {
    pub fn new(
        pairs: &[&TokenizedPair],
        pad_id: u32,
        scope: NllScope,
        device: &Device,
    ) -> Result<Self> {
        let b = pairs.len();
        let rows: Vec<(&[u32], &[i64])> = pairs
            .iter()
            .map(|p| (p.chosen_ids.as_slice(), p.chosen_labels.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.rejected_ids.as_slice(), p.rejected_labels.as_slice())),
            )
            .collect();
        let seq_len = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(2 * b * seq_len);
        let mut lens = Vec::with_capacity(2 * b);
        let (mut positions, mut targets, mut in_nll, mut row_of) = (vec![], vec![], vec![], vec![]);
        for (i, (row_ids, labels)) in rows.iter().enumerate() {
            ids.extend_from_slice(row_ids);
            ids.extend(std::iter::repeat_n(pad_id, seq_len - row_ids.len()));
            lens.push(row_ids.len());
            for t in 0..row_ids.len().saturating_sub(1) {
                let completion = labels[t + 1] != -100;
                let nll = i < b && (scope == NllScope::Full || completion);
                if completion || nll {
                    positions.push((i * seq_len + t) as u32);
                    targets.push(row_ids[t + 1]);
                    in_nll.push(nll);
                    row_of.push(completion.then_some(i));
                }
            }
        }
        let m = positions.len();
        let n_nll = in_nll.iter().filter(|&&x| x).count().max(1);
        let nll_weights: Vec<f32> = in_nll
            .iter()
            .map(|&x| if x { 1.0 / n_nll as f32 } else { 0.0 })
            .collect();
        let mut counts = vec![0usize; 2 * b];
        row_of.iter().flatten().for_each(|&i| counts[i] += 1);
        let mut completion_weights = vec![0f32; 2 * b * m];
        for (j, row) in row_of.iter().enumerate() {
            if let Some(i) = *row {
                completion_weights[i * m + j] = 1.0 / counts[i] as f32;
            }
        }
        Ok(OrpoBatch {
            ids: Tensor::from_vec(ids, (2 * b, seq_len), device)?,
            tokens: lens.iter().sum(),
            lens,
            pairs: b,
            seq_len,
            positions: Tensor::from_vec(positions, m, device)?,
            targets: Tensor::from_vec(targets, m, device)?,
            nll_weights: Tensor::from_vec(nll_weights, m, device)?,
            completion_weights: Tensor::from_vec(completion_weights, (2 * b, m), device)?,
        })
    }

    pub fn pairs(&self) -> usize {
        self.pairs
    }
}

/// TRL's per-micro-batch metrics, f64 for aggregation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub loss: f64,
    pub nll_loss: f64,
    pub log_odds_ratio: f64,
    pub log_odds_chosen: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub logits_chosen: f64,
    pub logits_rejected: f64,
}

impl Metrics {
    /// The metrics under TRL's names, with `prefix` (`""` for training, `"eval_"`).
    pub fn named(&self, prefix: &str) -> BTreeMap<String, f64> {
        [
            ("loss", self.loss),
            ("nll_loss", self.nll_loss),
            ("log_odds_ratio", self.log_odds_ratio),
            ("log_odds_chosen", self.log_odds_chosen),
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
            ("logits/chosen", self.logits_chosen),
            ("logits/rejected", self.logits_rejected),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
    }

    /// Element-wise mean of several micro-batches' metrics (TRL averages stored metrics).
    pub fn mean(all: &[Metrics]) -> Metrics {
        let n = all.len().max(1) as f64;
        let mut m = Metrics::default();
        for x in all {
            m.loss += x.loss / n;
            m.nll_loss += x.nll_loss / n;
            m.log_odds_ratio += x.log_odds_ratio / n;
            m.log_odds_chosen += x.log_odds_chosen / n;
            m.rewards_chosen += x.rewards_chosen / n;
            m.rewards_rejected += x.rewards_rejected / n;
            m.rewards_accuracies += x.rewards_accuracies / n;
            m.rewards_margins += x.rewards_margins / n;
            m.logps_chosen += x.logps_chosen / n;
            m.logps_rejected += x.logps_rejected / n;
            m.logits_chosen += x.logits_chosen / n;
            m.logits_rejected += x.logits_rejected / n;
        }
        m
    }
}

/// Forward pass and ORPO loss of one micro-batch. The returned loss tensor carries the graph
/// (when `lora.train`); the metrics are plain numbers.
pub fn orpo_loss(
    model: &Llama,
    batch: &OrpoBatch,
    lora: Option<LoraMode<'_>>,
    beta: f64,
) -> Result<(Tensor, Metrics)> {
    let graph = lora.as_ref().is_some_and(|m| m.train);
    let hidden = model.forward_hidden(&batch.ids, &batch.lens, lora)?;
    if !graph {
        // Nothing of the layers is kept for a backward: give their freed blocks back before
        // the head's logits are made, so the two never add up (the estimate takes the larger).
        crate::runtime::release_free_heap();
    }
    let (rows, len, dim) = hidden.dims3()?;
    let flat = hidden.reshape((rows * len, dim))?;
    let h = flat.index_select(&batch.positions, 0)?;
    let lp = ops::target_logprobs(&h, model.lm_head(), &batch.targets)?;
    let nll = (lp.mul(&batch.nll_weights)?.sum_all()?.neg())?;
    let logps = batch
        .completion_weights
        .matmul(&lp.unsqueeze(1)?)?
        .squeeze(1)?;
    let b = batch.pairs;
    let (c, r) = (logps.narrow(0, 0, b)?, logps.narrow(0, b, b)?);
    let (ratio, z) = ops::odds_ratio(&c, &r)?;
    let loss = (&nll - (ratio.mean_all()? * beta)?)?;

    let cv: Vec<f64> = c.to_dtype(DType::F64)?.to_vec1()?;
    let rv: Vec<f64> = r.to_dtype(DType::F64)?.to_vec1()?;
    let ratio_v: Vec<f64> = ratio.to_dtype(DType::F64)?.to_vec1()?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (lc, lr) = logits_means(model, &hidden.detach(), b, batch.seq_len)?;
    let metrics = Metrics {
        loss: loss.to_dtype(DType::F64)?.to_scalar()?,
        nll_loss: nll.to_dtype(DType::F64)?.to_scalar()?,
        log_odds_ratio: mean(&ratio_v),
        log_odds_chosen: mean(&z),
        rewards_chosen: beta * mean(&cv),
        rewards_rejected: beta * mean(&rv),
        rewards_accuracies: mean(
            &cv.iter()
                .zip(&rv)
                .map(|(c, r)| f64::from(u8::from(c > r)))
                .collect::<Vec<_>>(),
        ),
        rewards_margins: beta * mean(&cv.iter().zip(&rv).map(|(c, r)| c - r).collect::<Vec<_>>()),
        logps_chosen: mean(&cv),
        logps_rejected: mean(&rv),
        logits_chosen: lc,
        logits_rejected: lr,
    };
    Ok((loss, metrics))
}

/// TRL's `logits/chosen` and `logits/rejected`: the mean of every logit of `logits[:, :-1, :]`
/// for the chosen and the rejected half, pad positions included. The mean over the vocabulary of
/// `h . w_v` is `h . mean_v(w_v)`, so no logits are made.
fn logits_means(model: &Llama, hidden: &Tensor, b: usize, seq_len: usize) -> Result<(f64, f64)> {
    if seq_len < 2 {
        return Ok((0.0, 0.0));
    }
    let dim = hidden.dim(2)?;
    let h = hidden.narrow(1, 0, seq_len - 1)?.to_dtype(DType::F32)?;
    let per_pos = h
        .reshape((2 * b * (seq_len - 1), dim))?
        .matmul(&model.head_row_mean().unsqueeze(1)?)?
        .reshape((2 * b, seq_len - 1))?;
    let chosen = per_pos
        .narrow(0, 0, b)?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar()?;
    let rejected = per_pos
        .narrow(0, b, b)?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar()?;
    Ok((chosen, rejected))
}

/// Back-propagates `loss` and returns the gradient of every LoRA tensor by PEFT name, adding the
/// gradients that the decoder layers' own backward sent to `sink`. A tensor the graph does not
/// reach is missing from the map.
pub fn lora_gradients(
    loss: &Tensor,
    adapter: &LoraAdapter,
    sink: Option<&GradSink>,
) -> Result<BTreeMap<String, Tensor>> {
    let grads = loss.backward()?;
    let mut side = match sink {
        Some(s) => std::mem::take(&mut *s.lock().expect("gradient sink poisoned")),
        None => Default::default(),
    };
    let mut out = BTreeMap::new();
    for (name, var) in adapter.named_vars() {
        let g = match (
            grads.get(var.as_tensor()),
            side.remove(&var.as_tensor().id()),
        ) {
            (Some(a), Some(b)) => Some((a + b)?),
            (Some(a), None) => Some(a.clone()),
            (None, b) => b,
        };
        if let Some(g) = g {
            out.insert(name, g);
        }
    }
    Ok(out)
}
