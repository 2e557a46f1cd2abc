//! `orpod generate MODEL --prompt "..."`: answers in the foreground with the generation engine
//! (`orpo_trainer::generate::engine`), from a checkpoint (its adapter merged into its base), a
//! job file's base, or a model. Text mode streams the answer alone to stdout; `--json` prints
//! one object per answer with the token ids, for the interop tests and scripts; `--events`
//! prints the `token` and `answer` events of `POST /v1/jobs/{id}/generate` as JSON lines: the
//! daemon runs this command as the worker process of a generation request.
//!
//! `--samples` answers a checkpoint's own sample prompts and writes its `samples.json`: the
//! daemon runs it after each checkpoint, admitted on memory like a generation request.
//!
//! `--compare-base` answers every prompt with the base alone first (model `base`), then with
//! the checkpoint (model `tuned`); the two engines are never held at once.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use orpo_api::{GenerateEvent, JobSpec};
use orpo_trainer::generate::{
    self,
    engine::{Engine, GenerateOptions},
};
use orpo_trainer::lora::{LoraAdapter, ADAPTER_CONFIG};
use orpo_trainer::model::{self, Quantize};
use orpo_trainer::tokenizer::TokenizerInfo;
use orpo_trainer::train;

use crate::cli::GenerateArgs;

/// How the answers are written.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Text,
    Json,
    Events,
}

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
    let mode = match (args.events, args.json) {
        (true, _) => Mode::Events,
        (false, true) => Mode::Json,
        (false, false) => Mode::Text,
    };
    let prompts = match args.prompts_stdin {
        true => read_prompts(std::io::stdin().lock())?,
        false => args.prompt.clone(),
    };
    let (base_path, adapter_dir) = resolve(&args.model, args.base.as_deref())?;
    if args.compare_base && adapter_dir.is_none() {
        anyhow::bail!(
            "--compare-base compares a checkpoint with its base; {} is not a checkpoint \
             (a folder with {ADAPTER_CONFIG})",
            args.model.display()
        );
    }
    if args.samples && adapter_dir.is_none() {
        anyhow::bail!(
            "--samples answers a checkpoint's sample prompts; {} is not a checkpoint \
             (a folder with {ADAPTER_CONFIG})",
            args.model.display()
        );
    }
    let device = train::select_device(&args.device)?;
    let dtype = train::select_dtype(args.dtype.into(), &device);
    let base = model::load_base(&base_path, dtype, &device, Quantize::None)
        .with_context(|| format!("loading {}", base_path.display()))?;
    let adapter = adapter_dir
        .as_deref()
        .map(|dir| LoraAdapter::load_peft(dir, &base.config, &device))
        .transpose()?;
    if let (true, Some(dir)) = (args.samples, &adapter_dir) {
        let mut engine = Engine::new(&base, adapter.as_ref())?;
        drop((base, adapter));
        let samples = generate::write_samples(&mut engine, dir)?;
        println!("{}", serde_json::to_string_pretty(&samples)?);
        return Ok(());
    }
    if args.compare_base {
        let mut engine = Engine::new(&base, None)?;
        answer_all(&mut engine, "base", &prompts, &opts, mode, true)?;
    }
    let mut engine = Engine::new(&base, adapter.as_ref())?;
    drop((base, adapter));
    answer_all(
        &mut engine,
        "tuned",
        &prompts,
        &opts,
        mode,
        args.compare_base,
    )
}

/// The prompts as a JSON array of strings on stdin (the daemon's way: a prompt on a command
/// line is visible to every user of the machine in `ps`).
fn read_prompts(mut input: impl BufRead) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .context("reading the prompts from stdin")?;
    let prompts: Vec<String> = serde_json::from_str(&text)
        .context("--prompts-stdin: stdin must be a JSON array of strings")?;
    anyhow::ensure!(!prompts.is_empty(), "--prompts-stdin: no prompts on stdin");
    Ok(prompts)
}

/// Answers every prompt with `engine`, written as `mode` says; `labelled`: text mode names
/// the model above each answer.
fn answer_all(
    engine: &mut Engine,
    model: &str,
    prompts: &[String],
    opts: &GenerateOptions,
    mode: Mode,
    labelled: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let tokenizer = engine.tokenizer.clone();
    for (index, prompt) in prompts.iter().enumerate() {
        let ids = engine.prompt_ids(prompt)?;
        if mode == Mode::Text && labelled {
            writeln!(stdout.lock(), "[{model}]")?;
        }
        let mut delta = TextDelta::new(&tokenizer);
        let mut failed = None;
        let gen = engine.generate(&ids, opts, |token| {
            let text = delta.push(token);
            let written = match mode {
                Mode::Json => return true,
                Mode::Text if text.is_empty() => return true,
                Mode::Text => write_flushed(&stdout, text.as_bytes()),
                Mode::Events => {
                    let event = GenerateEvent::Token {
                        model: model.to_string(),
                        prompt: index,
                        token,
                        text,
                    };
                    write_event(&stdout, &event)
                }
            };
            match written {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e).context("writing the answer");
        }
        let text = tokenizer.decode(&gen.tokens)?;
        match mode {
            Mode::Text => {
                // What a held-back incomplete character left unprinted.
                let rest = text.get(delta.done..).unwrap_or_default();
                write_flushed(&stdout, format!("{rest}\n").as_bytes())?;
            }
            Mode::Json => {
                let line = serde_json::json!({
                    "model": model,
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
            }
            Mode::Events => write_event(
                &stdout,
                &GenerateEvent::Answer {
                    model: model.to_string(),
                    prompt: index,
                    text,
                    tokens: gen.tokens,
                    finish: gen.finish.as_str().to_string(),
                    time_to_first_token_s: gen.time_to_first_token_s,
                    tokens_per_s: gen.tokens_per_s,
                },
            )?,
        }
    }
    Ok(())
}

fn write_flushed(stdout: &std::io::Stdout, bytes: &[u8]) -> std::io::Result<()> {
    let mut out = stdout.lock();
    out.write_all(bytes)?;
    out.flush()
}

fn write_event(stdout: &std::io::Stdout, event: &GenerateEvent) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).expect("events serialise");
    line.push(b'\n');
    write_flushed(stdout, &line)
}

/// The text each new token adds to an answer. A character may take several tokens, so the
/// answer is decoded whole and only its new end returned (empty while it is incomplete).
struct TextDelta<'a> {
    tokenizer: &'a TokenizerInfo,
    tokens: Vec<u32>,
    done: usize,
}

impl<'a> TextDelta<'a> {
    fn new(tokenizer: &'a TokenizerInfo) -> Self {
        TextDelta {
            tokenizer,
            tokens: Vec::new(),
            done: 0,
        }
    }

    fn push(&mut self, token: u32) -> String {
        self.tokens.push(token);
        match self.tokenizer.decode(&self.tokens) {
            Ok(text) if text.len() > self.done && text.is_char_boundary(self.done) => {
                let new = text[self.done..].to_string();
                // A replacement character is a byte sequence still incomplete: wait for more.
                if new.ends_with('\u{FFFD}') {
                    return String::new();
                }
                self.done = text.len();
                new
            }
            _ => String::new(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_on_stdin_are_a_json_array_of_strings() {
        let ok = read_prompts(&br#"["Hi", "What is 2+2?"]"#[..]).unwrap();
        assert_eq!(ok, ["Hi", "What is 2+2?"]);
        for bad in [&b""[..], b"[]", b"{\"p\": 1}", b"[1, 2]"] {
            assert!(
                read_prompts(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
