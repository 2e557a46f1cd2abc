//! `orpod convert model.gguf --out DIR`: a dequantized Hugging Face folder from a GGUF file.

use crate::cli::ConvertArgs;

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("convert: not yet wired")
}
