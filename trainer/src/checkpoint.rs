//! Checkpoints: `<out>/checkpoints/step-N/` holds everything a run needs to continue exactly
//! where it stopped, in formats other tools read:
//!
//! - `adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter ([`crate::lora`]);
//! - `optimizer.safetensors`: AdamW's moments by parameter name (`<name>.exp_avg`,
//!   `<name>.exp_avg_sq`, PyTorch's state names);
//! - `trainer_state.json`: [`TrainerState`] (step, epoch, data position, RNG, scheduler, the
//!   metrics not yet logged and the metric history);
//! - `sample_prompts.json`: a few eval prompts; `samples.json`, added later, their greedy
//!   completions at these weights by the generation engine ([`crate::generate`]).
//!
//! A checkpoint is written into a hidden temporary folder, every file and the folder are
//! fsynced, and the folder is renamed to `step-N`: a crash at any moment leaves the old
//! checkpoints and maybe a temporary folder (ignored, and removed by the next save), never a
//! `step-N` that is half written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use orpo_api::spec::LrScheduler;
use serde::{Deserialize, Serialize};

use crate::loss::Metrics;
use crate::optim::{AdamW, Moments};
use crate::train::LogRecord;
use crate::{Error, Result};

pub const CHECKPOINTS: &str = "checkpoints";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const SAMPLES: &str = "samples.json";
pub const SAMPLE_PROMPTS: &str = "sample_prompts.json";

/// Bumped when the meaning of a field changes; older checkpoints are then refused.
pub const FORMAT_VERSION: u32 = 1;

/// `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// Fractional epoch as logged (micro-batches seen / micro-batches per epoch).
    pub epoch: f64,
    pub data: DataPosition,
    pub rng: RngState,
    pub scheduler: SchedulerState,
    /// Real tokens processed so far.
    pub tokens: usize,
    /// Training time so far, carried into the resumed run's `elapsed_s`.
    pub elapsed_s: f64,
    /// Metrics of the optimizer steps since the last log line (`log_every > 1`).
    pub log_window: LogWindow,
    /// Every record logged so far (training steps and evaluations).
    pub log_history: Vec<LogRecord>,
}

/// Where the next micro-batch comes from. The row order of an epoch is a pure function of
/// `(seed, epoch)`, so (epoch, micro-batch) is the whole data position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: usize,
    pub micro_batch: usize,
    pub train_pairs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub shuffle: bool,
    pub seed: u64,
}

/// The dropout RNG is re-seeded at every optimizer step from `(seed, step)`, so its whole
/// state is the seed (rand's `StdRng` cannot be serialized, and per-step seeds make the state
/// independent of how many numbers earlier steps drew).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub dropout: String,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    pub kind: LrScheduler,
    pub base_learning_rate: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The learning rate the last step used.
    pub last_learning_rate: f64,
}

/// Pending log-window values. Metrics are stored as arrays in [`METRIC_FIELDS`] order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    pub losses: Vec<f64>,
    pub metrics: Vec<Vec<f64>>,
}

/// The order of [`Metrics`] fields in [`LogWindow::metrics`].
pub const METRIC_FIELDS: [&str; 12] = [
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
    "logits/chosen",
    "logits/rejected",
];

impl LogWindow {
    pub fn new(losses: &[f64], metrics: &[Metrics]) -> Self {
        let metrics = metrics
            .iter()
            .map(|m| {
                vec![
                    m.loss,
                    m.nll_loss,
                    m.log_odds_ratio,
                    m.log_odds_chosen,
                    m.rewards_chosen,
                    m.rewards_rejected,
                    m.rewards_accuracies,
                    m.rewards_margins,
                    m.logps_chosen,
                    m.logps_rejected,
                    m.logits_chosen,
                    m.logits_rejected,
                ]
            })
            .collect();
        LogWindow {
            losses: losses.to_vec(),
            metrics,
        }
    }

    pub fn metrics(&self, path: &Path) -> Result<Vec<Metrics>> {
        self.metrics
            .iter()
            .map(|v| match v.as_slice() {
                &[loss, nll_loss, log_odds_ratio, log_odds_chosen, rewards_chosen, rewards_rejected, rewards_accuracies, rewards_margins, logps_chosen, logps_rejected, logits_chosen, logits_rejected] => {
                    Ok(Metrics {
                        loss,
                        nll_loss,
                        log_odds_ratio,
                        log_odds_chosen,
                        rewards_chosen,
                        rewards_rejected,
                        rewards_accuracies,
                        rewards_margins,
                        logps_chosen,
                        logps_rejected,
                        logits_chosen,
                        logits_rejected,
                    })
                }
                _ => Err(bad(path, "log_window.metrics rows must have 12 values")),
            })
            .collect()
    }
}

/// One greedy completion in `samples.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub completion: String,
    pub completion_tokens: usize,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Adapter {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `<out>/checkpoints`.
pub fn checkpoints_dir(out_dir: &Path) -> PathBuf {
    out_dir.join(CHECKPOINTS)
}

/// Complete checkpoints of `out_dir` as (step, folder), oldest first. A folder counts when its
/// name is `step-N` and its `trainer_state.json` reads back (it is written last).
pub fn list(out_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoints_dir(out_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step {
            if load_state(&path).is_ok_and(|s| s.step == step) {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of `out_dir`, if any.
pub fn latest(out_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(out_dir)?.pop().map(|(_, p)| p))
}

pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?;
    if state.format != FORMAT_VERSION {
        return Err(bad(
            &path,
            format!(
                "checkpoint format {} (this orpod reads {FORMAT_VERSION})",
                state.format
            ),
        ));
    }
    Ok(state)
}

/// Writes AdamW's state: `<param>.exp_avg` and `<param>.exp_avg_sq` (f32), with the step count
/// and hyper-parameters in the safetensors metadata.
pub fn save_optimizer(opt: &AdamW, path: &Path) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (name, s) in &opt.state {
        tensors.insert(format!("{name}.exp_avg"), s.m.clone());
        tensors.insert(format!("{name}.exp_avg_sq"), s.v.clone());
    }
    let meta = [
        ("format", "pt".to_string()),
        ("optimizer", "AdamW".to_string()),
        ("step", opt.step.to_string()),
        ("beta1", opt.beta1.to_string()),
        ("beta2", opt.beta2.to_string()),
        ("eps", opt.eps.to_string()),
        ("weight_decay", opt.weight_decay.to_string()),
    ];
    crate::lora::write_safetensors_with(path, &tensors, &meta)
}

/// Reads [`save_optimizer`]'s file back; `step` comes from `trainer_state.json`.
pub fn load_optimizer(
    path: &Path,
    weight_decay: f64,
    step: usize,
    device: &Device,
) -> Result<AdamW> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let mut opt = AdamW::new(weight_decay);
    opt.step = step as u64;
    let mut firsts: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut seconds: BTreeMap<String, Tensor> = BTreeMap::new();
    for (key, t) in tensors {
        if let Some(name) = key.strip_suffix(".exp_avg_sq") {
            seconds.insert(name.to_string(), t);
        } else if let Some(name) = key.strip_suffix(".exp_avg") {
            firsts.insert(name.to_string(), t);
        } else {
            return Err(bad(path, format!("unexpected tensor {key}")));
        }
    }
    for (name, m) in firsts {
        let v = seconds
            .remove(&name)
            .ok_or_else(|| bad(path, format!("{name}.exp_avg has no exp_avg_sq")))?;
        opt.state.insert(name, Moments { m, v });
    }
    if let Some(name) = seconds.keys().next() {
        return Err(bad(path, format!("{name}.exp_avg_sq has no exp_avg")));
    }
    Ok(opt)
}

/// Writes a folder atomically: `fill` writes into a hidden temporary sibling, every file and
/// folder in it is fsynced, then it is renamed to `dest` (an existing `dest` is moved aside
/// first and removed after) and the parent is fsynced.
pub fn write_dir_atomic(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| Error::Config(format!("{}: no parent folder", dest.display())))?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Config(format!("{}: no folder name", dest.display())))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    remove_if_present(&tmp)?;
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let filled = fill(&tmp).and_then(|()| sync_tree(&tmp));
    if let Err(e) = filled {
        // The error matters more than a leftover folder, which the next save removes anyway.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{pid}"));
    let had_old = dest.exists();
    if had_old {
        remove_if_present(&old)?;
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    sync_path(parent)?;
    if had_old {
        remove_if_present(&old)?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// fsyncs every file and folder under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Removes all but the newest `keep` checkpoints, and temporary folders that a crash left.
pub fn rotate(out_dir: &Path, keep: usize) -> Result<()> {
    let all = list(out_dir)?;
    let dir = checkpoints_dir(out_dir);
    let pid = std::process::id();
    for (step, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        // Renamed first, so a crash half way through the removal leaves no `step-N` that has
        // lost its adapter but kept its state file.
        let doomed = dir.join(format!(".step-{step}.del-{pid}"));
        std::fs::rename(old, &doomed).map_err(|e| Error::io(old, e))?;
        remove_if_present(&doomed)?;
    }
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let stale = name.is_some_and(|n| {
            n.starts_with(".step-") && !n.ends_with(&format!("-{pid}"))
                || n.starts_with("step-") && !all.iter().any(|(_, p)| *p == path)
        });
        if stale {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainerState {
        TrainerState {
            format: FORMAT_VERSION,
            step,
            total_steps: 10,
            epoch: 0.5,
            data: DataPosition {
                epoch: 0,
                micro_batch: step,
                train_pairs: 20,
                batch_size: 1,
                grad_accum: 1,
                shuffle: true,
                seed: 3,
            },
            rng: RngState {
                dropout: "per-step".into(),
                seed: 3,
            },
            scheduler: SchedulerState {
                kind: LrScheduler::Linear,
                base_learning_rate: 1e-3,
                warmup_steps: 0,
                total_steps: 10,
                last_learning_rate: 0.1 + 0.2,
            },
            tokens: 7,
            elapsed_s: 1.0 / 3.0,
            log_window: LogWindow {
                losses: vec![0.1 + 0.2, std::f64::consts::PI],
                metrics: vec![vec![1e-300; 12]],
            },
            log_history: Vec::new(),
        }
    }

    fn write(out: &Path, step: usize) {
        let dest = checkpoints_dir(out).join(format!("step-{step}"));
        write_dir_atomic(&dest, |tmp| {
            let text = serde_json::to_string(&state(step)).unwrap();
            std::fs::write(tmp.join(TRAINER_STATE), text).map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
    }

    /// f64 values survive the JSON round trip bit for bit (serde_json's `float_roundtrip`),
    /// which exact resumption relies on.
    #[test]
    fn state_round_trips_exactly() {
        let s = state(4);
        let back: TrainerState =
            serde_json::from_str(&serde_json::to_string_pretty(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.scheduler.last_learning_rate.to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
    }

    /// Leftovers of a crash (a temporary folder, a `step-N` without its state file) are not
    /// checkpoints, and rotation keeps the newest ones and clears the leftovers.
    #[test]
    fn incomplete_folders_are_ignored_and_rotation_keeps_the_newest() {
        let out = tempfile::tempdir().unwrap();
        for step in [2, 4, 6] {
            write(out.path(), step);
        }
        let ck = checkpoints_dir(out.path());
        std::fs::create_dir_all(ck.join(".step-8.tmp-1")).unwrap();
        std::fs::write(ck.join(".step-8.tmp-1").join(TRAINER_STATE), "{").unwrap();
        std::fs::create_dir_all(ck.join("step-9")).unwrap();
        let steps: Vec<usize> = list(out.path()).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, [2, 4, 6]);
        assert_eq!(latest(out.path()).unwrap(), Some(ck.join("step-6")));
        rotate(out.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-4", "step-6"]);
        // Rewriting an existing step replaces it whole.
        write(out.path(), 6);
        assert_eq!(load_state(&ck.join("step-6")).unwrap().step, 6);
    }

    #[test]
    fn optimizer_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut opt = AdamW::new(0.01);
        opt.step = 3;
        let t = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        opt.state.insert(
            "a.lora_A.weight".into(),
            Moments {
                m: t.clone(),
                v: t.sqr().unwrap(),
            },
        );
        let path = dir.path().join(OPTIMIZER);
        save_optimizer(&opt, &path).unwrap();
        let back = load_optimizer(&path, 0.01, 3, &Device::Cpu).unwrap();
        assert_eq!(back.step, 3);
        let s = &back.state["a.lora_A.weight"];
        assert_eq!(s.m.to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        assert_eq!(s.v.to_vec1::<f32>().unwrap(), [2.25, 4.0]);
    }
}
