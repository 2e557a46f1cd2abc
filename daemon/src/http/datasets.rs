//! `POST /v1/datasets`: upload a JSONL preference file. Every row is checked (with its line
//! number) before anything is stored; the bytes are kept under their sha256, so uploading the
//! same file again stores nothing new. `GET /v1/datasets/{sha256}` tells a client whether the
//! server already has a file, so `orpoctl submit` can skip uploading it.
//!
//! An upload is never held in memory: its chunks go through a small channel to a blocking
//! task that writes them to a temporary file in the datasets folder, hashes them and checks
//! the rows a line at a time (`orpo_trainer`'s [`RowChecker`], so messages are those of a job
//! reading the file). Memory per upload is bounded by `max_line_bytes`; `max_upload_bytes` and
//! `max_upload_rows` bound the rest. The file is synced and renamed into place only when it is
//! complete and good; on any error the temporary file is removed.

use std::io::Write;
use std::path::Path;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use orpo_api::{parse_dataset_ref, DatasetView, ErrorBody, PreferenceRow, DATASET_REF_PREFIX};
use orpo_trainer::data::RowChecker;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::AppState;
use crate::auth::Caller;
use crate::config::ServeConfig;
use crate::supervisor::spawn::dataset_path;

/// How rows are named in messages, as before uploads were streamed.
const UPLOAD_NAME: &str = "upload.jsonl";

/// Upload a data set
///
/// The body is the JSONL file: one `{"prompt", "chosen", "rejected"}` object per line (strings
/// or chat message lists). Answers 201 with its reference `sha256:<hex>`, or 200 when it was
/// already stored.
///
/// The body is JSON Lines (UTF-8, a byte order mark at the start allowed, blank lines skipped);
/// its schema is that of the sequence of its lines, one `PreferenceRow` each (OpenAPI 3.2's
/// `itemSchema` for sequential media types). The `Content-Type` header is not checked. Size
/// limits are the daemon's config: `max_upload_bytes`, `max_upload_rows`, `max_line_bytes` (413).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets", operation_id = "upload_dataset",
    request_body(content = Vec<PreferenceRow>, content_type = "application/x-ndjson",
        description = "The JSONL file: one preference row per line"),
    responses((status = 201, body = DatasetView, links(
            ("GetDataset" = (operation_id = "get_dataset", parameters(("sha256" = "$response.body#/sha256")), description = "The stored data set")),
            ("DeleteDataset" = (operation_id = "delete_dataset", parameters(("sha256" = "$response.body#/sha256")), description = "The stored data set")))),
        (status = 200, description = "Already stored", body = DatasetView, links(
            ("GetDataset" = (operation_id = "get_dataset", parameters(("sha256" = "$response.body#/sha256")), description = "The stored data set")),
            ("DeleteDataset" = (operation_id = "delete_dataset", parameters(("sha256" = "$response.body#/sha256")), description = "The stored data set")))),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, description = "Bad rows, with line numbers", body = ErrorBody),
        (status = 507, description = "The server's disk is below min_free_mib; nothing was stored", body = ErrorBody)))]
pub async fn upload(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limit = state.config.max_upload_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "data sets are limited to {limit} bytes (max_upload_bytes)"
        ))
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    crate::disk::ensure_free(
        &state.config.state_dir,
        state.config.min_free_mib,
        declared.unwrap_or(0),
    )
    .map_err(ApiError::InsufficientStorage)?;
    // The temporary file goes in the folder of stored data sets, so storing it is a rename.
    let datasets = dataset_path(&state.config.state_dir, "")
        .parent()
        .expect("datasets folder")
        .to_path_buf();
    // A few chunks in flight: enough to keep the disk busy, little enough to stay small.
    let (tx, rx) = mpsc::channel(4);
    let config = state.config.clone();
    let receiver = tokio::task::spawn_blocking(move || {
        let mut rx = rx;
        let next = move || match rx.blocking_recv() {
            Some(Chunk::Data(chunk)) => Ok(Some(chunk)),
            Some(Chunk::End) => Ok(None),
            // The handler gave up (bad body, too large) and answers the client itself.
            None => Err(ApiError::BadRequest("the upload was not complete".into())),
        };
        receive(next, &datasets, &config, UPLOAD_NAME)
    });
    let mut size = 0;
    let mut failed = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failed = Some(ApiError::BadRequest(format!("reading the upload: {e}")));
                break;
            }
        };
        size += chunk.len();
        if size > limit {
            failed = Some(too_large());
            break;
        }
        if tx.send(Chunk::Data(chunk)).await.is_err() {
            break; // the receiver stopped at an error, which it returns below
        }
    }
    if failed.is_none() {
        let _ = tx.send(Chunk::End).await;
    }
    drop(tx);
    // Waited for even after an error, so the temporary file is gone when the client hears.
    let received = receiver.await.map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let (view, created) = keep(&state, &caller.user, received?).await?;
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// Stores a received data set (unless the same bytes are stored already) and records that
/// `user` has it; `true` when they did not have it before.
async fn keep(
    state: &AppState,
    user: &str,
    received: Received,
) -> Result<(DatasetView, bool), ApiError> {
    let (view, stored) = match state.store.dataset(&received.sha256)? {
        Some(view) => (view, false),
        None => {
            let path = dataset_path(&state.config.state_dir, &received.sha256);
            let view = DatasetView {
                reference: format!("{DATASET_REF_PREFIX}{}", received.sha256),
                sha256: received.sha256,
                rows: received.rows,
                size_bytes: received.size,
            };
            web::block(move || persist(received.file, &path))
                .await
                .map_err(|e| ApiError::Internal(e.into()))?
                .map_err(ApiError::Internal)?;
            state.store.put_dataset(&view).await?;
            state.store.flush().await?;
            (view, true)
        }
    };
    // New to the caller when they did not have it: whether someone else uploaded the same
    // bytes is theirs to know.
    let created = stored || !state.store.dataset_claimed(&view.sha256, user)?;
    state.store.claim_dataset(&view.sha256, user).await?;
    state.store.flush().await?;
    Ok((view, created))
}

/// Stores `path` (a `server:` data value of a job) as a data set of the caller, as if they had
/// uploaded it: it must lie inside `owner`'s `data_roots`, and passes the upload's limits and
/// row checks (messages name the file as the job does).
pub async fn import(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    key: &str,
    path: &str,
) -> Result<DatasetView, ApiError> {
    let roots = state.config.data_roots(owner);
    if roots.is_empty() {
        return Err(ApiError::InvalidJob(format!(
            "{key}: this server takes data only as uploads (its data_roots is empty); give the \
             file's local path and `orpoctl submit` uploads it"
        )));
    }
    let real = super::validate::confine(key, path, &roots, "data roots").map_err(|e| match e {
        super::validate::Confined::Outside(m) => ApiError::DatasetNotFound(m),
        super::validate::Confined::Missing(shown) => {
            ApiError::DatasetNotFound(format!("{key}: {shown} does not exist on the server"))
        }
    })?;
    let size = std::fs::metadata(&real)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .ok_or_else(|| {
            ApiError::DatasetNotFound(format!("{key}: {path} is not a file the daemon can read"))
        })?;
    let limit = state.config.max_upload_bytes;
    if size > limit as u64 {
        return Err(ApiError::PayloadTooLarge(format!(
            "{key}: {path} has {size} bytes; data sets are limited to {limit} bytes \
             (max_upload_bytes)"
        )));
    }
    crate::disk::ensure_free(&state.config.state_dir, state.config.min_free_mib, size)
        .map_err(ApiError::InsufficientStorage)?;
    let datasets = dataset_path(&state.config.state_dir, "")
        .parent()
        .expect("datasets folder")
        .to_path_buf();
    let (config, name) = (state.config.clone(), path.to_string());
    let received = web::block(move || {
        let mut file = std::fs::File::open(&real).map_err(|_| {
            ApiError::DatasetNotFound(format!("{name} is not a file the daemon can read"))
        })?;
        let label = name.as_str(); // borrowed by the reader below, which owns the file
        let mut left = limit as u64 + 1;
        let next = move || {
            use std::io::Read;
            let mut buf = vec![0; 1 << 20];
            let n = (&mut file)
                .take(left)
                .read(&mut buf)
                .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading")))?;
            if n == 0 {
                return Ok(None);
            }
            left -= n as u64;
            if left == 0 {
                return Err(ApiError::PayloadTooLarge(format!(
                    "{label}: data sets are limited to {limit} bytes (max_upload_bytes)"
                )));
            }
            buf.truncate(n);
            Ok(Some(web::Bytes::from(buf)))
        };
        receive(next, &datasets, &config, &name)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    let (view, _) = keep(state, &caller.user, received).await?;
    tracing::info!(user = %caller.user, %path, reference = %view.reference, rows = view.rows,
        "server data file stored as a data set");
    Ok(view)
}

/// Look up a data set
///
/// The stored data set with this sha256 (lower-case hex), or 404 when the server does not have
/// it or the caller did not upload it (an admin sees every data set): upload it with
/// `POST /v1/datasets`.
#[utoipa::path(get, path = "/v1/datasets/{sha256}", tag = "datasets", operation_id = "get_dataset",
    params(("sha256" = String, Path, description = "Hex sha256 of the file (64 lower-case hex digits)",
        pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, body = DatasetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    sha256: web::Path<String>,
) -> Result<web::Json<DatasetView>, ApiError> {
    visible(&state, &caller, &sha256).map(web::Json)
}

/// The data set, when it exists and the caller uploaded it or is an admin.
fn visible(state: &AppState, caller: &Caller, sha256: &str) -> Result<DatasetView, ApiError> {
    let reference = format!("{DATASET_REF_PREFIX}{sha256}");
    if parse_dataset_ref(&reference).is_none() {
        return Err(ApiError::BadRequest(format!(
            "{sha256:?} is not a sha256: expected 64 lower-case hex digits"
        )));
    }
    let mine = caller.admin || state.store.dataset_claimed(sha256, &caller.user)?;
    match state.store.dataset(sha256)? {
        Some(view) if mine => Ok(view),
        _ => Err(ApiError::NotFound(format!(
            "no data set with sha256 {sha256}; upload it with POST /v1/datasets"
        ))),
    }
}

/// Delete a data set
///
/// Removes an uploaded data set that no unfinished job names (409 otherwise, with the jobs).
/// Finished jobs keep their reference; their data is gone with it. When other users uploaded
/// the same file too, only the caller's copy goes (they keep theirs); an admin removes it for
/// everyone.
#[utoipa::path(delete, path = "/v1/datasets/{sha256}", tag = "datasets", operation_id = "delete_dataset",
    params(("sha256" = String, Path, description = "Hex sha256 of the file (64 lower-case hex digits)",
        pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, description = "Deleted; the data set as it was", body = DatasetView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    sha256: web::Path<String>,
) -> Result<web::Json<DatasetView>, ApiError> {
    let view = visible(&state, &caller, &sha256)?;
    let others = state
        .store
        .dataset_claimants(&view.sha256)?
        .into_iter()
        .any(|u| u != caller.user);
    if others && !caller.admin {
        state
            .store
            .unclaim_dataset(&view.sha256, Some(&caller.user))
            .await?;
        state.store.flush().await?;
        return Ok(web::Json(view));
    }
    let reference = view.reference.clone();
    let store = state.store.clone();
    let users: Vec<u64> = web::block(move || -> Result<Vec<u64>, ApiError> {
        Ok(store
            .all_jobs()?
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .filter(|j| {
                let data = &crate::store::spec_of(j).data;
                data.train == reference || data.eval == reference
            })
            .map(|j| j.id)
            .collect())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    if !users.is_empty() {
        let ids: Vec<String> = users.iter().map(u64::to_string).collect();
        return Err(ApiError::Conflict(format!(
            "data set {} is used by unfinished job(s) {}; delete it when they are done",
            view.reference,
            ids.join(", ")
        )));
    }
    // The record first: a crash in between leaves a file no record names, which a new
    // upload of the same bytes simply replaces.
    state.store.remove_dataset(&view.sha256).await?;
    state.store.unclaim_dataset(&view.sha256, None).await?;
    state.store.flush().await?;
    crate::lengths::forget(&state.config.state_dir, &view.sha256);
    let path = dataset_path(&state.config.state_dir, &view.sha256);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", path.display())
        }
        _ => {}
    }
    Ok(web::Json(view))
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the request handler sends the receiving task: the body's chunks, then `End` once the
/// body is complete. A channel closed without `End` means the upload failed.
enum Chunk {
    Data(web::Bytes),
    End,
}

/// A complete upload whose rows all passed, synced in its temporary file (removed when dropped
/// unless persisted).
struct Received {
    file: tempfile::NamedTempFile,
    sha256: String,
    rows: usize,
    size: u64,
}

/// Receives an upload (blocking: run it with `spawn_blocking`): the chunks `next` gives until
/// `None` are written to a temporary file, hashed and split into lines for the row checks;
/// `name` is the file's name in row messages.
fn receive(
    mut next: impl FnMut() -> Result<Option<web::Bytes>, ApiError>,
    dir: &Path,
    config: &ServeConfig,
    name: &str,
) -> Result<Received, ApiError> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut lines = Lines::new(config, name);
    let mut size = 0u64;
    while let Some(chunk) = next()? {
        size += chunk.len() as u64;
        hasher.update(&chunk);
        lines.feed(&chunk)?;
        out.write_all(&chunk).map_err(write_error)?;
    }
    let rows = lines.finish()?;
    let file = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.as_file().sync_all().map_err(write_error)?;
    Ok(Received {
        file,
        sha256: hex(&hasher.finalize()),
        rows,
        size,
    })
}

/// A failed write of the upload: a full disk is the client's to hear about (507), anything else
/// is the daemon's.
fn write_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return ApiError::InsufficientStorage(
            "the server's disk filled up while the upload was written; nothing was stored, \
             try again when an admin has made room"
                .into(),
        );
    }
    ApiError::Internal(anyhow::Error::new(e).context("writing the upload"))
}

/// Renames the upload's file to `path` and syncs the folder, so the stored data set is complete
/// or absent after a crash.
fn persist(file: tempfile::NamedTempFile, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("storing {}", path.display()))?;
    let dir = path.parent().expect("datasets folder");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// An upload split into lines for the row checks, with the limits on rows and line length.
struct Lines {
    checker: RowChecker,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    max_rows: usize,
    max_line: usize,
    /// The file's name in messages.
    name: String,
}

impl Lines {
    fn new(config: &ServeConfig, name: &str) -> Lines {
        Lines {
            checker: RowChecker::default(),
            partial: Vec::new(),
            max_rows: config.max_upload_rows,
            max_line: config.max_line_bytes,
            name: name.to_string(),
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ApiError> {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&chunk[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[..end]);
                self.line(&line)?;
                line.clear();
                self.partial = line; // keeps its allocation for the next long line
            }
            chunk = &chunk[end + 1..];
        }
        self.partial.extend_from_slice(chunk);
        self.check_length(self.partial.len())
    }

    /// The number of good rows, or every bad row with its line.
    fn finish(mut self) -> Result<usize, ApiError> {
        let last = std::mem::take(&mut self.partial);
        self.line(&last)?;
        self.checker
            .finish(Path::new(&self.name))
            .map_err(|e| ApiError::InvalidData(e.to_string()))
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), ApiError> {
        self.check_length(raw.len())?;
        self.checker.check_line(raw);
        if self.checker.rows() > self.max_rows {
            return Err(ApiError::PayloadTooLarge(format!(
                "{}: more than {} rows (max_upload_rows)",
                self.name, self.max_rows
            )));
        }
        Ok(())
    }

    fn check_length(&self, len: usize) -> Result<(), ApiError> {
        if len > self.max_line {
            return Err(ApiError::PayloadTooLarge(format!(
                "{}:{}: the line is longer than {} bytes (max_line_bytes)",
                self.name,
                self.checker.lines() + 1,
                self.max_line
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max_rows: usize, max_line: usize) -> Lines {
        Lines::new(
            &ServeConfig {
                max_upload_rows: max_rows,
                max_line_bytes: max_line,
                ..ServeConfig::default()
            },
            UPLOAD_NAME,
        )
    }

    const ROW: &str = r#"{"prompt":"a","chosen":"b","rejected":"c"}"#;

    #[test]
    fn rows_split_across_chunks_are_checked_whole() {
        let text = format!("{ROW}\n\n{ROW}\nnot json\n{ROW}");
        for size in [1, 2, 7, 64, text.len()] {
            let mut l = lines(100, 1000);
            for chunk in text.as_bytes().chunks(size) {
                l.feed(chunk).unwrap();
            }
            let err = l.finish().unwrap_err().to_string();
            assert!(
                err.starts_with("upload.jsonl:4: invalid JSON"),
                "{size}: {err}"
            );
        }
        let mut l = lines(100, 1000);
        l.feed(format!("{ROW}\r\n{ROW}\n").as_bytes()).unwrap();
        assert_eq!(l.finish().unwrap(), 2);
        let err = lines(100, 1000).finish().unwrap_err().to_string();
        assert!(err.contains("no preference rows"), "{err}");
    }

    #[test]
    fn limits_name_their_keys() {
        let mut l = lines(2, 1000);
        let text = format!("{ROW}\n{ROW}\n\n{ROW}\n");
        let err = l.feed(text.as_bytes()).unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)));
        assert!(err.to_string().contains("max_upload_rows"), "{err}");
        // A long line is refused before its end arrives, so it is never held whole.
        let mut l = lines(100, 50);
        l.feed(format!("{ROW}\n").as_bytes()).unwrap();
        let err = l.feed(&[b'x'; 51]).unwrap_err().to_string();
        assert!(
            err.starts_with("upload.jsonl:2: the line is longer than 50 bytes (max_line_bytes)"),
            "{err}"
        );
    }
}
