//! Typed access to GGUF metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::{Error, Result};

/// Typed access to GGUF metadata with errors that name the file and the key. Integers are
/// accepted in any width: writers differ (u32 vs i32 vs u64) for the same key.
pub(super) struct Meta<'a> {
    pub(super) path: &'a Path,
    pub(super) md: &'a HashMap<String, Value>,
}

impl<'a> Meta<'a> {
    pub(super) fn error(&self, message: impl Into<String>) -> Error {
        Error::model(self.path, message)
    }

    fn wrong_type(&self, key: &str, expected: &str) -> Error {
        self.error(format!("metadata `{key}` is not {expected}"))
    }

    fn missing(&self, key: &str) -> Error {
        self.error(format!("metadata `{key}` is missing"))
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    pub(super) fn required_string(&self, key: &str) -> Result<&'a str> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.md
            .get(key)
            .map(|v| {
                as_u64(v)
                    .map(|n| n as usize)
                    .ok_or_else(|| self.wrong_type(key, "an integer"))
            })
            .transpose()
    }

    pub(super) fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.md
            .get(key)
            .map(|v| match v {
                // The shortest decimal of the f32 is the value config.json had (1e-5, not
                // 9.99999974e-6), so an export writes back what the original said.
                Value::F32(x) => Ok(x.to_string().parse().expect("a float's Display parses")),
                Value::F64(x) => Ok(*x),
                other => as_u64(other)
                    .map(|n| n as f64)
                    .ok_or_else(|| self.wrong_type(key, "a number")),
            })
            .transpose()
    }

    pub(super) fn required_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.md.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.wrong_type(key, "an array")),
        }
    }

    pub(super) fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.wrong_type(key, "an array of strings")),
            })
            .collect()
    }

    /// An optional integer array (token types); absent is empty.
    pub(super) fn ints(&self, key: &str) -> Result<Vec<u64>> {
        if !self.md.contains_key(key) {
            return Ok(Vec::new());
        }
        self.array(key)?
            .iter()
            .map(|v| as_u64(v).ok_or_else(|| self.wrong_type(key, "an array of integers")))
            .collect()
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// Empty-or-given metadata of a file called `test.gguf`, for unit tests.
#[cfg(test)]
pub(super) fn test_meta(md: &HashMap<String, Value>) -> Meta<'_> {
    Meta {
        path: Path::new("test.gguf"),
        md,
    }
}
