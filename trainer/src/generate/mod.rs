//! Generation. [`engine`]: candle-transformers' models with a KV cache, for `orpod generate`,
//! the daemon's generation requests, and the `samples.json` of each checkpoint (a user watching
//! a run sees what the model answers now, not only its loss).
//!
//! Samples are written in two steps. The trainer puts the prompts in every checkpoint
//! ([`SAMPLE_PROMPTS`]: a few eval prompts as the model reads them, chat template applied); the
//! engine answers them later, in a process of its own ([`write_samples`]). The engine needs a
//! dense merged copy of the weights, about the base's size again, which the training job was
//! not admitted with: the daemon admits that work on memory like any generation request, and
//! `orpod train` in the foreground answers after training, when its model is freed.

pub mod engine;

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Sample};
use crate::lora::LoraAdapter;
use crate::model::BaseModel;
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};
use engine::{Engine, GenerateOptions};

/// Prompts per `samples.json` and new tokens per prompt.
pub const SAMPLE_PROMPTS: usize = 3;
pub const SAMPLE_TOKENS: usize = 32;

/// One prompt in a checkpoint's `sample_prompts.json`: its text, and its token ids as training
/// read them (the data set's own template and BOS), answered as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplePrompt {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
}

impl SamplePrompt {
    pub fn new(tokenizer: &TokenizerInfo, prompt_ids: &[u32]) -> Result<SamplePrompt> {
        Ok(SamplePrompt {
            prompt: tokenizer.decode(prompt_ids)?,
            prompt_ids: prompt_ids.to_vec(),
        })
    }
}

/// The sample prompts of `checkpoint`, or `None` where it has none (written before samples
/// came from the engine, or a `final` folder without an adapter).
pub fn sample_prompts(checkpoint: &Path) -> Result<Option<Vec<SamplePrompt>>> {
    let path = checkpoint.join(checkpoint::SAMPLE_PROMPTS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The checkpoints under a run's `out_dir` (each `step-N`, then `final`) whose sample prompts
/// have no answers yet.
pub fn missing_samples(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = checkpoint::list(out_dir)?
        .into_iter()
        .map(|(_, dir)| dir)
        .collect();
    dirs.push(out_dir.join("final"));
    Ok(dirs
        .into_iter()
        .filter(|d| d.join(checkpoint::SAMPLE_PROMPTS).is_file())
        .filter(|d| !d.join(checkpoint::SAMPLES).exists())
        .collect())
}

/// Answers `checkpoint`'s sample prompts with `engine` (its adapter merged in), greedy, at most
/// [`SAMPLE_TOKENS`] each, and writes them to its `samples.json` (a temporary file renamed:
/// readers never see half of it).
pub fn write_samples(engine: &mut Engine, checkpoint: &Path) -> Result<Vec<Sample>> {
    let prompts = sample_prompts(checkpoint)?.ok_or_else(|| {
        Error::Config(format!(
            "{} has no {}: it was written before samples came from the generation engine",
            checkpoint.display(),
            checkpoint::SAMPLE_PROMPTS
        ))
    })?;
    let opts = GenerateOptions {
        max_new_tokens: SAMPLE_TOKENS,
        ..GenerateOptions::default()
    };
    let mut samples = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let gen = engine.generate(&p.prompt_ids, &opts, |_| true)?;
        samples.push(Sample {
            prompt: p.prompt.clone(),
            completion: engine.tokenizer.decode(&gen.tokens)?,
            completion_tokens: gen.tokens.len(),
        });
    }
    let path = checkpoint.join(checkpoint::SAMPLES);
    let tmp = checkpoint.join(format!(".{}.tmp", checkpoint::SAMPLES));
    crate::train::write_json(&tmp, &samples)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(samples)
}

/// Answers the sample prompts of every checkpoint under `out_dir` that has none yet (see
/// [`missing_samples`]) with `base` and that checkpoint's adapter: `orpod train`'s last step,
/// once training's own memory is free. Returns each folder with its samples.
pub fn fill_samples(
    base: &BaseModel,
    device: &Device,
    out_dir: &Path,
) -> Result<Vec<(PathBuf, Vec<Sample>)>> {
    let mut written = Vec::new();
    for dir in missing_samples(out_dir)? {
        let adapter = LoraAdapter::load_peft(&dir, &base.config, device)?;
        let mut engine = Engine::new(base, Some(&adapter))?;
        let samples = write_samples(&mut engine, &dir)?;
        written.push((dir, samples));
    }
    Ok(written)
}
