//! `orpoctl checkpoints` and `orpoctl download`.
//!
//! A download writes each file to `NAME.part` and renames it once its size matches the
//! server's listing. A broken transfer leaves the `.part` file, and running the same command
//! again continues it with an HTTP Range request instead of starting over: adapters of large
//! models are hundreds of MiB, and laptops on Wi-Fi drop connections.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orpo_api::CheckpointView;
use tokio::io::AsyncWriteExt as _;

use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

pub async fn list(conn: &Conn, id: u64, json: bool) -> anyhow::Result<Outcome> {
    let ckpts = conn.client.checkpoints(id).await.or_explain(conn)?;
    if json {
        return super::print_json(&ckpts);
    }
    if ckpts.is_empty() {
        eprintln!(
            "job {id} has no checkpoints yet (set train.save_every to get them before the end)"
        );
        return Ok(Outcome::Ok);
    }
    print!("{}", render_list(&ckpts));
    Ok(Outcome::Ok)
}

pub fn render_list(ckpts: &[CheckpointView]) -> String {
    let mut t = Table::new(&["NAME", "STEP", "FILES", "SIZE", "MODIFIED"]);
    for c in ckpts {
        t.row(vec![
            c.name.clone(),
            c.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            c.files.len().to_string(),
            display::bytes(c.files.iter().map(|f| f.size_bytes).sum()),
            c.modified_at.clone(),
        ]);
    }
    t.render()
}

/// `final` when the job has one, else its newest step.
fn pick<'a>(ckpts: &'a [CheckpointView], name: Option<&str>) -> Option<&'a CheckpointView> {
    match name {
        Some(n) => ckpts.iter().find(|c| c.name == n),
        None => ckpts
            .iter()
            .find(|c| c.name == "final")
            .or_else(|| ckpts.iter().max_by_key(|c| c.step)),
    }
}

pub async fn download(
    conn: &Conn,
    id: u64,
    name: Option<&str>,
    out: &Path,
) -> anyhow::Result<Outcome> {
    let ckpts = conn.client.checkpoints(id).await.or_explain(conn)?;
    let Some(ckpt) = pick(&ckpts, name) else {
        let names: Vec<&str> = ckpts.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!(
            "job {id} has no checkpoint {}; it has: {}",
            name.map(|n| format!("{n:?}")).unwrap_or_default(),
            if names.is_empty() {
                "none yet".into()
            } else {
                names.join(", ")
            }
        );
    };
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("creating {}", out.display()))?;
    let total: u64 = ckpt.files.iter().map(|f| f.size_bytes).sum();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:28.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut fetched = 0u64;
    for f in &ckpt.files {
        bar.set_message(f.name.clone());
        fetched += fetch_file(conn, id, &ckpt.name, &f.name, f.size_bytes, out, &bar).await?;
    }
    bar.finish_and_clear();
    println!(
        "downloaded {} of job {id} into {} ({} files, {}; {} transferred)",
        ckpt.name,
        out.display(),
        ckpt.files.len(),
        display::bytes(total),
        display::bytes(fetched)
    );
    Ok(Outcome::Ok)
}

/// Fetches one file into `out`, resuming its `.part`; returns the bytes transferred.
async fn fetch_file(
    conn: &Conn,
    id: u64,
    ckpt: &str,
    file: &str,
    size: u64,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let dest = out.join(file);
    if tokio::fs::metadata(&dest)
        .await
        .is_ok_and(|m| m.len() == size)
    {
        bar.inc(size);
        return Ok(0);
    }
    let part = out.join(format!("{file}.part"));
    let mut offset = tokio::fs::metadata(&part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if offset > size {
        // Not a prefix of this file (the checkpoint was rewritten): start over.
        offset = 0;
    }
    let mut resp = conn
        .client
        .download_from(id, ckpt, file, offset)
        .await
        .or_explain(conn)?;
    // 206: the server sends from `offset`; 200: the whole file (no range support, or offset 0).
    if resp.status().as_u16() != 206 {
        offset = 0;
    }
    let mut w = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .append(offset > 0)
        .open(&part)
        .await
        .with_context(|| format!("opening {}", part.display()))?;
    bar.inc(offset);
    let mut got = 0u64;
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            anyhow::anyhow!(
                "the download of {file} broke after {} ({e}); run the same command again to resume it",
                display::bytes(offset + got)
            )
        })?;
        let Some(chunk) = chunk else { break };
        w.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", part.display()))?;
        got += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    w.flush().await?;
    drop(w);
    let len = tokio::fs::metadata(&part).await?.len();
    if len != size {
        anyhow::bail!(
            "{file}: got {len} bytes, the server lists {size}; run the same command again to resume \
             (or delete {} to start over)",
            part.display()
        );
    }
    tokio::fs::rename(&part, &dest)
        .await
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use orpo_api::FileView;

    use super::*;

    fn ckpt(name: &str, step: Option<usize>) -> CheckpointView {
        CheckpointView {
            name: name.into(),
            step,
            modified_at: "2026-11-27T11:59:00Z".into(),
            files: vec![FileView {
                name: "adapter_model.safetensors".into(),
                size_bytes: 3 << 20,
            }],
        }
    }

    #[test]
    fn table_and_default_pick() {
        let list = [
            ckpt("step-2", Some(2)),
            ckpt("step-10", Some(10)),
            ckpt("final", None),
        ];
        assert_eq!(
            render_list(&list),
            "\
NAME     STEP  FILES  SIZE     MODIFIED
step-2   2     1      3.0 MiB  2026-11-27T11:59:00Z
step-10  10    1      3.0 MiB  2026-11-27T11:59:00Z
final    -     1      3.0 MiB  2026-11-27T11:59:00Z
"
        );
        assert_eq!(pick(&list, None).unwrap().name, "final");
        assert_eq!(
            pick(&list[..2], None).unwrap().name,
            "step-10",
            "newest by step, not by name"
        );
        assert!(pick(&list, Some("step-3")).is_none());
    }
}
