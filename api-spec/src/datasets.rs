//! Uploaded preference data: `POST /v1/datasets` stores a JSONL file under its sha256 and a job
//! names it as `data.train = "sha256:<hex>"`, so a re-submit uploads nothing new.

use serde::{Deserialize, Serialize};

/// The prefix of a data set reference in a job spec.
pub const DATASET_REF_PREFIX: &str = "sha256:";

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

/// `sha256:<hex>` → `<hex>` when it is a well-formed reference.
pub fn parse_dataset_ref(s: &str) -> Option<&str> {
    let hex = s.strip_prefix(DATASET_REF_PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}
