//! The compiled chat template and its rendering, `continue_final_message` included.

use std::path::Path;

use minijinja::{Environment, Value};

use super::env::{python_like_environment, rewrite_generation_tags};
use super::message::Message;
use super::python::{py_rstrip, py_strip};
use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// transformers' marker for `continue_final_message` (trailing space included).
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// A compiled chat template plus the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// transformers refuses `continue_final_message` when the source never says "content".
    mentions_content: bool,
    special_tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the texts the template sees; a token the
    /// tokenizer does not have stays undefined, as in transformers.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate> {
        let mut special_tokens = Vec::new();
        if let Some(bos) = bos_token {
            special_tokens.push(("bos_token", bos.to_string()));
        }
        if let Some(eos) = eos_token {
            special_tokens.push(("eos_token", eos.to_string()));
        }
        let mut env = python_like_environment();
        env.add_template_owned("chat_template", rewrite_generation_tags(source))
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            mentions_content: source.contains("content"),
            special_tokens,
        })
    }

    /// The template with the tokenizer's BOS, EOS and pad token texts.
    pub fn for_tokenizer(source: &str, tok: &TokenizerInfo) -> Result<ChatTemplate> {
        let bos = tok.bos.as_ref().map(|t| t.text.as_str());
        let mut template = ChatTemplate::new(source, bos, Some(&tok.eos.text))?;
        if let Some(pad) = tok.tokenizer.id_to_token(tok.pad_id) {
            template.special_tokens.push(("pad_token", pad));
        }
        Ok(template)
    }

    /// The template a job's `data.chat_template` setting selects: `"auto"` the model's own
    /// (`None` when it ships none), `"none"` no template, anything else a `.jinja` file.
    pub fn from_setting(setting: &str, tok: &TokenizerInfo) -> Result<Option<ChatTemplate>> {
        match setting {
            "none" => Ok(None),
            "auto" => tok
                .chat_template
                .as_deref()
                .map(|source| ChatTemplate::for_tokenizer(source, tok))
                .transpose(),
            path => {
                let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                ChatTemplate::for_tokenizer(&source, tok)
                    .map(Some)
                    .map_err(|e| Error::Template(format!("{}: {e}", Path::new(path).display())))
            }
        }
    }

    /// Renders `messages` as `tokenizer.apply_chat_template(messages, tokenize=False, ...)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        continue_final_message: bool,
    ) -> Result<String> {
        if !continue_final_message {
            return self.render_raw(messages, add_generation_prompt, "");
        }
        if add_generation_prompt {
            return Err(Error::Template(
                "continue_final_message and add_generation_prompt are not compatible".into(),
            ));
        }
        self.render_continued(messages)
    }

    /// transformers' `continue_final_message`: tag the final content, render, and cut the
    /// text where the tag starts, so the final turn stays open (no end-of-turn token).
    fn render_continued(&self, messages: &[Message]) -> Result<String> {
        let Some(last) = messages.last() else {
            return Err(Error::Template(
                "continue_final_message is set but the conversation is empty".into(),
            ));
        };
        if !self.mentions_content {
            return Err(Error::Template(
                "continue_final_message is set but the template never uses \"content\"".into(),
            ));
        }
        let rendered = self.render_raw(messages, false, CONTINUE_TAG)?;
        let tag = CONTINUE_TAG.trim_end();
        let final_content = py_strip(last.content());
        let Some(tag_at) = rendered
            .rfind(tag)
            .filter(|_| rendered.contains(final_content))
        else {
            return Err(Error::Template(
                "continue_final_message is set but the final message does not appear in the rendered chat".into(),
            ));
        };
        if rendered[tag_at..].starts_with(CONTINUE_TAG) {
            Ok(rendered[..tag_at].to_string())
        } else {
            // The template trimmed the content, so trailing whitespace must go as well.
            Ok(py_rstrip(&rendered[..tag_at]).to_string())
        }
    }

    fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        suffix: &str,
    ) -> Result<String> {
        let last = messages.len().saturating_sub(1);
        let messages: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| m.to_value(if i == last { suffix } else { "" }))
            .collect();
        let mut ctx: Vec<(&str, Value)> = self
            .special_tokens
            .iter()
            .map(|(name, text)| (*name, Value::from(text.as_str())))
            .collect();
        ctx.push(("messages", Value::from(messages)));
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        let ctx: std::collections::BTreeMap<&str, Value> = ctx.into_iter().collect();
        let template = self
            .env
            .get_template("chat_template")
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(ctx)
            .map_err(|e| Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::test_support::{render, user_assistant};

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    const CHATML: &str =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
        message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_with_and_without_generation_prompt() {
        let user = [Message::new("user", "Hi there")];
        assert_eq!(
            render(CHATML, &user, true),
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(CHATML, &user_assistant(), false),
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello <|im_end|>\n"
        );
    }

    #[test]
    fn continue_final_message_cuts_after_the_content() {
        let template = ChatTemplate::new(CHATML, None, None).unwrap();
        let text = template.render(&user_assistant(), false, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello "
        );
        // A template that trims the content loses the trailing space too.
        let trim = "{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}";
        let template = ChatTemplate::new(trim, None, None).unwrap();
        assert_eq!(
            template.render(&user_assistant(), false, true).unwrap(),
            "[Hi there][Hello"
        );
        assert!(template.render(&user_assistant(), true, true).is_err());
    }

    #[test]
    fn context_has_special_tokens_and_none_tools() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\
                      {{ tools is none }}{{ documents is none }}{{ pad_token is defined }}";
        let user = [Message::new("user", "Hi there")];
        assert_eq!(render(source, &user, false), "<s>Hi there</s>TrueTrueFalse");
    }
}
