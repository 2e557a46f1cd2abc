//! Folding a LoRA adapter into the base weights: `W' = W + (alpha / r) B A` on every adapted
//! projection (PEFT's `merge_and_unload`), computed in f32 and stored in the base's dtype.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use orpo_api::spec::LORA_MODULES;

use crate::lora::{peft_prefix, LoraAdapter};
use crate::model::BaseModel;
use crate::Result;

/// The base's weights by Hugging Face name with the adapter merged in. Dense tensors the
/// adapter does not touch are shared with `base`, not copied; a base kept quantized (a job's
/// own base at the end of training) is merged in full precision, its weights dequantized to
/// the dense weights' dtype: what llama.cpp computes from the base GGUF and the adapter.
pub fn merged_weights(base: &BaseModel, adapter: &LoraAdapter) -> Result<HashMap<String, Tensor>> {
    let mut out = dense_weights(base)?;
    for l in 0..base.config.num_hidden_layers {
        for m in 0..LORA_MODULES.len() {
            let Some(pair) = adapter.get(l, m) else {
                continue;
            };
            let prefix = peft_prefix(l, m);
            let module = prefix
                .strip_prefix("base_model.model.")
                .expect("PEFT prefixes start with base_model.model.");
            let name = format!("{module}.weight");
            let w = out[&name].clone();
            let delta = (pair
                .b
                .as_detached_tensor()
                .matmul(&pair.a.as_detached_tensor())?
                * adapter.scale)?;
            let merged = (w.to_dtype(DType::F32)? + delta.to_device(w.device())?)?;
            out.insert(name, merged.to_dtype(w.dtype())?);
        }
    }
    Ok(out)
}

/// The base's weights by Hugging Face name, all dense: the dense ones shared, a quantized one
/// dequantized to the dense weights' dtype.
pub fn dense_weights(base: &BaseModel) -> Result<HashMap<String, Tensor>> {
    let mut out = base.weights.clone();
    let dtype = base
        .weights
        .values()
        .next()
        .map_or(DType::F32, |t| t.dtype());
    for (name, q) in &base.quantized {
        out.insert(name.clone(), q.dequantize(dtype)?);
    }
    Ok(out)
}
