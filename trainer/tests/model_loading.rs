//! Loading base models: `config.json` parsing, Hugging Face folders (single and sharded), GGUF
//! files (synthetic ones and the real SmolLM2-135M-Instruct Q4_1, checked against transformers),
//! and the Hugging Face export round trip.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use orpo_trainer::model::testing::{self, tiny_base, write_tiny_gguf};
use orpo_trainer::model::{
    load_base, save_hf_folder, Arch, BaseModel, Llama3RopeScaling, ModelConfig, Quantize,
};
use serde_json::json;

fn parse(config: serde_json::Value) -> orpo_trainer::Result<ModelConfig> {
    ModelConfig::from_hf_json(&config, Path::new("config.json"))
}

fn llama_json() -> serde_json::Value {
    // Llama-3.2-1B-Instruct's config.json (transformers 4.45), trimmed to the keys we read.
    json!({
        "model_type": "llama", "hidden_act": "silu", "vocab_size": 128256, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "tie_word_embeddings": true, "attention_bias": false,
        "mlp_bias": false,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    })
}

#[test]
fn llama3_config_reads_rope_scaling() {
    let cfg = parse(llama_json()).unwrap();
    assert_eq!(cfg.arch, Arch::Llama);
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (32, 8, 64)
    );
    assert_eq!(cfg.rope_theta, 500000.0);
    assert!(cfg.tie_word_embeddings && !cfg.attention_bias);
    assert_eq!(
        cfg.rope_scaling,
        Some(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
}

#[test]
fn transformers5_rope_parameters_hold_theta_and_scaling() {
    let mut json = llama_json();
    let obj = json.as_object_mut().unwrap();
    obj.remove("rope_theta");
    let mut params = obj.remove("rope_scaling").unwrap();
    params["rope_theta"] = json!(500000.0);
    obj.insert("rope_parameters".into(), params);
    let cfg = parse(json).unwrap();
    assert_eq!(cfg.rope_theta, 500000.0);
    assert_eq!(cfg.rope_scaling.unwrap().factor, 32.0);

    // transformers 5 writes `rope_type: default` for unscaled models.
    let mut plain = llama_json();
    plain["rope_scaling"] = serde_json::Value::Null;
    plain["rope_parameters"] = json!({"rope_theta": 10000.0, "rope_type": "default"});
    let cfg = parse(plain).unwrap();
    assert_eq!((cfg.rope_theta, cfg.rope_scaling), (500000.0, None));
}

#[test]
fn defaults_fill_head_dim_kv_heads_and_tying() {
    let cfg = parse(json!({
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "head_dim": null
    }))
    .unwrap();
    assert_eq!((cfg.head_dim, cfg.num_key_value_heads), (128, 32));
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(
        (
            cfg.rope_theta,
            cfg.rms_norm_eps,
            cfg.max_position_embeddings
        ),
        (10000.0, 1e-6, 2048)
    );
}

#[test]
fn qwen2_has_qkv_bias_and_mistral_a_window() {
    let qwen = parse(json!({
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "rope_theta": 1000000.0, "tie_word_embeddings": true, "use_sliding_window": false,
        "sliding_window": 32768
    }))
    .unwrap();
    assert_eq!(qwen.arch, Arch::Qwen2);
    assert!(qwen.attention_bias && qwen.tie_word_embeddings);
    assert_eq!((qwen.head_dim, qwen.sliding_window), (64, None));

    let mistral = |window: serde_json::Value| {
        parse(json!({
            "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "sliding_window": window
        }))
        .unwrap()
    };
    assert_eq!(mistral(json!(4096)).sliding_window, Some(4096));
    let v3 = mistral(serde_json::Value::Null);
    assert_eq!(
        (v3.sliding_window, v3.arch, v3.model_type.as_str()),
        (None, Arch::Llama, "mistral")
    );
    assert_eq!(v3.hf_architecture(), "MistralForCausalLM");
}

#[test]
fn unsupported_configs_say_what_and_what_is_supported() {
    let mut gemma = llama_json();
    gemma["model_type"] = json!("gemma2");
    let msg = parse(gemma).unwrap_err().to_string();
    assert!(
        msg.contains("\"gemma2\"") && msg.contains("llama") && msg.contains("qwen2"),
        "{msg}"
    );

    let mut yarn = llama_json();
    yarn["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    let msg = parse(yarn).unwrap_err().to_string();
    assert!(msg.contains("\"yarn\"") && msg.contains("llama3"), "{msg}");

    let mut missing = llama_json();
    missing.as_object_mut().unwrap().remove("hidden_size");
    assert!(parse(missing)
        .unwrap_err()
        .to_string()
        .contains("hidden_size"));
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders and the export round trip (tiny random models)

fn assert_same_weights(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut names: Vec<_> = a.keys().collect();
    names.sort();
    let mut other: Vec<_> = b.keys().collect();
    other.sort();
    assert_eq!(names, other);
    for name in names {
        let diff = (&a[name] - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            diff.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "{name}"
        );
    }
}

const PROBES: [&str; 4] = [
    "Hello, world! 12345",
    "  two spaces\n\nand the end\t",
    "emoji 🤗 café",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
];

fn assert_same_tokenizer(a: &BaseModel, b: &BaseModel) {
    let (ta, tb) = (&a.tokenizer, &b.tokenizer);
    assert_eq!((&ta.bos, &ta.eos, ta.pad_id), (&tb.bos, &tb.eos, tb.pad_id));
    assert_eq!(ta.chat_template, tb.chat_template);
    for probe in PROBES {
        assert_eq!(
            ta.encode(probe).unwrap(),
            tb.encode(probe).unwrap(),
            "{probe:?}"
        );
    }
}

#[test]
fn tiny_tokenizer_encodes_anything_and_keeps_specials_whole() {
    let tok = testing::tiny_tokenizer();
    assert!(tok.tokenizer.get_vocab_size(true) <= testing::TINY_VOCAB);
    let ids = tok.encode("<|im_start|>the cat<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    for probe in PROBES {
        assert_eq!(tok.decode(&tok.encode(probe).unwrap()).unwrap(), probe);
    }
}

#[test]
fn exported_folder_loads_back_identically() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let base = tiny_base(arch, 7, DType::F32, &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        save_hf_folder(&base, &base.weights, &dir).unwrap();
        let loaded = load_base(&dir, DType::F32, &Device::Cpu, Quantize::None).unwrap();
        assert_eq!(loaded.config, base.config);
        assert_same_weights(&loaded.weights, &base.weights);
        assert_same_tokenizer(&loaded, &base);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model"], "no temporary folder left behind");
        assert!(
            save_hf_folder(&base, &base.weights, &dir).is_err(),
            "refuses a non-empty folder"
        );
    }
}

#[test]
fn bf16_export_says_so_and_loads_as_f32() {
    let base = tiny_base(Arch::Llama, 3, DType::BF16, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_hf_folder(&base, &base.weights, tmp.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
    let loaded = load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None).unwrap();
    let embed = &loaded.weights["model.embed_tokens.weight"];
    assert_eq!(embed.dtype(), DType::F32);
    let want = base.weights["model.embed_tokens.weight"]
        .to_dtype(DType::F32)
        .unwrap();
    assert_same_weights(
        &HashMap::from([("e".into(), embed.clone())]),
        &HashMap::from([("e".into(), want)]),
    );
}

/// Writes `base` as a folder, then splits its safetensors into two shards with an index.
fn write_sharded(base: &BaseModel, dir: &Path) {
    save_hf_folder(base, &base.weights, dir).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in &base.weights {
        let (shard, file) = match name.contains("layers.1.") || name.starts_with("lm_head") {
            true => (&mut second, "model-00002-of-00002.safetensors"),
            false => (&mut first, "model-00001-of-00002.safetensors"),
        };
        shard.insert(name.clone(), tensor.clone());
        weight_map.insert(name.clone(), json!(file));
    }
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_folder_loads() {
    let base = tiny_base(Arch::Llama, 11, DType::F32, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_sharded(&base, tmp.path());
    let loaded = load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None).unwrap();
    assert_same_weights(&loaded.weights, &base.weights);
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let base = tiny_base(Arch::Qwen2, 5, DType::F32, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_hf_folder(&base, &base.weights, tmp.path()).unwrap();
    let mut broken = base.weights.clone();
    broken.remove("model.layers.1.self_attn.k_proj.bias");
    broken.insert(
        "model.norm.weight".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&broken, tmp.path().join("model.safetensors")).unwrap();
    let msg = load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("model.layers.1.self_attn.k_proj.bias"),
        "{msg}"
    );
    assert!(
        msg.contains("model.norm.weight has shape [7], expected [32]"),
        "{msg}"
    );
}

#[test]
fn tokenizer_config_forms_transformers_writes() {
    let base = tiny_base(Arch::Llama, 1, DType::F32, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_hf_folder(&base, &base.weights, tmp.path()).unwrap();
    // AddedToken objects, no pad token, and a list of named templates.
    let config = json!({
        "bos_token": {"content": "<|im_start|>", "lstrip": false, "special": true},
        "eos_token": {"content": "<|endoftext|>"},
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    });
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None)
        .unwrap()
        .tokenizer;
    assert_eq!(tok.bos.map(|t| t.id), Some(1));
    assert_eq!((tok.eos.id, tok.pad_id), (0, 0), "pad falls back to EOS");
    assert_eq!(tok.chat_template.as_deref(), Some("D"));

    // A separate chat_template.jinja wins, as in transformers; bos may be absent (Qwen2).
    std::fs::write(tmp.path().join("chat_template.jinja"), "J").unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "bos_token": null}"#,
    )
    .unwrap();
    let tok = load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None)
        .unwrap()
        .tokenizer;
    assert_eq!(
        (tok.bos, tok.eos.id, tok.chat_template.as_deref()),
        (None, 2, Some("J"))
    );
}

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF files written the way llama.cpp converts (permuted Q/K for llama)

#[test]
fn synthetic_gguf_loads_as_the_original_hf_weights() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let base = tiny_base(arch, 9, DType::F32, &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tiny.gguf");
        write_tiny_gguf(&path, arch, 9).unwrap();
        let loaded = load_base(&path, DType::F32, &Device::Cpu, Quantize::None).unwrap();
        assert_eq!(loaded.config, base.config, "{arch:?}");
        assert_same_weights(&loaded.weights, &base.weights);
        assert_same_tokenizer(&loaded, &base);
        // A folder holding one .gguf file loads too (llama.cpp-style downloads).
        assert_eq!(
            load_base(tmp.path(), DType::F32, &Device::Cpu, Quantize::None)
                .unwrap()
                .weights
                .len(),
            base.weights.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct Q4_1 GGUF, compared with transformers 5.24.0's GGUF loader
// (`AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, torch 2.15,
// tokenizers 0.23.3), run on 2026-11-27. Sums are float64 sums of the float32 tensors.

fn smollm2() -> &'static BaseModel {
    static MODEL: OnceLock<BaseModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_base(
            &common::smollm2_gguf(),
            DType::F32,
            &Device::Cpu,
            Quantize::None,
        )
        .unwrap()
    })
}

#[test]
fn smollm2_gguf_config() {
    let cfg = &smollm2().config;
    let want = ModelConfig {
        arch: Arch::Llama,
        model_type: "llama".into(),
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        // The metadata holds the f32 nearest 1e-5 (transformers reports 9.999999747378752e-06).
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
    };
    assert_eq!(cfg, &want);
    assert!(!smollm2().weights.contains_key("lm_head.weight"));
}

/// Probe strings and their ids from transformers' GGUF tokenizer. transformers builds SmolLM2's
/// pre-tokenizer as plain GPT-2 ByteLevel (it has no "smollm" entry); with SmolLM2's real
/// `Digits(individual_digits) + ByteLevel` the ids were the same for every probe, because the
/// vocabulary has no multi-digit tokens.
const SMOLLM2_PROBES: [(&str, &[u32]); 7] = [
    (
        "Hello, world! This is a plain English sentence.",
        &[19556, 28, 905, 17, 669, 314, 253, 9079, 2321, 6330, 30],
    ),
    ("12345", &[33, 34, 35, 36, 37]),
    (
        "The year 2024 had 366 days; pi is 3.14159.",
        &[
            504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 43, 16916, 314, 216, 35, 30,
            33, 36, 33, 37, 41, 30,
        ],
    ),
    (
        "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}",
        &[
            7853, 1085, 1000, 1662, 472, 1303, 1792, 446, 37024, 21653, 33, 28, 216, 34, 28, 216,
            35, 26695, 472, 1628, 34115, 17, 45257, 42, 47, 29394, 1792, 4258, 198, 109,
        ],
    ),
    (
        "  leading spaces\n\n\ttab and\r\nCRLF   trailing  ",
        &[
            216, 2899, 5600, 1116, 197, 15999, 284, 201, 198, 9088, 60, 54, 256, 35079, 256,
        ],
    ),
    (
        "emoji 🤗🚀 and café naïve",
        &[
            391, 33777, 15107, 114, 241, 10813, 244, 218, 284, 37366, 15486, 46494,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 = 4.<|im_end|>\n",
        &[
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198, 34, 27, 34,
            446, 216, 36, 30, 2, 198,
        ],
    ),
];

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let tok = &smollm2().tokenizer;
    for (text, ids) in SMOLLM2_PROBES {
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(ids).unwrap(), text);
    }
    // transformers: bos <|im_start|>, eos and pad <|im_end|>; add_bos_token false.
    assert_eq!(
        tok.bos.as_ref().map(|t| (t.text.as_str(), t.id)),
        Some(("<|im_start|>", 1))
    );
    assert_eq!(
        (tok.eos.text.as_str(), tok.eos.id, tok.pad_id),
        ("<|im_end|>", 2, 2)
    );
    assert!(!tok.adds_bos());
    assert!(tok
        .chat_template
        .as_deref()
        .unwrap()
        .starts_with("{% for message in messages %}"));
}

fn f64_sum(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// `(name, sum, the first 6 values of row 0, the sums of rows 0..4)` from transformers.
type Figures = (&'static str, f64, [f64; 6], [f64; 4]);
const SMOLLM2_WEIGHTS: [Figures; 4] = [
    (
        "model.embed_tokens.weight",
        -15353.04449415207,
        [
            -0.10654449462890625,
            0.032978057861328125,
            0.048198699951171875,
            -0.022830963134765625,
            -0.06849288940429688,
            -0.04566192626953125,
        ],
        [
            -2.2541093826293945,
            0.35922718048095703,
            0.844447135925293,
            -0.22331809997558594,
        ],
    ),
    (
        // Un-permuted: row order is HF's (pairs i, i + 32 of each head).
        "model.layers.0.self_attn.q_proj.weight",
        59.22322082519531,
        [
            -0.0963134765625,
            0.1573486328125,
            -0.0963134765625,
            -0.73046875,
            1.1719970703125,
            -0.0963134765625,
        ],
        [
            1.00726318359375,
            4.22308349609375,
            3.082550048828125,
            -0.935577392578125,
        ],
    ),
    (
        "model.layers.0.self_attn.k_proj.weight",
        26.937057495117188,
        [
            -0.1552734375,
            0.3402099609375,
            -0.485595703125,
            -0.3204345703125,
            0.0098876953125,
            0.175048828125,
        ],
        [
            3.87286376953125,
            -0.98358154296875,
            0.114471435546875,
            1.159576416015625,
        ],
    ),
    (
        "model.layers.29.self_attn.k_proj.weight",
        87.89241790771484,
        [
            0.062408447265625,
            0.00433349609375,
            0.0333709716796875,
            0.01885223388671875,
            0.00433349609375,
            -0.11181640625,
        ],
        [
            -1.0412521362304688,
            -2.598419189453125,
            2.6454315185546875,
            -3.5951080322265625,
        ],
    ),
];

#[test]
fn smollm2_gguf_weights_match_transformers() {
    let weights = &smollm2().weights;
    for (name, sum, row0, row_sums) in SMOLLM2_WEIGHTS {
        let t = &weights[name];
        assert_close(f64_sum(t), sum, name);
        let first: Vec<f32> = t
            .get(0)
            .unwrap()
            .narrow(0, 0, 6)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (got, want) in first.iter().zip(row0) {
            assert_close(*got as f64, want, name);
        }
        for (row, want) in row_sums.iter().enumerate() {
            assert_close(
                f64_sum(&t.get(row).unwrap()),
                *want,
                &format!("{name} row {row}"),
            );
        }
    }
    assert_close(
        f64_sum(&weights["model.norm.weight"]),
        1038.33203125,
        "model.norm.weight",
    );
    assert_close(
        f64_sum(&weights["model.layers.0.mlp.down_proj.weight"]),
        150.63577270507812,
        "down_proj",
    );
}

#[test]
fn smollm2_gguf_exports_to_an_identical_hf_folder() {
    let base = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    save_hf_folder(base, &base.weights, &dir).unwrap();
    let loaded = load_base(&dir, DType::F32, &Device::Cpu, Quantize::None).unwrap();
    assert_eq!(loaded.config, base.config);
    assert_same_weights(&loaded.weights, &base.weights);
    assert_same_tokenizer(&loaded, base);
    for (text, ids) in SMOLLM2_PROBES {
        assert_eq!(loaded.tokenizer.encode(text).unwrap(), ids, "{text:?}");
    }
}

/// `model.base = "org/name"` resolves offline in the Hugging Face cache layout
/// (`models--org--name/refs/main` naming a snapshot folder).
#[test]
fn hf_cache_ids_resolve_offline() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--acme--tiny-llama");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let fixture = common::fixtures().join("tiny-llama");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture.join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", hub.path());
    let base = load_base(
        Path::new("acme/tiny-llama"),
        DType::F32,
        &Device::Cpu,
        Quantize::None,
    )
    .unwrap();
    assert_eq!(base.config.hidden_size, 16);
    let err = load_base(
        Path::new("acme/missing"),
        DType::F32,
        &Device::Cpu,
        Quantize::None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("acme/missing") && err.contains("Hugging Face cache"),
        "{err}"
    );
}
