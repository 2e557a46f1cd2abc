//! Free text that people choose and others see: job names, owners. The daemon stores it and
//! `orpoctl` prints it in a terminal, so it must be one short line of printable text: a control
//! character could move the cursor, recolour or clear the listing (ESC sequences), forge extra
//! rows (`\r`, `\n`), and a bidi override could make a name read as something else.

/// The most characters a job's `name` may have.
pub const NAME_MAX_CHARS: usize = 128;

/// The most characters a job's owner may have (the daemon checks the owner it receives).
pub const OWNER_MAX_CHARS: usize = 64;

/// Checks that `value`, the text of `key`, is at most `max_chars` characters of printable text:
/// no control characters (C0 including tab, CR and LF; DEL; C1 U+0080..U+009F) and no bidi
/// embedding, override or isolate (U+202A..U+202E, U+2066..U+2069). The empty string passes.
pub fn check_label(key: &str, value: &str, max_chars: usize) -> Result<(), String> {
    label_problem(value, max_chars).map_or(Ok(()), |problem| Err(format!("{key}: {problem}")))
}

/// What is wrong with `value` as a label, without the key (for callers that name it apart).
pub(crate) fn label_problem(value: &str, max_chars: usize) -> Option<String> {
    // Counting stops just past the limit: a 900 KB name is refused without walking all of it.
    if value.chars().nth(max_chars).is_some() {
        return Some(format!(
            "is longer than {max_chars} characters ({}); at most {max_chars} are accepted",
            value.chars().count()
        ));
    }
    let (at, c) = value.chars().enumerate().find(|&(_, c)| unprintable(c))?;
    Some(format!(
        "has the unprintable character U+{:04X} at character {}; accepted: printable text, \
         without control characters (ESC, tab, line breaks, ...) or bidirectional overrides",
        c as u32,
        at + 1
    ))
}

/// Characters that act on the terminal or the text direction instead of showing.
fn unprintable(c: char) -> bool {
    // `is_control` is Unicode's Cc: C0 (ESC, \t, \r, \n, ...), DEL and C1.
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_passes() {
        assert_eq!(check_label("name", "", 128), Ok(()));
        assert_eq!(
            check_label("name", "smollm2-polite ünïcode 日本語 🙂", 128),
            Ok(())
        );
        assert_eq!(
            check_label("owner", &"a".repeat(64), OWNER_MAX_CHARS),
            Ok(())
        );
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_refused_with_the_key() {
        for bad in [
            "\u{1b}[2Jcleared",
            "a\rb",
            "a\nb",
            "a\tb",
            "nul\0",
            "del\u{7f}",
            "c1\u{9b}31m",
            "\u{85}next line",
            "evil\u{202E}fdp.exe",
            "\u{2066}isolate",
            "\u{2069}",
        ] {
            let err = check_label("name", bad, NAME_MAX_CHARS).unwrap_err();
            assert!(
                err.starts_with("name: ") && err.contains("unprintable character U+"),
                "{bad:?}: {err}"
            );
        }
        let err = check_label("name", "ok\u{1b}", 128).unwrap_err();
        assert!(err.contains("U+001B at character 3"), "{err}");
    }

    #[test]
    fn the_length_is_counted_in_characters() {
        // 64 two-byte characters are 128 bytes but 64 characters.
        assert_eq!(
            check_label("owner", &"é".repeat(64), OWNER_MAX_CHARS),
            Ok(())
        );
        let err = check_label("owner", &"é".repeat(65), OWNER_MAX_CHARS).unwrap_err();
        assert!(
            err.contains("owner") && err.contains("(65)") && err.contains("at most 64"),
            "{err}"
        );
        let err = check_label("name", &"x".repeat(900 << 10), NAME_MAX_CHARS).unwrap_err();
        assert!(err.contains("longer than 128"), "{err}");
    }
}
