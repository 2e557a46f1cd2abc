//! The tokenizer of a base model together with the special tokens and chat template that TRL's
//! preprocessing needs (BOS/EOS rules, pad id, the template for conversational rows), read from
//! and written to a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`). GGUF
//! tokenizers are built in `model::gguf`.

use std::path::Path;

use serde_json::{json, Value};

use crate::{Error, Result};

/// A tokenizer plus what `tokenizer_config.json` (or the GGUF metadata) says about it.
#[derive(Clone)]
pub struct TokenizerInfo {
    pub tokenizer: tokenizers::Tokenizer,
    /// `None` for tokenizers without a BOS token (Qwen2): TRL then adds none.
    pub bos: Option<SpecialToken>,
    pub eos: SpecialToken,
    /// TRL pads with the tokenizer's pad token; SmolLM2 and most chat models define one, the
    /// others fall back to EOS (TRL's example script does `pad_token = eos_token`).
    pub pad_id: u32,
    /// Jinja source of the chat template, if the model ships one.
    pub chat_template: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

impl TokenizerInfo {
    /// Token ids of `text` with no special tokens added (TRL tokenizes with
    /// `add_special_tokens=False`; special-token text inside `text` still maps to its id).
    pub fn encode(&self, text: &str) -> crate::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| crate::Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> crate::Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| crate::Error::Tokenizer(e.to_string()))
    }

    /// Reads `tokenizer.json`, `tokenizer_config.json` and, when present, `chat_template.jinja`
    /// from a Hugging Face model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::model(&tokenizer_path, format!("cannot load tokenizer: {e}")))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let token = |key: &str| special_token(&tokenizer, &config, key, &config_path);

        let eos = token("eos_token")?.ok_or_else(|| {
            Error::model(
                &config_path,
                "no `eos_token`: the trainer needs one to end completions",
            )
        })?;
        let pad_id = token("pad_token")?.map_or(eos.id, |pad| pad.id);
        Ok(TokenizerInfo {
            bos: token("bos_token")?,
            eos,
            pad_id,
            chat_template: chat_template(dir, &config, &config_path)?,
            tokenizer,
        })
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` that transformers loads with the same
    /// special tokens, template and BOS/EOS behaviour.
    pub fn save_hf(&self, dir: &Path, model_max_length: usize) -> Result<()> {
        let tokenizer_path = dir.join("tokenizer.json");
        self.tokenizer
            .save(&tokenizer_path, true)
            .map_err(|e| Error::model(&tokenizer_path, format!("cannot write tokenizer: {e}")))?;
        let pad = self.tokenizer.id_to_token(self.pad_id);
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos.as_ref().map(|t| &t.text),
            "eos_token": self.eos.text,
            "pad_token": pad,
            "chat_template": self.chat_template,
            "model_max_length": model_max_length,
            // transformers 5 rebuilds the post-processor from these flags, so they must say
            // what tokenizer.json does or a Llama 3 export would lose its BOS.
            "add_bos_token": self.adds_bos(),
            "add_eos_token": self.adds_eos(),
            "clean_up_tokenization_spaces": false,
        });
        write_json(&dir.join("tokenizer_config.json"), &config)
    }

    /// Puts BOS first unless it is there already or the tokenizer has none (TRL's prompts,
    /// and orpod's for generation).
    pub fn prepend_bos(&self, ids: &mut Vec<u32>) {
        if let Some(bos) = &self.bos {
            if ids.first() != Some(&bos.id) {
                ids.insert(0, bos.id);
            }
        }
    }

    /// Whether encoding with special tokens puts BOS first (the tokenizer's post-processor).
    pub fn adds_bos(&self) -> bool {
        let ids = self.special_probe();
        matches!((&self.bos, ids.first()), (Some(bos), Some(&first)) if first == bos.id)
    }

    /// Whether encoding with special tokens puts EOS last.
    pub fn adds_eos(&self) -> bool {
        self.special_probe().last() == Some(&self.eos.id)
    }

    fn special_probe(&self) -> Vec<u32> {
        self.tokenizer
            .encode("a", true)
            .map(|enc| enc.get_ids().to_vec())
            .unwrap_or_default()
    }
}

/// A special token from `tokenizer_config.json`: a string, or an AddedToken object
/// `{"content": ...}`; `null` or absent is `None`.
fn special_token(
    tokenizer: &tokenizers::Tokenizer,
    config: &Value,
    key: &str,
    path: &Path,
) -> Result<Option<SpecialToken>> {
    let text = match config.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(Error::model(
                    path,
                    format!("`{key}` has no string `content`"),
                ))
            }
        },
        Some(other) => {
            return Err(Error::model(
                path,
                format!("`{key}` is neither a string nor an object: {other}"),
            ))
        }
    };
    let id = tokenizer
        .token_to_id(&text)
        .ok_or_else(|| Error::model(path, format!("`{key}` {text:?} is not in tokenizer.json")))?;
    Ok(Some(SpecialToken { text, id }))
}

/// transformers 4.43+ may save the template beside the config (`chat_template.jinja`, which then
/// wins); older files keep it in `chat_template`, as a string or a list of named templates.
fn chat_template(dir: &Path, config: &Value, config_path: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => named_template(list, "default")
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| {
                Error::model(
                    config_path,
                    "`chat_template` is a list without a \"default\" entry",
                )
            }),
        Some(other) => Err(Error::model(
            config_path,
            format!("`chat_template` has an unexpected form: {other}"),
        )),
    }
}

fn named_template<'a>(list: &'a [Value], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|t| t.get("template"))
        .and_then(Value::as_str)
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("not valid JSON: {e}")))
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a serde_json::Value always serializes");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
