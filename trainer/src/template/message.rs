//! Chat messages: checked on the way in, handed to the template the way transformers hands them.

use minijinja::Value;

use super::json::{ordered_map, Json};

/// Roles a data row may use. A typo (`"asistant"`) would otherwise render silently as
/// whatever the template does with an unknown role.
pub const KNOWN_ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "ipython",
];
/// transformers copies a message's reasoning under each of these names.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// One chat message: a JSON object with a string `role` and `content`, other keys kept as
/// they are (`name`, `tool_calls`, `reasoning_content`, ...) for templates that use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    fields: Json,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            fields: Json::Object(vec![
                ("role".into(), Json::String(role.into())),
                ("content".into(), Json::String(content.into())),
            ]),
        }
    }

    /// Checks that `json` is a message: an object, a known string `role`, a string `content`.
    pub fn from_json(json: Json) -> std::result::Result<Message, String> {
        if !matches!(json, Json::Object(_)) {
            return Err(format!(
                "expected a message object, found {}",
                json.kind_name()
            ));
        }
        let role = match json.get("role") {
            Some(Json::String(role)) => role,
            Some(other) => {
                return Err(format!(
                    "\"role\" must be a string, found {}",
                    other.kind_name()
                ))
            }
            None => return Err("message has no \"role\"".into()),
        };
        if !KNOWN_ROLES.contains(&role.as_str()) {
            return Err(format!(
                "unknown role {role:?} (known: {})",
                KNOWN_ROLES.join(", ")
            ));
        }
        match json.get("content") {
            Some(Json::String(_)) => Ok(Message { fields: json }),
            Some(other) => Err(format!(
                "\"content\" of a {role} message must be a string, found {}",
                other.kind_name()
            )),
            None => Err(format!("{role} message has no \"content\"")),
        }
    }

    pub fn role(&self) -> &str {
        self.fields
            .get("role")
            .and_then(Json::as_str)
            .unwrap_or_default()
    }

    pub fn content(&self) -> &str {
        self.fields
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
    }

    fn entries(&self) -> &[(String, Json)] {
        match &self.fields {
            Json::Object(fields) => fields,
            _ => &[],
        }
    }

    /// The message as transformers hands it to the template: `None` values dropped
    /// (`_normalize_chat_messages`), reasoning copied to `thinking` and `reasoning_content`
    /// (`_alias_reasoning_fields`), and `suffix` appended to the content.
    pub(super) fn to_value(&self, content_suffix: &str) -> Value {
        let mut fields: Vec<(&str, Value)> = Vec::new();
        let reasoning = REASONING_FIELDS
            .iter()
            .find_map(|name| self.fields.get(name).filter(|v| !matches!(v, Json::Null)));
        if let Some(r) = reasoning {
            fields.push(("thinking", r.to_value()));
        }
        for (key, value) in self.entries() {
            if matches!(value, Json::Null) {
                continue;
            }
            let value = match (key.as_str(), value) {
                ("content", Json::String(s)) => Value::from(format!("{s}{content_suffix}")),
                _ => value.to_value(),
            };
            set_field(&mut fields, key, value);
        }
        if let Some(r) = reasoning {
            set_field(&mut fields, "reasoning_content", r.to_value());
        }
        ordered_map(fields)
    }
}

/// Python's `d[key] = value`: replace in place, or append.
fn set_field<'a>(fields: &mut Vec<(&'a str, Value)>, key: &'a str, value: Value) {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => fields.push((key, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::test_support::{message, render};

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    #[test]
    fn messages_keep_file_order_without_nulls_and_alias_reasoning() {
        let source = "{% for m in messages %}{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}|{% endfor %}";
        let m = message(r#"{"role":"user","content":"hi","name":"x","zeta":null}"#);
        assert_eq!(render(source, &[m], false), "role=user;content=hi;name=x;|");
        let m = message(r#"{"role":"assistant","content":"x","reasoning":"r"}"#);
        assert_eq!(
            render(source, &[m], false),
            "thinking=r;role=assistant;content=x;reasoning=r;reasoning_content=r;|"
        );
    }

    #[test]
    fn bad_messages_are_named() {
        let parse = |s: &str| Message::from_json(serde_json::from_str(s).unwrap()).unwrap_err();
        assert!(parse(r#"{"role":"asistant","content":"x"}"#).contains("unknown role \"asistant\""));
        assert!(parse(r#"{"content":"x"}"#).contains("no \"role\""));
        assert!(parse(r#"{"role":"user"}"#).contains("no \"content\""));
        assert!(parse(r#"{"role":"user","content":3}"#).contains("must be a string"));
        assert!(parse(r#""hi""#).contains("expected a message object"));
    }
}
