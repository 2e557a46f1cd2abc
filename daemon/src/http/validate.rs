//! The checks a job passes before it is stored (submit) or planned: the job file itself, the
//! model on the server, and the uploaded data sets it names. A job that passes is queued; one
//! that fails is answered with a 4xx that names the key, path or line at fault.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use orpo_api::{parse_dataset_ref, parse_server_data, JobSpec, SpecError, SubmitJobRequest};
use serde_json::Value;

use super::error::ApiError;
use super::AppState;
use crate::auth::Caller;

/// The JSON body of a submit or plan. A number with no fraction counts as an integer, as in JSON
/// Schema (the API's spec: `610.0` is an `integer`), so a client that writes whole numbers as
/// floats (Python's `json.dumps(610.0)`) is not refused for `train.eval_every = 610.0`.
pub struct JobRequest(pub SubmitJobRequest);

impl std::ops::Deref for JobRequest {
    type Target = SubmitJobRequest;
    fn deref(&self) -> &SubmitJobRequest {
        &self.0
    }
}

impl FromRequest for JobRequest {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<JobRequest, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // `web::Json` keeps the app's JsonConfig: the size limit and the 400 error body.
        let json = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move { super::json::read(json.await?.into_inner()).map(JobRequest) })
    }
}

/// The checked spec of a submit request.
pub fn check(
    state: &AppState,
    caller: &Caller,
    req: &SubmitJobRequest,
) -> Result<JobSpec, ApiError> {
    let mut spec = match (&req.job_toml, &req.spec) {
        (Some(text), None) => JobSpec::parse(text, Path::new("job.toml")).map_err(spec_error)?,
        (None, Some(spec)) => {
            spec.validate()
                .map_err(|(key, msg)| ApiError::InvalidJob(format!("invalid job: {key}: {msg}")))?;
            spec.clone()
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give the job as exactly one of `job_toml` (the job file's text) or `spec` (JSON)"
                    .into(),
            ))
        }
    };
    spec.model.base = server_path(state, "model.base", &spec.model.base)?;
    if !spec.lora.init_adapter.is_empty() {
        spec.lora.init_adapter = server_path(state, "lora.init_adapter", &spec.lora.init_adapter)?;
    }
    if !matches!(spec.data.chat_template.as_str(), "auto" | "none") {
        return Err(ApiError::InvalidJob(
            "data.chat_template: template files are not uploaded; use \"auto\" (the model's) or \"none\"".into(),
        ));
    }
    for (key, value) in [
        ("data.train", &spec.data.train),
        ("data.eval", &spec.data.eval),
    ] {
        // `server:` files are stored as data sets by [`server_data`], after these checks.
        if !value.is_empty() && parse_server_data(value).is_none() {
            dataset(state, caller, key, value)?;
        }
    }
    Ok(spec)
}

/// Replaces each `server:<path>` data value by the reference of the data set it is stored as:
/// the file must lie inside `owner`'s data roots, and its rows are checked as an upload's.
pub async fn server_data(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    spec: &mut JobSpec,
) -> Result<(), ApiError> {
    for (key, value) in [
        ("data.train", &mut spec.data.train),
        ("data.eval", &mut spec.data.eval),
    ] {
        if let Some(path) = parse_server_data(value) {
            let view = super::datasets::import(state, caller, owner, key, path).await?;
            *value = view.reference;
        }
    }
    Ok(())
}

fn spec_error(e: SpecError) -> ApiError {
    ApiError::InvalidJob(e.to_string())
}

/// A model on the server: a path inside the configured model roots (a relative one is taken
/// inside the first root) naming a GGUF file or a model folder. Only then is the file opened,
/// and messages never quote what it holds.
fn server_path(state: &AppState, key: &str, value: &str) -> Result<String, ApiError> {
    let roots = state.config.model_roots();
    let real = confine(key, value, &roots, "model roots").map_err(|e| match e {
        Confined::Outside(m) => ApiError::ModelNotFound(m),
        Confined::Missing(shown) => ApiError::ModelNotFound(format!(
            "{key}: {shown} does not exist on the server (models are not uploaded: put it there \
             first)"
        )),
    })?;
    if !is_model(&real) {
        return Err(ApiError::ModelNotFound(format!(
            "{key}: {value} is not a model the daemon can read: give a GGUF file or a Hugging \
             Face model folder (with config.json)"
        )));
    }
    Ok(real.to_string_lossy().into_owned())
}

/// Why a path was not taken: outside the roots (the message says which roots are allowed), or
/// inside them but absent (the path as written, for the caller's message).
#[derive(Debug, PartialEq)]
pub(super) enum Confined {
    Outside(String),
    Missing(String),
}

/// `value` resolved, symlinks followed, when it lies inside one of `roots` (`what` names them
/// in messages); a relative `value` is taken inside the first root.
///
/// The roots are checked on the path as written before anything on disk is looked at, so a
/// path outside them tells the client nothing about what is there; they are checked again on
/// the resolved path, as a symlink inside a root may point out of it.
pub(super) fn confine(
    key: &str,
    value: &str,
    roots: &[PathBuf],
    what: &str,
) -> Result<PathBuf, Confined> {
    let path = match roots.first() {
        Some(root) if Path::new(value).is_relative() => root.join(value),
        _ => PathBuf::from(value),
    };
    let real_roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    let outside = || {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Confined::Outside(format!(
            "{key}: {} is outside the daemon's {what} ({})",
            path.display(),
            roots.join(", ")
        ))
    };
    let written = lexical(&path);
    if !roots
        .iter()
        .map(|r| lexical(r))
        .chain(real_roots.iter().cloned())
        .any(|r| written.starts_with(r))
    {
        return Err(outside());
    }
    let real = path
        .canonicalize()
        .map_err(|_| Confined::Missing(path.display().to_string()))?;
    if !real_roots.iter().any(|r| real.starts_with(r)) {
        return Err(outside());
    }
    Ok(real)
}

/// `path` with `.` and `..` resolved by name only, without looking at the disk.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// A folder with `config.json` or a `.gguf` file, or a file that starts with GGUF's magic (in
/// either byte order, as candle reads it). Only the first four bytes of a file are read, so a
/// file that is not a model is never parsed and nothing of it reaches an error message.
fn is_model(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("config.json").is_file()
            || std::fs::read_dir(path).is_ok_and(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "gguf"))
            });
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"GGUF" || &magic == b"FUGG")
}

/// `sha256:<hex>` of a data set the caller uploaded (or any, for an admin): someone else's
/// upload is answered as one that does not exist.
fn dataset(state: &AppState, caller: &Caller, key: &str, value: &str) -> Result<(), ApiError> {
    let Some(hex) = parse_dataset_ref(value) else {
        return Err(ApiError::InvalidJob(format!(
            "{key}: {value:?} is not an uploaded data set; upload the file with POST /v1/datasets \
             (orpoctl submit does it) and name it as \"sha256:<hex>\", or name a file inside the \
             server's data_roots as \"server:<path>\""
        )));
    };
    let visible = caller.admin || state.store.dataset_claimed(hex, &caller.user)?;
    match state.store.dataset(hex)? {
        Some(_) if visible => Ok(()),
        _ => Err(ApiError::DatasetNotFound(format!(
            "{key}: no data set {value} on the server; upload it with POST /v1/datasets first"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolves_dots_by_name() {
        assert_eq!(
            lexical(Path::new("/srv/models/../../etc/./shadow")),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            lexical(Path::new("/srv/models/a/../b")),
            Path::new("/srv/models/b")
        );
    }

    #[test]
    fn only_model_files_and_folders_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("secret.txt"), "root:$6$hash:19000::::::").unwrap();
        std::fs::write(p("model.gguf"), b"GGUF\x03\x00\x00\x00").unwrap();
        std::fs::write(p("short"), b"GG").unwrap();
        std::fs::create_dir(p("hf")).unwrap();
        std::fs::write(p("hf/config.json"), "{}").unwrap();
        std::fs::create_dir(p("empty")).unwrap();
        assert!(!is_model(&p("secret.txt")));
        assert!(!is_model(&p("short")));
        assert!(!is_model(&p("empty")));
        assert!(is_model(&p("model.gguf")));
        assert!(is_model(&p("hf")));
        assert!(is_model(dir.path()), "a folder holding a .gguf file");
    }
}
