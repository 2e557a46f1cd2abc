//! Chat templates: a model's Jinja `chat_template` rendered with minijinja the way transformers
//! 5.x renders it (`apply_chat_template` / `_compile_jinja_template`), so that the text TRL
//! tokenizes and the text we tokenize are the same bytes.
//!
//! What transformers sets up and we mirror:
//! - `trim_blocks=True, lstrip_blocks=True`, `keep_trailing_newline` left at Jinja's default
//!   (false);
//! - the globals `raise_exception(msg)` and `strftime_now(fmt)`, Python string/dict methods
//!   (`.strip()`, `.items()`, ... via minijinja-contrib's pycompat);
//! - its own `tojson` filter, which is `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)`: no HTML escaping, `", "`/`": "` separators;
//! - the context: `messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the
//!   tokenizer's named special tokens (`bos_token`, `eos_token`, `pad_token`) when it has them;
//! - messages with keys in file order, `None` values dropped, reasoning fields aliased;
//! - `continue_final_message` by tagging the final content and cutting the rendering there.
//!
//! Where Python and minijinja print values differently (`None`, `True`, lists, dicts) a
//! formatter prints them the Python way. `strftime_now` uses UTC; transformers uses the local
//! time of the machine that renders.
//!
//! Layout: `json` (the ordered JSON value rows are parsed into), `message` (chat messages),
//! `render` (the compiled template), `env` (the Jinja2-like environment) with `python`
//! (Python-style printing), `tojson` and `strftime` (the `strftime_now` global).

mod env;
mod json;
mod message;
mod python;
mod render;
mod strftime;
mod tojson;

pub use json::Json;
pub use message::{Message, KNOWN_ROLES};
pub use render::ChatTemplate;

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_support {
    use super::{ChatTemplate, Message};

    /// Renders with BOS `<s>` and EOS `</s>`.
    pub(super) fn render(source: &str, messages: &[Message], generation_prompt: bool) -> String {
        let template = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap();
        template.render(messages, generation_prompt, false).unwrap()
    }

    pub(super) fn message(json: &str) -> Message {
        Message::from_json(serde_json::from_str(json).unwrap()).unwrap()
    }

    pub(super) fn user_assistant() -> Vec<Message> {
        vec![
            Message::new("user", "Hi there"),
            Message::new("assistant", "Hello "),
        ]
    }
}
