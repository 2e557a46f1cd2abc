//! Generation from a job's checkpoint (`POST /v1/jobs/{id}/generate`): the request, and the
//! events of the server-sent-event stream that answers it. `orpod generate --events` (the
//! worker process the daemon runs for a request) prints the `token` and `answer` events as
//! JSON lines; the daemon adds the others.

use serde::{Deserialize, Serialize};

/// The most prompts in one request.
pub const MAX_PROMPTS: usize = 8;
/// The most characters of one prompt.
pub const MAX_PROMPT_CHARS: usize = 16 * 1024;
/// The most new tokens per answer.
pub const MAX_NEW_TOKENS: usize = 4096;

/// `POST /v1/jobs/{id}/generate`: greedy unless `temperature` is above 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The user's messages, each answered on its own in the model's chat template.
    #[cfg_attr(feature = "schema", schema(schema_with = prompts_schema))]
    pub prompts: Vec<String>,
    /// A checkpoint of the job (`step-N` or `final`, as `GET /v1/jobs/{id}/checkpoints` lists
    /// them); default the newest: `final`, else the last `step-N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Also answer every prompt with the base model alone, first (model `base` in the events).
    #[serde(default)]
    pub compare_base: bool,
    /// The most new tokens per answer (default 256, at most 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 4096))]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 or absent: greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub temperature: Option<f64>,
    /// Sample from the K most likely tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schema(minimum = 1, maximum = 18446744073709551615u64)
    )]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probabilities add up to P, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(exclusive_minimum = 0.0, maximum = 1.0))]
    pub top_p: Option<f64>,
    /// The sampler's seed (default 42).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(maximum = 18446744073709551615u64))]
    pub seed: Option<u64>,
}

#[cfg(feature = "schema")]
fn prompts_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .description(Some(
            "The user's messages (1 to 8, each 1 to 16384 characters), each answered on its \
             own in the model's chat template.",
        ))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_PROMPT_CHARS)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_PROMPTS))
        .build()
}

/// One message of the answer stream; its `event` is also the SSE event name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GenerateEvent {
    /// The request waits for memory or a generation slot; sent again when the reason changes.
    Waiting { reason: String },
    /// A worker process runs the request on `device`, admitted with `estimate_bytes`.
    Started {
        device: String,
        checkpoint: String,
        estimate_bytes: u64,
    },
    /// A new token of answer `prompt` (an index into `prompts`) from `model` (`base` or
    /// `tuned`); `text` is what it adds to the answer's text (empty while a character is still
    /// incomplete).
    Token {
        model: String,
        prompt: usize,
        token: u32,
        text: String,
    },
    /// Answer `prompt` from `model` is complete. `finish`: `stop` (a stop token) or `length`
    /// (`max_new_tokens`).
    Answer {
        model: String,
        prompt: usize,
        text: String,
        tokens: Vec<u32>,
        finish: String,
        time_to_first_token_s: f64,
        tokens_per_s: f64,
    },
    /// The request failed; nothing follows.
    Error { kind: String, message: String },
    /// Every answer is complete; nothing follows.
    Done {},
}
