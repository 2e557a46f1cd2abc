//! Answers from a job's checkpoint (`orpoctl generate`): the request is checked here, its
//! memory estimated, and the answer streamed as server-sent events while the supervisor admits
//! it and runs its worker process (`supervisor::generation`).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use futures_util::stream;
use orpo_api::generate::{MAX_NEW_TOKENS, MAX_PROMPTS, MAX_PROMPT_CHARS};
use orpo_api::{ErrorBody, GenerateEvent, GenerateRequest};
use orpo_trainer::generate::engine::GenerateOptions;

use super::error::ApiError;
use super::jobs::owned_job;
use super::json::Object;
use super::AppState;
use crate::auth::Caller;
use crate::checkpoints;
use crate::store::spec_of;
use crate::supervisor::generation::{self, GenerationWork};
use crate::supervisor::spawn::job_dir;

/// Positions a chat template adds around a prompt, at most (counted in the estimate).
const TEMPLATE_TOKENS: usize = 64;

/// One message of the answer stream, as a server-sent event: `event` is the message's kind and
/// `data` the `GenerateEvent` as JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the wire format; the stream is written in `generate`
pub struct GenerateMessage {
    event: String,
    /// A `GenerateEvent` as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Generate from a checkpoint
///
/// Answers `prompts` with the job's checkpoint (its LoRA adapter merged into the job's base;
/// default the newest checkpoint), and with the base alone first when `compare_base` is set.
/// The request is admitted like a job: it needs its memory estimate free on a device (never
/// memory a running job was promised), waits with a reason (`waiting` events) for at most
/// `generate_wait_s`, and runs in its own worker process. The answer is a
/// `text/event-stream`: `waiting`, `started`, then `token` and `answer` events, and `done` or
/// `error` last. Closing the connection stops the worker.
#[utoipa::path(post, path = "/v1/jobs/{id}/generate", tag = "jobs", operation_id = "generate",
    params(("id" = u64, Path, description = "Job id", maximum = 18446744073709551615u64)),
    request_body = GenerateRequest,
    responses((status = 200, description = "The answers as they are written", content((GenerateMessage = "text/event-stream"))),
        (status = 400, description = "Bad id or request (no prompts, a setting out of range)", body = ErrorBody),
        (status = 404, description = "No such job or checkpoint, or the job has no checkpoint yet", body = ErrorBody),
        (status = 422, description = "The job's base model cannot be read", body = ErrorBody),
        (status = 429, description = "Too many generation requests running or waiting", body = ErrorBody)))]
pub async fn generate(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<u64>,
    req: Object<GenerateRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = *id;
    let req = req.into_inner();
    let job = owned_job(&state, &caller, id, "generate with its checkpoints")?;
    let options = check(&req)?;
    let dir = job_dir(&state.config.state_dir, id);
    let list = checkpoints::list(&dir).map_err(|e| ApiError::Internal(e.into()))?;
    let checkpoint = match &req.checkpoint {
        Some(name) => list.iter().find(|c| &c.name == name).ok_or_else(|| {
            ApiError::CheckpointNotFound(format!(
                "job {id} has no checkpoint {name:?}; GET /v1/jobs/{id}/checkpoints lists them"
            ))
        })?,
        // `final` is listed last, after the newest step.
        None => list.last().ok_or_else(|| {
            ApiError::CheckpointNotFound(format!(
                "job {id} has no checkpoint yet ({}); its first comes at train.save_every",
                job.state
            ))
        })?,
    };
    let checkpoint_dir = checkpoints::dir(&dir, &checkpoint.name);
    let spec = spec_of(&job);
    let base = std::path::PathBuf::from(&spec.model.base);
    let pin = spec.resources.device.clone();
    let cuda = state.supervisor.on_gpu(&pin);
    let estimate = {
        let (base, prompts, max_new) = (base.clone(), req.prompts.clone(), options.max_new_tokens);
        web::block(move || -> Result<u64, String> {
            let cfg = orpo_trainer::model::read_config(&base).map_err(|e| e.to_string())?;
            let tokenizer =
                orpo_trainer::model::read_tokenizer(&base).map_err(|e| e.to_string())?;
            let mut longest = 0;
            for p in &prompts {
                longest = longest.max(tokenizer.encode(p).map_err(|e| e.to_string())?.len());
            }
            generation::estimate(&cfg, longest + TEMPLATE_TOKENS, max_new, cuda)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::ModelNotFound(format!("model.base of job {id}: {e}")))?
    };
    let ticket = state
        .supervisor
        .generation_ticket()
        .map_err(ApiError::TooManyRequests)?;
    let work = GenerationWork {
        job: id,
        checkpoint: checkpoint.name.clone(),
        checkpoint_dir,
        base,
        pin,
        estimate,
        prompts: req.prompts,
        compare_base: req.compare_base,
        options,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(state.supervisor.clone().run_generation(work, tx, ticket));
    let keepalive = Duration::from_secs(state.config.events_keepalive_s.max(1));
    // Dropping the stream (the client went away) drops `rx`, which stops the worker.
    let body = stream::unfold(rx, move |mut rx| async move {
        let bytes = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(event)) => sse(&event),
            Ok(None) => return None,
            Err(_) => web::Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok::<_, actix_web::Error>(bytes), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body))
}

/// The request's limits and sampling settings checked, each error naming its field; the
/// generation's options, with the engine's defaults where the request leaves a setting out.
fn check(req: &GenerateRequest) -> Result<GenerateOptions, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if req.prompts.is_empty() || req.prompts.len() > MAX_PROMPTS {
        return bad(format!(
            "prompts: give 1 to {MAX_PROMPTS} prompts, not {}",
            req.prompts.len()
        ));
    }
    for (i, p) in req.prompts.iter().enumerate() {
        if p.is_empty() {
            return bad(format!("prompts[{i}] is empty"));
        }
        let chars = p.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return bad(format!(
                "prompts[{i}] has {chars} characters; at most {MAX_PROMPT_CHARS}"
            ));
        }
    }
    let defaults = GenerateOptions::default();
    let max_new_tokens = req.max_new_tokens.unwrap_or(defaults.max_new_tokens);
    if max_new_tokens > MAX_NEW_TOKENS {
        return bad(format!(
            "max_new_tokens = {max_new_tokens}: at most {MAX_NEW_TOKENS}"
        ));
    }
    let opts = GenerateOptions {
        max_new_tokens,
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        seed: req.seed.unwrap_or(defaults.seed),
        no_kv_cache: false,
    };
    opts.check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(opts)
}

/// `event: KIND\ndata: JSON\n\n`.
fn sse(event: &GenerateEvent) -> web::Bytes {
    let data = serde_json::to_value(event).expect("events serialise");
    let kind = data["event"].as_str().unwrap_or("message").to_string();
    web::Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompts: &[&str]) -> GenerateRequest {
        GenerateRequest {
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            ..GenerateRequest::default()
        }
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases = [
            (request(&[]), "prompts: give 1 to 8"),
            (request(&["a"; 9]), "prompts: give 1 to 8 prompts, not 9"),
            (request(&["ok", ""]), "prompts[1] is empty"),
            (
                request(&[&"é".repeat(MAX_PROMPT_CHARS + 1)]),
                "prompts[0] has 16385 characters; at most 16384",
            ),
            (
                GenerateRequest {
                    max_new_tokens: Some(1 << 40),
                    ..request(&["hi"])
                },
                "max_new_tokens = 1099511627776: at most 4096",
            ),
            (
                GenerateRequest {
                    max_new_tokens: Some(0),
                    ..request(&["hi"])
                },
                "max_new_tokens must be at least 1",
            ),
            (
                GenerateRequest {
                    temperature: Some(-1.0),
                    ..request(&["hi"])
                },
                "temperature must be a finite number >= 0",
            ),
            (
                GenerateRequest {
                    top_p: Some(1.5),
                    ..request(&["hi"])
                },
                "top_p must be in (0, 1]",
            ),
            (
                GenerateRequest {
                    top_k: Some(0),
                    ..request(&["hi"])
                },
                "top_k must be at least 1",
            ),
        ];
        for (req, want) in cases {
            let err = check(&req).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        // What the request leaves out is the engine's default (256 new tokens, greedy, seed 42).
        assert_eq!(
            check(&request(&["What is the capital of France?"])).unwrap(),
            GenerateOptions::default()
        );
        // As the schema says: any non-empty text of at most 16384 characters, in bytes more.
        check(&request(&[" ", &"é".repeat(MAX_PROMPT_CHARS)])).unwrap();
    }

    #[test]
    fn events_are_framed_with_their_kind() {
        let frame = sse(&GenerateEvent::Waiting {
            reason: "waiting for memory".into(),
        });
        assert_eq!(
            frame,
            "event: waiting\ndata: {\"event\":\"waiting\",\"reason\":\"waiting for memory\"}\n\n"
        );
    }
}
