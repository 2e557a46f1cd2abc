//! Preference data: JSONL rows read and checked, chat templates applied and text tokenized
//! exactly as TRL's `ORPOTrainer` prepares them (`maybe_extract_prompt`,
//! `maybe_apply_chat_template`, `tokenize_row`), and the seeded train/eval split.
//!
//! Every row is checked before anything trains: a bad file is reported as one
//! [`Error::Data`] that lists the first [`MAX_REPORTED`] bad rows with their line numbers.
//!
//! Truncation follows TRL 0.25 (`max_length`, `max_prompt_length`, `truncation_mode`); later
//! TRL releases dropped the prompt limit, which can leave an answer with no tokens and a NaN
//! loss (reference/orpo-reference.md §1.6).

use std::path::Path;

use orpo_api::spec::{DataSpec, JobSpec, TruncationMode};

use crate::template::{ChatTemplate, Json, Message};
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

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

/// TRL 0.25's length settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    pub max_length: usize,
    pub max_prompt_length: usize,
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
            truncation_mode: data.truncation_mode,
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

/// Reads the JSONL file at `path` and checks every row.
pub fn read_rows(path: &Path) -> Result<Vec<PreferenceRow>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_rows(&bytes, path)
}

/// Parses JSONL `bytes`; `path` only names the file in errors. Blank lines are skipped.
pub fn parse_rows(bytes: &[u8], path: &Path) -> Result<Vec<PreferenceRow>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut problems = Problems::default();
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text.trim_end_matches('\r'),
            Err(e) => {
                problems.push(line, format!("not valid UTF-8 ({e})"));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(pair) => rows.push(PreferenceRow { line, pair }),
            Err(message) => problems.push(line, message),
        }
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push(1, "the file has no preference rows".into());
    }
    problems.into_result(path, rows)
}

/// Bad rows, collected so one run of the checks reports them all.
#[derive(Default)]
struct Problems {
    rows: Vec<(usize, String)>,
    total: usize,
}

impl Problems {
    fn push(&mut self, line: usize, message: String) {
        self.total += 1;
        if self.rows.len() < MAX_REPORTED {
            self.rows.push((line, message));
        }
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `ok` when nothing went wrong; else one error at the first bad line whose message also
    /// lists the next ones, each as `path:line: message`.
    fn into_result<T>(self, path: &Path, ok: T) -> Result<T> {
        let Some((line, first)) = self.rows.first().cloned() else {
            return Ok(ok);
        };
        let mut message = first;
        for (line, text) in &self.rows[1..] {
            message.push_str(&format!("\n{}:{line}: {text}", path.display()));
        }
        if self.total > self.rows.len() {
            message.push_str(&format!(
                "\n({} bad rows in all; the first {} are shown)",
                self.total,
                self.rows.len()
            ));
        }
        Err(Error::Data {
            path: path.to_path_buf(),
            line,
            message,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One row: JSON to a checked pair.

/// A `prompt`/`chosen`/`rejected` value: text or a list of messages.
enum Field {
    Text(String),
    Messages(Vec<Message>),
}

impl Field {
    fn parse(name: &str, json: &Json) -> std::result::Result<Field, String> {
        match json {
            Json::String(text) => Ok(Field::Text(text.clone())),
            Json::Array(items) if items.is_empty() => Err(format!("\"{name}\" is an empty list")),
            Json::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    Message::from_json(item.clone()).map_err(|e| format!("\"{name}\"[{i}]: {e}"))
                })
                .collect::<std::result::Result<_, _>>()
                .map(Field::Messages),
            other => Err(format!(
                "\"{name}\" must be a string or a list of messages, found {}",
                other.kind_name()
            )),
        }
    }

    fn form(&self) -> &'static str {
        match self {
            Field::Text(_) => "a string",
            Field::Messages(_) => "a message list",
        }
    }
}

fn parse_line(text: &str) -> std::result::Result<Pair, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if !matches!(json, Json::Object(_)) {
        return Err(format!(
            "expected a JSON object, found {}",
            json.kind_name()
        ));
    }
    let field = |name: &str| -> std::result::Result<Field, String> {
        let value = json
            .get(name)
            .ok_or_else(|| format!("missing key \"{name}\""))?;
        let field = Field::parse(name, value)?;
        if matches!(&field, Field::Text(t) if t.is_empty()) {
            return Err(format!("\"{name}\" is empty"));
        }
        Ok(field)
    };
    let chosen = field("chosen")?;
    let rejected = field("rejected")?;
    let prompt = match json.get("prompt") {
        Some(value) => Some(Field::parse("prompt", value)?),
        None => None,
    };
    build_pair(prompt, chosen, rejected)
}

/// The row's form, with TRL's `maybe_extract_prompt`: without a prompt, or with a text prompt
/// beside conversational answers (a duplicate some datasets carry), the prompt is the longest
/// common prefix of chosen and rejected.
fn build_pair(
    prompt: Option<Field>,
    chosen: Field,
    rejected: Field,
) -> std::result::Result<Pair, String> {
    use Field::{Messages, Text};
    match (prompt, chosen, rejected) {
        (Some(Text(prompt)), Text(chosen), Text(rejected)) => Ok(Pair::Standard {
            prompt,
            chosen,
            rejected,
        }),
        (Some(Messages(prompt)), Messages(chosen), Messages(rejected)) => {
            Ok(Pair::Conversational {
                prompt,
                chosen,
                rejected,
            })
        }
        (None | Some(Text(_)), Messages(chosen), Messages(rejected)) => {
            let idx = split_index(&chosen, &rejected, |_| false);
            if idx == 0 {
                return Err(
                    "chosen and rejected share no leading message, so there is no prompt; \
                            add a \"prompt\" key"
                        .into(),
                );
            }
            Ok(Pair::Conversational {
                prompt: chosen[..idx].to_vec(),
                chosen: chosen[idx..].to_vec(),
                rejected: rejected[idx..].to_vec(),
            })
        }
        (None, Text(chosen), Text(rejected)) => {
            let (c, r): (Vec<char>, Vec<char>) =
                (chosen.chars().collect(), rejected.chars().collect());
            // TRL leaves the space before the first differing character to the answers.
            let idx = split_index(&c, &r, |prev| *prev == ' ');
            Ok(Pair::Standard {
                prompt: c[..idx].iter().collect(),
                chosen: c[idx..].iter().collect(),
                rejected: r[idx..].iter().collect(),
            })
        }
        (prompt, chosen, rejected) => Err(format!(
            "mixed forms: prompt is {}, chosen is {}, rejected is {}; use strings or message lists \
             throughout",
            prompt.as_ref().map_or("missing", Field::form),
            chosen.form(),
            rejected.form()
        )),
    }
}

/// `extract_prompt`'s split point: the first index where the two differ, moved back by one
/// when `give_back` says so for the item before it. When one is a prefix of the other, Python's
/// loop variable ends at the last compared index, so the final common item stays an answer.
/// (TRL also moves back from index 0 to -1; that garbles the row, so it is not copied.)
fn split_index<T: PartialEq>(
    chosen: &[T],
    rejected: &[T],
    give_back: impl Fn(&T) -> bool,
) -> usize {
    let n = chosen.len().min(rejected.len());
    match (0..n).find(|&i| chosen[i] != rejected[i]) {
        Some(i) if i > 0 && give_back(&chosen[i - 1]) => i - 1,
        Some(i) => i,
        None => n.saturating_sub(1),
    }
}

// ---------------------------------------------------------------------------------------------
// Chat template (TRL's `apply_chat_template`, preference case).

/// The strings TRL tokenizes for `pair`. Standard rows pass through; conversational rows are
/// rendered: the prompt with the generation prompt (or continuing a final assistant message),
/// each answer as the full conversation minus the prompt text, the prompt cut to the part both
/// full renderings share.
pub fn apply_chat_template(
    pair: &Pair,
    template: Option<&ChatTemplate>,
) -> std::result::Result<TextPair, String> {
    let (prompt, chosen, rejected) = match pair {
        Pair::Standard {
            prompt,
            chosen,
            rejected,
        } => {
            return Ok(TextPair {
                prompt: prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
            })
        }
        Pair::Conversational {
            prompt,
            chosen,
            rejected,
        } => (prompt, chosen, rejected),
    };
    let template = template.ok_or(
        "a conversational row needs a chat template, but the model has none or \
         data.chat_template is \"none\"; set data.chat_template to a .jinja file",
    )?;
    let render = |messages: &[Message], generation_prompt: bool, continue_final: bool| {
        template
            .render(messages, generation_prompt, continue_final)
            .map_err(|e| e.to_string())
    };
    let last_role = prompt.last().map(Message::role).unwrap_or_default();
    let continue_final = match last_role {
        "user" | "tool" => false,
        "assistant" => true,
        other => {
            return Err(format!(
                "the prompt's last message must be from the user, a tool or the assistant, not {other:?}"
            ))
        }
    };
    let mut prompt_text = render(prompt, !continue_final, continue_final)?;
    let prompt_chosen = render(&[prompt.as_slice(), chosen].concat(), false, false)?;
    let prompt_rejected = render(&[prompt.as_slice(), rejected].concat(), false, false)?;
    // Some templates (DeepSeek-R1) render the generation prompt differently from a full turn.
    for full in [&prompt_chosen, &prompt_rejected] {
        prompt_text.truncate(common_prefix_len(&prompt_text, full));
    }
    Ok(TextPair {
        chosen: prompt_chosen[prompt_text.len()..].to_string(),
        rejected: prompt_rejected[prompt_text.len()..].to_string(),
        prompt: prompt_text,
    })
}

/// Length in bytes of the longest common prefix of whole characters.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

// ---------------------------------------------------------------------------------------------
// Tokenization (TRL's `tokenize_row` / `build_tokenized_answer`, decoder-only).

/// A sequence split into its prompt and answer ids.
struct Split {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

/// Tokenizes one templated row as TRL does, with TRL 0.25's truncation.
pub fn tokenize_row(
    text: &TextPair,
    tok: &TokenizerInfo,
    opts: &TokenizeOptions,
) -> std::result::Result<TokenizedPair, String> {
    let encode = |s: &str| tok.encode(s).map_err(|e| e.to_string());
    let mut prompt_ids = encode(&text.prompt)?;
    let mut chosen = split_answer(
        &prompt_ids,
        encode(&format!("{}{}", text.prompt, text.chosen))?,
    )?;
    let mut rejected = split_answer(
        &prompt_ids,
        encode(&format!("{}{}", text.prompt, text.rejected))?,
    )?;
    check_prompts_agree(&chosen.prompt, &rejected.prompt)?;
    prompt_ids.truncate(chosen.prompt.len().min(rejected.prompt.len()));

    if let Some(bos) = &tok.bos {
        for ids in [&mut prompt_ids, &mut chosen.prompt, &mut rejected.prompt] {
            if ids.first() != Some(&bos.id) {
                ids.insert(0, bos.id);
            }
        }
    }
    for ids in [&mut chosen.answer, &mut rejected.answer] {
        if ids.last() != Some(&tok.eos.id) {
            ids.push(tok.eos.id);
        }
    }
    truncate(&mut prompt_ids, &mut chosen, &mut rejected, opts);
    for (name, split) in [("chosen", &chosen), ("rejected", &rejected)] {
        if split.answer.is_empty() {
            return Err(format!(
                "no token of the {name} answer is left after truncation to max_length {}",
                opts.max_length
            ));
        }
    }
    let (chosen_ids, chosen_labels) = sequence(chosen);
    let (rejected_ids, rejected_labels) = sequence(rejected);
    Ok(TokenizedPair {
        prompt_ids,
        chosen_ids,
        chosen_labels,
        rejected_ids,
        rejected_labels,
    })
}

/// `build_tokenized_answer`: the answer is what the joint tokenization has after the prompt's
/// tokens; when the joint tokenization merged the prompt's last token with the answer's first,
/// the split moves back one token so the merged token belongs to the answer.
fn split_answer(prompt_ids: &[u32], full: Vec<u32>) -> std::result::Result<Split, String> {
    if full.len() < prompt_ids.len() {
        return Err(
            "prompt and answer tokenized together are shorter than the prompt alone".into(),
        );
    }
    let mut start = prompt_ids.len();
    if full[..start] != *prompt_ids {
        start -= 1;
    }
    Ok(Split {
        prompt: full[..start].to_vec(),
        answer: full[start..].to_vec(),
    })
}

/// TRL refuses a row whose chosen and rejected prompt ids differ in more than one token or
/// by more than one in length: only a merge at the boundary may tell them apart.
fn check_prompts_agree(chosen: &[u32], rejected: &[u32]) -> std::result::Result<(), String> {
    let differing = chosen.iter().zip(rejected).filter(|(a, b)| a != b).count();
    if differing > 1 || chosen.len().abs_diff(rejected.len()) > 1 {
        return Err(
            "the prompt tokenizes differently before chosen and before rejected (they may \
                    differ only in the last token, from a tokenizer merge)"
                .into(),
        );
    }
    Ok(())
}

/// TRL 0.25: when a prompt plus the longer answer exceeds `max_length`, that prompt keeps
/// `max_prompt_length` tokens from its start or end; if still too long, both answers keep
/// their first `max_length - max_prompt_length` tokens. Runs after BOS/EOS, so it can cut them.
fn truncate(
    prompt_ids: &mut Vec<u32>,
    chosen: &mut Split,
    rejected: &mut Split,
    opts: &TokenizeOptions,
) {
    let longer = chosen.answer.len().max(rejected.answer.len());
    let too_long = |prompt_len: usize| prompt_len + longer > opts.max_length;
    for ids in [&mut chosen.prompt, &mut rejected.prompt, prompt_ids] {
        if too_long(ids.len()) {
            cut_prompt(ids, opts);
        }
    }
    let answer_room = opts.max_length.saturating_sub(opts.max_prompt_length);
    for split in [chosen, rejected] {
        if too_long(split.prompt.len()) {
            split.answer.truncate(answer_room);
        }
    }
}

fn cut_prompt(ids: &mut Vec<u32>, opts: &TokenizeOptions) {
    match opts.truncation_mode {
        TruncationMode::KeepStart => ids.truncate(opts.max_prompt_length),
        TruncationMode::KeepEnd => {
            let drop = ids.len().saturating_sub(opts.max_prompt_length);
            ids.drain(..drop);
        }
    }
}

/// The full sequence and its labels: the prompt positions ignored, the answer learned.
fn sequence(split: Split) -> (Vec<u32>, Vec<i64>) {
    let labels = std::iter::repeat_n(IGNORE_INDEX, split.prompt.len())
        .chain(split.answer.iter().map(|&id| i64::from(id)))
        .collect();
    let mut ids = split.prompt;
    ids.extend(split.answer);
    (ids, labels)
}

// ---------------------------------------------------------------------------------------------
// Train/eval split.

/// Splits `items` into `(train, eval)` for `data.eval_fraction`, the same way for the same
/// seed on every machine and release. The rule: `n_eval = ceil(fraction * n)` (as
/// `datasets`' `train_test_split`), at least 1 and at most `n - 1`; the eval rows are the first
/// `n_eval` positions of a Fisher-Yates shuffle of `0..n` drawn from SplitMix64 seeded with
/// `seed`. Both parts keep file order. A fraction of 0, or fewer than 2 items, gives no eval rows.
pub fn split_eval<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    if fraction <= 0.0 || n < 2 {
        return (items, Vec::new());
    }
    let n_eval = ((fraction * n as f64).ceil() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut is_eval = vec![false; n];
    for &i in &order[..n_eval] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - n_eval), Vec::with_capacity(n_eval));
    for (item, to_eval) in items.into_iter().zip(is_eval) {
        if to_eval {
            eval.push(item);
        } else {
            train.push(item);
        }
    }
    (train, eval)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a fixed, documented generator, so a split never
/// changes with a `rand` upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift; the bias is below 2^-40 for any data set size).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::SpecialToken;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::{AddedToken, Tokenizer};

    // The expected ids in these tests were printed by TRL 1.16.0 (`maybe_extract_prompt`,
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
    const CHATML: &str =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
        message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";
    const P: i64 = IGNORE_INDEX;
    const U: &str = "user";
    const A: &str = "assistant";

    /// A JSON list of `{"role","content"}` messages.
    fn msgs(list: &[(&str, &str)]) -> String {
        let items: Vec<String> = list
            .iter()
            .map(|(role, content)| format!(r#"{{"role":"{role}","content":"{content}"}}"#))
            .collect();
        format!("[{}]", items.join(","))
    }

    /// A row with conversational answers and `prompt` (raw JSON) when given.
    fn chat_row(
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
        let specials =
            ["<s>", "</s>", "<|im_start|>", "<|im_end|>"].map(|s| AddedToken::from(s, true));
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
    fn llama() -> TokenizerInfo {
        tokenizer(Some("<s>"), "</s>")
    }

    /// Qwen-like: no BOS, EOS `<|im_end|>`.
    fn qwen() -> TokenizerInfo {
        tokenizer(None, "<|im_end|>")
    }

    fn prepare(
        jsonl: &str,
        tok: &TokenizerInfo,
        opts: &TokenizeOptions,
    ) -> Result<Vec<TokenizedPair>> {
        let path = Path::new("prefs.jsonl");
        let rows = parse_rows(jsonl.as_bytes(), path)?;
        let template = ChatTemplate::for_tokenizer(CHATML, tok).unwrap();
        prepare_pairs(&rows, path, tok, Some(&template), opts)
    }

    fn one(jsonl: &str, tok: &TokenizerInfo) -> TokenizedPair {
        let mut pairs = prepare(jsonl, tok, &TokenizeOptions::default()).unwrap();
        assert_eq!(pairs.len(), 1);
        pairs.remove(0)
    }

    fn pair(
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

    fn data_error(err: Error) -> (usize, String) {
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

    #[test]
    fn standard_row_gets_bos_and_eos() {
        let got = one(
            r#"{"prompt":"hello","chosen":" yes","rejected":" no"}"#,
            &llama(),
        );
        assert_eq!(
            got,
            pair(
                &[1, 8],
                &[1, 8, 14, 2],
                &[P, P, 14, 2],
                &[1, 8, 15, 2],
                &[P, P, 15, 2]
            )
        );
    }

    #[test]
    fn bos_and_eos_already_present_are_not_doubled() {
        let got = one(
            r#"{"prompt":"<s> hello","chosen":" yes </s>","rejected":" no"}"#,
            &llama(),
        );
        assert_eq!(
            got,
            pair(
                &[1, 8],
                &[1, 8, 14, 2],
                &[P, P, 14, 2],
                &[1, 8, 15, 2],
                &[P, P, 15, 2]
            )
        );
    }

    #[test]
    fn tokenizer_without_bos_gets_none() {
        let got = one(
            r#"{"prompt":"hello","chosen":" yes","rejected":" no"}"#,
            &qwen(),
        );
        assert_eq!(
            got,
            pair(&[8], &[8, 14, 4], &[P, 14, 4], &[8, 15, 4], &[P, 15, 4])
        );
    }

    #[test]
    fn boundary_merge_moves_the_split_back() {
        // "hello wor" + "ld" tokenizes as [hello, world]: the merged token belongs to chosen.
        let got = one(
            r#"{"prompt":"hello wor","chosen":"ld","rejected":" no"}"#,
            &llama(),
        );
        assert_eq!(
            got,
            pair(
                &[1, 8],
                &[1, 8, 11, 2],
                &[P, P, 11, 2],
                &[1, 8, 9, 15, 2],
                &[P, P, P, 15, 2]
            )
        );
    }

    #[test]
    fn prompts_may_differ_only_in_the_last_token() {
        assert!(check_prompts_agree(&[1, 2, 3], &[1, 2, 4]).is_ok());
        assert!(check_prompts_agree(&[1, 2, 3], &[1, 2]).is_ok());
        assert!(check_prompts_agree(&[1, 2, 3], &[1, 5, 4]).is_err());
        assert!(check_prompts_agree(&[1, 2, 3], &[1]).is_err());
    }

    const CONVERSATION_IDS: [u32; 6] = [3, 5, 8, 4, 3, 6];

    fn conversational_expected() -> TokenizedPair {
        let ids = |tail: &[u32]| [&CONVERSATION_IDS[..], tail].concat();
        pair(
            &CONVERSATION_IDS,
            &ids(&[14, 4]),
            &[P, P, P, P, P, P, 14, 4],
            &ids(&[15, 4]),
            &[P, P, P, P, P, P, 15, 4],
        )
    }

    #[test]
    fn conversational_row_is_templated_like_trl() {
        let row = chat_row(Some(&msgs(&[(U, "hello")])), &[(A, "yes")], &[(A, "no")]);
        let rows = parse_rows(row.as_bytes(), Path::new("x")).unwrap();
        let template = ChatTemplate::new(CHATML, None, Some("<|im_end|>")).unwrap();
        let text = apply_chat_template(&rows[0].pair, Some(&template)).unwrap();
        assert_eq!(
            text.prompt,
            "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(text.chosen, "yes<|im_end|>\n");
        assert_eq!(text.rejected, "no<|im_end|>\n");
        // EOS (<|im_end|>) already ends each answer.
        assert_eq!(one(&row, &qwen()), conversational_expected());
        // A Llama-like tokenizer adds its BOS and EOS around the template's text.
        let got = one(&row, &llama());
        assert_eq!(
            got.chosen_ids,
            [&[1][..], &CONVERSATION_IDS, &[14, 4, 2]].concat()
        );
        assert_eq!(got.rejected_labels, [&[P; 7][..], &[15, 4, 2]].concat());
    }

    #[test]
    fn implicit_prompt_is_the_common_message_prefix() {
        let (chosen, rejected) = ([(U, "hello"), (A, "yes")], [(U, "hello"), (A, "no")]);
        let row = chat_row(None, &chosen, &rejected);
        assert_eq!(one(&row, &qwen()), conversational_expected());
        // A text prompt beside full conversations is ignored, as TRL's maybe_extract_prompt does.
        let row = chat_row(Some("\"hello\""), &chosen, &rejected);
        assert_eq!(one(&row, &qwen()), conversational_expected());
    }

    #[test]
    fn implicit_text_prompt_leaves_the_space_to_the_answers() {
        let rows = parse_rows(
            br#"{"chosen":"hello yes","rejected":"hello no"}"#,
            Path::new("x"),
        )
        .unwrap();
        let expected = Pair::Standard {
            prompt: "hello".into(),
            chosen: " yes".into(),
            rejected: " no".into(),
        };
        assert_eq!(rows[0].pair, expected);
        // One a prefix of the other: the last common character stays with the answers.
        let rows = parse_rows(br#"{"chosen":"abc","rejected":"abcd"}"#, Path::new("x")).unwrap();
        let expected = Pair::Standard {
            prompt: "ab".into(),
            chosen: "c".into(),
            rejected: "cd".into(),
        };
        assert_eq!(rows[0].pair, expected);
    }

    #[test]
    fn final_assistant_message_in_the_prompt_is_continued() {
        let prompt = msgs(&[(U, "hello"), (A, "the answer")]);
        let row = chat_row(Some(&prompt), &[(A, "is 42")], &[(A, "no")]);
        let got = one(&row, &qwen());
        let prompt = [3, 5, 8, 4, 3, 6, 23, 24];
        let expected = pair(
            &prompt,
            &[&prompt[..], &[4, 3, 6, 25, 26, 4]].concat(),
            &[&[P; 8][..], &[4, 3, 6, 25, 26, 4]].concat(),
            &[&prompt[..], &[4, 3, 6, 15, 4]].concat(),
            &[&[P; 8][..], &[4, 3, 6, 15, 4]].concat(),
        );
        assert_eq!(got, expected);
    }

    fn truncation_opts(mode: TruncationMode) -> TokenizeOptions {
        TokenizeOptions {
            max_length: 6,
            max_prompt_length: 3,
            truncation_mode: mode,
        }
    }

    // Prompt [<s> a b c d e] (6), answers [yes </s>] (2) and [no f g </s>] (4): 6 + 4 > 6, so
    // the prompt keeps 3 tokens; 3 + 4 > 6 still, so both answers keep 6 - 3 = 3 tokens.
    const LONG_ROW: &str = r#"{"prompt":"a b c d e","chosen":" yes","rejected":" no f g"}"#;

    #[test]
    fn truncation_keep_end_drops_the_prompt_start_and_bos() {
        let got = prepare(
            LONG_ROW,
            &llama(),
            &truncation_opts(TruncationMode::KeepEnd),
        )
        .unwrap();
        let expected = pair(
            &[18, 19, 20],
            &[18, 19, 20, 14, 2],
            &[P, P, P, 14, 2],
            &[18, 19, 20, 15, 21, 22],
            &[P, P, P, 15, 21, 22],
        );
        assert_eq!(got, [expected]);
    }

    #[test]
    fn truncation_keep_start_keeps_bos_and_cuts_eos() {
        let got = prepare(
            LONG_ROW,
            &llama(),
            &truncation_opts(TruncationMode::KeepStart),
        )
        .unwrap();
        let expected = pair(
            &[1, 16, 17],
            &[1, 16, 17, 14, 2],
            &[P, P, P, 14, 2],
            &[1, 16, 17, 15, 21, 22],
            &[P, P, P, 15, 21, 22],
        );
        assert_eq!(got, [expected]);
    }

    #[test]
    fn rows_that_fit_are_not_truncated() {
        let opts = TokenizeOptions {
            max_length: 10,
            ..truncation_opts(TruncationMode::KeepEnd)
        };
        let got = prepare(LONG_ROW, &llama(), &opts).unwrap();
        assert_eq!(got[0].rejected_ids, [1, 16, 17, 18, 19, 20, 15, 21, 22, 2]);
    }

    #[test]
    fn an_answer_truncated_to_nothing_is_an_error() {
        // max_prompt_length = max_length leaves no room (the job file check forbids it).
        let opts = TokenizeOptions {
            max_length: 3,
            max_prompt_length: 3,
            truncation_mode: TruncationMode::KeepEnd,
        };
        let (line, message) = data_error(prepare(LONG_ROW, &llama(), &opts).unwrap_err());
        assert_eq!(line, 1);
        assert!(
            message.contains("no token of the chosen answer"),
            "{message}"
        );
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let lines = [
            r#"{"prompt":"hello","chosen":" yes","rejected":" no"}"#,
            "",
            "not json",
            "[1]",
            r#"{"prompt":"a","chosen":"b"}"#,
            r#"{"prompt":"a","chosen":3,"rejected":"c"}"#,
            r#"{"prompt":"a","chosen":[{"role":"assistant","content":"b"}],"rejected":"c"}"#,
            r#"{"prompt":"a","chosen":"","rejected":"c"}"#,
            &chat_row(Some(&msgs(&[(U, "a")])), &[("asistant", "b")], &[(A, "c")]),
            r#"{"prompt":[],"chosen":"b","rejected":"c"}"#,
            &chat_row(None, &[(U, "a")], &[(U, "b")]),
        ];
        let (line, message) = data_error(
            parse_rows(lines.join("\n").as_bytes(), Path::new("prefs.jsonl")).unwrap_err(),
        );
        assert_eq!(line, 3);
        let expected = [
            "invalid JSON",
            "prefs.jsonl:4: expected a JSON object, found a list",
            "prefs.jsonl:5: missing key \"rejected\"",
            "prefs.jsonl:6: \"chosen\" must be a string or a list of messages, found a number",
            "prefs.jsonl:7: mixed forms: prompt is a string, chosen is a message list, rejected is a string",
            "prefs.jsonl:8: \"chosen\" is empty",
            "prefs.jsonl:9: \"chosen\"[0]: unknown role \"asistant\"",
            "prefs.jsonl:10: \"prompt\" is an empty list",
            "prefs.jsonl:11: chosen and rejected share no leading message",
        ];
        for want in expected {
            assert!(message.contains(want), "missing {want:?} in:\n{message}");
        }
        let full = Error::Data {
            path: "prefs.jsonl".into(),
            line,
            message,
        }
        .to_string();
        assert!(full.starts_with("prefs.jsonl:3: invalid JSON"), "{full}");
    }

    #[test]
    fn only_the_first_bad_rows_are_listed() {
        let text = "[]\n".repeat(12);
        let (line, message) =
            data_error(parse_rows(text.as_bytes(), Path::new("prefs.jsonl")).unwrap_err());
        assert_eq!(line, 1);
        assert_eq!(message.lines().count(), MAX_REPORTED + 1);
        assert!(
            message.ends_with("(12 bad rows in all; the first 10 are shown)"),
            "{message}"
        );
    }

    #[test]
    fn template_problems_name_the_row() {
        let row = chat_row(Some(&msgs(&[(U, "a")])), &[(A, "b")], &[(A, "c")]);
        let path = Path::new("prefs.jsonl");
        let rows = parse_rows(format!("\n{row}\n").as_bytes(), path).unwrap();
        let err =
            prepare_pairs(&rows, path, &qwen(), None, &TokenizeOptions::default()).unwrap_err();
        let (line, message) = data_error(err);
        assert_eq!(line, 2);
        assert!(message.contains("needs a chat template"), "{message}");

        let row = chat_row(Some(&msgs(&[("system", "a")])), &[(A, "b")], &[(A, "c")]);
        let (line, message) =
            data_error(prepare(&row, &qwen(), &TokenizeOptions::default()).unwrap_err());
        assert_eq!(line, 1);
        assert!(message.contains("not \"system\""), "{message}");
    }

    #[test]
    fn empty_file_and_bom_and_crlf() {
        let (line, message) =
            data_error(parse_rows(b"\n  \n", Path::new("prefs.jsonl")).unwrap_err());
        assert_eq!(
            (line, message.as_str()),
            (1, "the file has no preference rows")
        );
        let text = b"\xEF\xBB\xBF{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\r\n\r\n";
        let rows = parse_rows(text, Path::new("prefs.jsonl")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 1);
    }

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

    #[test]
    fn chat_template_setting() {
        let tok = qwen();
        assert!(ChatTemplate::from_setting("none", &tok).unwrap().is_none());
        assert!(ChatTemplate::from_setting("auto", &tok).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jinja");
        std::fs::write(&path, "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
        let template = ChatTemplate::from_setting(path.to_str().unwrap(), &tok)
            .unwrap()
            .unwrap();
        assert_eq!(
            template
                .render(&[Message::new("user", "hi")], false, false)
                .unwrap(),
            "hi"
        );
        assert!(ChatTemplate::from_setting("/nonexistent/t.jinja", &tok).is_err());
    }

    #[test]
    fn eval_split_is_seeded_and_keeps_file_order() {
        let items: Vec<u32> = (0..100).collect();
        let (train, eval) = split_eval(items.clone(), 0.05, 42);
        assert_eq!((train.len(), eval.len()), (95, 5));
        assert!(eval.windows(2).all(|w| w[0] < w[1]) && train.windows(2).all(|w| w[0] < w[1]));
        let mut all = [train.clone(), eval.clone()].concat();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(split_eval(items.clone(), 0.05, 42), (train, eval.clone()));
        assert_ne!(split_eval(items.clone(), 0.05, 7).1, eval);
        // ceil, at least one eval row and at least one train row.
        assert_eq!(split_eval(items.clone(), 0.001, 1).1.len(), 1);
        assert_eq!(split_eval(vec![1, 2], 0.99, 1).0.len(), 1);
        assert_eq!(split_eval(vec![1], 0.5, 1), (vec![1], vec![]));
        assert_eq!(split_eval(items.clone(), 0.0, 1).0, items);
    }
}
