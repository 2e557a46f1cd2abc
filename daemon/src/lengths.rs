//! The token lengths of uploaded data sets, measured once per data set and tokenizer and kept
//! in `<state_dir>/lengths/`, so that the memory estimate of a submit or a plan sizes the
//! longest micro-batch the job will really see without tokenizing the data again.
//!
//! Lengths are measured before truncation (`orpo_trainer::data::lengths`), so one file serves
//! every `max_length`, batch size and eval split. Its name holds the data set's sha256 and a
//! digest of what tokenization depends on (the tokenizer, its special tokens and the chat
//! template), so a different model measures anew and a deleted data set takes its files along.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use orpo_api::{parse_dataset_ref, JobSpec};
use orpo_trainer::data::lengths::{job_batch_shape, measure_file, BatchShape, LineLengths};
use orpo_trainer::template::ChatTemplate;
use orpo_trainer::tokenizer::TokenizerInfo;
use sha2::{Digest, Sha256};

/// `<state_dir>/lengths`.
pub fn lengths_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lengths")
}

/// The batch shape of `spec`, whose data are uploaded data sets (`sha256:` references) or, for
/// jobs run outside the daemon, files. The error names the setting or the row at fault.
pub fn job_batches(state_dir: &Path, spec: &JobSpec) -> Result<BatchShape, String> {
    // The tokenization's digest, computed once for train and eval.
    let key = OnceCell::new();
    job_batch_shape(spec, |value, tok, template| {
        let key = key
            .get_or_init(|| tokenization_key(tok, &spec.data.chat_template))
            .as_ref()
            .map_err(|e| orpo_trainer::Error::Tokenizer(e.clone()))?;
        measured(state_dir, value, key, tok, template)
    })
    .map_err(|e| e.to_string())
}

/// The lengths of one data file: from the cache when this data set was measured with this
/// tokenization before, else measured now and stored (a failed store only costs the next
/// plan the same work).
fn measured(
    state_dir: &Path,
    value: &str,
    key: &str,
    tok: &TokenizerInfo,
    template: Option<&ChatTemplate>,
) -> orpo_trainer::Result<Vec<LineLengths>> {
    let Some(sha) = parse_dataset_ref(value) else {
        let path = Path::new(value);
        return measure_file(path, path, tok, template);
    };
    let cache = lengths_dir(state_dir).join(format!("{sha}-{key}.json"));
    // One measurement per file at a time: submits of the same data at once wait for the
    // first instead of each tokenizing it all again.
    let lock = measuring(&cache);
    let _measuring = lock.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rows) = std::fs::read(&cache)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    {
        return Ok(rows);
    }
    let data = crate::supervisor::spawn::dataset_path(state_dir, sha);
    let rows = measure_file(&data, Path::new(value), tok, template)?;
    if let Err(e) = store(&cache, &rows) {
        tracing::warn!("keeping the token lengths in {}: {e}", cache.display());
    }
    Ok(rows)
}

/// The lock of one cache file; entries live as long as the process (one per data set and
/// tokenization measured, a few bytes each).
fn measuring(cache: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(cache.to_path_buf()).or_default().clone()
}

/// Written to a temporary file and renamed, so a reader never sees half of one.
fn store(path: &Path, rows: &[LineLengths]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(rows)?)?;
    std::fs::rename(&tmp, path)
}

/// A digest of everything the token lengths depend on besides the data: the tokenizer (its
/// serialized form), BOS and EOS, and the chat template the job selects.
fn tokenization_key(tok: &TokenizerInfo, chat_template: &str) -> Result<String, String> {
    let tokenizer = tok
        .tokenizer
        .to_string(false)
        .map_err(|e| format!("cannot be serialized: {e}"))?;
    let mut h = Sha256::new();
    for part in [
        tokenizer.as_str(),
        &format!("{:?}", tok.bos),
        &format!("{:?}", tok.eos),
        chat_template,
        match chat_template {
            "auto" => tok.chat_template.as_deref().unwrap_or(""),
            _ => "",
        },
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    Ok(h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Removes the measured lengths of the data set `sha256` (its upload was deleted).
pub fn forget(state_dir: &Path, sha256: &str) {
    let Ok(entries) = std::fs::read_dir(lengths_dir(state_dir)) else {
        return;
    };
    let prefix = format!("{sha256}-");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second plan reads the stored lengths (the data file could be gone and it would not
    /// notice); a different template measures anew; `forget` removes them.
    #[test]
    fn lengths_are_measured_once_per_data_set_and_tokenization() {
        let state = tempfile::tempdir().unwrap();
        let model = state.path().join("tiny.gguf");
        orpo_trainer::model::testing::write_tiny_gguf(&model, orpo_trainer::model::Arch::Llama, 3)
            .unwrap();
        let sha = "ab".repeat(32);
        let data = crate::supervisor::spawn::dataset_path(state.path(), &sha);
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(
            &data,
            "{\"prompt\":\"hello there\",\"chosen\":\" yes\",\"rejected\":\" no no no\"}\n\
             {\"prompt\":\"hi\",\"chosen\":\" a\",\"rejected\":\" b\"}\n",
        )
        .unwrap();
        let mut spec = JobSpec::default();
        spec.model.base = model.to_string_lossy().into_owned();
        spec.data.train = format!("sha256:{sha}");
        spec.data.chat_template = "none".into();
        let first = job_batches(state.path(), &spec).unwrap();
        assert_eq!(first.train_rows, 2);
        assert!(
            first.train_length > 0 && first.train_length < 64,
            "{first:?}"
        );
        let files = || {
            std::fs::read_dir(lengths_dir(state.path()))
                .unwrap()
                .count()
        };
        assert_eq!(files(), 1);

        std::fs::remove_file(&data).unwrap();
        assert_eq!(job_batches(state.path(), &spec).unwrap(), first);
        spec.data.chat_template = "auto".into();
        let err = job_batches(state.path(), &spec).unwrap_err();
        assert!(err.starts_with("data.train: "), "{err}");

        forget(state.path(), &sha);
        assert_eq!(files(), 0);
    }
}
