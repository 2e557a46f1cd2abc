//! Exports checked from the Rust side: a merged folder and a GGUF file, each loaded back as a
//! base model, evaluate like the base plus the adapter; the GGUF file has llama.cpp's layout.
//! The Python side (peft, transformers, llama.cpp) is checked by `tests/interop/run.sh`.
//!
//! The adapter is TRL's own, trained 5 steps in the `tiny_ga_clip` parity case
//! (`tests/parity/trl_reference.py`, TRL 1.16.0), so the merge is checked on weights that were not
//! written by us.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use common::{fixture, fixtures, job_for_case};
use orpo_api::spec::{GgufExport, JobSpec};
use orpo_trainer::export::{self, ExportRequest};
use orpo_trainer::train::Session;

fn trained_adapter() -> std::path::PathBuf {
    fixtures().join("parity/tiny_ga_clip-final-adapter")
}

/// The tiny Llama (f32, CPU) and TRL's trained adapter on it.
fn tiny_base_and_trained_adapter() -> (
    orpo_trainer::model::BaseModel,
    orpo_trainer::lora::LoraAdapter,
) {
    let base = orpo_trainer::model::load_base(
        &fixtures().join("tiny-llama"),
        candle_core::DType::F32,
        &Device::Cpu,
        orpo_trainer::model::Quantize::None,
    )
    .unwrap();
    let adapter =
        orpo_trainer::lora::LoraAdapter::load_peft(&trained_adapter(), &base.config, &Device::Cpu)
            .unwrap();
    (base, adapter)
}

/// The parity job with TRL's trained adapter, and the same job on another base with none.
fn jobs(base: &Path) -> (JobSpec, JobSpec) {
    let mut with_adapter = job_for_case(&fixture("tiny_ga_clip"));
    with_adapter.lora.init_adapter = trained_adapter().to_string_lossy().into_owned();
    let mut on_base = with_adapter.clone();
    on_base.model.base = base.to_string_lossy().into_owned();
    on_base.lora.init_adapter.clear();
    (with_adapter, on_base)
}

fn max_diff(
    a: &std::collections::BTreeMap<String, f64>,
    b: &std::collections::BTreeMap<String, f64>,
    keys: &[&str],
) -> f64 {
    keys.iter()
        .map(|k| (a[*k] - b[*k]).abs())
        .fold(0.0, f64::max)
}

const LOGPS: [&str; 2] = ["eval_logps/chosen", "eval_logps/rejected"];
const ALL: [&str; 5] = [
    "eval_logps/chosen",
    "eval_logps/rejected",
    "eval_nll_loss",
    "eval_loss",
    "eval_log_odds_ratio",
];

#[test]
fn merged_folder_and_gguf_evaluate_like_base_plus_adapter() {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let gguf = out.path().join("model-f16.gguf");
    export::export_checkpoint(&ExportRequest {
        adapter_dir: trained_adapter(),
        base: Some(fixtures().join("tiny-llama")),
        merged: Some(merged.clone()),
        gguf: Some((gguf.clone(), GgufExport::F16)),
        gguf_adapter: None,
    })
    .unwrap();

    let (with_adapter, on_merged) = jobs(&merged);
    let reference = Session::load(&with_adapter, &Device::Cpu).unwrap();
    let want = reference.evaluate(true).unwrap();

    let session = Session::load(&on_merged, &Device::Cpu).unwrap();
    let got = session.evaluate(false).unwrap();
    let d = max_diff(&got, &want, &ALL);
    eprintln!("merged folder: max |diff| {d:.3e}");
    assert!(d < 1e-5, "merged: {got:?} vs {want:?}");

    // The GGUF's tokenizer is rebuilt from tokenizer.json: every row tokenizes the same.
    let (_, on_gguf) = jobs(&gguf);
    let session = Session::load(&on_gguf, &Device::Cpu).unwrap();
    for (a, b) in session.eval.iter().zip(&reference.eval) {
        assert_eq!(a.chosen_ids, b.chosen_ids);
        assert_eq!(a.rejected_labels, b.rejected_labels);
    }
    assert_eq!(
        session.base.tokenizer.chat_template,
        reference.base.tokenizer.chat_template
    );
    let got = session.evaluate(false).unwrap();
    let d = max_diff(&got, &want, &LOGPS);
    eprintln!("f16 GGUF: max |diff| of the eval log-probs {d:.3e}");
    assert!(d < 2e-3, "gguf f16: {got:?} vs {want:?}");
}

/// What llama.cpp reads: the architecture and hyper-parameters, tensor names, f16 matrices and
/// f32 norms, Q/K rows in llama.cpp's interleaved order, the tokenizer and chat template.
#[test]
fn gguf_file_has_llama_cpp_layout() {
    let out = tempfile::tempdir().unwrap();
    let gguf = out.path().join("m.gguf");
    export::export_checkpoint(&ExportRequest {
        adapter_dir: trained_adapter(),
        base: Some(fixtures().join("tiny-llama")),
        merged: None,
        gguf: Some((gguf.clone(), GgufExport::F16)),
        gguf_adapter: None,
    })
    .unwrap();
    let mut r = BufReader::new(File::open(&gguf).unwrap());
    let c = Content::read(&mut r).unwrap();
    let md = |k: &str| c.metadata.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
    assert_eq!(md("general.file_type").to_u32().unwrap(), 1);
    assert_eq!(md("llama.block_count").to_u32().unwrap(), 2);
    assert_eq!(md("llama.attention.head_count_kv").to_u32().unwrap(), 2);
    assert_eq!(md("llama.rope.dimension_count").to_u32().unwrap(), 4);
    assert_eq!(md("tokenizer.ggml.model").to_string().unwrap(), "gpt2");
    // The fixture's tokenizer.json pre-tokenizes with plain GPT-2 ByteLevel (llama.cpp: "gpt-2").
    assert_eq!(md("tokenizer.ggml.pre").to_string().unwrap(), "gpt-2");
    assert!(md("tokenizer.chat_template").to_string().is_ok());
    let Value::Array(tokens) = md("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    assert_eq!(tokens.len(), 49152);
    let ti = &c.tensor_infos;
    assert_eq!(ti["blk.1.attn_q.weight"].ggml_dtype, GgmlDType::F16);
    assert_eq!(ti["blk.1.ffn_norm.weight"].ggml_dtype, GgmlDType::F32);
    assert!(!ti.contains_key("output.weight"), "tied embeddings");
    assert_eq!(ti.len(), 1 + 2 * 9 + 1);

    // Row 1 of llama.cpp's q is HF row head_dim / 2 = 2 (the rotary pairs interleave).
    let (base, adapter) = tiny_base_and_trained_adapter();
    let merged = export::merged_weights(&base, &adapter).unwrap();
    let hf_q: Vec<Vec<f32>> = merged["model.layers.0.self_attn.q_proj.weight"]
        .to_vec2()
        .unwrap();
    let gg_q: Vec<Vec<f32>> = c
        .tensor(&mut r, "blk.0.attn_q.weight", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (gg_row, hf_row) in [(0, 0), (1, 2), (2, 1), (3, 3), (5, 6)] {
        for (a, b) in gg_q[gg_row].iter().zip(&hf_q[hf_row]) {
            assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-6, "row {gg_row}");
        }
    }
}

/// `[export]` at the end of a run: the adapter, the merged folder and the GGUF file in `final/`.
#[test]
fn train_writes_the_requested_exports_to_final() {
    let mut spec = job_for_case(&fixture("tiny_fresh"));
    spec.train.max_steps = 1;
    spec.export.merged = true;
    spec.export.gguf = GgufExport::Q8_0;
    spec.export.gguf_adapter = true;
    let (_, out) = common::run_case_spec(&spec);
    let fin = out.path().join("final");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/tokenizer.json",
        "merged/generation_config.json",
        "model-q8_0.gguf",
        "adapter.gguf",
        "Modelfile",
    ] {
        assert!(fin.join(f).is_file(), "final/{f}");
    }
    #[cfg(unix)]
    for f in [
        "merged/model.safetensors",
        "model-q8_0.gguf",
        "adapter_model.safetensors",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(fin.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{f}");
    }
}

/// The adapter alone as llama.cpp's loader checks it: `general.type = adapter`, the base's
/// architecture, `adapter.lora.alpha = scale * r`, `<name>.lora_a [r, in]` and `.lora_b
/// [out, r]` in f32 for every adapted weight, and Q's `lora_b` rows in llama.cpp's rope order
/// (llama.cpp row 1 is HF row head_dim / 2 = 2, as for the base's Q); plus the Modelfile.
#[test]
fn gguf_adapter_has_llama_cpp_lora_layout() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("lora.gguf");
    export::export_checkpoint(&ExportRequest {
        adapter_dir: trained_adapter(),
        base: Some(fixtures().join("tiny-llama")),
        merged: None,
        gguf: None,
        gguf_adapter: Some(path.clone()),
    })
    .unwrap();
    let (base, adapter) = tiny_base_and_trained_adapter();
    let mut r = BufReader::new(File::open(&path).unwrap());
    let c = Content::read(&mut r).unwrap();
    let md = |k: &str| c.metadata.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(md("general.type").to_string().unwrap(), "adapter");
    assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
    assert_eq!(md("adapter.type").to_string().unwrap(), "lora");
    let alpha = md("adapter.lora.alpha").to_f32().unwrap();
    assert!(
        (alpha as f64 - adapter.scale * adapter.r as f64).abs() < 1e-6,
        "{alpha}"
    );
    let pairs = adapter.named_vars().len();
    assert_eq!(
        c.tensor_infos.len(),
        pairs,
        "one GGUF tensor per PEFT tensor"
    );
    let ti = &c.tensor_infos;
    let (r_, h) = (adapter.r, base.config.hidden_size);
    let q_out = base.config.num_attention_heads * base.config.head_dim;
    assert_eq!(ti["blk.0.attn_q.weight.lora_a"].shape.dims(), &[r_, h]);
    assert_eq!(ti["blk.0.attn_q.weight.lora_b"].shape.dims(), &[q_out, r_]);
    assert_eq!(
        ti["blk.1.ffn_down.weight.lora_a"].ggml_dtype,
        GgmlDType::F32
    );

    let pair = adapter.get(0, 0).unwrap();
    let mut read = |name: &str| -> Vec<Vec<f32>> {
        c.tensor(&mut r, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let want_a: Vec<Vec<f32>> = pair.a.as_tensor().to_vec2().unwrap();
    assert_eq!(
        read("blk.0.attn_q.weight.lora_a"),
        want_a,
        "A as PEFT has it"
    );
    let hf_b: Vec<Vec<f32>> = pair.b.as_tensor().to_vec2().unwrap();
    let gg_b = read("blk.0.attn_q.weight.lora_b");
    for (gg_row, hf_row) in [(0, 0), (1, 2), (2, 1), (3, 3), (5, 6)] {
        assert_eq!(gg_b[gg_row], hf_b[hf_row], "row {gg_row}");
    }

    let modelfile = std::fs::read_to_string(out.path().join("Modelfile")).unwrap();
    assert!(
        modelfile.contains(&format!("FROM {}", base.source.display())),
        "{modelfile}"
    );
    assert!(modelfile.contains("ADAPTER ./lora.gguf"), "{modelfile}");
    assert!(
        modelfile.contains("PARAMETER stop \"<|im_end|>\""),
        "{modelfile}"
    );
    assert!(modelfile.contains("{{ .Prompt }}<|im_end|>"), "{modelfile}");
}
