//! Ops with their own backward pass.
//!
//! candle's autograd computes a gradient for every operand of a recorded op, frozen or not, and
//! its fused kernels (rms_norm, rope, softmax_last_dim) have no backward at all: they silently
//! cut the graph (docs/candle-training.md#autograd-gaps). The training path therefore uses
//! these ops: each runs candle's fast forward on detached inputs, then attaches a hand-written
//! backward that returns only the gradient the LoRA parameters need. A frozen weight never gets a
//! weight-sized gradient, a mask never gets a scores-sized one, and the output head never holds
//! the full `[tokens, vocab]` log-softmax.
//!
//! The fused ops ([`lora_linear`], [`attention`], [`swiglu`]) go further: their backward
//! recomputes the small intermediates it needs (the LoRA rank-r product, the attention
//! probabilities) instead of keeping them, so a decoder layer keeps about what PyTorch's
//! autograd keeps. On the CPU in f32, attention is a blocked causal kernel (`flash`) that makes
//! no scores-sized tensor. Each fused op also exists as separate forward and backward functions,
//! which the training decoder layer chains in its own backward (`model::llama`), so candle's
//! graph holds one node per layer.
//!
//! Each op is checked against the composite candle path (values and gradients) in `tests.rs`.

mod basic;
mod cpu;
mod flash;
mod fused;
mod head;
#[cfg(test)]
mod tests;

pub use basic::{frozen_linear, masked_softmax, rms_norm, rope};
pub use fused::{attention, lora_linear, swiglu, AttnMask, Heads, LoraWeights};
pub use head::{head_chunk_rows, log1mexp, log_sigmoid, odds_ratio, target_logprobs};
// The explicit forward and backward halves, for the decoder layer's own backward.
pub(crate) use basic::rms_norm_bwd;
pub(crate) use fused::{
    add, lora_linear_bwd, lora_linear_fwd, swiglu_bwd, swiglu_fwd, Attention, AttnSaved, LoraOwned,
};

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};

type Bwd1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;
type Grads2 = (Option<Tensor>, Option<Tensor>);
type Bwd2 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Grads2> + Send + Sync>;
type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
type Bwd3 = Box<dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync>;

/// Whether the CPU kernels of `cpu`, `flash` and `head` can take their AVX2 + FMA builds (detected once
/// by std, then a cached load).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// An op whose output was computed eagerly on detached inputs. Its forward hands that output to
/// the graph (one copy); its backward is the closure. The output is taken on the forward call so
/// the graph does not keep a second reference to it.
struct Eager<B> {
    name: &'static str,
    out: Mutex<Option<Tensor>>,
    bwd: B,
}

impl<B> Eager<B> {
    fn take(&self) -> Result<Tensor> {
        self.out
            .lock()
            .map_err(|_| candle_core::Error::Msg("eager op lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    fn cpu_out(&self) -> Result<(CpuStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            // A contiguous output (the usual case) is a memcpy; `affine` is the strided copy.
            Storage::Cpu(CpuStorage::F32(v)) if layout.is_contiguous() => {
                let (lo, hi) = (
                    layout.start_offset(),
                    layout.start_offset() + layout.shape().elem_count(),
                );
                Ok((CpuStorage::F32(v[lo..hi].to_vec()), layout.shape().clone()))
            }
            Storage::Cpu(s) => Ok((s.affine(layout, 1.0, 0.0)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: output is not on the CPU", self.name),
        }
    }

    fn cuda_out(&self) -> Result<(CudaStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.affine(layout, 1.0, 0.0)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: output is not on a CUDA device", self.name),
        }
    }
}

impl CustomOp1 for Eager<Bwd1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu_out()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        (self.bwd)(arg, res, grad).map(Some)
    }
}

impl CustomOp2 for Eager<Bwd2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_out()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _ = res;
        (self.bwd)(a, b, grad)
    }
}

impl CustomOp3 for Eager<Bwd3> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_out()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_out()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _ = res;
        (self.bwd)(a, b, c, grad)
    }
}

/// Records `out = f(x)` with the backward `bwd(x, out, grad_out) -> grad_x`. When `x` needs no
/// gradient, `out` is returned as it is and nothing is recorded.
pub(crate) fn with_backward1(
    name: &'static str,
    x: &Tensor,
    out: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(out);
    }
    let op: Eager<Bwd1> = Eager {
        name,
        out: Mutex::new(Some(out)),
        bwd: Box::new(bwd),
    };
    x.apply_op1(op)
}

/// Two-input version of [`with_backward1`]: `bwd(a, b, grad_out) -> (grad_a, grad_b)`, each
/// `None` when that input needs no gradient.
fn with_backward2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    out: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Grads2> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(out);
    }
    let op: Eager<Bwd2> = Eager {
        name,
        out: Mutex::new(Some(out)),
        bwd: Box::new(bwd),
    };
    a.apply_op2(b, op)
}

/// Three-input version of [`with_backward1`].
fn with_backward3(
    name: &'static str,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    out: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() && !c.track_op() {
        return Ok(out);
    }
    let op: Eager<Bwd3> = Eager {
        name,
        out: Mutex::new(Some(out)),
        bwd: Box::new(bwd),
    };
    a.apply_op3(b, c, op)
}
