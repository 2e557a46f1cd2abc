//! The JSON bodies of `/v1` requests: objects only. serde reads a struct from a JSON array as
//! readily as from an object (`[null, null]` is a `NewToken`), so each body is read as a
//! [`Value`] first and refused unless it is an object. `web::Json` does the reading, so the
//! app's `JsonConfig` (size limit, content type, the 400 error body) holds for every route.

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

/// `value` as `T` when it is a JSON object; a 400 saying what is wrong otherwise.
pub fn read<T: DeserializeOwned>(value: Value) -> Result<T, actix_web::Error> {
    if !value.is_object() {
        return Err(bad_request(format!(
            "the body must be a JSON object, not {}",
            kind(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| bad_request(format!("Json deserialize error: {e}")))
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
}
