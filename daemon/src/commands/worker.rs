//! `orpod worker --job-dir DIR`: runs one job for the daemon. It trains with `orpo-trainer`,
//! prints one JSON event per line on stdout (the daemon's only view of it), logs to stderr
//! (the job's worker.log), and on SIGTERM finishes its step, checkpoints and exits.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use orpo_api::{JobSpec, MetricRecord};
use orpo_trainer::train::{self, Event, LogRecord, RunOptions, Session};

use crate::cli::WorkerArgs;
use crate::supervisor::protocol::WorkerEvent;

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
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
    emit(&event);
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
    let device_name = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
    };
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
                records: records.iter().map(record).collect(),
            },
            Event::Log(rec) => WorkerEvent::Step {
                record: record(rec),
            },
            Event::Eval(rec) => WorkerEvent::Eval {
                record: record(rec),
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

fn record(rec: &LogRecord) -> MetricRecord {
    MetricRecord {
        step: rec.step,
        epoch: rec.epoch,
        learning_rate: rec.learning_rate,
        grad_norm: rec.grad_norm,
        tokens: rec.tokens as u64,
        elapsed_s: rec.elapsed_s,
        metrics: rec.metrics.clone(),
    }
}

/// One event line. Write errors are ignored: a daemon that died closed the pipe, and the worker
/// must still get to its checkpoint (Rust ignores SIGPIPE, so the write fails instead).
fn emit(event: &WorkerEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
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
