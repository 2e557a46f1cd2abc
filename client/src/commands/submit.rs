//! `orpoctl submit` and `orpoctl plan`: check the job file here first (unknown keys, types,
//! ranges, missing data files, with line and column), upload the data files it names unless the
//! server already has them (by sha256), then queue the job or ask where it would run. A
//! `server:<path>` data value names a file on the server (inside its `data_roots`) and is sent
//! as it is.

use std::path::Path;

use anyhow::Context as _;
use orpo_api::{is_server_data, JobSpec, SubmitJobRequest};
use sha2::{Digest, Sha256};

use crate::conn::{ApiResult as _, Conn};
use crate::{display, Outcome, UsageError};

/// Reads and checks the job file; every problem here is the user's to fix (exit 2).
pub fn load(path: &Path) -> anyhow::Result<JobSpec> {
    let spec = JobSpec::load(path).map_err(|e| UsageError(e.to_string()))?;
    if !matches!(spec.data.chat_template.as_str(), "auto" | "none") {
        return Err(UsageError(format!(
            "invalid job file {}: data.chat_template: template files are not uploaded; use \
             \"auto\" (the model's own template) or \"none\"",
            path.display()
        ))
        .into());
    }
    for (key, value) in [
        ("data.train", &spec.data.train),
        ("data.eval", &spec.data.eval),
    ] {
        if value.is_empty() || is_server_data(value) {
            continue;
        }
        if !Path::new(value).is_file() {
            return Err(UsageError(format!(
                "invalid job file {}: {key}: {value} does not exist (relative paths are relative \
                 to the job file)",
                path.display()
            ))
            .into());
        }
    }
    Ok(spec)
}

/// Replaces local data paths by `sha256:` references, uploading what the server lacks.
pub async fn upload_data(conn: &Conn, spec: &mut JobSpec) -> anyhow::Result<()> {
    for (key, value) in [
        ("data.train", &mut spec.data.train),
        ("data.eval", &mut spec.data.eval),
    ] {
        if value.is_empty() || is_server_data(value) {
            continue;
        }
        let bytes = tokio::fs::read(value.as_str())
            .await
            .with_context(|| format!("reading {key} {value}"))?;
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file = Path::new(value.as_str())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| value.clone());
        let view = match conn.client.dataset(&sha).await.or_explain(conn)? {
            Some(view) => {
                eprintln!(
                    "{key}: {file} is already on the server ({} rows, sha256 {})",
                    view.rows,
                    &sha[..12]
                );
                view
            }
            None => {
                let size = bytes.len() as u64;
                let view = conn
                    .client
                    .upload_dataset(bytes)
                    .await
                    // The daemon names the upload `upload.jsonl` in row errors; the
                    // user knows it by its own name.
                    .map_err(|e| {
                        anyhow::anyhow!(conn.error(e).to_string().replace("upload.jsonl", &file))
                    })
                    .with_context(|| format!("uploading {key} {value}"))?;
                eprintln!(
                    "{key}: uploaded {file} ({}, {} rows)",
                    display::bytes(size),
                    view.rows
                );
                view
            }
        };
        *value = view.reference;
    }
    Ok(())
}

/// The `owner` a submit names: only without a token, for an open daemon (one without users)
/// that takes the name the client gives. With a token the daemon knows who submits (and
/// refuses a different name), so none is sent.
fn owner(conn: &Conn) -> Option<String> {
    conn.settings
        .token
        .is_none()
        .then(|| conn.settings.owner.clone())
}

/// Tries of one submit while the daemon does not answer (about 30 s of waiting in all).
const SUBMIT_ATTEMPTS: u32 = 7;

/// A fresh `Idempotency-Key`: 128 random bits from the kernel, as hex (time and pid when
/// `/dev/urandom` cannot be read).
fn idempotency_key() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (now ^ (u128::from(std::process::id()) << 96)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn submit(
    conn: &Conn,
    path: &Path,
    name: Option<String>,
    priority: Option<i32>,
    json: bool,
    watch: bool,
) -> anyhow::Result<Outcome> {
    let mut spec = load(path)?;
    if let Some(n) = name {
        spec.name = n;
    }
    if let Some(p) = priority {
        spec.priority = p;
    }
    upload_data(conn, &mut spec).await?;
    // One key per invocation: the retries below send it again, so a submit whose answer was
    // lost (the daemon restarting) is not queued twice.
    let key = idempotency_key();
    let job = conn
        .client
        .submit_idempotent(
            &SubmitJobRequest {
                spec: Some(spec),
                owner: owner(conn),
                ..Default::default()
            },
            &key,
            SUBMIT_ATTEMPTS,
        )
        .await
        .or_explain(conn)?;
    if json {
        super::print_json(&job)?;
    } else {
        let reason = job
            .pending_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "submitted job {} ({}), {}{reason}",
            job.id, job.name, job.state
        );
        if !watch {
            eprintln!(
                "follow it with `orpoctl watch {}`; `orpoctl status {}` shows everything",
                job.id, job.id
            );
        }
    }
    if watch {
        return super::watch::watch(conn, job.id).await;
    }
    Ok(Outcome::Ok)
}

pub async fn plan(conn: &Conn, path: &Path, json: bool) -> anyhow::Result<Outcome> {
    let mut spec = load(path)?;
    upload_data(conn, &mut spec).await?;
    let plan = conn
        .client
        .plan(&SubmitJobRequest {
            spec: Some(spec),
            owner: owner(conn),
            ..Default::default()
        })
        .await
        .or_explain(conn)?;
    if json {
        return super::print_json(&plan);
    }
    print!("{}", super::gpus::render_plan(&plan));
    Ok(Outcome::Ok)
}
