//! `orpod openapi`: prints the API's OpenAPI document (`api-spec/openapi.json` is this output).

pub fn run() -> anyhow::Result<()> {
    print!("{}", crate::http::openapi_json());
    Ok(())
}
