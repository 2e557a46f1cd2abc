//! `orpod export CHECKPOINT --merged OUT | --gguf OUT.gguf --type f16|q8_0`: a merged Hugging
//! Face folder and/or a GGUF file for llama.cpp from a checkpoint (or any PEFT adapter folder).

use anyhow::Context;
use orpo_api::spec::GgufExport;
use orpo_trainer::export::{self, ExportRequest};

use crate::cli::{ExportArgs, GgufType};

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.merged.is_none() && args.gguf.is_none() {
        anyhow::bail!("nothing to export: give --merged DIR and/or --gguf FILE.gguf");
    }
    let kind = match args.r#type {
        GgufType::F16 => GgufExport::F16,
        GgufType::Q8_0 => GgufExport::Q8_0,
    };
    let req = ExportRequest {
        adapter_dir: args.checkpoint.clone(),
        base: args.base.clone(),
        merged: args.merged.clone(),
        gguf: args.gguf.clone().map(|p| (p, kind)),
    };
    export::export_checkpoint(&req)
        .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    for out in [&args.merged, &args.gguf].into_iter().flatten() {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
