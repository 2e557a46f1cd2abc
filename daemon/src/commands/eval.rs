//! `orpod eval job.toml [--adapter DIR] --json`: TRL-named eval metrics at the base weights or
//! an adapter's.

use orpo_api::JobSpec;
use orpo_trainer::train::{self, Session};

use crate::cli::EvalArgs;

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut spec = JobSpec::load(&args.job)?;
    spec.model.base = crate::config::local_model(&spec.model.base);
    crate::config::local_data(&spec)?;
    if let Some(dir) = &args.adapter {
        spec.lora.init_adapter = dir.to_string_lossy().into_owned();
    }
    if spec.data.eval.is_empty() && spec.data.eval_fraction == 0.0 {
        anyhow::bail!(
            "{}: no eval data: set data.eval (a JSONL file) or data.eval_fraction",
            args.job.display()
        );
    }
    let device = train::select_device(&spec.resources.device)?;
    let session = Session::load(&spec, &device)?;
    let metrics = session.evaluate(args.adapter.is_some())?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        for (k, v) in &metrics {
            println!("{k:<28} {v:>12.6}");
        }
    }
    Ok(())
}
