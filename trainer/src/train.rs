//! The training and evaluation loops, with transformers' `Trainer` semantics where they show in
//! the numbers: micro-batches of `batch_size` pairs grouped by `grad_accum` (the last group of an
//! epoch may be short, and its loss is divided by its own size), clipping before the step, the
//! learning rate logged being the one the step used, `epoch` as a fraction of micro-batches, and
//! logged metrics averaged over the micro-batches since the last log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{self, TrainerState};
use crate::generate;

use candle_core::{DType, Device, Tensor};
use orpo_api::spec::{Dtype, JobSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::data::{self, TokenizedPair};
use crate::lora::LoraAdapter;
use crate::loss::{orpo_loss, Metrics, OrpoBatch};
use crate::model::llama::{GradSink, Llama, LoraMode};
use crate::model::{self, BaseModel};
use crate::optim::{self, AdamW};
use crate::{Error, Result};

/// One line of `metrics.jsonl`: a logged training step or an evaluation.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LogRecord {
    pub step: usize,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// TRL's metric names (`loss`, `rewards/chosen`, ... or `eval_loss`, ...).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Real tokens processed so far.
    pub tokens: usize,
    pub elapsed_s: f64,
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    Started {
        total_steps: usize,
        train_pairs: usize,
        eval_pairs: usize,
        trainable_parameters: usize,
        /// How the frozen base is held ([`crate::model::Precision`]).
        base: crate::model::Precision,
    },
    Log(&'a LogRecord),
    Eval(&'a LogRecord),
    /// Training continues from `checkpoint` after `step` optimizer steps; `records` is the
    /// history logged before it (a metrics file rewritten from it has no duplicates).
    Resumed {
        step: usize,
        checkpoint: &'a Path,
        records: &'a [LogRecord],
    },
    /// A complete checkpoint (`checkpoints/step-N/`) or the final folder was written.
    Saved(&'a Path),
}

/// Where and how a run executes.
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub device: Device,
    /// Set from outside (cancel, pause, shutdown): the current optimizer step is finished and
    /// checkpointed, then `train` returns `Error::Stopped`.
    pub stop: Arc<AtomicBool>,
}

/// Picks the device of `resources.device` (`auto`: CUDA when built with it and present).
pub fn select_device(setting: &str) -> Result<Device> {
    let cuda = |i: usize| {
        Device::new_cuda(i)
            .map_err(|e| Error::Config(format!("resources.device = {setting:?}: {e}")))
    };
    match setting {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(Error::Config(format!(
                "resources.device: unknown device {s:?}"
            ))),
        },
    }
}

/// The dtype of the frozen base: `auto` is bf16 on CUDA and f32 on CPU, where bf16 matmuls
/// widen to f32 on every call.
pub fn select_dtype(setting: Dtype, device: &Device) -> DType {
    match setting {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::Auto if device.is_cuda() => DType::BF16,
        Dtype::Auto => DType::F32,
    }
}

/// A loaded job: the model, its data and the adapter being trained.
pub struct Session {
    pub spec: JobSpec,
    pub base: BaseModel,
    pub model: Llama,
    pub adapter: LoraAdapter,
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
}

impl Session {
    /// Loads the base model, tokenizes and checks all data (every bad row is reported before any
    /// training), and makes or loads the adapter.
    pub fn load(spec: &JobSpec, device: &Device) -> Result<Session> {
        let dtype = select_dtype(spec.model.dtype, device);
        let base = model::load_base(
            Path::new(&spec.model.base),
            dtype,
            device,
            spec.model.quantize,
        )?;
        let (train, eval) = data::load_job_data(spec, &base.tokenizer)?;
        if train.is_empty() {
            return Err(Error::Config(format!(
                "data.train {}: no rows",
                spec.data.train
            )));
        }
        let adapter = if spec.lora.init_adapter.is_empty() {
            LoraAdapter::new(&base.config, &spec.lora, spec.train.seed, device)?
        } else {
            LoraAdapter::load_peft(Path::new(&spec.lora.init_adapter), &base.config, device)?
        };
        let model = Llama::new(&base)?;
        Ok(Session {
            spec: spec.clone(),
            base,
            model,
            adapter,
            train,
            eval,
        })
    }

    /// Gradients of one micro-batch's loss (scaled by `1 / scale_div`) for every LoRA tensor by
    /// PEFT name; a tensor the graph does not reach is missing from the map.
    pub fn micro_batch(
        &self,
        pairs: &[&TokenizedPair],
        scale_div: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<(BTreeMap<String, Tensor>, Metrics, usize)> {
        let batch = OrpoBatch::new(
            pairs,
            self.base.tokenizer.pad_id,
            self.spec.orpo.nll_scope,
            self.model.device(),
        )?;
        let sink = GradSink::default();
        let mode = LoraMode {
            adapter: &self.adapter,
            train: true,
            dropout_rng: Some(rng),
            sink: Some(sink.clone()),
            checkpoint: self.spec.train.gradient_checkpointing,
        };
        let (loss, metrics) = orpo_loss(&self.model, &batch, Some(mode), self.spec.orpo.beta)?;
        let scaled = (loss / scale_div as f64)?;
        let grads = crate::loss::lora_gradients(&scaled, &self.adapter, Some(&sink))?;
        Ok((grads, metrics, batch.tokens))
    }

    /// TRL's `evaluate()`: metrics per batch of `eval_batch_size` pairs in order, then the mean
    /// over batches, except `eval_loss`, which the Trainer weights by each batch's size.
    pub fn evaluate(&self, use_adapter: bool) -> Result<BTreeMap<String, f64>> {
        let bs = self.spec.train.eval_batch_size;
        let mut all = Vec::new();
        let (mut weighted_loss, mut n) = (0.0, 0usize);
        for chunk in self.eval.chunks(bs) {
            let pairs: Vec<&TokenizedPair> = chunk.iter().collect();
            let batch = OrpoBatch::new(
                &pairs,
                self.base.tokenizer.pad_id,
                self.spec.orpo.nll_scope,
                self.model.device(),
            )?;
            let mode = use_adapter.then_some(LoraMode {
                adapter: &self.adapter,
                train: false,
                dropout_rng: None,
                sink: None,
                checkpoint: false,
            });
            let (_, m) = orpo_loss(&self.model, &batch, mode, self.spec.orpo.beta)?;
            if m.loss.is_finite() {
                weighted_loss += m.loss * chunk.len() as f64;
                n += chunk.len();
            }
            all.push(m);
        }
        let mut out = Metrics::mean(&all).named("eval_");
        out.insert("eval_loss".into(), weighted_loss / n.max(1) as f64);
        Ok(out)
    }
}

/// Micro-batches and optimizer steps of one epoch (transformers' arithmetic: the last batch and
/// the last accumulation group may be short).
fn epoch_shape(rows: usize, batch: usize, accum: usize) -> (usize, usize) {
    let micro = rows.div_ceil(batch);
    (micro, micro.div_ceil(accum).max(1))
}

/// Optimizer steps of a run of `spec` on `rows` training pairs: `max_steps`, else `epochs`
/// worth of them.
pub fn total_steps(spec: &JobSpec, rows: usize) -> usize {
    let t = &spec.train;
    if t.max_steps > 0 {
        t.max_steps
    } else {
        let (_, steps_per_epoch) = epoch_shape(rows, t.batch_size, t.grad_accum);
        (t.epochs * steps_per_epoch as f64).ceil() as usize
    }
}

/// The rows of each micro-batch a fresh run of `spec` on `rows` pairs trains on, when the run
/// ends inside its first epoch (a short trial: it never sees most rows); `None` when it goes
/// through every row. The memory estimate sizes the batches with it.
pub fn first_epoch_batches(spec: &JobSpec, rows: usize) -> Option<Vec<Vec<usize>>> {
    let t = &spec.train;
    let (micro_per_epoch, _) = epoch_shape(rows, t.batch_size, t.grad_accum);
    let micro = total_steps(spec, rows).checked_mul(t.grad_accum)?;
    if micro >= micro_per_epoch {
        return None;
    }
    let order = epoch_order(rows, spec.data.shuffle, t.seed, 0);
    Some(
        order
            .chunks(t.batch_size)
            .take(micro)
            .map(<[usize]>::to_vec)
            .collect(),
    )
}

/// The loop's state between optimizer steps: what a checkpoint saves besides the adapter and
/// the optimizer.
struct Progress {
    /// Optimizer steps done.
    step: usize,
    epoch: usize,
    micro: usize,
    epoch_f: f64,
    tokens: usize,
    last_lr: f64,
    window_losses: Vec<f64>,
    window_metrics: Vec<Metrics>,
    records: Vec<LogRecord>,
    /// Training time of earlier runs of this job (resumed from a checkpoint).
    elapsed_before: f64,
}

/// Trains the job. Continues from the newest complete checkpoint in `<out_dir>/checkpoints/`
/// when there is one (emitting [`Event::Resumed`] with the history so far), writes a checkpoint
/// every `train.save_every` steps and at the end, then the final adapter and the `[export]`
/// files to `<out_dir>/final/`.
///
/// When `opts.stop` is set, the current optimizer step is finished and checkpointed, and the
/// call returns [`Error::Stopped`]; a later call with the same `out_dir` resumes.
pub fn train(
    session: &mut Session,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<LogRecord>> {
    let spec = session.spec.clone();
    let t = &spec.train;
    let n = session.train.len();
    let (micro_per_epoch, steps_per_epoch) = epoch_shape(n, t.batch_size, t.grad_accum);
    let total = total_steps(&spec, n);
    on_event(Event::Started {
        total_steps: total,
        train_pairs: n,
        eval_pairs: session.eval.len(),
        trainable_parameters: session.adapter.num_parameters(),
        base: session.base.precision(),
    });
    let start = Instant::now();
    let (mut p, mut opt) = match checkpoint::latest(&opts.out_dir)? {
        Some(dir) => {
            let resumed = resume(session, &dir, total, &opts.device)?;
            on_event(Event::Resumed {
                step: resumed.0.step,
                checkpoint: &dir,
                records: &resumed.0.records,
            });
            resumed
        }
        None => (
            Progress {
                step: 0,
                epoch: 0,
                micro: 0,
                epoch_f: 0.0,
                tokens: 0,
                last_lr: 0.0,
                window_losses: Vec::new(),
                window_metrics: Vec::new(),
                records: Vec::new(),
                elapsed_before: 0.0,
            },
            AdamW::new(t.weight_decay),
        ),
    };
    let elapsed = |p: &Progress| p.elapsed_before + start.elapsed().as_secs_f64();
    let mut order = epoch_order(n, spec.data.shuffle, t.seed, p.epoch);
    if p.step == 0 && t.eval_at_start && !session.eval.is_empty() {
        let rec = eval_record(session, 0, 0.0, p.tokens, elapsed(&p))?;
        on_event(Event::Eval(&rec));
        p.records.push(rec);
    }
    if p.step < total && opts.stop.load(Ordering::Relaxed) {
        return Err(Error::Stopped);
    }
    while p.step < total {
        let step = p.step;
        let group = if p.micro / t.grad_accum == steps_per_epoch - 1 {
            micro_per_epoch - p.micro
        } else {
            t.grad_accum
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(dropout_seed(t.seed, step));
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut step_loss = 0.0;
        for _ in 0..group {
            let rows = &order[p.micro * t.batch_size..((p.micro + 1) * t.batch_size).min(n)];
            let pairs: Vec<&TokenizedPair> = rows.iter().map(|&i| &session.train[i]).collect();
            let (g, m, toks) = session.micro_batch(&pairs, group, &mut rng)?;
            for (name, g) in g {
                let sum = match grads.remove(&name) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                grads.insert(name, sum);
            }
            step_loss += m.loss / group as f64;
            p.window_metrics.push(m);
            p.tokens += toks;
            p.micro += 1;
        }
        p.epoch_f = p.epoch as f64 + p.micro as f64 / micro_per_epoch as f64;
        if p.micro == micro_per_epoch {
            p.epoch += 1;
            p.micro = 0;
            order = epoch_order(n, spec.data.shuffle, t.seed, p.epoch);
        }
        p.window_losses.push(step_loss);
        let grad_norm = optim::clip_grad_norm(&mut grads, t.max_grad_norm)?;
        let lr = optim::learning_rate(t.lr_scheduler, t.learning_rate, step, t.warmup_steps, total);
        opt.step(&session.adapter.named_vars(), &grads, lr)?;
        drop(grads);
        p.step += 1;
        p.last_lr = lr;
        let last = p.step == total;
        if p.step % t.log_every == 0 || last {
            let mut metrics = Metrics::mean(&p.window_metrics).named("");
            metrics.insert(
                "loss".into(),
                p.window_losses.iter().sum::<f64>() / p.window_losses.len() as f64,
            );
            let rec = LogRecord {
                step: p.step,
                epoch: p.epoch_f,
                learning_rate: Some(lr),
                grad_norm: Some(grad_norm),
                metrics,
                tokens: p.tokens,
                elapsed_s: elapsed(&p),
            };
            on_event(Event::Log(&rec));
            p.records.push(rec);
            p.window_losses.clear();
            p.window_metrics.clear();
        }
        let eval_now = (t.eval_every > 0 && p.step % t.eval_every == 0) || last;
        if eval_now && !session.eval.is_empty() {
            let rec = eval_record(session, p.step, p.epoch_f, p.tokens, elapsed(&p))?;
            on_event(Event::Eval(&rec));
            p.records.push(rec);
        }
        let stop = opts.stop.load(Ordering::Relaxed);
        if last || stop || (t.save_every > 0 && p.step % t.save_every == 0) {
            let state = trainer_state(&spec, &p, total, elapsed(&p));
            let dir = save_checkpoint(session, &opt, &state, &opts.out_dir)?;
            on_event(Event::Saved(&dir));
        }
        if stop && !last {
            return Err(Error::Stopped);
        }
    }
    let final_dir = opts.out_dir.join("final");
    crate::export::write_final(session, &final_dir)?;
    on_event(Event::Saved(&final_dir));
    Ok(p.records)
}

/// The seed of the dropout RNG for optimizer step `step`: a fresh `StdRng` per step makes the
/// RNG state a function of `(seed, step)`, which a checkpoint can record.
fn dropout_seed(seed: u64, step: usize) -> u64 {
    // SplitMix64's finalizer, so neighbouring steps get unrelated streams.
    let mut z = seed
        .wrapping_add(1)
        .wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Restores the adapter, the optimizer and the loop state of checkpoint `dir`, after checking
/// that it belongs to a run of the same shape (the data order and step arithmetic depend on it).
fn resume(
    session: &mut Session,
    dir: &Path,
    total: usize,
    device: &Device,
) -> Result<(Progress, AdamW)> {
    let state = checkpoint::load_state(dir)?;
    let t = &session.spec.train;
    let d = &state.data;
    let mut differences = Vec::new();
    let mut check = |what: &str, then: String, now: String| {
        if then != now {
            differences.push(format!("{what} {then} (now {now})"));
        }
    };
    check(
        "total steps",
        state.total_steps.to_string(),
        total.to_string(),
    );
    check(
        "train pairs",
        d.train_pairs.to_string(),
        session.train.len().to_string(),
    );
    check(
        "train.batch_size",
        d.batch_size.to_string(),
        t.batch_size.to_string(),
    );
    check(
        "train.grad_accum",
        d.grad_accum.to_string(),
        t.grad_accum.to_string(),
    );
    check("train.seed", d.seed.to_string(), t.seed.to_string());
    check(
        "data.shuffle",
        d.shuffle.to_string(),
        session.spec.data.shuffle.to_string(),
    );
    if !differences.is_empty() {
        return Err(Error::Config(format!(
            "{} was written by a run with {}; resuming needs the same settings: restore them, or train into another output folder",
            dir.display(),
            differences.join(", ")
        )));
    }
    let adapter = LoraAdapter::load_peft(dir, &session.base.config, device)?;
    if adapter.r != session.spec.lora.r || adapter.alpha != session.spec.lora.alpha {
        return Err(Error::Config(format!(
            "{}: the checkpoint's adapter has r {} and alpha {}, the job r {} and alpha {}",
            dir.display(),
            adapter.r,
            adapter.alpha,
            session.spec.lora.r,
            session.spec.lora.alpha
        )));
    }
    session.adapter = adapter;
    let opt = checkpoint::load_optimizer(
        &dir.join(checkpoint::OPTIMIZER),
        t.weight_decay,
        state.step,
        device,
    )?;
    let window_metrics = state.log_window.metrics(dir)?;
    tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
    Ok((
        Progress {
            step: state.step,
            epoch: d.epoch,
            micro: d.micro_batch,
            epoch_f: state.epoch,
            tokens: state.tokens,
            last_lr: state.scheduler.last_learning_rate,
            window_losses: state.log_window.losses,
            window_metrics,
            records: state.log_history,
            elapsed_before: state.elapsed_s,
        },
        opt,
    ))
}

fn trainer_state(spec: &JobSpec, p: &Progress, total: usize, elapsed_s: f64) -> TrainerState {
    let t = &spec.train;
    TrainerState {
        format: checkpoint::FORMAT_VERSION,
        step: p.step,
        total_steps: total,
        epoch: p.epoch_f,
        data: checkpoint::DataPosition {
            epoch: p.epoch,
            micro_batch: p.micro,
            train_pairs: 0,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            shuffle: spec.data.shuffle,
            seed: t.seed,
        },
        rng: checkpoint::RngState {
            dropout: "StdRng::seed_from_u64(splitmix64(seed + 1 + step * 0x9E3779B97F4A7C15)) per optimizer step".into(),
            seed: t.seed,
        },
        scheduler: checkpoint::SchedulerState {
            kind: t.lr_scheduler,
            base_learning_rate: t.learning_rate,
            warmup_steps: t.warmup_steps,
            total_steps: total,
            last_learning_rate: p.last_lr,
        },
        tokens: p.tokens,
        elapsed_s,
        log_window: checkpoint::LogWindow::new(&p.window_losses, &p.window_metrics),
        log_history: p.records.clone(),
    }
}

/// Writes `<out>/checkpoints/step-N/` atomically, then drops the checkpoints beyond
/// `train.keep_checkpoints`.
fn save_checkpoint(
    session: &Session,
    opt: &AdamW,
    state: &TrainerState,
    out_dir: &Path,
) -> Result<PathBuf> {
    let mut state = state.clone();
    state.data.train_pairs = session.train.len();
    let dir = checkpoint::checkpoints_dir(out_dir).join(format!("step-{}", state.step));
    let prompts = sample_prompts(session)?;
    checkpoint::write_dir_atomic(&dir, |tmp| {
        session
            .adapter
            .save_peft(tmp, &session.base.source.to_string_lossy())?;
        checkpoint::save_optimizer(opt, &tmp.join(checkpoint::OPTIMIZER))?;
        write_json(&tmp.join(checkpoint::SAMPLE_PROMPTS), &prompts)?;
        // Last: a folder with a readable state file is a complete checkpoint.
        write_json(&tmp.join(checkpoint::TRAINER_STATE), &state)
    })?;
    checkpoint::rotate(out_dir, session.spec.train.keep_checkpoints)?;
    Ok(dir)
}

/// The prompts of a checkpoint's samples: the first eval prompts (train prompts where the eval
/// set is short), as training tokenized them.
pub fn sample_prompts(session: &Session) -> Result<Vec<generate::SamplePrompt>> {
    session
        .eval
        .iter()
        .chain(&session.train)
        .take(generate::SAMPLE_PROMPTS)
        .map(|p| generate::SamplePrompt::new(&session.base.tokenizer, &p.prompt_ids))
        .collect()
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serializes");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

fn eval_record(
    session: &Session,
    step: usize,
    epoch: f64,
    tokens: usize,
    elapsed_s: f64,
) -> Result<LogRecord> {
    Ok(LogRecord {
        step,
        epoch,
        learning_rate: None,
        grad_norm: None,
        metrics: session.evaluate(true)?,
        tokens,
        elapsed_s,
    })
}

/// Row order of an epoch: file order, or a permutation seeded by `(seed, epoch)` so a resumed run
/// sees the same order.
fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
    }
    order
}

/// Writes the adapter alone to `dir` atomically (see [`checkpoint::write_dir_atomic`]).
pub fn save_adapter_atomic(session: &Session, dir: &Path) -> Result<()> {
    checkpoint::write_dir_atomic(dir, |tmp| {
        session
            .adapter
            .save_peft(tmp, &session.base.source.to_string_lossy())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_shape_matches_transformers() {
        assert_eq!(epoch_shape(16, 2, 2), (8, 4));
        assert_eq!(epoch_shape(15, 2, 2), (8, 4));
        assert_eq!(epoch_shape(10, 2, 2), (5, 3));
        assert_eq!(epoch_shape(3, 4, 8), (1, 1));
    }

    #[test]
    fn seeded_order_is_reproducible_and_file_order_when_off() {
        assert_eq!(epoch_order(5, false, 1, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(epoch_order(50, true, 7, 2), epoch_order(50, true, 7, 2));
        assert_ne!(epoch_order(50, true, 7, 1), epoch_order(50, true, 7, 2));
    }
}
