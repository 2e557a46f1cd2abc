//! Tokenization as TRL's `tokenize_row` / `build_tokenized_answer` do it for decoder-only
//! models: BOS/EOS rules, the prompt/answer split at merged tokens, and truncation by TRL 1.x's
//! rule (the whole prompt, each answer cut to what is left of `max_length`) or, with
//! `max_prompt_length`, TRL 0.25's (docs/orpo.md).
//!
//! Truncation depends on lengths only, so it is planned on [`RowLengths`] and then applied:
//! the memory estimate and the submit-time check use the same plan without the ids.

use orpo_api::spec::TruncationMode;
use serde::{Deserialize, Serialize};

use super::{TextPair, TokenizeOptions, TokenizedPair, IGNORE_INDEX};
use crate::tokenizer::TokenizerInfo;

/// A sequence split into its prompt and answer ids.
struct Split {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

/// A row's ids after BOS/EOS, before truncation.
struct Untruncated {
    prompt_ids: Vec<u32>,
    chosen: Split,
    rejected: Split,
}

/// Token counts of one row: its prompt (TRL's `prompt_input_ids`) and the prompt and answer
/// parts of the chosen and rejected sequences (they may differ in the prompt's last token).
/// Before truncation they are what [`row_lengths`] measures; [`RowLengths::truncated`] gives
/// what is left after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowLengths {
    pub prompt: u32,
    pub chosen_prompt: u32,
    pub chosen_answer: u32,
    pub rejected_prompt: u32,
    pub rejected_answer: u32,
}

impl RowLengths {
    /// The lengths after truncation with `opts`.
    ///
    /// Without `max_prompt_length` (TRL 1.16, `trl.experimental.orpo`): the prompt is kept
    /// whole and each answer keeps `max_length - its prompt` tokens when the two do not fit,
    /// none when the prompt alone fills `max_length`.
    ///
    /// With it (TRL 0.25): when a prompt plus the longer answer exceeds `max_length`, that
    /// prompt keeps `max_prompt_length` tokens; if still too long, both answers keep their
    /// first `max_length - max_prompt_length` tokens.
    ///
    /// Either runs after BOS/EOS, so it can cut them.
    pub fn truncated(&self, opts: &TokenizeOptions) -> RowLengths {
        let max = opts.max_length as u64;
        let mut out = *self;
        match opts.max_prompt_length {
            None => {
                for (prompt, answer) in [
                    (out.chosen_prompt, &mut out.chosen_answer),
                    (out.rejected_prompt, &mut out.rejected_answer),
                ] {
                    if u64::from(prompt) + u64::from(*answer) > max {
                        *answer = max.saturating_sub(u64::from(prompt)) as u32;
                    }
                }
            }
            Some(max_prompt) => {
                let max_prompt = max_prompt.min(u32::MAX as usize) as u32;
                let longer = u64::from(self.chosen_answer.max(self.rejected_answer));
                let too_long = |prompt: u32| u64::from(prompt) + longer > max;
                for prompt in [
                    &mut out.chosen_prompt,
                    &mut out.rejected_prompt,
                    &mut out.prompt,
                ] {
                    if too_long(*prompt) {
                        *prompt = (*prompt).min(max_prompt);
                    }
                }
                let room = max.saturating_sub(u64::from(max_prompt)) as u32;
                for (prompt, answer) in [
                    (out.chosen_prompt, &mut out.chosen_answer),
                    (out.rejected_prompt, &mut out.rejected_answer),
                ] {
                    if too_long(prompt) {
                        *answer = (*answer).min(room);
                    }
                }
            }
        }
        out
    }

    /// Tokens of the longer of the two sequences: the row's length once padded with its pair.
    pub fn padded(&self) -> usize {
        (self.chosen_prompt + self.chosen_answer).max(self.rejected_prompt + self.rejected_answer)
            as usize
    }

    /// Why this row, already truncated, cannot train: an answer with no token left.
    pub fn empty_answer(&self, opts: &TokenizeOptions) -> Option<String> {
        let which = match (self.chosen_answer, self.rejected_answer) {
            (0, _) => "chosen",
            (_, 0) => "rejected",
            _ => return None,
        };
        Some(match opts.max_prompt_length {
            None => format!(
                "the prompt alone fills max_length ({} of {} tokens), so no token of the \
                 {which} answer is left: raise data.max_length, shorten the prompt or drop the \
                 row (TRL 1.x would train on an empty answer and a NaN loss)",
                self.prompt, opts.max_length
            ),
            Some(_) => format!(
                "no token of the {which} answer is left after truncation to max_length {}",
                opts.max_length
            ),
        })
    }
}

/// The token counts of one templated row before truncation (BOS/EOS included): what the
/// memory estimate needs, measured by the same code that tokenizes for training.
pub fn row_lengths(
    text: &TextPair,
    tok: &TokenizerInfo,
) -> std::result::Result<RowLengths, String> {
    untruncated(text, tok).map(|row| row.lengths())
}

/// Tokenizes one templated row as TRL does, truncated with `opts`.
pub fn tokenize_row(
    text: &TextPair,
    tok: &TokenizerInfo,
    opts: &TokenizeOptions,
) -> std::result::Result<TokenizedPair, String> {
    let mut row = untruncated(text, tok)?;
    let cut = row.lengths().truncated(opts);
    if let Some(problem) = cut.empty_answer(opts) {
        return Err(problem);
    }
    let keep = |ids: &mut Vec<u32>, n: u32, mode: TruncationMode| {
        let n = n as usize;
        match mode {
            TruncationMode::KeepStart => ids.truncate(n),
            TruncationMode::KeepEnd => {
                let drop = ids.len().saturating_sub(n);
                ids.drain(..drop);
            }
        }
    };
    let mode = opts.truncation_mode;
    keep(&mut row.prompt_ids, cut.prompt, mode);
    keep(&mut row.chosen.prompt, cut.chosen_prompt, mode);
    keep(&mut row.rejected.prompt, cut.rejected_prompt, mode);
    row.chosen.answer.truncate(cut.chosen_answer as usize);
    row.rejected.answer.truncate(cut.rejected_answer as usize);
    let (chosen_ids, chosen_labels) = sequence(row.chosen);
    let (rejected_ids, rejected_labels) = sequence(row.rejected);
    Ok(TokenizedPair {
        prompt_ids: row.prompt_ids,
        chosen_ids,
        chosen_labels,
        rejected_ids,
        rejected_labels,
    })
}

/// TRL's steps before truncation: the prompt/answer split, the prompt check, BOS and EOS.
fn untruncated(text: &TextPair, tok: &TokenizerInfo) -> std::result::Result<Untruncated, String> {
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

    for ids in [&mut prompt_ids, &mut chosen.prompt, &mut rejected.prompt] {
        tok.prepend_bos(ids);
    }
    for ids in [&mut chosen.answer, &mut rejected.answer] {
        if ids.last() != Some(&tok.eos.id) {
            ids.push(tok.eos.id);
        }
    }
    Ok(Untruncated {
        prompt_ids,
        chosen,
        rejected,
    })
}

impl Untruncated {
    fn lengths(&self) -> RowLengths {
        // A row longer than 4 billion tokens cannot have been read (uploads are far smaller).
        let n = |v: &Vec<u32>| u32::try_from(v.len()).unwrap_or(u32::MAX);
        RowLengths {
            prompt: n(&self.prompt_ids),
            chosen_prompt: n(&self.chosen.prompt),
            chosen_answer: n(&self.chosen.answer),
            rejected_prompt: n(&self.rejected.prompt),
            rejected_answer: n(&self.rejected.answer),
        }
    }
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

/// The full sequence and its labels: the prompt positions ignored, the answer learned.
fn sequence(split: Split) -> (Vec<u32>, Vec<i64>) {
    let labels = std::iter::repeat_n(IGNORE_INDEX, split.prompt.len())
        .chain(split.answer.iter().map(|&id| i64::from(id)))
        .collect();
    let mut ids = split.prompt;
    ids.extend(split.answer);
    (ids, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::{data_error, llama, one, pair, prepare, qwen, P};
    use crate::data::TokenizeOptions;

    // Expected ids: see the note in `test_support` (TRL 1.16.0 on the same tokenizer and template).
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

    fn truncation_opts(mode: TruncationMode) -> TokenizeOptions {
        TokenizeOptions {
            max_length: 6,
            max_prompt_length: Some(3),
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
            max_prompt_length: Some(3),
            truncation_mode: TruncationMode::KeepEnd,
        };
        let (line, message) = data_error(prepare(LONG_ROW, &llama(), &opts).unwrap_err());
        assert_eq!(line, 1);
        assert!(
            message.contains("no token of the chosen answer"),
            "{message}"
        );
    }

    fn trl1(max_length: usize) -> TokenizeOptions {
        TokenizeOptions {
            max_length,
            max_prompt_length: None,
            truncation_mode: TruncationMode::KeepEnd,
        }
    }

    // TRL 1.16's rule on LONG_ROW: the prompt [<s> a b c d e] (6) is kept whole; each answer
    // keeps max_length - 6 tokens, EOS included in what is cut.
    #[test]
    fn trl1_keeps_the_prompt_and_cuts_each_answer_to_what_is_left() {
        let got = prepare(LONG_ROW, &llama(), &trl1(8)).unwrap();
        let expected = pair(
            &[1, 16, 17, 18, 19, 20],
            &[1, 16, 17, 18, 19, 20, 14, 2],
            &[P, P, P, P, P, P, 14, 2],
            &[1, 16, 17, 18, 19, 20, 15, 21],
            &[P, P, P, P, P, P, 15, 21],
        );
        assert_eq!(got, [expected]);
        // A chosen answer that fits is not cut because the rejected one is longer.
        let got = prepare(LONG_ROW, &llama(), &trl1(9)).unwrap();
        assert_eq!(got[0].chosen_ids, [1, 16, 17, 18, 19, 20, 14, 2]);
        assert_eq!(got[0].rejected_ids, [1, 16, 17, 18, 19, 20, 15, 21, 22]);
    }

    #[test]
    fn trl1_a_prompt_that_fills_max_length_is_an_error_with_its_line() {
        let (line, message) = data_error(prepare(LONG_ROW, &llama(), &trl1(6)).unwrap_err());
        assert_eq!(line, 1);
        assert!(
            message.contains("prompt alone fills max_length (6 of 6 tokens)")
                && message.contains("raise data.max_length"),
            "{message}"
        );
    }

    #[test]
    fn lengths_plan_the_same_cut_as_the_ids() {
        let text = TextPair {
            prompt: "a b c d e".into(),
            chosen: " yes".into(),
            rejected: " no f g".into(),
        };
        let tok = llama();
        let lengths = row_lengths(&text, &tok).unwrap();
        assert_eq!(
            lengths,
            RowLengths {
                prompt: 6,
                chosen_prompt: 6,
                chosen_answer: 2,
                rejected_prompt: 6,
                rejected_answer: 4
            }
        );
        for opts in [
            trl1(7),
            trl1(8),
            trl1(100),
            truncation_opts(TruncationMode::KeepEnd),
            truncation_opts(TruncationMode::KeepStart),
        ] {
            let ids = tokenize_row(&text, &tok, &opts).unwrap();
            let cut = lengths.truncated(&opts);
            assert_eq!(
                cut.padded(),
                ids.chosen_ids.len().max(ids.rejected_ids.len())
            );
            assert_eq!(cut.prompt as usize, ids.prompt_ids.len(), "{opts:?}");
            assert_eq!(
                (cut.chosen_prompt + cut.chosen_answer) as usize,
                ids.chosen_ids.len()
            );
            assert_eq!(
                (cut.rejected_prompt + cut.rejected_answer) as usize,
                ids.rejected_ids.len()
            );
        }
    }
}
