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

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{
    from_args, Enumerator, Kwargs, Object, ObjectExt, ObjectRepr, Rest, ValueKind,
};
use minijinja::{Environment, ErrorKind, Output, State, Value};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::tokenizer::TokenizerInfo;
use crate::{Error, Result};

/// transformers' marker for `continue_final_message` (trailing space included).
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
/// transformers copies a message's reasoning under each of these names.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
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

// ---------------------------------------------------------------------------------------------
// JSON that keeps object keys in file order.

/// A JSON value whose objects keep their keys in file order, as Python's `json.loads` does.
/// serde_json's own `Value` sorts keys, which would change what `message.items()` or
/// `tojson` print in a template.
#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// "a string", "a number", ... for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::from(()),
            Json::Bool(b) => Value::from(*b),
            Json::Number(n) => number_value(n),
            Json::String(s) => Value::from(s.as_str()),
            Json::Array(items) => Value::from(items.iter().map(Json::to_value).collect::<Vec<_>>()),
            Json::Object(fields) => {
                ordered_map(fields.iter().map(|(k, v)| (k.as_str(), v.to_value())))
            }
        }
    }
}

fn number_value(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(i)
    } else if let Some(u) = n.as_u64() {
        Value::from(u)
    } else {
        Value::from(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's `==` on decoded JSON: dicts compare without regard to key order, ints and floats
/// by value. `maybe_extract_prompt` compares messages this way.
impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b || a.as_f64() == b.as_f64(),
            },
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Object(a), Json::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| other.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Json, D::Error> {
        Json::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> std::result::Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> std::result::Result<Json, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> std::result::Result<Json, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> std::result::Result<Json, E> {
        // Only NaN/inf have no JSON number, and the JSON parser never produces them.
        Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E>(self, s: &str) -> std::result::Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> std::result::Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            // Python's dict keeps the first position and the last value of a repeated key.
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => fields.push((key, value)),
            }
        }
        Ok(Json::Object(fields))
    }
}

// ---------------------------------------------------------------------------------------------
// Messages.

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
    fn to_value(&self, content_suffix: &str) -> Value {
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

/// A template-side dict that iterates in insertion order (minijinja's own maps sort keys).
#[derive(Debug)]
struct OrderedMap(Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.0.iter().map(|(k, _)| k.clone())))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

fn ordered_map<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::from_object(OrderedMap(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The template.

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

/// transformers registers a `{% generation %}...{% endgeneration %}` block (it marks assistant
/// text for `return_assistant_tokens_mask` and otherwise renders its body unchanged; Qwen3 and
/// SmolLM3 templates use it). minijinja has no such tag, so it becomes a block tag with the same
/// whitespace behaviour and no effect: `{% if true %}...{% endif %}`.
fn rewrite_generation_tags(source: &str) -> String {
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

fn python_like_environment() -> Environment<'static> {
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

// ---------------------------------------------------------------------------------------------
// Python's way of printing values.

/// `{{ value }}` as Jinja2 prints it: `str(value)`, so `None`, `True`, `['a']`, `{'k': 1}`.
fn python_formatter(
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
fn py_float(f: f64) -> String {
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

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

// ---------------------------------------------------------------------------------------------
// tojson, as transformers overrides it.

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, arguments
/// by position or by name as in Python.
fn tojson(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
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

// ---------------------------------------------------------------------------------------------
// strftime_now.

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Python's `strftime` for the directives chat templates use (Llama 3.x: `"%d %b %Y"`), in UTC.
fn strftime(format: &str, unix_secs: i64) -> std::result::Result<String, minijinja::Error> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('%') => write!(out, "%"),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        };
    }
    Ok(out)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected string below was printed by transformers 5.24.0's `render_jinja_template`
    // (jinja2 3.1.6) in the project venv, from the same template and messages.
    const CHATML: &str =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
        message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn render(source: &str, messages: &[Message], generation_prompt: bool) -> String {
        let template = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap();
        template.render(messages, generation_prompt, false).unwrap()
    }

    fn message(json: &str) -> Message {
        Message::from_json(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn user_assistant() -> Vec<Message> {
        vec![
            Message::new("user", "Hi there"),
            Message::new("assistant", "Hello "),
        ]
    }

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
    fn whitespace_control_is_jinja2_with_trim_and_lstrip_blocks() {
        let source = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}\n\
                      {% if add_generation_prompt %}\n  GEN\n{% endif %}\n";
        assert_eq!(
            render(source, &user_assistant(), true),
            "    Hi there\n    Hello \n  GEN\n"
        );
    }

    #[test]
    fn context_has_special_tokens_and_none_tools() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\
                      {{ tools is none }}{{ documents is none }}{{ pad_token is defined }}";
        let user = [Message::new("user", "Hi there")];
        assert_eq!(render(source, &user, false), "<s>Hi there</s>TrueTrueFalse");
    }

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

    #[test]
    fn strftime_matches_python_in_utc() {
        let format = "%d %b %Y|%A %a %B %j %I%p %H:%M:%S %y %m %%";
        assert_eq!(
            strftime(format, 1_700_000_000).unwrap(),
            "14 Nov 2023|Tuesday Tue November 318 10PM 22:13:20 23 11 %"
        );
        assert_eq!(
            strftime("%Y-%m-%d %j", -86_400 * 365).unwrap(),
            "1969-01-01 001"
        );
        assert_eq!(
            strftime("%Y-%m-%d %j %a", 951_782_400).unwrap(),
            "2000-02-29 060 Tue"
        );
        assert!(strftime("%Q", 0).is_err());
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

    #[test]
    fn json_equality_is_pythons() {
        let a: Json = serde_json::from_str(r#"{"role":"user","content":"x","n":1}"#).unwrap();
        let b: Json = serde_json::from_str(r#"{"n":1.0,"content":"x","role":"user"}"#).unwrap();
        assert_eq!(a, b);
        let dup: Json = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(dup.get("a"), Some(&Json::Number(3.into())));
    }
}
