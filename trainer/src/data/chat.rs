//! TRL's `apply_chat_template` for preference rows: the prompt and each answer rendered to the
//! text that is then tokenized.

use super::{Pair, TextPair};
use crate::template::{ChatTemplate, Message};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::{
        chat_row, conversational_expected, data_error, llama, msgs, one, pair, prepare, qwen, A,
        CHATML, CONVERSATION_IDS, P, U,
    };
    use crate::data::{parse_rows, prepare_pairs, TokenizeOptions};
    use std::path::Path;

    // Expected ids: see the note in `test_support` (TRL 1.16.0 on the same tokenizer and template).
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
}
