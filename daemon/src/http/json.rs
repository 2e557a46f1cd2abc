//! The JSON bodies of `/v1` requests: objects only. serde reads a struct from a JSON array as
//! readily as from an object (`[null, null]` is a `NewToken`), so each body is read as a
//! [`Value`] first and refused unless it is an object. `web::Json` does the reading, so the
//! app's `JsonConfig` (size limit, content type, the 400 error body) holds for every route.
//! Whole numbers written as floats are integers here, as in JSON Schema (a client that writes
//! `64.0` for a count is valid by the published spec).

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::bad_request;

/// A request body that is a JSON object read as `T`.
pub struct Object<T>(pub T);

impl<T> Object<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Object<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Object<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Object<T>, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move { read(json.await?.into_inner()).map(Object) })
    }
}

/// `value` as `T` when it is a JSON object; a 400 saying what is wrong otherwise. A whole
/// number written as a float (`839.0`) reads as an integer, as JSON Schema counts it.
pub fn read<T: DeserializeOwned>(mut value: Value) -> Result<T, actix_web::Error> {
    whole_numbers_as_integers(&mut value);
    if !value.is_object() {
        return Err(bad_request(format!(
            "the body must be a JSON object, not {}",
            kind(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| bad_request(format!("Json deserialize error: {e}")))
}

/// Turns every float of `value` that is a whole number in the range of `u64` or `i64` into that
/// integer. Float keys still read it (exactly: such a float is an integer that `f64` holds).
pub(super) fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 {
                // 2^64 and -2^63 are exact in f64; a cast inside them loses nothing.
                if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *n = (f as u64).into();
                } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *n = (f as i64).into();
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Pair {
        #[allow(dead_code)]
        a: Option<u32>,
        #[allow(dead_code)]
        b: Option<u32>,
    }

    #[test]
    fn only_objects_are_read() {
        assert!(read::<Pair>(serde_json::json!({"a": 1})).is_ok());
        // serde alone takes an array as the struct's fields in order.
        assert!(serde_json::from_value::<Pair>(serde_json::json!([null, null])).is_ok());
        let refused = read::<Pair>(serde_json::json!([null, null])).unwrap_err();
        assert!(refused.to_string().contains("not an array"), "{refused}");
        let refused = read::<Pair>(serde_json::json!({"a": "x"})).unwrap_err();
        assert!(refused.to_string().contains("invalid type"), "{refused}");
    }

    #[test]
    fn whole_floats_read_as_integers() {
        let mut v = serde_json::json!({
            "a": 610.0, "b": [-3.0, 0.5, 1e300, -0.0], "c": 18446744073709549568.0, "d": "7.0"
        });
        whole_numbers_as_integers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "a": 610, "b": [-3, 0.5, 1e300, 0], "c": 18446744073709549568u64, "d": "7.0"
            })
        );
        let text = r#"{"spec": {"model": {"base": "m"}, "data": {"train": "t", "max_length": 64.0},
            "train": {"epochs": 2, "eval_every": 610.0}}}"#;
        let mut v: Value = serde_json::from_str(text).unwrap();
        whole_numbers_as_integers(&mut v);
        let req: orpo_api::SubmitJobRequest = serde_json::from_value(v).unwrap();
        let spec = req.spec.unwrap();
        assert_eq!((spec.data.max_length, spec.train.eval_every), (64, 610));
        assert_eq!(spec.train.epochs, 2.0);
        // Every body: schemathesis sent a generate request with `839.0` new tokens.
        let body = serde_json::json!({"prompts": ["hi"], "max_new_tokens": 839.0, "top_k": 5.0});
        let req: orpo_api::GenerateRequest = read(body).unwrap();
        assert_eq!((req.max_new_tokens, req.top_k), (Some(839), Some(5)));
        assert!(read::<orpo_api::GenerateRequest>(
            serde_json::json!({"prompts": ["hi"], "max_new_tokens": 8.5})
        )
        .is_err());
    }
}
