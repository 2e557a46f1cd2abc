//! `orpod generate MODEL --prompt "..."`: answers in the foreground with the generation engine
//! (`orpo_trainer::generate::engine`), from a checkpoint (its adapter merged into its base), a
//! job file's base, or a model. Text mode streams the answer alone to stdout; `--json` prints
//! one object per prompt with the token ids, for the interop tests and scripts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use orpo_api::JobSpec;
use orpo_trainer::generate::engine::{Engine, GenerateOptions};
use orpo_trainer::lora::{LoraAdapter, ADAPTER_CONFIG};
use orpo_trainer::model::{self, Quantize};
use orpo_trainer::train;

use crate::cli::GenerateArgs;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        no_kv_cache: args.no_kv_cache,
    };
    opts.check()?;
    let (base_path, adapter_dir) = resolve(&args.model, args.base.as_deref())?;
    let device = train::select_device(&args.device)?;
    let dtype = train::select_dtype(orpo_api::spec::Dtype::Auto, &device);
    let base = model::load_base(&base_path, dtype, &device, Quantize::None)
        .with_context(|| format!("loading {}", base_path.display()))?;
    let adapter = adapter_dir
        .as_deref()
        .map(|dir| LoraAdapter::load_peft(dir, &base.config, &device))
        .transpose()?;
    let mut engine = Engine::new(&base, adapter.as_ref())?;
    drop((base, adapter));
    let stdout = std::io::stdout();
    for prompt in &args.prompt {
        let ids = engine.prompt_ids(prompt)?;
        if args.json {
            let gen = engine.generate(&ids, &opts, |_| true)?;
            let text = engine.tokenizer.decode(&gen.tokens)?;
            let line = serde_json::json!({
                "prompt": prompt,
                "prompt_ids": ids,
                "tokens": gen.tokens,
                "stop_ids": engine.stop_ids,
                "text": text,
                "finish": gen.finish.as_str(),
                "time_to_first_token_s": gen.time_to_first_token_s,
                "tokens_per_s": gen.tokens_per_s,
            });
            writeln!(stdout.lock(), "{line}")?;
            continue;
        }
        // Streamed: each token's text as the decoded answer grows (a character may take
        // several tokens, so the text is decoded whole and only its new end printed).
        let mut tokens = Vec::new();
        let mut printed = 0;
        let tokenizer = engine.tokenizer.clone();
        let mut failed = None;
        engine.generate(&ids, &opts, |t| {
            tokens.push(t);
            match tokenizer.decode(&tokens) {
                Ok(text) if text.len() > printed && text.is_char_boundary(printed) => {
                    let mut out = stdout.lock();
                    let ok = out
                        .write_all(&text.as_bytes()[printed..])
                        .and_then(|()| out.flush());
                    printed = text.len();
                    if let Err(e) = ok {
                        failed = Some(e);
                        return false;
                    }
                    true
                }
                _ => true,
            }
        })?;
        if let Some(e) = failed {
            return Err(e).context("writing the answer");
        }
        writeln!(stdout.lock())?;
    }
    Ok(())
}

/// The base model and the adapter folder (if any) that `target` names.
fn resolve(target: &Path, base: Option<&Path>) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    if target.is_dir() && target.join(ADAPTER_CONFIG).is_file() {
        let base = match base {
            Some(b) => b.to_path_buf(),
            None => orpo_trainer::export::adapter_base(target)?,
        };
        return Ok((base, Some(target.to_path_buf())));
    }
    if target.extension().is_some_and(|e| e == "toml") {
        let spec = JobSpec::load(target)?;
        let base = base.map_or_else(
            || PathBuf::from(crate::config::local_model(&spec.model.base)),
            Path::to_path_buf,
        );
        return Ok((base, None));
    }
    Ok((base.unwrap_or(target).to_path_buf(), None))
}
