//! Python's way of printing values (`str`, `repr`, float digits) and of stripping whitespace,
//! where minijinja's differs from Jinja2 running in Python.

use std::fmt::Write as _;

use minijinja::value::ValueKind;
use minijinja::{Output, State, Value};

/// `{{ value }}` as Jinja2 prints it: `str(value)`, so `None`, `True`, `['a']`, `{'k': 1}`.
pub(super) fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => out
            .write_str(&py_repr(value))
            .map_err(minijinja::Error::from),
        ValueKind::Number if !value.is_integer() => out
            .write_str(&py_repr(value))
            .map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn py_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if !value.is_integer() => {
            py_float(f64::try_from(value.clone()).unwrap_or(f64::NAN))
                .replace("NaN", "nan")
                .replace("Infinity", "inf")
        }
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .into_iter()
                .flatten()
                .map(|v| py_repr(&v))
                .collect();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .into_iter()
                .flatten()
                .map(|k| {
                    format!(
                        "{}: {}",
                        py_repr(&k),
                        py_repr(&value.get_item(&k).unwrap_or_default())
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// `repr(str)`: single quotes unless the text has a `'` and no `"`.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `repr(float)`: the shortest round-trip digits, positional for exponents -4..16, else
/// `1e+16` style; `json.dumps` writes the same (with `NaN`/`Infinity`).
pub(super) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        positional(&digits, exp)
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        format!(
            "{first}{frac}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    };
    format!("{sign}{body}")
}

fn positional(digits: &str, exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
    } else {
        format!("{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// Python's `str.isspace`, which also counts the ASCII separators 0x1c..0x1f.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

pub(super) fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::test_support::render;
    use crate::template::Message;

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    #[test]
    fn values_print_as_python_str() {
        let user = [Message::new("user", "Hi there")];
        let source =
            "{{ messages[0] }}|{{ messages }}|{{ none }}|{{ true }}|{{ 2.50 }}|{{ [] }}|{{ {} }}";
        assert_eq!(
            render(source, &user, false),
            "{'role': 'user', 'content': 'Hi there'}|[{'role': 'user', 'content': 'Hi there'}]|None|True|2.5|[]|{}"
        );
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        let floats = [
            1e16,
            1e15,
            123456789.125,
            0.0001,
            0.00001234,
            -2.5,
            1.5e-7,
            1e300,
            5e-324,
            100.0,
        ];
        let expected = [
            "1e+16",
            "1000000000000000.0",
            "123456789.125",
            "0.0001",
            "1.234e-05",
            "-2.5",
            "1.5e-07",
            "1e+300",
            "5e-324",
            "100.0",
        ];
        for (f, want) in floats.iter().zip(expected) {
            assert_eq!(py_float(*f), want);
        }
    }
}
