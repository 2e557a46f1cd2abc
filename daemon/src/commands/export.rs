//! `orpod export CHECKPOINT --merged OUT | --gguf OUT.gguf --type f16|q8_0 | --gguf-adapter
//! OUT.gguf`: a merged Hugging Face folder, a merged GGUF file for llama.cpp and/or the adapter
//! as a GGUF LoRA file (with a Modelfile) from a checkpoint (or any PEFT adapter folder).

use anyhow::Context;
use orpo_api::spec::GgufExport;
use orpo_trainer::export::{self, ExportRequest};

use crate::cli::{ExportArgs, GgufType};

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.merged.is_none() && args.gguf.is_none() && args.gguf_adapter.is_none() {
        anyhow::bail!(
            "nothing to export: give --merged DIR, --gguf FILE.gguf and/or --gguf-adapter FILE.gguf"
        );
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
        gguf_adapter: args.gguf_adapter.clone(),
    };
    export::export_checkpoint(&req)
        .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    for out in [&args.merged, &args.gguf, &args.gguf_adapter]
        .into_iter()
        .flatten()
    {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
