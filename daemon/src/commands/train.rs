//! `orpod train job.toml --out DIR`: one job in the foreground, no daemon.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use orpo_api::JobSpec;
use orpo_trainer::generate;
use orpo_trainer::train::{self, Event, RunOptions, Session};

use crate::cli::TrainArgs;

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut spec = JobSpec::load(&args.job)?;
    spec.model.base = crate::config::local_model(&spec.model.base);
    crate::config::local_data(&spec)?;
    let device = train::select_device(&spec.resources.device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    eprintln!("loading {} ...", spec.model.base);
    let mut session = Session::load(&spec, &device)?;
    let opts = RunOptions {
        out_dir: args.out.clone(),
        device,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut total = 0;
    let mut write_err = None;
    let mut on_event = |event: Event<'_>| match event {
        Event::Started {
            total_steps,
            train_pairs,
            eval_pairs,
            trainable_parameters,
            base,
        } => {
            total = total_steps;
            eprintln!(
                "training {total_steps} steps on {train_pairs} pairs ({eval_pairs} eval), {trainable_parameters} LoRA parameters; base in {} ({:.1} MB)",
                base.name,
                base.bytes as f64 / 1e6
            );
        }
        Event::Log(rec) | Event::Eval(rec) => {
            if let Err(e) = writeln!(metrics, "{}", serde_json::to_string(rec).expect("json")) {
                write_err.get_or_insert(e);
            }
            eprintln!("{}", progress_line(rec, total));
        }
        Event::Resumed {
            step,
            checkpoint,
            records,
        } => {
            // The file was just truncated: the history comes back from the checkpoint, so
            // steps logged after it and before the interruption are not listed twice.
            for rec in records {
                if let Err(e) = writeln!(metrics, "{}", serde_json::to_string(rec).expect("json")) {
                    write_err.get_or_insert(e);
                }
            }
            eprintln!("resuming from {} after step {step}", checkpoint.display());
        }
        Event::Saved(dir) => eprintln!("saved {}", dir.display()),
    };
    train::train(&mut session, &opts, &mut on_event)?;
    if let Some(e) = write_err {
        return Err(e).with_context(|| format!("writing {}", metrics_path.display()));
    }
    if args.no_samples {
        return Ok(());
    }
    // The checkpoints' samples, by the generation engine, now that training is done.
    let Session { base, .. } = session;
    for (dir, samples) in generate::fill_samples(&base, &opts.device, &args.out)? {
        eprintln!("samples of {}:", dir.display());
        for s in samples {
            eprintln!("  {:?} -> {:?}", s.prompt, s.completion);
        }
    }
    Ok(())
}

/// `step 3/10  loss 0.6931  acc 0.50  lr 1.0e-4  1.8 s/step  eta 13s`, or the eval summary.
fn progress_line(rec: &train::LogRecord, total: usize) -> String {
    let m = &rec.metrics;
    if let Some(loss) = m.get("eval_loss") {
        let acc = m
            .get("eval_rewards/accuracies")
            .copied()
            .unwrap_or(f64::NAN);
        return format!(
            "eval @ step {}  eval_loss {loss:.4}  eval_acc {acc:.2}",
            rec.step
        );
    }
    let per_step = rec.elapsed_s / rec.step.max(1) as f64;
    let eta = per_step * total.saturating_sub(rec.step) as f64;
    format!(
        "step {}/{}  loss {:.4}  acc {:.2}  lr {:.1e}  {:.2} s/step  eta {:.0}s",
        rec.step,
        total,
        m.get("loss").copied().unwrap_or(f64::NAN),
        m.get("rewards/accuracies").copied().unwrap_or(f64::NAN),
        rec.learning_rate.unwrap_or(0.0),
        per_step,
        eta
    )
}
