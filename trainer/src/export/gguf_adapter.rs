//! The adapter alone as a GGUF LoRA file, as llama.cpp's `convert_lora_to_gguf.py` writes it and
//! its loader (`llama_adapter_lora_init`) checks it: `general.type = "adapter"`,
//! `general.architecture` equal to the base's, `adapter.type = "lora"`, `adapter.lora.alpha`,
//! and for each adapted weight `<gguf name>.lora_a` (`[r, in]`) and `.lora_b` (`[out, r]`), PEFT's
//! shapes untransposed, in f32. llama.cpp scales by `alpha / r`, so `alpha` is written as
//! `scale · r` (right for rsLoRA adapters too). On llama-arch models the base's Q/K rows are
//! permuted into llama.cpp's rope order, so the rows of Q/K's `lora_b` are permuted the same way.
//!
//! Beside it goes a `Modelfile` for Ollama: `FROM` the base, `ADAPTER ./adapter.gguf`, and for
//! the chat template families orpod knows, its Go-template `TEMPLATE` and `PARAMETER stop` lines.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use orpo_api::spec::LORA_MODULES;

use crate::lora::{module_path, LoraAdapter};
use crate::model::gguf::{gguf_name, permute};
use crate::model::{Arch, BaseModel};
use crate::{Error, Result};

use super::gguf::{arch_name, write_gguf_file};

/// The GGUF adapter's file name inside `final/`.
pub const GGUF_ADAPTER_FILE: &str = "adapter.gguf";
/// Ollama's recipe beside it.
pub const MODELFILE: &str = "Modelfile";

/// Writes `adapter` for `base` as a GGUF LoRA file at `path`.
pub fn write_gguf_adapter(base: &BaseModel, adapter: &LoraAdapter, path: &Path) -> Result<()> {
    let cfg = &base.config;
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch_name(cfg).into()),
        ),
        ("general.type".to_string(), Value::String("adapter".into())),
        (
            "general.name".to_string(),
            Value::String("orpod LoRA".into()),
        ),
        ("adapter.type".to_string(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".to_string(),
            Value::F32((adapter.scale * adapter.r as f64) as f32),
        ),
    ];
    let mut tensors = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        for (m, module) in LORA_MODULES.iter().enumerate() {
            let Some(pair) = adapter.get(layer, m) else {
                continue;
            };
            let hf = format!("{}.weight", module_path(layer, m));
            let name = gguf_name(&hf)
                .ok_or_else(|| Error::model(path, format!("no GGUF name for {hf}")))?;
            let a = pair
                .a
                .as_detached_tensor()
                .to_dtype(candle_core::DType::F32)?;
            let mut b = pair
                .b
                .as_detached_tensor()
                .to_dtype(candle_core::DType::F32)?;
            if cfg.arch == Arch::Llama {
                match *module {
                    "q_proj" => b = permute(&b, cfg.num_attention_heads, cfg.head_dim)?,
                    "k_proj" => b = permute(&b, cfg.num_key_value_heads, cfg.head_dim)?,
                    _ => {}
                }
            }
            let a = a.to_device(&candle_core::Device::Cpu)?.contiguous()?;
            let b = b.to_device(&candle_core::Device::Cpu)?.contiguous()?;
            tensors.push((
                format!("{name}.lora_a"),
                QTensor::quantize(&a, GgmlDType::F32)?,
            ));
            tensors.push((
                format!("{name}.lora_b"),
                QTensor::quantize(&b, GgmlDType::F32)?,
            ));
        }
    }
    if tensors.is_empty() {
        return Err(Error::model(path, "the adapter has no LoRA weights"));
    }
    write_gguf_file(path, &metadata, &tensors)
}

/// The `Modelfile` text: `FROM base`, `ADAPTER ./adapter.gguf`, and the template and stop
/// tokens of the chat formats orpod recognises (ChatML, Llama 3). For another template Ollama
/// takes the one in the base GGUF's metadata.
pub fn modelfile(base: &BaseModel) -> String {
    let mut out = format!(
        "# Ollama: ollama create NAME -f Modelfile (from this folder)\nFROM {}\nADAPTER ./{GGUF_ADAPTER_FILE}\n",
        base.source.display()
    );
    let template = base.tokenizer.chat_template.as_deref().unwrap_or("");
    let (go, stops): (&str, &[&str]) = if template.contains("<|im_start|>") {
        (CHATML, &["<|im_start|>", "<|im_end|>"])
    } else if template.contains("<|start_header_id|>") {
        (
            LLAMA3,
            &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        )
    } else {
        ("", &[])
    };
    if !go.is_empty() {
        out.push_str(&format!("TEMPLATE \"\"\"{go}\"\"\"\n"));
    }
    let eos = base.tokenizer.eos.text.as_str();
    let mut all: Vec<&str> = stops.to_vec();
    if !eos.is_empty() && !all.contains(&eos) {
        all.push(eos);
    }
    for stop in all {
        out.push_str(&format!("PARAMETER stop {stop:?}\n"));
    }
    out
}

/// ChatML in Ollama's Go template syntax.
const CHATML: &str = "{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
";

/// Llama 3's chat format in Ollama's Go template syntax.
const LLAMA3: &str = "{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>";
