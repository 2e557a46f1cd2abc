//! The committed `api-spec/openapi.json` is exactly what the code generates (the handlers'
//! `#[utoipa::path]` and the wire types' schemas). `UPDATE_OPENAPI=1` rewrites it.

use crate::root;

#[test]
fn committed_openapi_matches_the_code() {
    let path = root().join("api-spec/openapi.json");
    let generated = orpod::http::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "api-spec/openapi.json is stale; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p orpo-tests --test e2e openapi` (or `orpod openapi`)"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    // Every route of DESIGN.md §5; a new route must be added here on purpose.
    assert_eq!(paths.len(), 15, "{:?}", paths.keys().collect::<Vec<_>>());
}
