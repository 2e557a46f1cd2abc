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
    // Every route of docs/http-api.md#routes; a new route must be added here on purpose.
    assert_eq!(paths.len(), 26, "{:?}", paths.keys().collect::<Vec<_>>());
    // Operation ids are unique, and every response link (schemathesis' stateful phase follows
    // them from POST /v1/jobs to the job's routes) names one by `operationId`.
    let operations: Vec<&serde_json::Value> = paths
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .collect();
    let mut ids: Vec<&str> = operations
        .iter()
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "duplicate operationId: {ids:?}");
    let links: Vec<&serde_json::Value> = operations
        .iter()
        .flat_map(|op| op["responses"].as_object().unwrap().values())
        .filter_map(|r| r["links"].as_object())
        .flat_map(|l| l.values())
        .collect();
    assert!(links.len() >= 8, "POST /v1/jobs links to the job's routes");
    for link in links {
        let id = link["operationId"].as_str().unwrap_or_default();
        assert!(ids.contains(&id), "{link}");
    }
}
