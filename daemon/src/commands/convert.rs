//! `orpod convert model.gguf --out DIR`: a dequantized Hugging Face folder from a GGUF file
//! (f32 weights in Hugging Face layout, config.json, tokenizer files), loadable by transformers.

use anyhow::Context;
use candle_core::{DType, Device};
use orpo_trainer::model;

use crate::cli::ConvertArgs;

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let base = model::load_base(&args.gguf, DType::F32, &Device::Cpu, model::Quantize::None)?;
    model::save_hf_folder(&base, &base.weights, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
