//! Reading JSONL preference files: each row parsed, checked and given its prompt the way TRL's
//! `maybe_extract_prompt` does.

use std::path::Path;

use super::{Pair, PreferenceRow, Problems};
use crate::template::{Json, Message};
use crate::{Error, Result};

/// Reads the JSONL file at `path` and checks every row.
pub fn read_rows(path: &Path) -> Result<Vec<PreferenceRow>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_rows(&bytes, path)
}

/// Parses JSONL `bytes`; `path` only names the file in errors. Blank lines are skipped.
pub fn parse_rows(bytes: &[u8], path: &Path) -> Result<Vec<PreferenceRow>> {
    let mut problems = Problems::default();
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        match parse_raw_line(line, raw) {
            None => {}
            Some(Ok(pair)) => rows.push(PreferenceRow { line, pair }),
            Some(Err(message)) => problems.push(line, message),
        }
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push(1, "the file has no preference rows".into());
    }
    problems.into_result(path, rows)
}

/// Checks a JSONL file one line at a time, with the checks and messages of [`parse_rows`], and
/// keeps only counts: for a file too large to hold in memory (the daemon's uploads).
#[derive(Default)]
pub struct RowChecker {
    lines: usize,
    rows: usize,
    bad: usize,
    problems: Problems,
}

impl RowChecker {
    /// Checks the next line, given without its `\n`.
    pub fn check_line(&mut self, raw: &[u8]) {
        self.lines += 1;
        match parse_raw_line(self.lines, raw) {
            None => {}
            Some(Ok(_)) => self.rows += 1,
            Some(Err(message)) => {
                self.bad += 1;
                self.problems.push(self.lines, message);
            }
        }
    }

    /// Lines checked so far, blank ones included.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Rows (non-blank lines) checked so far, good or bad.
    pub fn rows(&self) -> usize {
        self.rows + self.bad
    }

    /// The number of good rows, or the error [`parse_rows`] gives for the same file.
    pub fn finish(mut self, path: &Path) -> Result<usize> {
        if self.rows == 0 && self.bad == 0 {
            self.problems
                .push(1, "the file has no preference rows".into());
        }
        self.problems.into_result(path, self.rows)
    }
}

/// Line `line` (1-based) of a file: `None` when it is blank, else its pair or what is wrong
/// with it. A byte order mark is allowed at the start of the file.
pub(super) fn parse_raw_line(line: usize, raw: &[u8]) -> Option<std::result::Result<Pair, String>> {
    let raw = match line {
        1 => raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw),
        _ => raw,
    };
    let text = match std::str::from_utf8(raw) {
        Ok(text) => text.trim_end_matches('\r'),
        Err(e) => return Some(Err(format!("not valid UTF-8 ({e})"))),
    };
    if text.trim().is_empty() {
        return None;
    }
    Some(parse_line(text))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::{
        chat_row, conversational_expected, data_error, msgs, one, qwen, A, U,
    };
    use crate::data::MAX_REPORTED;

    // Expected ids: see the note in `test_support` (TRL 1.16.0 on the same tokenizer and template).
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

    /// The streaming checker gives `parse_rows`'s error, line numbers included, line by line.
    #[test]
    fn row_checker_agrees_with_parse_rows() {
        let files: [&[u8]; 5] = [
            b"\xEF\xBB\xBF{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\r\n\r\n",
            b"{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\nnot json\n[1]\n\xFF\n",
            b"\n  \n",
            b"",
            &[b"[]\n".as_slice(); 12].concat(),
        ];
        for file in files {
            let path = Path::new("prefs.jsonl");
            let mut checker = RowChecker::default();
            for raw in file.split(|&b| b == b'\n') {
                checker.check_line(raw);
            }
            let want = parse_rows(file, path).map(|rows| rows.len());
            let got = checker.finish(path);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "{}",
                String::from_utf8_lossy(file)
            );
        }
        let mut checker = RowChecker::default();
        for raw in [&b"[]"[..], b"", b"{}"] {
            checker.check_line(raw);
        }
        assert_eq!((checker.lines(), checker.rows()), (3, 2));
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
}
