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
    },
    Log(&'a LogRecord),
    Eval(&'a LogRecord),
    Saved(&'a Path),
}

/// Where and how a run executes.
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub device: Device,
    /// Set from outside (cancel, pause, shutdown); checked between micro-batches.
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
        let base = model::load_base(Path::new(&spec.model.base), dtype, device)?;
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
        let sink = self
            .spec
            .train
            .gradient_checkpointing
            .then(GradSink::default);
        let mode = LoraMode {
            adapter: &self.adapter,
            train: true,
            dropout_rng: Some(rng),
            checkpoint: sink.clone(),
        };
        let (loss, metrics) = orpo_loss(&self.model, &batch, Some(mode), self.spec.orpo.beta)?;
        let scaled = (loss / scale_div as f64)?;
        let grads = crate::loss::lora_gradients(&scaled, &self.adapter, sink.as_ref())?;
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
                checkpoint: None,
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

/// Trains the job; writes `metrics.jsonl`-ready records through `on_event` and the final
/// adapter to `<out_dir>/final/`.
pub fn train(
    session: &mut Session,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<LogRecord>> {
    let spec = session.spec.clone();
    let t = &spec.train;
    let n = session.train.len();
    let (micro_per_epoch, steps_per_epoch) = epoch_shape(n, t.batch_size, t.grad_accum);
    let total = if t.max_steps > 0 {
        t.max_steps
    } else {
        (t.epochs * steps_per_epoch as f64).ceil() as usize
    };
    on_event(Event::Started {
        total_steps: total,
        train_pairs: n,
        eval_pairs: session.eval.len(),
        trainable_parameters: session.adapter.num_parameters(),
    });
    let start = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(t.seed.wrapping_add(1));
    let mut opt = AdamW::new(t.weight_decay);
    let mut records = Vec::new();
    let (mut epoch, mut micro, mut tokens) = (0usize, 0usize, 0usize);
    let mut order = epoch_order(n, spec.data.shuffle, t.seed, epoch);
    let (mut window_losses, mut window_metrics) = (Vec::new(), Vec::new());
    if t.eval_at_start && !session.eval.is_empty() {
        let rec = eval_record(session, 0, 0.0, tokens, &start)?;
        on_event(Event::Eval(&rec));
        records.push(rec);
    }
    for step in 0..total {
        let group = if micro / t.grad_accum == steps_per_epoch - 1 {
            micro_per_epoch - micro
        } else {
            t.grad_accum
        };
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut step_loss = 0.0;
        for _ in 0..group {
            if opts.stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped);
            }
            let rows = &order[micro * t.batch_size..((micro + 1) * t.batch_size).min(n)];
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
            window_metrics.push(m);
            tokens += toks;
            micro += 1;
        }
        let epoch_f = epoch as f64 + micro as f64 / micro_per_epoch as f64;
        if micro == micro_per_epoch {
            epoch += 1;
            micro = 0;
            order = epoch_order(n, spec.data.shuffle, t.seed, epoch);
        }
        window_losses.push(step_loss);
        let grad_norm = optim::clip_grad_norm(&mut grads, t.max_grad_norm)?;
        let lr = optim::learning_rate(t.lr_scheduler, t.learning_rate, step, t.warmup_steps, total);
        opt.step(&session.adapter.named_vars(), &grads, lr)?;
        drop(grads);
        let last = step + 1 == total;
        if (step + 1) % t.log_every == 0 || last {
            let mut metrics = Metrics::mean(&window_metrics).named("");
            metrics.insert(
                "loss".into(),
                window_losses.iter().sum::<f64>() / window_losses.len() as f64,
            );
            let rec = LogRecord {
                step: step + 1,
                epoch: epoch_f,
                learning_rate: Some(lr),
                grad_norm: Some(grad_norm),
                metrics,
                tokens,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            on_event(Event::Log(&rec));
            records.push(rec);
            window_losses.clear();
            window_metrics.clear();
        }
        let eval_now = (t.eval_every > 0 && (step + 1) % t.eval_every == 0) || last;
        if eval_now && !session.eval.is_empty() {
            let rec = eval_record(session, step + 1, epoch_f, tokens, &start)?;
            on_event(Event::Eval(&rec));
            records.push(rec);
        }
    }
    let final_dir = opts.out_dir.join("final");
    save_adapter_atomic(session, &final_dir)?;
    on_event(Event::Saved(&final_dir));
    Ok(records)
}

fn eval_record(
    session: &Session,
    step: usize,
    epoch: f64,
    tokens: usize,
    start: &Instant,
) -> Result<LogRecord> {
    Ok(LogRecord {
        step,
        epoch,
        learning_rate: None,
        grad_norm: None,
        metrics: session.evaluate(true)?,
        tokens,
        elapsed_s: start.elapsed().as_secs_f64(),
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

/// Writes the adapter to `<dir>.tmp`, fsyncs it, and renames it over `dir`: a crash leaves the
/// old adapter or the new one, never half of one.
pub fn save_adapter_atomic(session: &Session, dir: &Path) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    session
        .adapter
        .save_peft(&tmp, &session.base.source.to_string_lossy())?;
    for f in [crate::lora::ADAPTER_CONFIG, crate::lora::ADAPTER_WEIGHTS] {
        let p = tmp.join(f);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&p, e))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
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
