//! `orpod calibrate MODEL`: checks the memory estimate against measured peaks. Each config
//! trains a few steps with `orpod train` in a child process on the CPU; the child's peak RSS
//! comes from the kernel (`wait4`'s `ru_maxrss`), and estimate, measured and error are printed.
//!
//! Two kinds of data:
//! - `full`: synthetic rows longer than every `max_length`, cut (with `max_prompt_length`,
//!   TRL 0.25's rule) to exactly `max_length` tokens: the worst case, over the whole matrix
//!   (max_length × batch_size × LoRA rank × gradient checkpointing);
//! - `short`, `long`, `skewed`: generated data sets of mixed real lengths, as users have them,
//!   trained with evaluation (a 10% split) and TRL 1.x's truncation: the estimate must follow
//!   the longest micro-batch the data really make, training or evaluation.
//!
//! Every estimate is the daemon's: the model's config and the data's measured token lengths.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use orpo_api::JobSpec;
use orpo_trainer::data::lengths::measure_job;
use orpo_trainer::data::SplitMix64;
use orpo_trainer::estimate::estimate_job;
use sha2::Digest;

use crate::cli::CalibrateArgs;

/// The band the estimate must keep: within ±15%, never more than 10% under.
const MAX_OVER: f64 = 0.15;
const MAX_UNDER: f64 = -0.10;

/// The data set of a calibration run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataKind {
    Full,
    Short,
    Long,
    Skewed,
}

impl DataKind {
    fn name(self) -> &'static str {
        match self {
            DataKind::Full => "full",
            DataKind::Short => "short",
            DataKind::Long => "long",
            DataKind::Skewed => "skewed",
        }
    }
}

/// One run of the table.
struct Config {
    data: DataKind,
    len: usize,
    batch: usize,
    eval_batch: usize,
    r: usize,
    ckpt: bool,
    quantize: orpo_api::spec::Quantize,
}

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
    let model = args
        .model
        .canonicalize()
        .with_context(|| format!("model {}", args.model.display()))?;
    let longest = args.lengths.iter().copied().max().unwrap_or(256);
    let (batch, eval_batch) = match args.mixed_batches[..] {
        [b] => (b, b),
        [b, e, ..] => (b, e),
        [] => (4, 8),
    };
    let mut configs = Vec::new();
    for &quantize in &args.quantize {
        for &data in &args.data {
            for &ckpt in &args.checkpointing {
                if data == DataKind::Full {
                    for &len in &args.lengths {
                        for &batch in &args.batches {
                            for &r in &args.ranks {
                                configs.push(Config {
                                    data,
                                    len,
                                    batch,
                                    eval_batch: 0,
                                    r,
                                    ckpt,
                                    quantize,
                                });
                            }
                        }
                    }
                } else {
                    configs.push(Config {
                        data,
                        len: longest,
                        batch,
                        eval_batch,
                        r: args.ranks.iter().copied().max().unwrap_or(16),
                        ckpt,
                        quantize,
                    });
                }
            }
        }
    }

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>5} {:>6} {:>6} {:>5} {:>4} {:>4} {:>5} {:>9} {:>12} {:>12} {:>8}",
        "base",
        "data",
        "length",
        "batch",
        "eval",
        "r",
        "ckpt",
        "longest",
        "estimate MiB",
        "measured MiB",
        "error"
    )?;
    let mut worst = (f64::INFINITY, f64::NEG_INFINITY);
    for c in &configs {
        let data = work.join(format!("{}.jsonl", c.data.name()));
        write_data(&data, c.data, longest)?;
        let spec = job_spec(&model, &data, c, args.steps);
        let dir = work.join(format!(
            "{}-{}-l{}-b{}-e{}-r{}-c{}",
            c.quantize.as_str(),
            c.data.name(),
            c.len,
            c.batch,
            c.eval_batch,
            c.r,
            c.ckpt
        ));
        let batches = measure_job(&spec)?;
        let estimate = estimate_job(&spec, false, Some(&batches))?.total_bytes;
        let measured = measure(&exe, &spec, &dir)?;
        let err = estimate as f64 / measured as f64 - 1.0;
        worst = (worst.0.min(err), worst.1.max(err));
        writeln!(
            out,
            "{:>5} {:>6} {:>6} {:>5} {:>4} {:>4} {:>5} {:>9} {:>12.0} {:>12.0} {:>+7.1}%",
            c.quantize.as_str(),
            c.data.name(),
            c.len,
            c.batch,
            c.eval_batch,
            c.r,
            if c.ckpt { "on" } else { "off" },
            format!("{}/{}", batches.train_length, batches.eval_length),
            mib(estimate),
            mib(measured),
            err * 100.0
        )?;
        out.flush()?;
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

/// A job of `steps` optimizer steps with no exports but the adapter. `full` data are cut with
/// TRL 0.25's rule (half the length for the prompt); the mixed sets use TRL 1.x's and hold
/// 10% out for an evaluation at the end.
fn job_spec(model: &Path, data: &Path, c: &Config, steps: usize) -> JobSpec {
    let mut spec = JobSpec {
        name: format!(
            "calibrate-{}-l{}-b{}-r{}",
            c.data.name(),
            c.len,
            c.batch,
            c.r
        ),
        ..JobSpec::default()
    };
    spec.model.base = model.to_string_lossy().into_owned();
    spec.model.quantize = c.quantize;
    spec.data.train = data.to_string_lossy().into_owned();
    spec.data.max_length = c.len;
    if c.data == DataKind::Full {
        spec.data.chat_template = "none".into();
        spec.data.max_prompt_length = Some(c.len / 2);
    } else {
        spec.data.chat_template = "auto".into();
        spec.data.eval_fraction = 0.1;
        spec.train.eval_batch_size = c.eval_batch;
    }
    spec.lora.r = c.r;
    spec.lora.alpha = 2.0 * c.r as f64;
    spec.train.batch_size = c.batch;
    spec.train.grad_accum = 1;
    spec.train.max_steps = steps;
    spec.train.gradient_checkpointing = c.ckpt;
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
    let data = std::fs::read(&spec.data.train)?;
    let data_record = dir.join("data.sha256");
    let data_sha: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if std::fs::read_to_string(&job).ok().as_deref() == Some(text.as_str())
        && std::fs::read_to_string(&data_record).ok().as_deref() == Some(data_sha.as_str())
    {
        if let Some(peak) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(peak);
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("out"));
    std::fs::write(&job, &text)?;
    std::fs::write(&data_record, &data_sha)?;
    let log = std::fs::File::create(dir.join("train.log"))?;
    let child = Command::new(exe)
        .arg("train")
        .arg(&job)
        .arg("--out")
        .arg(dir.join("out"))
        // The training's peak: the samples' engine is a generation's memory, measured apart.
        .arg("--no-samples")
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

/// Writes the data set `kind` for a longest `max_length` of `max_len` (the same bytes on
/// every call, so `--work-dir` reuses peaks).
fn write_data(path: &Path, kind: DataKind, max_len: usize) -> anyhow::Result<()> {
    // A fixed generator, so the data sets are the same bytes on every machine and release.
    let mut rng = SplitMix64(0x5EED ^ kind as u64);
    // A number in `lo..hi` (or `lo` when the range is empty).
    let mut range =
        |lo: usize, hi: usize| lo + (rng.next_u64() % hi.saturating_sub(lo).max(1) as u64) as usize;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut word = 0usize;
    let mut text = |n: usize| -> String {
        let words: Vec<&str> = (0..n.max(1))
            .map(|_| {
                word += 1;
                WORDS[(word * 7) % WORDS.len()]
            })
            .collect();
        words.join(" ")
    };
    if kind == DataKind::Full {
        // Rows whose prompt and answers each run past `max_len` tokens.
        for _ in 0..8 {
            let line = serde_json::json!({
                "prompt": text(max_len),
                "chosen": text(max_len),
                "rejected": text(max_len),
            });
            writeln!(f, "{line}")?;
        }
        return Ok(f.flush()?);
    }
    // Word counts: a word of WORDS is about one token, the chat template adds about 15.
    for row in 0..256 {
        let (prompt, chosen, rejected) = match kind {
            DataKind::Short => (range(4, 24), range(3, 40), range(3, 40)),
            DataKind::Long => (
                range(max_len / 8, max_len / 2),
                range(max_len / 4, max_len * 2),
                range(max_len / 4, max_len * 2),
            ),
            // One row in twelve is long; the rest are short.
            _ if row % 12 == 5 => (
                range(max_len / 4, max_len / 2),
                range(max_len / 2, max_len * 2),
                range(max_len / 2, max_len),
            ),
            _ => (range(4, 24), range(3, 30), range(3, 30)),
        };
        let line = serde_json::json!({
            "prompt": [{"role": "user", "content": text(prompt)}],
            "chosen": [{"role": "assistant", "content": text(chosen)}],
            "rejected": [{"role": "assistant", "content": text(rejected)}],
        });
        writeln!(f, "{line}")?;
    }
    Ok(f.flush()?)
}

const WORDS: [&str; 19] = [
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
