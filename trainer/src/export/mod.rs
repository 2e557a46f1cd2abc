//! Exports of a trained adapter: the PEFT adapter itself, a merged Hugging Face folder
//! (transformers loads it with no PEFT), and one GGUF file for llama.cpp and Ollama.
//!
//! `train` writes the `[export]` selection to `<out>/final/` at the end of a run
//! ([`write_final`]); `orpod export` does the same from any checkpoint ([`export_checkpoint`]).
//!
//! Layout of `final/`: `adapter_config.json` + `adapter_model.safetensors` (`export.adapter`),
//! `merged/` (`export.merged`), `model-f16.gguf` or `model-q8_0.gguf` (`export.gguf`),
//! `adapter.gguf` + `Modelfile` (`export.gguf_adapter`).

pub mod gguf;
pub mod gguf_adapter;
pub mod merge;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use orpo_api::spec::GgufExport;

use crate::checkpoint::write_dir_atomic;
use crate::lora::{LoraAdapter, ADAPTER_CONFIG};
use crate::model::{self, save_hf_folder, BaseModel};
use crate::train::Session;
use crate::{Error, Result};

pub use gguf::write_gguf;
pub use gguf_adapter::{write_gguf_adapter, GGUF_ADAPTER_FILE, MODELFILE};
pub use merge::merged_weights;

/// The merged folder's name inside `final/`.
pub const MERGED_DIR: &str = "merged";

/// The GGUF file's name inside `final/` for `kind` (`model-f16.gguf`, `model-q8_0.gguf`).
pub fn gguf_file_name(kind: GgufExport) -> Option<String> {
    gguf::type_name(kind).map(|t| format!("model-{t}.gguf"))
}

/// Writes `dir` (normally `<out>/final`) atomically with the exports the job asks for.
pub fn write_final(session: &Session, dir: &Path) -> Result<()> {
    let export = &session.spec.export;
    write_dir_atomic(dir, |tmp| {
        if export.adapter {
            session
                .adapter
                .save_peft(tmp, &session.base.source.to_string_lossy())?;
            // Answered later by the generation engine, as a checkpoint's are.
            crate::train::write_json(
                &tmp.join(crate::checkpoint::SAMPLE_PROMPTS),
                &crate::train::sample_prompts(session)?,
            )?;
        }
        if export.gguf_adapter {
            write_adapter_gguf(
                &session.base,
                &session.adapter,
                &tmp.join(GGUF_ADAPTER_FILE),
            )?;
        }
        if export.merged || export.gguf != GgufExport::None {
            let weights = merged_weights(&session.base, &session.adapter)?;
            if export.merged {
                save_hf_folder(&session.base, &weights, &tmp.join(MERGED_DIR))?;
            }
            if let Some(name) = gguf_file_name(export.gguf) {
                write_gguf(&session.base, &weights, &tmp.join(name), export.gguf)?;
            }
        }
        Ok(())
    })
}

/// What `orpod export` writes from a checkpoint (or any PEFT adapter folder).
pub struct ExportRequest {
    pub adapter_dir: PathBuf,
    /// The base model; `None` reads `base_model_name_or_path` from `adapter_config.json`.
    pub base: Option<PathBuf>,
    pub merged: Option<PathBuf>,
    pub gguf: Option<(PathBuf, GgufExport)>,
    /// The adapter as a GGUF LoRA file (a `Modelfile` goes beside it).
    pub gguf_adapter: Option<PathBuf>,
}

/// Loads the base (f32, CPU) and the adapter, merges them and writes the requested files.
pub fn export_checkpoint(req: &ExportRequest) -> Result<()> {
    let base_path = match &req.base {
        Some(p) => p.clone(),
        None => adapter_base(&req.adapter_dir)?,
    };
    let base: BaseModel =
        model::load_base(&base_path, DType::F32, &Device::Cpu, model::Quantize::None)?;
    let adapter = LoraAdapter::load_peft(&req.adapter_dir, &base.config, &Device::Cpu)?;
    if let Some(path) = &req.gguf_adapter {
        write_adapter_gguf(&base, &adapter, path)?;
    }
    if req.merged.is_none() && req.gguf.is_none() {
        return Ok(());
    }
    let weights = merged_weights(&base, &adapter)?;
    if let Some(dir) = &req.merged {
        save_hf_folder(&base, &weights, dir)?;
    }
    if let Some((path, kind)) = &req.gguf {
        write_gguf(&base, &weights, path, *kind)?;
    }
    Ok(())
}

/// The GGUF adapter at `path` and the `Modelfile` beside it.
fn write_adapter_gguf(base: &BaseModel, adapter: &LoraAdapter, path: &Path) -> Result<()> {
    write_gguf_adapter(base, adapter, path)?;
    let modelfile = path.with_file_name(MODELFILE);
    let text = gguf_adapter::modelfile(base).replace(
        &format!("./{GGUF_ADAPTER_FILE}"),
        &format!("./{}", file_name(path)),
    );
    std::fs::write(&modelfile, text).map_err(|e| Error::io(&modelfile, e))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `base_model_name_or_path` of an adapter folder (orpod writes the base's path there), if it
/// is a model on this machine.
pub fn adapter_base(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Adapter {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match cfg["base_model_name_or_path"].as_str() {
        Some(base) if !base.is_empty() && Path::new(base).exists() => Ok(PathBuf::from(base)),
        other => Err(Error::Adapter {
            path,
            message: format!(
                "base_model_name_or_path {other:?} is not a model on this machine; name the base with --base"
            ),
        }),
    }
}
