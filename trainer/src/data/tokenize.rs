//! Tokenization as TRL's `tokenize_row` / `build_tokenized_answer` do it for decoder-only
//! models: BOS/EOS rules, the prompt/answer split at merged tokens and TRL 0.25's truncation.

use orpo_api::spec::TruncationMode;

use super::{TextPair, TokenizeOptions, TokenizedPair, IGNORE_INDEX};
use crate::tokenizer::TokenizerInfo;

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
}
