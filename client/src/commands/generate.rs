//! `orpoctl generate ID "prompt"...`: answers from a job's checkpoint, streamed as the daemon
//! writes them (`POST /v1/jobs/{id}/generate`). The answer alone goes to stdout; why the
//! request waits, and where it runs, go to stderr. With `--compare-base` the base model's and
//! the checkpoint's answers are printed side by side once both are complete.

use std::io::Write as _;

use futures_util::StreamExt as _;
use orpo_api::{GenerateEvent, GenerateRequest};

use crate::conn::{ApiResult as _, Conn};
use crate::display;
use crate::Outcome;

/// Columns when the terminal's width is unknown (output to a pipe).
const DEFAULT_WIDTH: usize = 100;

pub async fn generate(
    conn: &Conn,
    id: u64,
    req: &GenerateRequest,
    json: bool,
) -> anyhow::Result<Outcome> {
    let mut events = conn.client.generate(id, req).await.or_explain(conn)?;
    let n = req.prompts.len();
    // Complete answers by prompt: (base, tuned).
    let mut answers: Vec<(Option<String>, Option<String>)> = vec![(None, None); n];
    let mut checkpoint = String::new();
    let mut stdout = std::io::stdout();
    let mut done = false;
    // The answer's text streamed so far: an incomplete character at its end is held back by
    // the daemon until the answer is complete.
    let mut streamed = String::new();
    while let Some(event) = events.next().await {
        let event = event.or_explain(conn)?;
        if json {
            writeln!(stdout, "{}", serde_json::to_string(&event)?)?;
        }
        match event {
            GenerateEvent::Waiting { reason } => eprintln!("waiting: {}", display::escape(&reason)),
            GenerateEvent::Started {
                device,
                checkpoint: name,
                estimate_bytes,
            } => {
                eprintln!(
                    "answering with job {id}'s {} on {} ({} admitted)",
                    display::escape(&name),
                    display::escape(&device),
                    display::bytes(estimate_bytes)
                );
                checkpoint = name;
            }
            GenerateEvent::Token { model, text, .. } => {
                if !json && !req.compare_base && model == "tuned" {
                    write!(stdout, "{}", display::escape_lines(&text))?;
                    stdout.flush()?;
                    streamed.push_str(&text);
                }
            }
            GenerateEvent::Answer {
                model,
                prompt,
                text,
                ..
            } => {
                if !json && !req.compare_base && model == "tuned" {
                    let rest = text.strip_prefix(streamed.as_str()).unwrap_or_default();
                    writeln!(stdout, "{}", display::escape_lines(rest))?;
                    streamed.clear();
                }
                if let Some(slot) = answers.get_mut(prompt) {
                    match model.as_str() {
                        "base" => slot.0 = Some(text),
                        _ => slot.1 = Some(text),
                    }
                }
            }
            GenerateEvent::Error { kind, message } => {
                anyhow::bail!(
                    "job {id}: generation failed ({kind}): {}",
                    display::escape_lines(&message)
                );
            }
            GenerateEvent::Done {} => {
                done = true;
                break;
            }
        }
    }
    if !done {
        anyhow::bail!("the daemon closed the answer stream before it was complete");
    }
    if req.compare_base && !json {
        let width = console::Term::stdout()
            .size_checked()
            .map_or(DEFAULT_WIDTH, |(_, cols)| cols as usize);
        for (i, (base, tuned)) in answers.iter().enumerate() {
            if n > 1 || i > 0 {
                writeln!(stdout, "{}", display::escape(&req.prompts[i]))?;
            }
            let out = side_by_side(
                ("base", base.as_deref().unwrap_or("")),
                (&checkpoint, tuned.as_deref().unwrap_or("")),
                width,
            );
            write!(stdout, "{out}")?;
        }
    }
    Ok(Outcome::Ok)
}

/// Two answers in columns under their titles, wrapped at word boundaries to fit `width`; one
/// after the other when the columns would be narrower than 20.
pub fn side_by_side(left: (&str, &str), right: (&str, &str), width: usize) -> String {
    let col = width.saturating_sub(3) / 2;
    let (lt, lb) = (display::escape(left.0), display::escape_lines(left.1));
    let (rt, rb) = (display::escape(right.0), display::escape_lines(right.1));
    if col < 20 {
        return format!("[{lt}]\n{lb}\n[{rt}]\n{rb}\n");
    }
    let mut l = vec![lt, "─".repeat(col)];
    l.extend(wrap(&lb, col));
    let mut r = vec![rt, "─".repeat(col)];
    r.extend(wrap(&rb, col));
    let mut out = String::new();
    for i in 0..l.len().max(r.len()) {
        let a = l.get(i).map_or("", String::as_str);
        let b = r.get(i).map_or("", String::as_str);
        let pad = col.saturating_sub(console::measure_text_width(a));
        let line = format!("{a}{} │ {b}", " ".repeat(pad));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` in lines at most `width` columns wide, broken at spaces where a word fits, else
/// inside the word.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        let mut used = 0;
        for word in paragraph.split(' ') {
            let w = console::measure_text_width(word);
            if used > 0 && used + 1 + w <= width {
                line.push(' ');
                line.push_str(word);
                used += 1 + w;
                continue;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
            for c in word.chars() {
                let cw = console::measure_text_width(c.encode_utf8(&mut [0; 4]));
                if used + cw > width {
                    lines.push(std::mem::take(&mut line));
                    used = 0;
                }
                line.push(c);
                used += cw;
            }
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_columns_under_their_titles() {
        let out = side_by_side(
            (
                "base",
                "The capital of France is Paris, a city on the Seine.",
            ),
            ("step-40", "Paris."),
            47,
        );
        assert_eq!(
            out,
            "base                   │ step-40\n\
             ────────────────────── │ ──────────────────────\n\
             The capital of France  │ Paris.\n\
             is Paris, a city on    │\n\
             the Seine.             │\n"
        );
    }

    #[test]
    fn long_words_break_and_narrow_terminals_get_one_after_the_other() {
        assert_eq!(wrap("abcdefghij xy", 4), ["abcd", "efgh", "ij", "xy"]);
        assert_eq!(wrap("a\n\nb", 10), ["a", "", "b"]);
        let out = side_by_side(("base", "x"), ("final", "y\u{1b}[2J"), 30);
        assert_eq!(out, "[base]\nx\n[final]\ny\\e[2J\n");
    }
}
