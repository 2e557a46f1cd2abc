//! Preference data: JSONL rows read and checked, chat templates applied and text tokenized
//! exactly as TRL's `ORPOTrainer` prepares them (`maybe_extract_prompt`,
//! `maybe_apply_chat_template`, `tokenize_row`), and the seeded train/eval split.
//!
//! Every row is checked before anything trains: a bad file is reported as one
//! [`Error::Data`] that lists the first [`MAX_REPORTED`] bad rows with their line numbers.
//!
//! Truncation follows TRL 1.x (`max_length` alone: whole prompts, answers cut to what is left)
//! or, when the job sets `max_prompt_length`, TRL 0.25. A row left with no answer token is
//! refused with its line, where TRL would train on a NaN loss (docs/orpo.md).
//!
//! Layout: `read` parses and checks JSONL rows (with TRL's prompt extraction), `chat` applies
//! the chat template, `tokenize` builds the token ids and labels, `lengths` measures rows
//! without keeping ids (for the memory estimate), `split` holds the seeded
//! train/eval split, and `problems` collects bad rows into one error.

mod chat;
pub mod lengths;
mod problems;
mod read;
mod split;
#[cfg(test)]
mod test_support;
mod tokenize;

use std::path::Path;

use orpo_api::spec::{DataSpec, JobSpec, TruncationMode};

use crate::template::{ChatTemplate, Message};
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

pub use chat::apply_chat_template;
pub use read::{parse_rows, read_rows, RowChecker};
pub use split::{split_eval, SplitMix64};
pub use tokenize::{row_lengths, tokenize_row, RowLengths};

use problems::Problems;

/// How many bad rows one error message lists.
pub const MAX_REPORTED: usize = 10;
/// TRL's `label_pad_token_id`: label positions the loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// One preference pair as the file gives it, after TRL's prompt extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRow {
    /// 1-based line in the file.
    pub line: usize,
    pub pair: Pair,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pair {
    /// Plain text, tokenized as it is.
    Standard {
        prompt: String,
        chosen: String,
        rejected: String,
    },
    /// Chat messages, rendered with the chat template first.
    Conversational {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
}

/// The three strings TRL tokenizes: the chat template's output, or the standard row itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// A row ready for the model. `chosen_ids`/`rejected_ids` are whole sequences (TRL's
/// `chosen_input_ids`): prompt then answer; the labels hold [`IGNORE_INDEX`] on prompt
/// positions. The chosen and rejected prompts can differ in their last token (a tokenizer
/// merge across the boundary), so each sequence carries its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub chosen_labels: Vec<i64>,
    pub rejected_ids: Vec<u32>,
    pub rejected_labels: Vec<i64>,
}

/// The job's length settings: `max_length`, and TRL 0.25's prompt limit when it is set
/// (without it, TRL 1.x's rule; [`RowLengths::truncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    pub max_length: usize,
    pub max_prompt_length: Option<usize>,
    /// Which end of a cut prompt is kept (only with `max_prompt_length`).
    pub truncation_mode: TruncationMode,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions::from_spec(&DataSpec::default())
    }
}

impl TokenizeOptions {
    pub fn from_spec(data: &DataSpec) -> TokenizeOptions {
        TokenizeOptions {
            max_length: data.max_length,
            max_prompt_length: data.max_prompt_length,
            truncation_mode: data.truncation_mode.unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// A job's `(train, eval)` pairs: `data.train` with the template `data.chat_template` selects,
/// and `data.eval`, or else `data.eval_fraction` of train split off with `train.seed`.
pub fn load_job_data(
    spec: &JobSpec,
    tok: &TokenizerInfo,
) -> Result<(Vec<TokenizedPair>, Vec<TokenizedPair>)> {
    let template = ChatTemplate::from_setting(&spec.data.chat_template, tok)?;
    let opts = TokenizeOptions::from_spec(&spec.data);
    let load = |path: &str| load_pairs(Path::new(path), tok, template.as_ref(), &opts);
    let train = load(&spec.data.train);
    if spec.data.eval.is_empty() {
        return Ok(split_eval(train?, spec.data.eval_fraction, spec.train.seed));
    }
    // Both files are checked before either is reported, so one run shows every bad row.
    match (train, load(&spec.data.eval)) {
        (Ok(train), Ok(eval)) => Ok((train, eval)),
        (Err(a), Err(b)) => Err(Error::Config(format!("{a}\n{b}"))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Reads, templates and tokenizes every row of `path`; any bad row fails the whole file.
pub fn load_pairs(
    path: &Path,
    tok: &TokenizerInfo,
    template: Option<&ChatTemplate>,
    opts: &TokenizeOptions,
) -> Result<Vec<TokenizedPair>> {
    let rows = read_rows(path)?;
    prepare_pairs(&rows, path, tok, template, opts)
}

/// Templates and tokenizes `rows` read from `path` (named in errors).
pub fn prepare_pairs(
    rows: &[PreferenceRow],
    path: &Path,
    tok: &TokenizerInfo,
    template: Option<&ChatTemplate>,
    opts: &TokenizeOptions,
) -> Result<Vec<TokenizedPair>> {
    let mut problems = Problems::default();
    let mut pairs = Vec::with_capacity(rows.len());
    for row in rows {
        let prepared = apply_chat_template(&row.pair, template)
            .and_then(|text| tokenize_row(&text, tok, opts));
        match prepared {
            Ok(pair) => pairs.push(pair),
            Err(message) => problems.push(row.line, message),
        }
    }
    problems.into_result(path, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::llama;

    #[test]
    fn load_pairs_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"hello\",\"chosen\":\" yes\",\"rejected\":\" no\"}\n",
        )
        .unwrap();
        let tok = llama();
        let pairs = load_pairs(&path, &tok, None, &TokenizeOptions::default()).unwrap();
        assert_eq!(pairs[0].chosen_ids, [1, 8, 14, 2]);
        let missing = load_pairs(
            &dir.path().join("nope.jsonl"),
            &tok,
            None,
            &TokenizeOptions::default(),
        );
        assert!(matches!(missing, Err(Error::Io { .. })));
    }
}
