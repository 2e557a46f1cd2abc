//! Generation. [`engine`]: candle-transformers' models with a KV cache, for `orpod generate`.
//! Below: greedy decoding on the training model, for the `samples.json` of each checkpoint (a
//! user watching a run sees what the model answers now, not only its loss).
//!
//! There is no KV cache: every new token re-runs the full prefix through
//! [`Llama::forward_hidden`], the training forward. Samples are a few prompts and a few dozen
//! tokens per checkpoint, so the simple path costs seconds and shares all of its code with the
//! path the metrics come from.

pub mod engine;

use candle_core::{DType, IndexOp, Tensor};

use crate::checkpoint::Sample;
use crate::lora::LoraAdapter;
use crate::model::llama::{Llama, LoraMode};
use crate::tokenizer::TokenizerInfo;
use crate::Result;

/// Prompts per `samples.json` and new tokens per prompt.
pub const SAMPLE_PROMPTS: usize = 3;
pub const SAMPLE_TOKENS: usize = 32;

/// Greedy continuations of `prompts` (token ids), all decoded together as one right-padded
/// batch; each stops at EOS (not included) or after `max_new` tokens.
pub fn greedy(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    tokenizer: &TokenizerInfo,
    prompts: &[Vec<u32>],
    max_new: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done: Vec<bool> = prompts.iter().map(|p| p.is_empty()).collect();
    for _ in 0..max_new {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| !done[i]).collect();
        if active.is_empty() {
            break;
        }
        let lens: Vec<usize> = active.iter().map(|&i| seqs[i].len()).collect();
        let t = lens.iter().copied().max().unwrap_or(0);
        let mut ids = Vec::with_capacity(active.len() * t);
        for &i in &active {
            ids.extend_from_slice(&seqs[i]);
            ids.extend(std::iter::repeat_n(tokenizer.pad_id, t - seqs[i].len()));
        }
        let ids = Tensor::from_vec(ids, (active.len(), t), model.device())?;
        let mode = adapter.map(|adapter| LoraMode {
            adapter,
            train: false,
            dropout_rng: None,
            sink: None,
            checkpoint: false,
        });
        let hidden = model.forward_hidden(&ids, &lens, mode)?;
        let last: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(row, &len)| hidden.i((row, len - 1)))
            .collect::<candle_core::Result<_>>()?;
        // The head as it is held: a quantized head a tile at a time, never a dense copy (on a
        // kept base that copy would be the job's peak, which the estimate does not count).
        let logits = model.lm_head().matmul_t(&Tensor::stack(&last, 0)?)?;
        let next: Vec<u32> = logits.to_dtype(DType::F32)?.argmax(1)?.to_vec1()?;
        for (&i, tok) in active.iter().zip(next) {
            if tok == tokenizer.eos.id {
                done[i] = true;
            } else {
                seqs[i].push(tok);
                out[i].push(tok);
            }
        }
    }
    Ok(out)
}

/// [`greedy`] completions of `prompts`, decoded to text for `samples.json`.
pub fn samples(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    tokenizer: &TokenizerInfo,
    prompts: &[Vec<u32>],
) -> Result<Vec<Sample>> {
    let completions = greedy(model, adapter, tokenizer, prompts, SAMPLE_TOKENS)?;
    prompts
        .iter()
        .zip(completions)
        .map(|(p, c)| {
            Ok(Sample {
                prompt: tokenizer.decode(p)?,
                completion: tokenizer.decode(&c)?,
                completion_tokens: c.len(),
            })
        })
        .collect()
}
