//! LoRA adapters: trainable `A: [r, in]` and `B: [out, r]` per target projection, added to the
//! frozen base as `W x + (alpha / r) * B A dropout(x)` (PEFT's definition), and stored on disk in
//! PEFT's format so `peft.PeftModel.from_pretrained` and llama.cpp's converter read them.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use orpo_api::spec::{LoraSpec, LORA_MODULES};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::model::ModelConfig;
use crate::{Error, Result};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// One adapted projection.
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

pub struct LoraAdapter {
    pub r: usize,
    pub alpha: f64,
    /// `alpha / r` (or `alpha / sqrt(r)` for an rsLoRA adapter loaded from disk).
    pub scale: f64,
    pub use_rslora: bool,
    pub dropout: f64,
    /// Module names in `LORA_MODULES` order.
    pub target_modules: Vec<String>,
    /// Per layer, per module (indexed as `LORA_MODULES`).
    layers: Vec<[Option<LoraPair>; 7]>,
}

/// `(in_features, out_features)` of module `m` (an index into `LORA_MODULES`).
pub fn module_dims(cfg: &ModelConfig, m: usize) -> (usize, usize) {
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match LORA_MODULES[m] {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, i),
        _ => (i, h), // down_proj
    }
}

/// The Hugging Face path of module `m` (an index into `LORA_MODULES`) of layer `layer`, e.g.
/// `model.layers.3.self_attn.q_proj`; its weight is `<path>.weight`.
pub fn module_path(layer: usize, m: usize) -> String {
    let block = if m < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{layer}.{block}.{}", LORA_MODULES[m])
}

/// PEFT's key prefix for module `m` of layer `layer`.
pub fn peft_prefix(layer: usize, m: usize) -> String {
    format!("base_model.model.{}", module_path(layer, m))
}

fn module_index(name: &str) -> Option<usize> {
    LORA_MODULES.iter().position(|m| *m == name)
}

impl LoraAdapter {
    /// A fresh adapter as PEFT makes one: `A ~ kaiming_uniform(a = sqrt(5))`, i.e.
    /// `U(-1/sqrt(in), 1/sqrt(in))`, and `B = 0`, so training starts at the base model.
    pub fn new(cfg: &ModelConfig, spec: &LoraSpec, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mods = ordered_modules(&spec.target_modules);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let mut slot: [Option<LoraPair>; 7] = Default::default();
            for &m in &mods {
                let (fan_in, fan_out) = module_dims(cfg, m);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let a: Vec<f32> = (0..spec.r * fan_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                slot[m] = Some(LoraPair {
                    a: Var::from_tensor(&Tensor::from_vec(a, (spec.r, fan_in), device)?)?,
                    b: Var::zeros((fan_out, spec.r), DType::F32, device)?,
                });
            }
            layers.push(slot);
        }
        Ok(LoraAdapter {
            r: spec.r,
            alpha: spec.alpha,
            scale: spec.alpha / spec.r as f64,
            use_rslora: false,
            dropout: spec.dropout,
            target_modules: mods.iter().map(|&m| LORA_MODULES[m].to_string()).collect(),
            layers,
        })
    }

    pub fn get(&self, layer: usize, module: usize) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[module].as_ref())
    }

    /// Every trainable tensor with its PEFT name, in a stable order (layer, module, A then B):
    /// the optimizer keys its state by these names.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (l, slot) in self.layers.iter().enumerate() {
            for (m, pair) in slot.iter().enumerate() {
                if let Some(p) = pair {
                    let prefix = peft_prefix(l, m);
                    out.push((format!("{prefix}.lora_A.weight"), &p.a));
                    out.push((format!("{prefix}.lora_B.weight"), &p.b));
                }
            }
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32, PEFT key names,
    /// metadata `format = pt`) into `dir`, which must exist.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let text = serde_json::to_string_pretty(&config).expect("json");
        let cfg_path = dir.join(ADAPTER_CONFIG);
        std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
        let tensors: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect();
        write_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)
    }

    /// Reads a PEFT LoRA adapter folder and checks it against the model's shapes.
    pub fn load_peft(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let bad = |message: String| Error::Adapter {
            path: dir.to_path_buf(),
            message,
        };
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let ac: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("{ADAPTER_CONFIG}: {e}")))?;
        if ac["peft_type"].as_str().unwrap_or("LORA") != "LORA" {
            return Err(bad(format!("peft_type {} is not LORA", ac["peft_type"])));
        }
        for (key, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out")] {
            if ac[key].as_bool().unwrap_or(false) {
                return Err(bad(format!("{what} adapters are not supported")));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if ac[key].as_object().is_some_and(|o| !o.is_empty()) {
                return Err(bad(format!("{key} is not supported")));
            }
        }
        if !ac["modules_to_save"].is_null() && ac["modules_to_save"] != json!([]) {
            return Err(bad("modules_to_save is not supported".into()));
        }
        let r = ac["r"].as_u64().ok_or_else(|| bad("missing r".into()))? as usize;
        let alpha = ac["lora_alpha"].as_f64().unwrap_or(8.0);
        let use_rslora = ac["use_rslora"].as_bool().unwrap_or(false);
        let w_path = dir.join(ADAPTER_WEIGHTS);
        let tensors = candle_core::safetensors::load(&w_path, device)
            .map_err(|e| bad(format!("{ADAPTER_WEIGHTS}: {e}")))?;
        let mut layers: Vec<[Option<LoraPair>; 7]> = (0..cfg.num_hidden_layers)
            .map(|_| Default::default())
            .collect();
        let mut found = std::collections::BTreeSet::new();
        for (l, slot) in layers.iter_mut().enumerate() {
            for (m, pair) in slot.iter_mut().enumerate() {
                let prefix = peft_prefix(l, m);
                let a = tensors.get(&format!("{prefix}.lora_A.weight"));
                let b = tensors.get(&format!("{prefix}.lora_B.weight"));
                let (a, b) = match (a, b) {
                    (Some(a), Some(b)) => (a, b),
                    (None, None) => continue,
                    _ => {
                        return Err(bad(format!(
                            "{prefix}: lora_A and lora_B must come in pairs"
                        )))
                    }
                };
                let (fan_in, fan_out) = module_dims(cfg, m);
                if a.dims() != [r, fan_in] || b.dims() != [fan_out, r] {
                    return Err(bad(format!(
                        "{prefix}: shapes {:?} and {:?} do not fit the model (expected [{r}, {fan_in}] and [{fan_out}, {r}])",
                        a.dims(),
                        b.dims()
                    )));
                }
                found.insert(m);
                *pair = Some(LoraPair {
                    a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                    b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                });
            }
        }
        let known: usize = layers.iter().flatten().filter(|p| p.is_some()).count() * 2;
        if known != tensors.len() {
            let extra: Vec<_> = tensors
                .keys()
                .filter(|k| !k.contains(".lora_A.") && !k.contains(".lora_B."))
                .take(3)
                .collect();
            return Err(bad(format!(
                "{} tensors are not LoRA weights of this model's layers (e.g. {extra:?})",
                tensors.len() - known
            )));
        }
        if found.is_empty() {
            return Err(bad("no LoRA weights found".into()));
        }
        Ok(LoraAdapter {
            r,
            alpha,
            scale: if use_rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            },
            use_rslora,
            dropout: ac["lora_dropout"].as_f64().unwrap_or(0.0),
            target_modules: found.iter().map(|&m| LORA_MODULES[m].to_string()).collect(),
            layers,
        })
    }
}

/// Target module names in `LORA_MODULES` order, deduplicated (the spec has been validated).
fn ordered_modules(names: &[String]) -> Vec<usize> {
    let mut v: Vec<usize> = names.iter().filter_map(|n| module_index(n)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Writes f32/bf16/f16 tensors as safetensors with PEFT's `{"format": "pt"}` metadata.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    write_safetensors_with(path, tensors, &[("format", "pt".to_string())])
}

/// [`write_safetensors`] with other metadata. The file is made world-readable (0644):
/// safetensors writes 0600, and checkpoints are meant to be downloaded and shared.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let flat = t.flatten_all()?;
        let (dtype, bytes): (_, Vec<u8>) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                flat.to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                flat.to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                flat.to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(Error::Config(format!(
                    "cannot write {name}: dtype {other:?}"
                )))
            }
        };
        data.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .expect("shape and byte length agree");
            (n.clone(), view)
        })
        .collect();
    let meta: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}
