//! `orpod calibrate MODEL`: checks the memory estimate against measured peaks. For each config of
//! a matrix (max_length × batch_size × LoRA rank × gradient checkpointing) it trains a few steps
//! with `orpod train` in a child process on the CPU, reads the child's peak RSS from the kernel
//! (`wait4`'s `ru_maxrss`) and prints estimate, measured and error.
//!
//! The data are synthetic rows longer than every `max_length`, so each row is truncated to
//! exactly `max_length` tokens: the estimate assumes full-length rows, and this measures them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use orpo_api::JobSpec;
use orpo_trainer::estimate::estimate_job;

use crate::cli::CalibrateArgs;

/// The band the issue asks of every config: within ±15%, never more than 10% under.
const MAX_OVER: f64 = 0.15;
const MAX_UNDER: f64 = -0.10;

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the orpod executable")?;
    let tmp;
    let work: &Path = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir
        }
        None => {
            tmp = tempfile::tempdir().context("creating a work folder")?;
            tmp.path()
        }
    };
    let data = work.join("prefs.jsonl");
    write_data(&data, args.lengths.iter().copied().max().unwrap_or(256))?;
    let model = args
        .model
        .canonicalize()
        .with_context(|| format!("model {}", args.model.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>6} {:>5} {:>4} {:>5} {:>12} {:>12} {:>8}",
        "length", "batch", "r", "ckpt", "estimate MiB", "measured MiB", "error"
    )?;
    let mut worst = (f64::INFINITY, f64::NEG_INFINITY);
    for &ckpt in &args.checkpointing {
        for &len in &args.lengths {
            for &batch in &args.batches {
                for &r in &args.ranks {
                    let spec = job_spec(&model, &data, len, batch, r, ckpt, args.steps);
                    let dir = work.join(format!("l{len}-b{batch}-r{r}-c{ckpt}"));
                    let estimate = estimate_job(&spec, false)?.total_bytes;
                    let measured = measure(&exe, &spec, &dir)?;
                    let err = estimate as f64 / measured as f64 - 1.0;
                    worst = (worst.0.min(err), worst.1.max(err));
                    writeln!(
                        out,
                        "{len:>6} {batch:>5} {r:>4} {:>5} {:>12.0} {:>12.0} {:>+7.1}%",
                        if ckpt { "on" } else { "off" },
                        mib(estimate),
                        mib(measured),
                        err * 100.0
                    )?;
                    out.flush()?;
                }
            }
        }
    }
    let ok = worst.0 >= MAX_UNDER && worst.1 <= MAX_OVER;
    writeln!(
        out,
        "error range {:+.1}% .. {:+.1}% (target {:+.0}% .. {:+.0}%): {}",
        worst.0 * 100.0,
        worst.1 * 100.0,
        MAX_UNDER * 100.0,
        MAX_OVER * 100.0,
        if ok { "ok" } else { "OUT OF BAND" }
    )?;
    if !ok {
        bail!("the estimate is outside the calibration band");
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// A job of `steps` optimizer steps with no evaluation and no exports but the adapter.
fn job_spec(
    model: &Path,
    data: &Path,
    len: usize,
    batch: usize,
    r: usize,
    ckpt: bool,
    steps: usize,
) -> JobSpec {
    let mut spec = JobSpec {
        name: format!("calibrate-l{len}-b{batch}-r{r}"),
        ..JobSpec::default()
    };
    spec.model.base = model.to_string_lossy().into_owned();
    spec.data.train = data.to_string_lossy().into_owned();
    spec.data.chat_template = "none".into();
    spec.data.max_length = len;
    spec.data.max_prompt_length = len / 2;
    spec.lora.r = r;
    spec.lora.alpha = 2.0 * r as f64;
    spec.train.batch_size = batch;
    spec.train.grad_accum = 1;
    spec.train.max_steps = steps;
    spec.train.gradient_checkpointing = ckpt;
    spec.resources.device = "cpu".into();
    spec
}

/// Runs `orpod train` on `spec` in `dir` and returns the child's peak RSS in bytes. A peak
/// recorded in `dir` by an earlier run of the same job is reused (`--work-dir`).
fn measure(exe: &Path, spec: &JobSpec, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let record = dir.join("peak_bytes");
    let text = toml::to_string(spec)?;
    let job = dir.join("job.toml");
    if std::fs::read_to_string(&job).ok().as_deref() == Some(text.as_str()) {
        if let Some(peak) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(peak);
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("out"));
    std::fs::write(&job, &text)?;
    let log = std::fs::File::create(dir.join("train.log"))?;
    let child = Command::new(exe)
        .arg("train")
        .arg(&job)
        .arg("--out")
        .arg(dir.join("out"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting orpod train")?;
    let (status, maxrss_kib) = wait_with_rusage(child.id())?;
    if status != 0 {
        bail!(
            "orpod train failed (wait status {status}); see {}",
            dir.join("train.log").display()
        );
    }
    std::fs::write(&record, (maxrss_kib * 1024).to_string())?;
    Ok(maxrss_kib * 1024)
}

/// `wait4` on `pid`: its wait status and its peak resident set (`ru_maxrss`, KiB on Linux).
fn wait_with_rusage(pid: u32) -> anyhow::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for a child of this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pointers to live locals; `pid` is our own unreaped child.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("waiting for orpod train");
    }
    Ok((status, usage.ru_maxrss as u64))
}

/// Rows whose prompt and answers each run past `max_len` tokens, so truncation makes every row
/// exactly `max_length` long.
fn write_data(path: &Path, max_len: usize) -> anyhow::Result<()> {
    let words = [
        "the",
        "queue",
        "admits",
        "a",
        "job",
        "when",
        "its",
        "memory",
        "fits",
        "on",
        "device",
        "and",
        "otherwise",
        "waits",
        "for",
        "room",
        "while",
        "others",
        "train",
    ];
    let text = |n: usize, offset: usize| -> String {
        (0..n)
            .map(|k| words[(k * 7 + offset) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut f = std::fs::File::create(path)?;
    for row in 0..8 {
        let line = serde_json::json!({
            "prompt": text(max_len, row),
            "chosen": text(max_len, row + 3),
            "rejected": text(max_len, row + 5),
        });
        writeln!(f, "{line}")?;
    }
    Ok(())
}
