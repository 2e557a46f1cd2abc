//! Checkpoints and exact resumption: a run stopped after any step (through `RunOptions.stop`,
//! or killed with SIGKILL at a random moment) and resumed from its newest checkpoint logs the
//! same metrics, bit for bit, as a run that never stopped, and ends with the same adapter.
//!
//! The job exercises every piece of state a checkpoint carries: shuffled data over several
//! epochs, LoRA dropout (its RNG), gradient accumulation with a short last group, warm-up and a
//! cosine schedule, weight decay (AdamW's moments), a log window of two steps (pending metrics)
//! and periodic evaluation (history).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use common::fixtures;
use orpo_api::spec::JobSpec;
use orpo_trainer::checkpoint;
use orpo_trainer::generate::{
    self,
    engine::{Engine, GenerateOptions},
};
use orpo_trainer::lora::LoraAdapter;
use orpo_trainer::train::{self, Event, LogRecord, RunOptions, Session};
use orpo_trainer::Error;

/// 15 pairs in micro-batches of 2 (8 per epoch, the last one short) and groups of 3 (the last
/// group of an epoch has 2): 3 optimizer steps per epoch, 11 steps over 4 epochs.
fn job(save_every: usize) -> JobSpec {
    let dir = fixtures();
    let text = format!(
        r#"
[model]
base = {model:?}
[data]
train = {train:?}
eval = {eval:?}
max_length = 256
max_prompt_length = 128
shuffle = true
[lora]
r = 4
alpha = 8
dropout = 0.1
[train]
max_steps = 11
batch_size = 2
grad_accum = 3
eval_batch_size = 4
learning_rate = 5e-3
lr_scheduler = "cosine"
warmup_steps = 2
weight_decay = 0.01
max_grad_norm = 0.5
seed = 7
log_every = 2
eval_every = 3
save_every = {save_every}
keep_checkpoints = 2
"#,
        model = dir.join("tiny-llama"),
        train = dir.join("prefs_text.jsonl"),
        eval = dir.join("prefs_text_eval.jsonl"),
    );
    let spec = JobSpec::parse(&text, Path::new("resume.toml")).unwrap();
    spec.validate().unwrap();
    spec
}

fn options(out: &Path, stop: Arc<AtomicBool>) -> RunOptions {
    RunOptions {
        out_dir: out.to_path_buf(),
        device: Device::Cpu,
        stop,
    }
}

/// Records without their wall-clock time, the one field that may differ.
fn timeless(records: &[LogRecord]) -> Vec<LogRecord> {
    records
        .iter()
        .map(|r| LogRecord {
            elapsed_s: 0.0,
            ..r.clone()
        })
        .collect()
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("final/adapter_model.safetensors")).unwrap()
}

/// An uninterrupted run: its records, output folder and training time.
fn reference(save_every: usize) -> (Vec<LogRecord>, tempfile::TempDir, Duration) {
    let spec = job(save_every);
    let out = tempfile::tempdir().unwrap();
    let mut session = Session::load(&spec, &Device::Cpu).unwrap();
    let t0 = Instant::now();
    let records = train::train(
        &mut session,
        &options(out.path(), Arc::default()),
        &mut |_| {},
    )
    .unwrap();
    (records, out, t0.elapsed())
}

fn assert_same_run(got: &[LogRecord], want: &[LogRecord], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: record count");
    for (g, w) in timeless(got).iter().zip(timeless(want)) {
        assert_eq!(*g, w, "{what}: step {} differs", w.step);
    }
}

/// Stops after step 3 (mid log window, right after an evaluation), resumes, stops again after
/// step 8, resumes to the end: the same records and the same final adapter bytes. Also checks
/// the checkpoint folders (contents, rotation, samples) and the `Resumed` event.
#[test]
fn stopped_and_resumed_run_matches_an_uninterrupted_one() {
    let (want, ref_out, _) = reference(0);
    let spec = job(0);
    let out = tempfile::tempdir().unwrap();
    let mut resumed_at = Vec::new();
    for stop_at in [Some(3), Some(8), None] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut session = Session::load(&spec, &Device::Cpu).unwrap();
        let flag = stop.clone();
        let mut on_event = |e: Event<'_>| match e {
            Event::Log(r) | Event::Eval(r) if Some(r.step) == stop_at => {
                flag.store(true, Ordering::Relaxed)
            }
            Event::Resumed { step, records, .. } => resumed_at.push((step, records.len())),
            _ => {}
        };
        let result = train::train(&mut session, &options(out.path(), stop), &mut on_event);
        match stop_at {
            Some(k) => {
                assert!(matches!(result, Err(Error::Stopped)), "stop after {k}");
                let newest = checkpoint::latest(out.path()).unwrap().unwrap();
                assert_eq!(newest.file_name().unwrap(), format!("step-{k}").as_str());
            }
            None => assert_same_run(&result.unwrap(), &want, "resumed twice"),
        }
    }
    // Resumed at 3 with records of steps 2 and 3 (log, eval), at 8 with 6.
    assert_eq!(resumed_at, [(3, 2), (8, 6)]);
    assert_eq!(adapter_bytes(out.path()), adapter_bytes(ref_out.path()));

    // keep_checkpoints = 2: step-8 (the stop) and step-11 (the final one) remain.
    let steps: Vec<usize> = checkpoint::list(out.path())
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, [8, 11]);
    let last = out.path().join("checkpoints/step-11");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "sample_prompts.json",
    ] {
        assert!(last.join(file).is_file(), "step-11/{file}");
    }
    let state = checkpoint::load_state(&last).unwrap();
    assert_eq!((state.step, state.total_steps), (11, 11));
    assert_eq!(timeless(&state.log_history), timeless(&want));
    // The checkpoints hold their sample prompts; the answers come from the generation engine,
    // once training is done (`orpod train`) or as the daemon admits them.
    let prompts = generate::sample_prompts(&last).unwrap().unwrap();
    assert_eq!(prompts.len(), 3);
    assert!(prompts.iter().all(|p| !p.prompt.is_empty()));
    let finals = out.path().join("final");
    assert_eq!(
        generate::missing_samples(out.path()).unwrap(),
        [out.path().join("checkpoints/step-8"), last.clone(), finals]
    );
    let session = Session::load(&spec, &Device::Cpu).unwrap();
    let written = generate::fill_samples(&session.base, &Device::Cpu, out.path()).unwrap();
    assert_eq!(written.len(), 3);
    assert!(generate::missing_samples(out.path()).unwrap().is_empty());
    let samples: Vec<checkpoint::Sample> =
        serde_json::from_str(&std::fs::read_to_string(last.join("samples.json")).unwrap()).unwrap();
    assert_eq!(samples, written[1].1);
    // Each is the engine's greedy answer to the prompt's training tokens, at step 11's weights.
    let adapter = LoraAdapter::load_peft(&last, &session.base.config, &Device::Cpu).unwrap();
    let mut engine = Engine::new(&session.base, Some(&adapter)).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: generate::SAMPLE_TOKENS,
        ..GenerateOptions::default()
    };
    for (p, s) in prompts.iter().zip(&samples) {
        let gen = engine.generate(&p.prompt_ids, &opts, |_| true).unwrap();
        assert_eq!(s.prompt, p.prompt);
        assert_eq!(s.completion_tokens, gen.tokens.len());
        assert_eq!(s.completion, engine.tokenizer.decode(&gen.tokens).unwrap());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(last.join("adapter_model.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

/// A job whose step arithmetic changed cannot continue from the old checkpoints.
#[test]
fn resume_refuses_a_checkpoint_of_another_shape() {
    let out = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(true));
    let spec = job(1);
    let mut session = Session::load(&spec, &Device::Cpu).unwrap();
    // Stop is set before the first step: nothing to save, nothing trained.
    let r = train::train(&mut session, &options(out.path(), stop), &mut |_| {});
    assert!(matches!(r, Err(Error::Stopped)));
    assert!(checkpoint::latest(out.path()).unwrap().is_none());

    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let mut session = Session::load(&spec, &Device::Cpu).unwrap();
    let r = train::train(&mut session, &options(out.path(), flag), &mut |e| {
        if let Event::Saved(_) = e {
            f.store(true, Ordering::Relaxed)
        }
    });
    assert!(matches!(r, Err(Error::Stopped)));
    assert!(checkpoint::latest(out.path()).unwrap().is_some());
    let mut other = job(1);
    other.train.batch_size = 3;
    let mut session = Session::load(&other, &Device::Cpu).unwrap();
    let err = train::train(
        &mut session,
        &options(out.path(), Arc::default()),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("train.batch_size 2 (now 3)"), "{err}");
}

const CHILD_ENV: &str = "ORPOD_RESUME_TEST_CHILD_OUT";

/// The training process the SIGKILL test starts and kills: this test binary, run again with
/// only this test and `CHILD_ENV` naming the output folder. Without the variable it does nothing.
/// It reports each checkpoint on stdout so the parent can aim its kill inside the run.
#[test]
fn child_training_process() {
    let Some(out) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec = job(1);
    let mut session = Session::load(&spec, &Device::Cpu).unwrap();
    let mut on_event = |e: Event<'_>| match e {
        Event::Started { .. } => println!("started"),
        Event::Resumed { step, .. } => println!("saved {step}"),
        Event::Saved(dir) => {
            if let Some(step) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("step-"))
            {
                println!("saved {step}");
            }
        }
        _ => {}
    };
    train::train(
        &mut session,
        &options(Path::new(&out), Arc::default()),
        &mut on_event,
    )
    .unwrap();
}

/// Three training processes, each killed with SIGKILL at a random moment (a random step, then a
/// random time within the next step and its checkpoint write: a checkpoint follows every step),
/// then the run is finished in this process: the same records and final adapter as an
/// uninterrupted run.
#[test]
fn run_killed_at_random_moments_resumes_exactly() {
    let (want, ref_out, _) = reference(1);
    let out = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut log = Vec::new();
    let mut done = 0; // the newest checkpoint's step
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_training_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, out.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill during step `aim + 1` (or its checkpoint), at a uniformly random time in it.
        let aim = done + 1 + (rand::random::<u32>() % 3) as usize;
        let mut last = Instant::now();
        let mut step_time = Duration::ZERO;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(step) = line.strip_prefix("saved ") {
                let step: usize = step.parse().unwrap();
                step_time = last.elapsed();
                last = Instant::now();
                if step >= aim {
                    break;
                }
            }
        }
        let delay = step_time.mul_f64(rand::random::<f64>());
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        assert!(running, "round {round}: the child ended before the kill");
        let newest = checkpoint::latest(out.path()).unwrap().unwrap();
        done = checkpoint::load_state(&newest).unwrap().step;
        log.push(format!(
            "round {round}: killed {delay:?} after checkpoint {aim}; newest complete checkpoint: step {done}"
        ));
    }
    eprintln!("{}", log.join("\n"));
    let mut session = Session::load(&job(1), &Device::Cpu).unwrap();
    let got = train::train(
        &mut session,
        &options(out.path(), Arc::default()),
        &mut |_| {},
    )
    .unwrap();
    assert_same_run(&got, &want, "after SIGKILLs");
    assert_eq!(adapter_bytes(out.path()), adapter_bytes(ref_out.path()));
}
