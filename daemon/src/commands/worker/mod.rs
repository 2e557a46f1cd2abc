//! `orpod worker --job-dir DIR`: runs one job for the daemon. It trains with `orpo-trainer`,
//! prints one JSON event per line on stdout (the daemon's only view of it), logs to stderr
//! (the job's worker.log), and on SIGTERM finishes its step, checkpoints and exits.
//!
//! With `--report URL` (a worker Slurm started) the events go to the daemon over HTTP instead
//! ([`report`]), and the last one is also written to `JOB_DIR/outcome.json`, with the Slurm job
//! id, for a daemon that was away when the worker ended.

mod report;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use orpo_api::JobSpec;
use orpo_trainer::train::{self, Event, RunOptions, Session};

use crate::cli::WorkerArgs;
use crate::supervisor::protocol::{metric_record, WorkerEvent, WorkerOutcome, OUTCOME_FILE};
pub use report::SECRET_FILE;

/// Where events go when they do not go to stdout.
static REPORTER: OnceLock<report::Reporter> = OnceLock::new();

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    if let Some(url) = &args.report {
        let reporter = report::Reporter::start(url, &args.job_dir, stop.clone())?;
        let _ = REPORTER.set(reporter);
    }
    let _lock = lock_job_dir(&args.job_dir)?;
    let result = train_job(&args, &stop);
    emit_memory();
    let event = match &result {
        Ok(()) => WorkerEvent::Finished,
        Err(e) => match e.downcast_ref::<orpo_trainer::Error>() {
            Some(orpo_trainer::Error::Stopped) => WorkerEvent::Stopped,
            Some(err) => WorkerEvent::Failed {
                kind: error_kind(err).into(),
                message: err.to_string(),
            },
            None => WorkerEvent::Failed {
                kind: "config".into(),
                message: format!("{e:#}"),
            },
        },
    };
    if args.report.is_some() {
        write_outcome(&args.job_dir, &event);
    }
    emit(&event);
    if let Some(reporter) = REPORTER.get() {
        reporter.finish(Duration::from_secs(args.report_wait_s));
    }
    match event {
        WorkerEvent::Failed { message, .. } => {
            eprintln!("error: {message}");
            std::process::exit(1)
        }
        _ => Ok(()),
    }
}

fn train_job(args: &crate::cli::WorkerArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.job_dir.join("job.toml"))?;
    let device = train::select_device(&spec.resources.device)?;
    log(format!("loading {}", spec.model.base));
    let mut session = Session::load(&spec, &device)?;
    if stop.load(Ordering::SeqCst) {
        return Err(orpo_trainer::Error::Stopped.into());
    }
    let mut device_name = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
    };
    // Under Slurm the node matters as much as the device on it.
    if let (Some(_), Ok(node)) = (&args.report, std::env::var("SLURMD_NODENAME")) {
        device_name = format!("{node}:{device_name}");
    }
    let opts = RunOptions {
        out_dir: args.job_dir.clone(),
        device,
        stop: stop.clone(),
    };
    let mut on_event = |event: Event<'_>| {
        #[allow(unreachable_patterns)]
        let out = match event {
            Event::Started {
                total_steps,
                train_pairs,
                eval_pairs,
                trainable_parameters,
                base,
            } => WorkerEvent::Started {
                total_steps,
                train_pairs,
                eval_pairs,
                trainable_parameters,
                device: device_name.clone(),
                base_precision: base.name,
                base_bytes: base.bytes,
            },
            Event::Resumed {
                step,
                checkpoint,
                records,
            } => WorkerEvent::Resumed {
                step,
                checkpoint: checkpoint
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                records: records.iter().map(metric_record).collect(),
            },
            Event::Log(rec) => WorkerEvent::Step {
                record: metric_record(rec),
            },
            Event::Eval(rec) => WorkerEvent::Eval {
                record: metric_record(rec),
            },
            Event::Saved(path) => WorkerEvent::Saved {
                path: path.to_string_lossy().into_owned(),
            },
            _ => return,
        };
        let step = matches!(out, WorkerEvent::Step { .. } | WorkerEvent::Eval { .. });
        emit(&out);
        if step {
            emit_memory();
        }
    };
    train::train(&mut session, &opts, &mut on_event)?;
    Ok(())
}

/// One event, to the daemon's reporter or as a line on stdout. Write errors are ignored: a
/// daemon that died closed the pipe, and the worker must still get to its checkpoint (Rust
/// ignores SIGPIPE, so the write fails instead).
fn emit(event: &WorkerEvent) {
    if let Some(reporter) = REPORTER.get() {
        reporter.send(event.clone());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}

/// `JOB_DIR/outcome.json`: how this worker ended, for a daemon that did not hear it. Written
/// to a temporary file and renamed; a failure is only logged (the daemon then resumes the job
/// from its newest checkpoint, which loses no work).
fn write_outcome(job_dir: &std::path::Path, event: &WorkerEvent) {
    let outcome = WorkerOutcome {
        slurm_job: std::env::var("SLURM_JOB_ID")
            .ok()
            .and_then(|v| v.parse().ok()),
        event: event.clone(),
    };
    let tmp = job_dir.join(format!("{OUTCOME_FILE}.tmp"));
    let written = serde_json::to_vec(&outcome)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, job_dir.join(OUTCOME_FILE)));
    if let Err(e) = written {
        eprintln!("writing {OUTCOME_FILE}: {e}");
    }
}

/// The peak resident set so far: the measured peak a CPU job's estimate is compared with.
fn emit_memory() {
    if let Some(peak_rss_bytes) = crate::devices::host::own_peak_rss() {
        emit(&WorkerEvent::Memory { peak_rss_bytes });
    }
}

fn log(message: String) {
    eprintln!("{message}");
    emit(&WorkerEvent::Log { message });
}

/// An exclusive lock on `DIR/worker.lock` for the life of the process: a worker left over from
/// a killed daemon may still be writing its checkpoint when the new daemon starts the job again.
fn lock_job_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own.
    let busy = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
    if busy {
        log("waiting for the previous worker of this job to stop".into());
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// The `JobError.kind` of a trainer error.
fn error_kind(e: &orpo_trainer::Error) -> &'static str {
    use orpo_trainer::Error as E;
    #[allow(unreachable_patterns)]
    match e {
        E::Model { .. } => "model",
        E::Data { .. } | E::Tokenizer(_) | E::Template(_) => "data",
        E::Adapter { .. } => "adapter",
        E::Config(_) => "config",
        E::Io { .. } => "io",
        _ => "runtime",
    }
}
