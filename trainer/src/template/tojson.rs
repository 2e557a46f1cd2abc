//! The `tojson` filter as transformers overrides it: Python's `json.dumps`, not minijinja's.

use std::fmt::Write as _;

use minijinja::value::{from_args, Kwargs, Rest, ValueKind};
use minijinja::{ErrorKind, Value};

use super::python::py_float;

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, arguments
/// by position or by name as in Python.
pub(super) fn tojson(
    value: &Value,
    args: Rest<Value>,
) -> std::result::Result<Value, minijinja::Error> {
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    let arg = |i: usize, name: &str| -> std::result::Result<Option<Value>, minijinja::Error> {
        match positional.get(i) {
            Some(v) => Ok(Some(v.clone())),
            None => kwargs.get::<Option<Value>>(name),
        }
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(v.as_i64().unwrap_or(0).max(0) as usize),
        }),
    };
    let (item_sep, key_sep) = match arg(2, "separators")?.filter(|v| !v.is_none()) {
        Some(seps) => (item_str(&seps, 0)?, item_str(&seps, 1)?),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    dump(value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn item_str(seq: &Value, i: usize) -> std::result::Result<String, minijinja::Error> {
    let item = seq.get_item_by_index(i)?;
    item.as_str().map(str::to_string).ok_or_else(|| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be two strings",
        )
    })
}

fn dump(
    value: &Value,
    style: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => out.push_str(&py_float(f64::try_from(value.clone())?)),
        ValueKind::String => {
            json_string(value.as_str().unwrap_or_default(), style.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            dump_container(('[', ']'), &items, style, level, out, |v, out| {
                dump(v, style, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<(String, Value)> =
                value.try_iter()?.map(|k| (key_text(&k), k)).collect();
            if style.sort_keys {
                keys.sort_by(|a, b| a.0.cmp(&b.0));
            }
            dump_container(('{', '}'), &keys, style, level, out, |(text, key), out| {
                json_string(text, style.ensure_ascii, out);
                out.push_str(&style.key_sep);
                dump(&value.get_item(key)?, style, level + 1, out)
            })?;
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Brackets, separators and `indent` newlines around `items`, as `json.dumps` lays them out.
fn dump_container<T>(
    (open, close): (char, char),
    items: &[T],
    style: &JsonStyle,
    level: usize,
    out: &mut String,
    mut each: impl FnMut(&T, &mut String) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    let newline = |depth: usize| {
        style
            .indent
            .as_ref()
            .map(|ind| format!("\n{}", ind.repeat(depth)))
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        if let Some(nl) = newline(level + 1) {
            out.push_str(&nl);
        }
        each(item, out)?;
    }
    if let (false, Some(nl)) = (items.is_empty(), newline(level)) {
        out.push_str(&nl);
    }
    out.push(close);
    Ok(())
}

/// Python's json turns non-string keys into text: `1` -> "1", `True` -> "true".
fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        _ => key.to_string(),
    }
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use crate::template::test_support::render;
    use crate::template::Message;

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    #[test]
    fn tojson_is_python_json_dumps() {
        let user = [Message::new("user", "Hi there")];
        assert_eq!(
            render("{{ messages|tojson }}", &user, false),
            r#"[{"role": "user", "content": "Hi there"}]"#
        );
        let source = "{{ messages[0]|tojson(indent=2, sort_keys=true) }}|\
                      {{ messages[0]|tojson(separators=[',', ':']) }}|\
                      {{ 'é\u{1}'|tojson(ensure_ascii=true) }}|{{ '😀'|tojson(true) }}";
        assert_eq!(
            render(source, &user, false),
            "{\n  \"content\": \"Hi there\",\n  \"role\": \"user\"\n}|{\"role\":\"user\",\"content\":\"Hi there\"}|\
             \"\\u00e9\\u0001\"|\"\\ud83d\\ude00\""
        );
        let source = "{{ {'b': 1, 'a': [1, 2.5, 'é<'], 'c': none}|tojson(indent=2) }}";
        // minijinja's own dict literals sort their keys, unlike Python's (a known difference).
        assert_eq!(
            render(source, &user, false),
            "{\n  \"a\": [\n    1,\n    2.5,\n    \"é<\"\n  ],\n  \"b\": 1,\n  \"c\": null\n}"
        );
    }
}
