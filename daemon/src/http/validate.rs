//! The checks a job passes before it is stored (submit) or planned: the job file itself, the
//! model on the server, and the uploaded data sets it names. A job that passes is queued; one
//! that fails is answered with a 4xx that names the key, path or line at fault.

use std::path::{Path, PathBuf};

use orpo_api::{parse_dataset_ref, JobSpec, SpecError, SubmitJobRequest};

use super::error::ApiError;
use super::AppState;

/// The checked spec of a submit request.
pub fn check(state: &AppState, req: &SubmitJobRequest) -> Result<JobSpec, ApiError> {
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
    dataset(state, "data.train", &spec.data.train)?;
    if !spec.data.eval.is_empty() {
        dataset(state, "data.eval", &spec.data.eval)?;
    }
    Ok(spec)
}

fn spec_error(e: SpecError) -> ApiError {
    ApiError::InvalidJob(e.to_string())
}

/// A path on the server that must exist and lie inside the configured model roots. A relative
/// path is taken inside the first root.
fn server_path(state: &AppState, key: &str, value: &str) -> Result<String, ApiError> {
    let roots = &state.config.model_roots;
    let path = match roots.first() {
        Some(root) if Path::new(value).is_relative() => root.join(value),
        _ => PathBuf::from(value),
    };
    let not_found = || {
        ApiError::ModelNotFound(format!(
            "{key}: {} does not exist on the server (models are not uploaded: put it there first)",
            path.display()
        ))
    };
    let real = path.canonicalize().map_err(|_| not_found())?;
    if !roots.is_empty()
        && !roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|r| real.starts_with(r))
    {
        return Err(ApiError::ModelNotFound(format!(
            "{key}: {} is outside the daemon's model roots ({})",
            path.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(real.to_string_lossy().into_owned())
}

/// `sha256:<hex>` of an uploaded data set.
fn dataset(state: &AppState, key: &str, value: &str) -> Result<(), ApiError> {
    let Some(hex) = parse_dataset_ref(value) else {
        return Err(ApiError::InvalidJob(format!(
            "{key}: {value:?} is not an uploaded data set; upload the file with POST /v1/datasets \
             (orpoctl submit does it) and name it as \"sha256:<hex>\""
        )));
    };
    match state.store.dataset(hex)? {
        Some(_) => Ok(()),
        None => Err(ApiError::DatasetNotFound(format!(
            "{key}: no data set {value} on the server; upload it with POST /v1/datasets first"
        ))),
    }
}
