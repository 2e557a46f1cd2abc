//! The peak memory of a training job, estimated before it runs, from the model's config.json or
//! GGUF header (no weights are loaded) and the job file. The daemon admits jobs with it and
//! `orpoctl plan` / `POST /v1/plan` show it.
//!
//! The terms follow what the trainer really holds at its peak, the start of the backward pass
//! of a micro-batch (or, for a big `eval_batch_size`, an evaluation forward):
//!
//! - base weights in their dtype (every tensor of [`expected_weights`]), or as held
//!   (`model.quantize`: [`held_weights`]) with the dequantized working tile of the projection
//!   that runs (at most `quant::TILE_F32_BYTES`) and, when the head is quantized, what its
//!   pass holds beside the logits: one f32 tile (`quant::HEAD_TILE_F32_BYTES`) on the CPU in
//!   f32, a dense copy elsewhere;
//! - LoRA parameters (f32), AdamW's two moments and, with `grad_accum` above 1, the
//!   accumulated gradient; the micro-batch's gradient counts in the backward pass that makes
//!   it, not beside the head's logits (the forward), nor in evaluation (after the step);
//! - activations the graph keeps for the backward pass, per token of the largest micro-batch:
//!   `batch_size × 2` rows (chosen and rejected) padded to the longest row the job's data
//!   really has after truncation ([`BatchShape`], measured once per data set), or to
//!   `max_length` when the data are not known (the worst case). Without checkpointing each
//!   decoder layer keeps what its backward reads (`model::llama`'s `Acts`): the layer input,
//!   both norm outputs, q, k, v, the attention output, the mid-layer residual, gate, up and the
//!   SwiGLU output, i.e. `4·hidden + 2·q_dim + 2·kv_dim + 3·intermediate` values (the rows'
//!   log-sum-exp of attention is negligible). With checkpointing a layer keeps
//!   only its output (`hidden`), and one layer at a time is recomputed in full, its values and
//!   their gradients alive together in that layer's backward;
//! - a working set while one layer runs its backward: SwiGLU's temporaries and, on the dense
//!   attention path (CUDA, or a 16-bit dtype), the attention probabilities and their gradients
//!   of one kv group at a time (`[rows, heads / kv_heads, t, t]`, f32, about four alive at
//!   once) and the `[rows, t, t]` mask. The CPU f32 path (`ops::flash`) makes no scores-sized
//!   tensor at all;
//! - the output head's logits slice: [`head_chunk_rows`] rows × vocabulary in f32 (at most
//!   96 MiB), turned into the softmax gradient in place on the CPU; on CUDA the composite path
//!   keeps three such tensors alive at once (logits, their exponentials, the gradient). It is
//!   made in the forward pass and gone before the backward starts, so the peak takes the larger
//!   of it and the backward working set, not both;
//! - process and device overhead: the executable, tokenizer and thread pools on the CPU; the CUDA
//!   context, cuBLAS workspace and kernels on a GPU;
//! - an evaluation forward (no graph), when it is larger: one layer's values at a time with
//!   its attention scores (the dense path), or the head's logits after the last layer, the
//!   larger of the two (on the CPU the heap gives the layers' blocks back before the head).
//!
//! The terms count live tensors only: on the CPU the measured peaks stay at or under them
//! (glibc reuses the blocks freed by earlier layers and by loading; `runtime` keeps them). The
//! constants are calibrated by `orpod calibrate` (README, "Admission"): measured peaks of
//! SmolLM2-135M on the CPU against this estimate, with its base in f32 and kept quantized.

use std::path::Path;

use candle_core::DType;
use orpo_api::spec::{Dtype, LORA_MODULES};
use orpo_api::JobSpec;

use crate::data::lengths::BatchShape;
use crate::lora::module_dims;
use crate::model::{expected_weights, held_weights, read_config, HeldWeights, ModelConfig};
use crate::{Error, Result};

/// Rows of the output head computed at once for `vocab` logits per row: the op's own rule.
pub fn head_chunk_rows(vocab: u64) -> u64 {
    crate::ops::head_chunk_rows(vocab as usize) as u64
}

/// RSS of an `orpod worker` beside its weights: executable, tokenizer, data, thread pools, and
/// what loading left in the heap. Measured at the start of training SmolLM2-135M (release
/// build): 556 MiB with 513 MiB of f32 weights (43 MiB beside them), 131 MiB with the GGUF
/// kept quantized, 92 MiB (39 MiB beside).
pub const CPU_OVERHEAD: u64 = 48 << 20;

/// A CUDA process's own use: context, cuBLAS workspace, loaded kernels. Not calibrated on a GPU
/// yet; Unsloth's estimator uses 1.4 GiB for PyTorch, whose context is larger than candle's.
pub const CUDA_OVERHEAD: u64 = 1 << 30;

/// What the estimate depends on, taken from a job file (see [`JobShape::from_spec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobShape {
    /// Bytes per element of the frozen base (and the hidden states): 4 for f32, 2 for bf16/f16.
    pub dtype_bytes: u64,
    /// Runs on a CUDA device (device overhead instead of process overhead).
    pub cuda: bool,
    /// `train.batch_size`: preference pairs per micro-batch (each pair is two rows).
    pub pairs: usize,
    /// `train.eval_batch_size` when the job evaluates, else 0.
    pub eval_pairs: usize,
    /// Tokens per row of the longest training micro-batch (padded).
    pub train_length: usize,
    /// Tokens per row of the longest evaluation batch (padded).
    pub eval_length: usize,
    pub r: usize,
    /// Targeted modules, as indices into `LORA_MODULES`.
    pub modules: Vec<usize>,
    /// LoRA dropout on: each targeted projection keeps an f32 mask of its input.
    pub dropout: bool,
    pub gradient_checkpointing: bool,
    /// `train.grad_accum`: above 1, the summed gradient of a step's earlier micro-batches is
    /// alive beside the one the backward pass is making.
    pub grad_accum: usize,
    /// The frozen base when some of it is block-quantized (`None`: all in `dtype_bytes`).
    pub held: Option<HeldWeights>,
}

impl JobShape {
    /// The shape of `spec` on a CUDA device (`cuda`) or the CPU; `auto` dtype as the trainer
    /// picks it (bf16 on CUDA, f32 on the CPU). Without the data every row is taken as
    /// `max_length` tokens long: the worst case ([`JobShape::with_batches`] narrows it).
    pub fn from_spec(spec: &JobSpec, cuda: bool) -> JobShape {
        let dtype = match spec.model.dtype {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::Auto if cuda => DType::BF16,
            Dtype::Auto => DType::F32,
        };
        let evaluates = !spec.data.eval.is_empty() || spec.data.eval_fraction > 0.0;
        JobShape {
            dtype_bytes: dtype.size_in_bytes() as u64,
            cuda,
            pairs: spec.train.batch_size,
            eval_pairs: if evaluates {
                spec.train.eval_batch_size
            } else {
                0
            },
            train_length: spec.data.max_length,
            eval_length: spec.data.max_length,
            r: spec.lora.r,
            modules: LORA_MODULES
                .iter()
                .enumerate()
                .filter(|(_, m)| spec.lora.target_modules.iter().any(|t| t == *m))
                .map(|(i, _)| i)
                .collect(),
            dropout: spec.lora.dropout > 0.0,
            gradient_checkpointing: spec.train.gradient_checkpointing,
            grad_accum: spec.train.grad_accum,
            held: None,
        }
    }

    /// The model config at `spec.model.base` and the job's shape on it, with the base's
    /// weights as `model.quantize` holds them (GGUF header or config; no weights are loaded).
    pub fn for_model(spec: &JobSpec, cuda: bool) -> Result<(ModelConfig, JobShape)> {
        let path = Path::new(&spec.model.base);
        let cfg = read_config(path)?;
        let mut shape = JobShape::from_spec(spec, cuda);
        shape.held = held_weights(path, &cfg, spec.model.quantize, shape.dtype_bytes)?;
        Ok((cfg, shape))
    }
}

impl JobShape {
    /// This shape on the job's measured data: batches of at most as many pairs as there are
    /// rows, padded to the longest row each part really has.
    pub fn with_batches(mut self, b: &BatchShape) -> JobShape {
        self.pairs = self.pairs.min(b.train_rows);
        self.train_length = b.train_length;
        self.eval_pairs = self.eval_pairs.min(b.eval_rows);
        self.eval_length = if self.eval_pairs > 0 {
            b.eval_length
        } else {
            0
        };
        self
    }
}

/// The estimate and its parts, in bytes. `total_bytes = weights + lora + optimizer + activations
/// + max(workspace, logits) + overhead` for training, or `eval_peak_bytes` when that is larger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub total_bytes: u64,
    /// The frozen base as held, with a quantized base's working tile.
    pub weights_bytes: u64,
    pub lora_bytes: u64,
    /// AdamW's first and second moments, and the accumulated gradient (`grad_accum` above 1).
    pub optimizer_bytes: u64,
    /// Kept by the graph for the backward pass (all layers, or layer inputs when checkpointing).
    pub activations_bytes: u64,
    /// One layer's backward working set (with checkpointing: the recomputed layer too) and the
    /// LoRA gradient being made.
    pub workspace_bytes: u64,
    /// The output head's logits slice (and a quantized head's dense copy).
    pub logits_bytes: u64,
    pub overhead_bytes: u64,
    /// The peak of an evaluation forward (no graph), 0 when the job does not evaluate.
    pub eval_peak_bytes: u64,
    /// Rows × tokens of the largest training micro-batch: `batch_size × 2 × train_length`.
    pub tokens: u64,
}

/// Estimates the peak of `spec` on a CUDA device (`cuda`) or the CPU, reading the model's
/// config (not its weights) from `spec.model.base`. With `batches` (the job's measured data)
/// the activations are sized on the longest micro-batch the job will see; without, on
/// `max_length` (the worst case).
pub fn estimate_job(
    spec: &JobSpec,
    cuda: bool,
    batches: Option<&BatchShape>,
) -> Result<MemoryEstimate> {
    let (cfg, shape) = JobShape::for_model(spec, cuda)?;
    estimate(
        &cfg,
        &batches.map_or(shape.clone(), |b| shape.with_batches(b)),
    )
}

/// The estimate for a model config and job shape (pure arithmetic; see the module docs).
///
/// An error, never a panic or a wrapped number, for a config that cannot be a model (a zero or
/// absurd size: [`ModelConfig::check_values`]) and for a shape whose bytes pass 2^64: the
/// daemon admits jobs on this number, so a wrapped one would admit a job that cannot fit.
pub fn estimate(cfg: &ModelConfig, job: &JobShape) -> Result<MemoryEstimate> {
    cfg.check_values()
        .map_err(|m| Error::Config(format!("model config: {m}")))?;
    if let Some(m) = job.modules.iter().find(|&&m| m >= LORA_MODULES.len()) {
        return Err(Error::Config(format!(
            "LoRA module {m} does not exist; there are {}",
            LORA_MODULES.len()
        )));
    }
    // The config's sizes are bounded (`SIZE_LIMITS`), so products of them alone cannot
    // overflow; every product with a job size (length, batch, rank, dtype) is checked.
    let overflow = |what: &str| {
        Error::Config(format!(
            "the estimate overflows: {what} over 2^64 ({} pairs of {} tokens, LoRA r {}, on a \
             model of hidden_size {}, {} layers, vocab_size {})",
            job.pairs,
            job.train_length.max(job.eval_length),
            job.r,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.vocab_size
        ))
    };
    let mul = |what: &str, factors: &[u64]| -> Result<u64> {
        factors
            .iter()
            .try_fold(1u64, |acc, &f| acc.checked_mul(f))
            .ok_or_else(|| overflow(what))
    };
    let add = |what: &str, terms: &[u64]| -> Result<u64> {
        terms
            .iter()
            .try_fold(0u64, |acc, &t| acc.checked_add(t))
            .ok_or_else(|| overflow(what))
    };

    let f32b = 4u64;
    let e = job.dtype_bytes;
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    // Query heads per kv group: the dense attention path works one group at a time.
    let group_heads = (cfg.num_attention_heads / cfg.num_key_value_heads.max(1)) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let vocab = cfg.vocab_size as u64;

    let params: u64 = expected_weights(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    let mut per_layer = 0u64;
    for &m in &job.modules {
        let (fan_in, fan_out) = module_dims(cfg, m);
        let module = mul(
            "the LoRA parameters",
            &[job.r as u64, (fan_in + fan_out) as u64],
        )?;
        per_layer = add("the LoRA parameters", &[per_layer, module])?;
    }
    let lora_params = mul("the LoRA parameters", &[per_layer, layers])?;
    // Inputs of the targeted projections, for the dropout masks.
    let mask_width: u64 = job
        .modules
        .iter()
        .map(|&m| module_dims(cfg, m).0 as u64)
        .sum();
    // Values one decoder layer keeps per token (module docs), and its dropout masks.
    let layer_width = 4 * h + 2 * q + 2 * kv + 3 * i;

    let rows = mul("the rows", &[2, job.pairs as u64])?;
    let t = job.train_length as u64;
    let tokens = mul("the tokens", &[rows, t])?;
    let acts = "the activations";
    let masks = if job.dropout {
        mul(acts, &[tokens, f32b, mask_width])?
    } else {
        0
    };
    let layer_kept = add(acts, &[mul(acts, &[tokens, e, layer_width])?, masks])?;
    // Scores-sized tensors: none on the CPU f32 path; on the dense one the additive mask, and
    // four alive in the attention backward (probabilities, their gradient, two temporaries).
    let dense = job.cuda || e != f32b;
    let (mask, score_copies) = if dense {
        (mul("the attention mask", &[rows, t, t, f32b])?, 4)
    } else {
        (0, 0)
    };
    // The mask and what the head keeps: final norm output, the rows at label positions and
    // their Jacobian.
    let shared = add(acts, &[mask, mul(acts, &[tokens, e, 3, h])?])?;
    let work = "the backward working set";
    let backward_work = add(
        work,
        &[
            mul(work, &[score_copies, rows, group_heads, t, t, f32b])?,
            mul(work, &[5, tokens, i, f32b])?,
        ],
    )?;
    let (activations, workspace) = if job.gradient_checkpointing {
        (
            add(acts, &[mul(acts, &[layers, tokens, e, h])?, shared])?,
            add(work, &[mul(work, &[2, layer_kept])?, backward_work])?,
        )
    } else {
        (
            add(acts, &[mul(acts, &[layers, layer_kept])?, shared])?,
            backward_work,
        )
    };
    // Target positions: at most every row's tokens but the last, a chunk at a time.
    let chunk = head_chunk_rows(vocab);
    let head_copies = if job.cuda { 3 } else { 1 };
    let head_rows = |rows: u64, t: u64| -> Result<u64> {
        Ok(mul("the logits", &[rows, t.saturating_sub(1)])?.min(chunk))
    };
    let head = "the logits";
    let logits = mul(head, &[head_copies, head_rows(rows, t)?, vocab, f32b])?;

    // A quantized base: its bytes, the working tile (f32, and its copy in a 16-bit dtype), and
    // the head's dense copy during the head pass.
    let (weights, tile, head_copy) = match job.held {
        None => (mul("the weights", &[params, e])?, 0, 0),
        Some(held) => {
            let tile = held.tile_bytes * (4 + if e == f32b { 0 } else { e }) / 4;
            // Beside the logits, a quantized head takes one f32 tile on the CPU in f32 (the
            // kernel reads it a tile at a time); elsewhere a dense copy: joined from bf16
            // tiles on CUDA (two copies for a moment), or an f32 buffer and its cast.
            let per_value = match (job.cuda, e == f32b) {
                (true, _) => 2 * e,
                (false, true) => 0,
                (false, false) => f32b + e,
            };
            let copy = match held.head_quantized {
                true => mul("the head", &[vocab, h, per_value])?.max(held.head_tile_bytes),
                false => 0,
            };
            (held.bytes, tile, copy)
        }
    };
    let head_pass = |logits: u64| -> Result<u64> { add("the logits", &[logits, head_copy]) };
    let lora = mul("the LoRA parameters", &[lora_params, f32b])?;
    // AdamW's two moments, and with accumulation the sum of the step's earlier micro-batches.
    // The micro-batch's own gradient is made in the backward pass: part of its working set.
    let states = if job.grad_accum > 1 { 3 } else { 2 };
    let optimizer = mul("the optimizer state", &[states, lora_params, f32b])?;
    let workspace = add(work, &[workspace, lora])?;
    let overhead = if job.cuda {
        CUDA_OVERHEAD
    } else {
        CPU_OVERHEAD
    };
    let fixed = add("the total", &[weights, tile, lora, optimizer, overhead])?;
    let train_peak = add(
        "the total",
        &[fixed, activations, workspace.max(head_pass(logits)?)],
    )?;

    let eval_peak = if job.eval_pairs > 0 {
        let eval = "the evaluation peak";
        let t = job.eval_length as u64;
        let rows = mul(eval, &[2, job.eval_pairs as u64])?;
        let tokens = mul(eval, &[rows, t])?;
        // One layer's values at a time (no graph), its attention scores, the logits slice.
        let scores = if dense {
            mul(eval, &[rows, t, t, f32b])?
        } else {
            0
        };
        let layer = add(eval, &[mul(eval, &[tokens, e, layer_width])?, scores])?;
        let scores = mul(eval, &[3, group_heads, scores])?;
        let head = mul(eval, &[head_copies, head_rows(rows, t)?, vocab, f32b])?;
        // The head runs after the last layer, whose values are freed by then and, on the CPU,
        // given back to the kernel (`runtime::release_free_heap`): the larger of the two.
        let layer_peak = add(eval, &[layer, scores])?.max(head);
        add(eval, &[fixed, layer_peak, head_copy])?
    } else {
        0
    };

    Ok(MemoryEstimate {
        total_bytes: train_peak.max(eval_peak),
        weights_bytes: weights + tile,
        lora_bytes: lora,
        optimizer_bytes: optimizer,
        activations_bytes: activations,
        workspace_bytes: workspace,
        logits_bytes: head_pass(logits)?,
        overhead_bytes: overhead,
        eval_peak_bytes: eval_peak,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    /// SmolLM2-135M as its config.json (and the GGUF header) say.
    fn smollm2() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            model_type: "llama".into(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            sliding_window: None,
        }
    }

    fn shape(pairs: usize, len: usize, ckpt: bool) -> JobShape {
        JobShape {
            dtype_bytes: 4,
            cuda: false,
            pairs,
            eval_pairs: 0,
            train_length: len,
            eval_length: len,
            r: 16,
            modules: (0..7).collect(),
            dropout: false,
            gradient_checkpointing: ckpt,
            grad_accum: 1,
            held: None,
        }
    }

    #[test]
    fn smollm2_parts_match_hand_counts() {
        let est = estimate(&smollm2(), &shape(4, 128, false)).unwrap();
        // 134,515,008 parameters (HF's `num_parameters()` for SmolLM2-135M), f32.
        assert_eq!(est.weights_bytes, 134_515_008 * 4);
        // r16 on all 7 modules: 16 * (1152 + 768 + 768 + 1152 + 2112 * 3) = 162,816 per layer.
        assert_eq!(est.lora_bytes, 162_816 * 30 * 4);
        assert_eq!(
            est.optimizer_bytes,
            2 * est.lora_bytes,
            "AdamW's two moments"
        );
        let accumulating = JobShape {
            grad_accum: 4,
            ..shape(4, 128, false)
        };
        let est4 = estimate(&smollm2(), &accumulating).unwrap();
        assert_eq!(
            est4.optimizer_bytes,
            3 * est.lora_bytes,
            "and the accumulated gradient"
        );
        assert_eq!(est.tokens, 1024);
        // 512 rows of 49,152 f32 logits (96 MiB), softmax in place on the CPU; 4 pairs of 128
        // tokens have 1016 target positions.
        assert_eq!(head_chunk_rows(49152), 512);
        assert_eq!(est.logits_bytes, 512 * 49152 * 4);
        // No scores-sized tensor on the CPU: the MLP's temporaries, 5 x 1024 x 1536 f32, and
        // the LoRA gradient.
        assert_eq!(est.workspace_bytes, 5 * 1024 * 1536 * 4 + est.lora_bytes);
        // Llama 3's 128k vocabulary: 196 rows.
        assert_eq!(head_chunk_rows(128_256), 196);
    }

    #[test]
    fn checkpointing_and_length_move_the_estimate_the_right_way() {
        let cfg = smollm2();
        let off = estimate(&cfg, &shape(4, 512, false)).unwrap();
        let on = estimate(&cfg, &shape(4, 512, true)).unwrap();
        assert!(on.activations_bytes * 10 < off.activations_bytes);
        assert!(on.total_bytes < off.total_bytes);
        let long = estimate(&cfg, &shape(4, 1024, false)).unwrap();
        // Linear in the length on the CPU: its attention makes no `t x t` tensor.
        let ratio = long.activations_bytes as f64 / off.activations_bytes as f64;
        assert!((ratio - 2.0).abs() < 1e-6, "{ratio}");
        // The weights do not depend on the batch.
        assert_eq!(long.weights_bytes, off.weights_bytes);
    }

    #[test]
    fn bf16_on_cuda_halves_the_weights_and_adds_the_context() {
        let cfg = smollm2();
        let cpu = estimate(&cfg, &shape(1, 64, false)).unwrap();
        let gpu = estimate(
            &cfg,
            &JobShape {
                dtype_bytes: 2,
                cuda: true,
                ..shape(1, 64, false)
            },
        )
        .unwrap();
        assert_eq!(gpu.weights_bytes * 2, cpu.weights_bytes);
        assert_eq!(gpu.overhead_bytes, CUDA_OVERHEAD);
        assert_eq!(gpu.lora_bytes, cpu.lora_bytes, "LoRA stays f32");
    }

    #[test]
    fn a_large_eval_batch_can_set_the_peak() {
        let cfg = smollm2();
        let mut job = shape(1, 2048, true);
        job.eval_pairs = 16;
        let est = estimate(&cfg, &job).unwrap();
        assert!(est.eval_peak_bytes > 0);
        assert_eq!(est.total_bytes, est.eval_peak_bytes);
    }

    #[test]
    fn the_gguf_header_gives_the_config_the_loader_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        for arch in [Arch::Llama, Arch::Qwen2] {
            crate::model::testing::write_tiny_gguf(&path, arch, 3).unwrap();
            let loaded = crate::model::load_base(
                &path,
                DType::F32,
                &candle_core::Device::Cpu,
                crate::model::Quantize::None,
            )
            .unwrap();
            assert_eq!(read_config(&path).unwrap(), loaded.config);
            let mut spec = JobSpec::default();
            spec.model.base = path.to_string_lossy().into_owned();
            let est = estimate_job(&spec, false, None).unwrap();
            let params: usize = loaded.weights.values().map(|t| t.elem_count()).sum();
            assert_eq!(est.weights_bytes, 4 * params as u64);
        }
        assert!(read_config(&dir.path().join("missing.gguf")).is_err());
    }

    /// Llama 3 8B's shape (untied, GQA 32/8, 128k vocabulary).
    fn llama3_8b() -> ModelConfig {
        ModelConfig {
            vocab_size: 128_256,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            tie_word_embeddings: false,
            ..smollm2()
        }
    }

    /// Totals computed by the unchecked arithmetic before it became checked: the checks change
    /// no number of a real shape. A bf16 CUDA job with dropout, checkpointing and evaluation
    /// goes through every term. Changed since by the terms, not the arithmetic: the GPU figures
    /// follow the attention's kv groups, and the re-fit on the kept quantized base (no slack
    /// on live tensors, the gradient in the backward's working set only, 48 MiB CPU overhead)
    /// took 1,963,273,061 to 1,792,836,864 for SmolLM2 at 4 x 128 on the CPU.
    #[test]
    fn checked_arithmetic_gives_the_numbers_of_before() {
        let gpu = JobShape {
            dtype_bytes: 2,
            cuda: true,
            pairs: 2,
            eval_pairs: 8,
            train_length: 1024,
            eval_length: 1024,
            dropout: true,
            ..shape(4, 128, true)
        };
        let total = |cfg: &ModelConfig, job: &JobShape| estimate(cfg, job).unwrap();
        let est = total(&smollm2(), &shape(4, 128, false));
        assert_eq!(est.total_bytes, 1_792_836_864);
        assert_eq!(est.activations_bytes, 1_045_168_128);
        let est = total(&smollm2(), &gpu);
        // The dense attention path's scores are one kv group's since it runs group by group
        // (SmolLM2: 3 of 9 heads; Llama 3 8B: 4 of 32): 3,811,920,921 and 27,643,512,422
        // before, with all heads' scores.
        assert_eq!(est.total_bytes, 2_349_298_304);
        assert_eq!(est.workspace_bytes, 648_683_520);
        assert_eq!(est.logits_bytes, 301_989_888);
        assert_eq!(
            total(&llama3_8b(), &shape(4, 128, false)).total_bytes,
            42_313_203_712
        );
        let est = total(&llama3_8b(), &gpu);
        assert_eq!(est.total_bytes, 22_855_294_976);
        assert_eq!(est.activations_bytes, 1_191_182_336);
    }

    /// Finding: `vocab_size: 0` made the head's chunk rule divide by zero, and the scheduler
    /// panicked on every round. Every zero or absurd size is an error naming its key.
    #[test]
    fn impossible_configs_are_errors_naming_the_key() {
        assert_eq!(head_chunk_rows(0), 1024);
        assert_eq!(head_chunk_rows(u64::MAX), 64);
        type Spoil = fn(&mut ModelConfig);
        let cases: [(&str, Spoil); 9] = [
            ("vocab_size", |c| c.vocab_size = 0),
            ("vocab_size", |c| c.vocab_size = usize::MAX),
            ("hidden_size", |c| c.hidden_size = 0),
            ("intermediate_size", |c| c.intermediate_size = 1 << 40),
            ("num_hidden_layers", |c| c.num_hidden_layers = 0),
            ("num_hidden_layers", |c| c.num_hidden_layers = 1 << 40),
            ("num_attention_heads", |c| c.num_attention_heads = 0),
            ("num_key_value_heads", |c| c.num_key_value_heads = 0),
            ("num_key_value_heads", |c| c.num_key_value_heads = 2),
        ];
        for (key, spoil) in cases {
            let mut cfg = smollm2();
            spoil(&mut cfg);
            let err = estimate(&cfg, &shape(4, 128, false))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let mut job = shape(4, 128, false);
        job.modules.push(LORA_MODULES.len());
        assert!(estimate(&smollm2(), &job).is_err());
    }

    /// Finding: `max_length = 2^62` wrapped to an estimate of 0.8 GB in release builds (and
    /// panicked in debug ones). Spec validation refuses it first; the estimate refuses it too.
    #[test]
    fn an_overflowing_shape_is_an_error() {
        for job in [
            shape(4, 1 << 62, false),
            shape(4, 1 << 62, true),
            shape(usize::MAX, 128, false),
            JobShape {
                cuda: true,
                ..shape(4, 1 << 31, false)
            },
            JobShape {
                r: usize::MAX,
                ..shape(4, 128, false)
            },
            JobShape {
                eval_pairs: usize::MAX / 2,
                ..shape(4, 128, false)
            },
        ] {
            let err = estimate(&smollm2(), &job).unwrap_err().to_string();
            assert!(err.starts_with("the estimate overflows: "), "{err}");
        }
        // Through the job file, with spec validation bypassed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            crate::model::testing::tiny_config(Arch::Llama)
                .to_hf_json("float32", None, 0)
                .to_string(),
        )
        .unwrap();
        let mut spec = JobSpec::default();
        spec.model.base = dir.path().to_string_lossy().into_owned();
        assert!(estimate_job(&spec, false, None).is_ok());
        spec.data.max_length = 1 << 62;
        let err = estimate_job(&spec, false, None).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
        let mut json =
            crate::model::testing::tiny_config(Arch::Llama).to_hf_json("float32", None, 0);
        json["vocab_size"] = 0.into();
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        spec.data.max_length = 128;
        let err = estimate_job(&spec, false, None).unwrap_err().to_string();
        assert!(err.contains("`vocab_size` is 0"), "{err}");
    }

    /// Finding (issue 13): 256 short pairs at `max_length = 128` were estimated as if every
    /// row had 128 tokens. On measured data the activations follow the longest real row, and
    /// a data set with fewer rows than a batch makes smaller batches.
    #[test]
    fn measured_data_size_the_batches() {
        let cfg = smollm2();
        let mut job = shape(4, 128, false);
        job.eval_pairs = 8;
        let worst = estimate(&cfg, &job).unwrap();
        let short = job.clone().with_batches(&BatchShape {
            train_rows: 256,
            train_length: 40,
            eval_rows: 26,
            eval_length: 36,
        });
        assert_eq!(
            (
                short.pairs,
                short.train_length,
                short.eval_pairs,
                short.eval_length
            ),
            (4, 40, 8, 36)
        );
        let est = estimate(&cfg, &short).unwrap();
        assert_eq!(est.tokens, 4 * 2 * 40);
        assert_eq!(
            est.activations_bytes,
            estimate(&cfg, &shape(4, 40, false))
                .unwrap()
                .activations_bytes
        );
        assert!(est.total_bytes < worst.total_bytes);
        // Full-length rows give the worst case back.
        let full = job.clone().with_batches(&BatchShape {
            train_rows: 256,
            train_length: 128,
            eval_rows: 26,
            eval_length: 128,
        });
        assert_eq!(estimate(&cfg, &full).unwrap(), worst);
        // Three rows make batches of three pairs; no eval rows, no eval peak.
        let tiny = job.with_batches(&BatchShape {
            train_rows: 3,
            train_length: 128,
            eval_rows: 0,
            eval_length: 0,
        });
        assert_eq!((tiny.pairs, tiny.eval_pairs), (3, 0));
        assert_eq!(estimate(&cfg, &tiny).unwrap().eval_peak_bytes, 0);
    }

    #[test]
    fn from_spec_reads_the_job_file() {
        let mut spec = JobSpec::default();
        spec.lora.target_modules = vec!["q_proj".into(), "v_proj".into()];
        spec.train.gradient_checkpointing = true;
        let cpu = JobShape::from_spec(&spec, false);
        assert_eq!(cpu.modules, vec![0, 2]);
        assert_eq!(cpu.dtype_bytes, 4);
        assert!(cpu.gradient_checkpointing);
        assert_eq!(JobShape::from_spec(&spec, true).dtype_bytes, 2);
    }

    /// The table of docs/quantized-bases.md: Llama 3 8B on a CUDA card in bf16, LoRA r16 on all
    /// seven projections, one pair per step with checkpointing, per quantization and row length.
    /// The docs must show what this estimator says (run the test to see the current table).
    #[test]
    fn the_docs_table_of_quantized_8b_jobs_is_current() {
        use orpo_api::spec::Quantize;
        let cfg = llama3_8b();
        let kinds = [
            (Quantize::None, "bf16"),
            (Quantize::Q8_0, "q8_0"),
            (Quantize::Q6K, "q6_k"),
            (Quantize::Q5K, "q5_k"),
            (Quantize::Q4K, "q4_k"),
        ];
        let lengths = [512usize, 1024, 2048, 4096];
        let mut table = String::from("| base | 2 x 512 | 2 x 1024 | 2 x 2048 | 2 x 4096 |\n");
        table.push_str("|:-----|--------:|---------:|---------:|---------:|\n");
        for (q, name) in kinds {
            table.push_str(&format!("| {name} |"));
            for len in lengths {
                let held = crate::model::held_weights(Path::new("llama-3-8b"), &cfg, q, 2).unwrap();
                let job = JobShape {
                    dtype_bytes: 2,
                    cuda: true,
                    pairs: 1,
                    train_length: len,
                    gradient_checkpointing: true,
                    held,
                    ..shape(1, len, true)
                };
                let gib = estimate(&cfg, &job).unwrap().total_bytes as f64 / (1u64 << 30) as f64;
                let card = [8, 12, 16, 24].into_iter().find(|&c| gib <= c as f64);
                let fits = card.map_or("none".to_string(), |c| format!("{c} GiB"));
                table.push_str(&format!(" {gib:.1} GiB ({fits}) |"));
            }
            table.push('\n');
        }
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quantized-bases.md");
        let text = std::fs::read_to_string(&docs).unwrap();
        assert!(
            text.contains(&table),
            "{} does not hold the current table:\n{table}",
            docs.display()
        );
    }
}
