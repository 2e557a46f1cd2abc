//! A job's checkpoints on disk: `<job dir>/checkpoints/step-N/` (complete ones only: the trainer
//! writes a checkpoint under a temporary name and renames it when done) and `<job dir>/final/`.
//! Names and files are only ever looked up in these listings, so a request cannot reach outside
//! the job's folder.

use std::path::{Path, PathBuf};

use orpo_api::{CheckpointView, FileView};

/// Checkpoints oldest first, then `final`.
pub fn list(job_dir: &Path) -> std::io::Result<Vec<CheckpointView>> {
    let mut out = Vec::new();
    let ckpt_dir = job_dir.join("checkpoints");
    if ckpt_dir.is_dir() {
        for entry in std::fs::read_dir(&ckpt_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name
                .strip_prefix("step-")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if entry.file_type()?.is_dir() {
                out.push(view(&entry.path(), name, Some(step))?);
            }
        }
    }
    out.sort_by_key(|c| c.step);
    let final_dir = job_dir.join("final");
    if final_dir.is_dir() {
        out.push(view(&final_dir, "final".into(), None)?);
    }
    Ok(out)
}

fn view(dir: &Path, name: String, step: Option<usize>) -> std::io::Result<CheckpointView> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push(FileView {
                name: entry.file_name().to_string_lossy().into_owned(),
                size_bytes: meta.len(),
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let modified = std::fs::metadata(dir)?.modified()?;
    Ok(CheckpointView {
        name,
        step,
        modified_at: humantime::format_rfc3339_seconds(modified).to_string(),
        files,
    })
}

/// The path of `file` in checkpoint `name`, when both are in the listing.
pub fn file_path(job_dir: &Path, name: &str, file: &str) -> Option<PathBuf> {
    let ckpt = list(job_dir).ok()?.into_iter().find(|c| c.name == name)?;
    ckpt.files.iter().find(|f| f.name == file)?;
    Some(dir(job_dir, &ckpt.name).join(file))
}

/// The folder of checkpoint `name`, a name taken from [`list`].
pub fn dir(job_dir: &Path, name: &str) -> PathBuf {
    match name {
        "final" => job_dir.join("final"),
        step => job_dir.join("checkpoints").join(step),
    }
}
