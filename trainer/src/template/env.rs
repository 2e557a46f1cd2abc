//! The minijinja environment set up as transformers sets up Jinja2 for chat templates.

use minijinja::{Environment, ErrorKind, Value};

use super::python::python_formatter;
use super::strftime::{strftime, unix_now};
use super::tojson::tojson;

/// transformers registers a `{% generation %}...{% endgeneration %}` block (it marks assistant
/// text for `return_assistant_tokens_mask` and otherwise renders its body unchanged; Qwen3 and
/// SmolLM3 templates use it). minijinja has no such tag, so it becomes a block tag with the same
/// whitespace behaviour and no effect: `{% if true %}...{% endif %}`.
pub(super) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let end = start + len + 2;
        out.push_str(&rest[..start]);
        out.push_str(&rewrite_tag(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn rewrite_tag(tag: &str) -> String {
    let inner = &tag[2..tag.len() - 2];
    let marker = |c: char| c == '-' || c == '+';
    let open = if inner.starts_with(marker) {
        &inner[..1]
    } else {
        ""
    };
    let close = if inner.len() > open.len() && inner.ends_with(marker) {
        &inner[inner.len() - 1..]
    } else {
        ""
    };
    let body = inner[open.len()..inner.len() - close.len()].trim();
    match body {
        "generation" => format!("{{%{open} if true {close}%}}"),
        "endgeneration" => format!("{{%{open} endif {close}%}}"),
        _ => tag.to_string(),
    }
}

pub(super) fn python_like_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime(&format, unix_now())
    });
    env
}

#[cfg(test)]
mod tests {
    use crate::template::test_support::{render, user_assistant};
    use crate::template::{ChatTemplate, Message};

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    #[test]
    fn whitespace_control_is_jinja2_with_trim_and_lstrip_blocks() {
        let source = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}\n\
                      {% if add_generation_prompt %}\n  GEN\n{% endif %}\n";
        assert_eq!(
            render(source, &user_assistant(), true),
            "    Hi there\n    Hello \n  GEN\n"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let source = "{% for m in messages %}\n  {% generation %}\n  [{{ m.content }}]\n  \
                      {%- endgeneration %}\n{%+ generation -%}  x  {% endgeneration +%}\n{% endfor %}";
        assert_eq!(
            render(source, &user_assistant()[..1], false),
            "  [Hi there]x  \n"
        );
        let both = [Message::new("user", "a"), Message::new("assistant", "b")];
        assert_eq!(render(source, &both, false), "  [a]x  \n  [b]x  \n");
    }

    #[test]
    fn raise_exception_reports_the_templates_message() {
        let template = ChatTemplate::new(
            "{{ raise_exception('Only user and assistant roles') }}",
            None,
            None,
        )
        .unwrap();
        let err = template
            .render(&[Message::new("user", "x")], false, false)
            .unwrap_err();
        assert!(
            err.to_string().contains("Only user and assistant roles"),
            "{err}"
        );
    }
}
