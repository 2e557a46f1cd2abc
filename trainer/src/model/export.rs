//! Writing a model as a Hugging Face folder that transformers, PEFT and llama.cpp's converter load:
//! `config.json`, `model.safetensors`, the tokenizer files and `generation_config.json`.
//! Used to turn a GGUF base into a folder and for merged (base + adapter) exports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::{check_weights, BaseModel};
use crate::tokenizer::write_json;
use crate::{Error, Result};

/// Writes `weights` (HF names, e.g. `base.weights` or merged ones) with `base`'s config and
/// tokenizer into the new folder `dir`. Everything goes into a temporary sibling folder that is
/// renamed at the end, so `dir` is either complete or absent.
pub fn save_hf_folder(
    base: &BaseModel,
    weights: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    check_weights(dir, &base.config, weights, &Default::default())?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::model(
            dir,
            "the export folder exists and is not empty; remove it or choose another",
        ));
    }
    let tmp = temporary_sibling(dir)?;
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = write_folder(base, weights, &tmp)
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e)));
    if written.is_err() {
        // Best effort: the error being returned matters more than a leftover temporary folder.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// `<parent>/.<name>.partial-<pid>`: on the same file system, so the final rename is atomic.
fn temporary_sibling(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::model(dir, "the export path has no folder name"))?;
    let tmp_name = format!(".{}.partial-{}", name.to_string_lossy(), std::process::id());
    Ok(dir.with_file_name(tmp_name))
}

fn write_folder(base: &BaseModel, weights: &HashMap<String, Tensor>, dir: &Path) -> Result<()> {
    let tok = &base.tokenizer;
    let dtype = weights
        .get("model.embed_tokens.weight")
        .map_or(DType::F32, Tensor::dtype);
    let bos_id = tok.bos.as_ref().map(|t| t.id);
    let config = base
        .config
        .to_hf_json(torch_dtype(dir, dtype)?, bos_id, tok.eos.id);
    write_json(&dir.join("config.json"), &config)?;
    write_safetensors(&dir.join("model.safetensors"), weights)?;
    tok.save_hf(dir, base.config.max_position_embeddings)?;
    let generation = json!({
        "bos_token_id": bos_id,
        "eos_token_id": tok.eos.id,
        "pad_token_id": tok.pad_id,
    });
    write_json(&dir.join("generation_config.json"), &generation)
}

/// transformers refuses safetensors without `format` metadata in some loading paths.
fn write_safetensors(path: &Path, weights: &HashMap<String, Tensor>) -> Result<()> {
    let mut tensors = Vec::with_capacity(weights.len());
    for (name, tensor) in weights {
        // `View::data` would copy from the GPU anyway; on the CPU this is a cheap clone.
        let tensor = tensor.to_device(&Device::Cpu)?.contiguous()?;
        tensors.push((name.as_str(), tensor));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), path)
        .map_err(|e| Error::model(path, format!("cannot write safetensors: {e}")))?;
    // safetensors writes through a 0600 temporary file; the export is meant to be shared like
    // the JSON files beside it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn torch_dtype(dir: &Path, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        other => Err(Error::model(
            dir,
            format!("cannot export {other:?} weights; use f32, bf16 or f16"),
        )),
    }
}
