//! Test fixtures shared by the data unit tests: a tiny WordLevel tokenizer, the ChatML template,
//! row builders and helpers that run rows through the whole pipeline.

use std::path::Path;

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

use super::{parse_rows, prepare_pairs, TokenizeOptions, TokenizedPair, IGNORE_INDEX};
use crate::template::ChatTemplate;
use crate::tokenizer::{SpecialToken, TokenizerInfo};
use crate::{Error, Result};

// The expected ids in the data unit tests were printed by TRL 1.16.0 (`maybe_extract_prompt`,
// `maybe_apply_chat_template`, `ORPOTrainer.tokenize_row`, transformers 5.24.0) run on the
// same WordLevel tokenizer and ChatML template built in Python; none of those rows is long
// enough to truncate. The truncation tests follow TRL 0.25's code by hand.
const VOCAB: [&str; 27] = [
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
    "system",
    "hello",
    "wor",
    "ld",
    "world",
    "work",
    "k",
    "yes",
    "no",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "the",
    "answer",
    "is",
    "42",
];
pub(super) const CHATML: &str =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\\n' }}{% endif %}";
pub(super) const P: i64 = IGNORE_INDEX;
pub(super) const U: &str = "user";
pub(super) const A: &str = "assistant";

/// A JSON list of `{"role","content"}` messages.
pub(super) fn msgs(list: &[(&str, &str)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(role, content)| format!(r#"{{"role":"{role}","content":"{content}"}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

/// A row with conversational answers and `prompt` (raw JSON) when given.
pub(super) fn chat_row(
    prompt: Option<&str>,
    chosen: &[(&str, &str)],
    rejected: &[(&str, &str)],
) -> String {
    let prompt = prompt.map_or(String::new(), |p| format!(r#""prompt":{p},"#));
    format!(
        r#"{{{prompt}"chosen":{},"rejected":{}}}"#,
        msgs(chosen),
        msgs(rejected)
    )
}

fn tokenizer(bos: Option<&str>, eos: &str) -> TokenizerInfo {
    let vocab = VOCAB
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(WhitespaceSplit));
    let specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"].map(|s| AddedToken::from(s, true));
    t.add_special_tokens(specials).unwrap();
    let special = |text: &str| SpecialToken {
        text: text.into(),
        id: t.token_to_id(text).unwrap(),
    };
    TokenizerInfo {
        bos: bos.map(special),
        eos: special(eos),
        pad_id: special(eos).id,
        chat_template: Some(CHATML.into()),
        tokenizer: t,
    }
}

/// Llama-like: BOS `<s>`, EOS `</s>`.
pub(super) fn llama() -> TokenizerInfo {
    tokenizer(Some("<s>"), "</s>")
}

/// Qwen-like: no BOS, EOS `<|im_end|>`.
pub(super) fn qwen() -> TokenizerInfo {
    tokenizer(None, "<|im_end|>")
}

pub(super) fn prepare(
    jsonl: &str,
    tok: &TokenizerInfo,
    opts: &TokenizeOptions,
) -> Result<Vec<TokenizedPair>> {
    let path = Path::new("prefs.jsonl");
    let rows = parse_rows(jsonl.as_bytes(), path)?;
    let template = ChatTemplate::for_tokenizer(CHATML, tok).unwrap();
    prepare_pairs(&rows, path, tok, Some(&template), opts)
}

pub(super) fn one(jsonl: &str, tok: &TokenizerInfo) -> TokenizedPair {
    let mut pairs = prepare(jsonl, tok, &TokenizeOptions::default()).unwrap();
    assert_eq!(pairs.len(), 1);
    pairs.remove(0)
}

pub(super) fn pair(
    prompt: &[u32],
    chosen: &[u32],
    chosen_labels: &[i64],
    rejected: &[u32],
    rejected_labels: &[i64],
) -> TokenizedPair {
    TokenizedPair {
        prompt_ids: prompt.to_vec(),
        chosen_ids: chosen.to_vec(),
        chosen_labels: chosen_labels.to_vec(),
        rejected_ids: rejected.to_vec(),
        rejected_labels: rejected_labels.to_vec(),
    }
}

pub(super) fn data_error(err: Error) -> (usize, String) {
    match err {
        Error::Data {
            path,
            line,
            message,
        } => {
            assert_eq!(path, Path::new("prefs.jsonl"));
            (line, message)
        }
        other => panic!("expected a data error, got {other}"),
    }
}

pub(super) const CONVERSATION_IDS: [u32; 6] = [3, 5, 8, 4, 3, 6];

pub(super) fn conversational_expected() -> TokenizedPair {
    let ids = |tail: &[u32]| [&CONVERSATION_IDS[..], tail].concat();
    pair(
        &CONVERSATION_IDS,
        &ids(&[14, 4]),
        &[P, P, P, P, P, P, 14, 4],
        &ids(&[15, 4]),
        &[P, P, P, P, P, P, 15, 4],
    )
}
