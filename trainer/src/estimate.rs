//! The peak memory of a training job, estimated before it runs, from the model's config.json or
//! GGUF header (no weights are loaded) and the job file. The daemon admits jobs with it and
//! `orpod plan` / `POST /v1/plan` show it.
//!
//! The terms follow what the trainer really holds at its peak, the start of the backward pass
//! of a micro-batch (or, for a big `eval_batch_size`, an evaluation forward):
//!
//! - base weights in their dtype (every tensor of [`expected_weights`]);
//! - LoRA parameters (f32), their gradient, the accumulated gradient and AdamW's two moments;
//! - activations the graph keeps for the backward pass, per token of `batch_size × 2 ×
//!   max_length` (chosen and rejected rows, padded to the longest). Without checkpointing each
//!   decoder layer keeps what its backward reads (`model::llama`'s `Acts`): the layer input,
//!   both norm outputs, q, k, v, the attention output, the mid-layer residual, gate, up and the
//!   SwiGLU output, i.e. `4·hidden + 2·q_dim + 2·kv_dim + 3·intermediate` values (the rows'
//!   log-sum-exp of attention is negligible). With checkpointing a layer keeps
//!   only its output (`hidden`), and one layer at a time is recomputed in full, its values and
//!   their gradients alive together in that layer's backward;
//! - a working set while one layer runs its backward: SwiGLU's temporaries and, on the dense
//!   attention path (CUDA, or a 16-bit dtype), the attention probabilities and their gradients
//!   (`[rows, heads, t, t]`, f32, about four alive at once) and the `[rows, t, t]` mask. The CPU
//!   f32 path (`ops::flash`) makes no scores-sized tensor at all;
//! - the output head's logits slice: [`head_chunk_rows`] rows × vocabulary in f32 (at most
//!   96 MiB), turned into the softmax gradient in place on the CPU; on CUDA the composite path
//!   keeps three such tensors alive at once (logits, their exponentials, the gradient). It is
//!   made in the forward pass and gone before the backward starts, so the peak takes the larger
//!   of it and the backward working set, not both;
//! - process and device overhead: the executable, tokenizer and thread pools on the CPU; the CUDA
//!   context, cuBLAS workspace and kernels on a GPU.
//!
//! The per-token terms carry [`SLACK_PERCENT`]: what the allocator holds beyond the live
//! tensors. The constants are calibrated by `orpod calibrate` (README, "Admission"): measured
//! peaks of SmolLM2-135M on the CPU against this estimate.

use std::path::Path;

use candle_core::DType;
use orpo_api::spec::{Dtype, LORA_MODULES};
use orpo_api::JobSpec;

use crate::lora::module_dims;
use crate::model::{expected_weights, read_config, ModelConfig};
use crate::Result;

/// Rows of the output head computed at once for `vocab` logits per row: the op's own rule.
pub fn head_chunk_rows(vocab: u64) -> u64 {
    crate::ops::head_chunk_rows(vocab as usize) as u64
}

/// RSS of an `orpod worker` before its weights: executable, tokenizer, data, thread pools.
/// Measured: 560 MiB at the start of training SmolLM2-135M (513 MiB of f32 weights).
pub const CPU_OVERHEAD: u64 = 64 << 20;

/// Memory the allocator holds beyond the live activations, in percent of them: glibc keeps freed
/// blocks (trimming is off, `runtime`) and splits them between threads' arenas. Fitted on the
/// calibration matrix of SmolLM2-135M: 110% puts every estimate 1-11% above the measured peak.
pub const SLACK_PERCENT: u64 = 110;

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
    pub max_length: usize,
    pub r: usize,
    /// Targeted modules, as indices into `LORA_MODULES`.
    pub modules: Vec<usize>,
    /// LoRA dropout on: each targeted projection keeps an f32 mask of its input.
    pub dropout: bool,
    pub gradient_checkpointing: bool,
}

impl JobShape {
    /// The shape of `spec` on a CUDA device (`cuda`) or the CPU; `auto` dtype as the trainer
    /// picks it (bf16 on CUDA, f32 on the CPU).
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
            max_length: spec.data.max_length,
            r: spec.lora.r,
            modules: LORA_MODULES
                .iter()
                .enumerate()
                .filter(|(_, m)| spec.lora.target_modules.iter().any(|t| t == *m))
                .map(|(i, _)| i)
                .collect(),
            dropout: spec.lora.dropout > 0.0,
            gradient_checkpointing: spec.train.gradient_checkpointing,
        }
    }
}

/// The estimate and its parts, in bytes. `total_bytes = weights + lora + optimizer + activations
/// + max(workspace, logits) + overhead` for training, or `eval_peak_bytes` when that is larger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub total_bytes: u64,
    pub weights_bytes: u64,
    pub lora_bytes: u64,
    /// LoRA gradient, accumulated gradient, AdamW's first and second moments.
    pub optimizer_bytes: u64,
    /// Kept by the graph for the backward pass (all layers, or layer inputs when checkpointing).
    pub activations_bytes: u64,
    /// One layer's backward working set (with checkpointing: the recomputed layer too).
    pub workspace_bytes: u64,
    /// The output head's logits slice.
    pub logits_bytes: u64,
    pub overhead_bytes: u64,
    /// The peak of an evaluation forward (no graph), 0 when the job does not evaluate.
    pub eval_peak_bytes: u64,
    /// Rows × tokens of a full training micro-batch: `batch_size × 2 × max_length`.
    pub tokens: u64,
}

/// Estimates the peak of `spec` on a CUDA device (`cuda`) or the CPU, reading the model's
/// config (not its weights) from `spec.model.base`.
pub fn estimate_job(spec: &JobSpec, cuda: bool) -> Result<MemoryEstimate> {
    let cfg = read_config(Path::new(&spec.model.base))?;
    Ok(estimate(&cfg, &JobShape::from_spec(spec, cuda)))
}

/// The estimate for a model config and job shape (pure arithmetic; see the module docs).
pub fn estimate(cfg: &ModelConfig, job: &JobShape) -> MemoryEstimate {
    let f32b = 4u64;
    let e = job.dtype_bytes;
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let heads = cfg.num_attention_heads as u64;
    let layers = cfg.num_hidden_layers as u64;
    let vocab = cfg.vocab_size as u64;

    let params: u64 = expected_weights(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    let lora_params: u64 = job
        .modules
        .iter()
        .map(|&m| {
            let (fan_in, fan_out) = module_dims(cfg, m);
            (job.r * (fan_in + fan_out)) as u64
        })
        .sum::<u64>()
        * layers;
    // Inputs of the targeted projections, for the dropout masks.
    let mask_width: u64 = job
        .modules
        .iter()
        .map(|&m| module_dims(cfg, m).0 as u64)
        .sum();

    let rows = 2 * job.pairs as u64;
    let t = job.max_length as u64;
    let tokens = rows * t;
    // Values one decoder layer keeps per token (module docs), and its dropout masks.
    let layer_kept = tokens * (e * (4 * h + 2 * q + 2 * kv + 3 * i))
        + if job.dropout {
            tokens * f32b * mask_width
        } else {
            0
        };
    // Scores-sized tensors: none on the CPU f32 path; on the dense one the additive mask, and
    // four alive in the attention backward (probabilities, their gradient, two temporaries).
    let dense = job.cuda || e != f32b;
    let (mask, score_copies) = if dense {
        (rows * t * t * f32b, 4)
    } else {
        (0, 0)
    };
    // The mask and what the head keeps: final norm output, the rows at label positions and
    // their Jacobian.
    let shared = mask + tokens * e * 3 * h;
    let backward_work = score_copies * rows * heads * t * t * f32b + 5 * tokens * i * f32b;
    let (activations, workspace) = if job.gradient_checkpointing {
        (
            layers * tokens * e * h + shared,
            2 * layer_kept + backward_work,
        )
    } else {
        (layers * layer_kept + shared, backward_work)
    };
    let slack = |bytes: u64| bytes * SLACK_PERCENT / 100;
    let (activations, workspace) = (slack(activations), slack(workspace));
    // Target positions: at most every row's tokens but the last, a chunk at a time.
    let chunk = head_chunk_rows(vocab);
    let head_copies = if job.cuda { 3 } else { 1 };
    let logits = slack(head_copies * (rows * t.saturating_sub(1)).min(chunk) * vocab * f32b);

    let weights = params * e;
    let lora = lora_params * f32b;
    let optimizer = 4 * lora_params * f32b;
    let overhead = if job.cuda {
        CUDA_OVERHEAD
    } else {
        CPU_OVERHEAD
    };
    let train_peak = weights + lora + optimizer + activations + workspace.max(logits) + overhead;

    let eval_peak = if job.eval_pairs > 0 {
        let rows = 2 * job.eval_pairs as u64;
        let tokens = rows * t;
        // One layer's values at a time (no graph), its attention scores, the logits slice.
        let scores = if dense { rows * t * t * f32b } else { 0 };
        let layer = tokens * e * (4 * h + 2 * q + 2 * kv + 3 * i) + scores;
        let scores = 3 * heads * scores;
        let head = head_copies * (rows * t.saturating_sub(1)).min(chunk) * vocab * f32b;
        weights + lora + optimizer + overhead + slack(layer + scores.max(head))
    } else {
        0
    };

    MemoryEstimate {
        total_bytes: train_peak.max(eval_peak),
        weights_bytes: weights,
        lora_bytes: lora,
        optimizer_bytes: optimizer,
        activations_bytes: activations,
        workspace_bytes: workspace,
        logits_bytes: logits,
        overhead_bytes: overhead,
        eval_peak_bytes: eval_peak,
        tokens,
    }
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
            max_length: len,
            r: 16,
            modules: (0..7).collect(),
            dropout: false,
            gradient_checkpointing: ckpt,
        }
    }

    const MIB: f64 = (1 << 20) as f64;

    #[test]
    fn smollm2_parts_match_hand_counts() {
        let est = estimate(&smollm2(), &shape(4, 128, false));
        // 134,515,008 parameters (HF's `num_parameters()` for SmolLM2-135M), f32.
        assert_eq!(est.weights_bytes, 134_515_008 * 4);
        // r16 on all 7 modules: 16 * (1152 + 768 + 768 + 1152 + 2112 * 3) = 162,816 per layer.
        assert_eq!(est.lora_bytes, 162_816 * 30 * 4);
        assert_eq!(est.optimizer_bytes, 4 * est.lora_bytes);
        assert_eq!(est.tokens, 1024);
        // 512 rows of 49,152 f32 logits (96 MiB), softmax in place on the CPU; 4 pairs of 128
        // tokens have 1016 target positions.
        assert_eq!(head_chunk_rows(49152), 512);
        assert_eq!(est.logits_bytes, 512 * 49152 * 4 * SLACK_PERCENT / 100);
        // No scores-sized tensor on the CPU: the MLP's temporaries, 5 x 1024 x 1536 f32.
        assert_eq!(
            est.workspace_bytes,
            5 * 1024 * 1536 * 4 * SLACK_PERCENT / 100
        );
        // Llama 3's 128k vocabulary: 196 rows.
        assert_eq!(head_chunk_rows(128_256), 196);
    }

    /// Peak RSS of `orpod train` measured by `orpod calibrate --lengths 128 --batches 4 --ranks 16`
    /// (SmolLM2-135M Q4_1 GGUF as f32, 4 pairs of 128 tokens, r16 on 7 modules, 2 steps, with the
    /// blocked attention and per-layer backward of 93758c2): 1690 MiB without checkpointing,
    /// 795 MiB with it.
    #[test]
    fn smollm2_estimates_are_within_the_calibration_band() {
        for (ckpt, measured) in [(false, 1690.0), (true, 795.0)] {
            let est = estimate(&smollm2(), &shape(4, 128, ckpt)).total_bytes as f64 / MIB;
            let err = est / measured - 1.0;
            assert!(
                (-0.10..=0.15).contains(&err),
                "checkpointing {ckpt}: estimate {est:.0} MiB vs measured {measured} MiB ({:+.1}%)",
                err * 100.0
            );
        }
    }

    #[test]
    fn checkpointing_and_length_move_the_estimate_the_right_way() {
        let cfg = smollm2();
        let off = estimate(&cfg, &shape(4, 512, false));
        let on = estimate(&cfg, &shape(4, 512, true));
        assert!(on.activations_bytes * 10 < off.activations_bytes);
        assert!(on.total_bytes < off.total_bytes);
        let long = estimate(&cfg, &shape(4, 1024, false));
        // Linear in the length on the CPU: its attention makes no `t x t` tensor.
        let ratio = long.activations_bytes as f64 / off.activations_bytes as f64;
        assert!((ratio - 2.0).abs() < 1e-6, "{ratio}");
        // The weights do not depend on the batch.
        assert_eq!(long.weights_bytes, off.weights_bytes);
    }

    #[test]
    fn bf16_on_cuda_halves_the_weights_and_adds_the_context() {
        let cfg = smollm2();
        let cpu = estimate(&cfg, &shape(1, 64, false));
        let gpu = estimate(
            &cfg,
            &JobShape {
                dtype_bytes: 2,
                cuda: true,
                ..shape(1, 64, false)
            },
        );
        assert_eq!(gpu.weights_bytes * 2, cpu.weights_bytes);
        assert_eq!(gpu.overhead_bytes, CUDA_OVERHEAD);
        assert_eq!(gpu.lora_bytes, cpu.lora_bytes, "LoRA stays f32");
    }

    #[test]
    fn a_large_eval_batch_can_set_the_peak() {
        let cfg = smollm2();
        let mut job = shape(1, 2048, true);
        job.eval_pairs = 16;
        let est = estimate(&cfg, &job);
        assert!(est.eval_peak_bytes > 0);
        assert_eq!(est.total_bytes, est.eval_peak_bytes);
    }

    #[test]
    fn the_gguf_header_gives_the_config_the_loader_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        for arch in [Arch::Llama, Arch::Qwen2] {
            crate::model::testing::write_tiny_gguf(&path, arch, 3).unwrap();
            let loaded =
                crate::model::load_base(&path, DType::F32, &candle_core::Device::Cpu).unwrap();
            assert_eq!(read_config(&path).unwrap(), loaded.config);
            let mut spec = JobSpec::default();
            spec.model.base = path.to_string_lossy().into_owned();
            let est = estimate_job(&spec, false).unwrap();
            let params: usize = loaded.weights.values().map(|t| t.elem_count()).sum();
            assert_eq!(est.weights_bytes, 4 * params as u64);
        }
        assert!(read_config(&dir.path().join("missing.gguf")).is_err());
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
}
