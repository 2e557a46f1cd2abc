//! Uploaded preference data: `POST /v1/datasets` stores a JSONL file under its sha256 and a job
//! names it as `data.train = "sha256:<hex>"`, so a re-submit uploads nothing new. A daemon with
//! `data_roots` also takes `data.train = "server:<path>"`, a file already on the server, which
//! it checks and stores as if it had been uploaded.

use serde::{Deserialize, Serialize};

/// The prefix of a data set reference in a job spec.
pub const DATASET_REF_PREFIX: &str = "sha256:";

/// The prefix of a data file on the daemon's machine, inside its `data_roots`.
pub const SERVER_DATA_PREFIX: &str = "server:";

/// A stored data set: every row was checked when it was uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DatasetView {
    /// Hex sha256 of the uploaded bytes.
    pub sha256: String,
    /// Preference rows (blank lines not counted).
    pub rows: usize,
    pub size_bytes: u64,
    /// What to put in `data.train` / `data.eval`: `sha256:<hex>`.
    pub reference: String,
}

/// One line of an uploaded data set (`POST /v1/datasets` takes JSON Lines: one such object per
/// line, blank lines skipped). Other keys are allowed and ignored. For the OpenAPI document: the
/// daemon checks rows with `orpo_trainer`'s row checker, which also takes a conversational row
/// without `prompt` when `chosen` and `rejected` start with the same messages (the prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum PreferenceRow {
    Text(TextRow),
    Chat(ChatRow),
}

/// A row of plain text; without `prompt`, the prompt is the common start of the answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TextRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(nullable = false))]
    pub prompt: Option<String>,
    #[cfg_attr(feature = "schema", schema(min_length = 1))]
    pub chosen: String,
    #[cfg_attr(feature = "schema", schema(min_length = 1))]
    pub rejected: String,
}

/// A conversational row: the prompt's messages and each answer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatRow {
    #[cfg_attr(feature = "schema", schema(min_items = 1))]
    pub prompt: Vec<ChatMessage>,
    #[cfg_attr(feature = "schema", schema(min_items = 1))]
    pub chosen: Vec<ChatMessage>,
    #[cfg_attr(feature = "schema", schema(min_items = 1))]
    pub rejected: Vec<ChatMessage>,
}

/// A chat message; other keys (`reasoning_content`, `tool_calls`, ...) are kept for the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Ipython,
}

/// `sha256:<hex>` → `<hex>` when it is a well-formed reference.
pub fn parse_dataset_ref(s: &str) -> Option<&str> {
    let hex = s.strip_prefix(DATASET_REF_PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// `server:<path>` → `<path>` (not empty).
pub fn parse_server_data(s: &str) -> Option<&str> {
    s.strip_prefix(SERVER_DATA_PREFIX).filter(|p| !p.is_empty())
}

/// Whether a data value names something on the daemon (an upload or a server file) rather than
/// a local file.
pub fn is_server_data(s: &str) -> bool {
    parse_dataset_ref(s).is_some() || parse_server_data(s).is_some()
}
