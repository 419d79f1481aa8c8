//! LoRA adapters in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`,
//! with PEFT's tensor names, so `peft.PeftModel.from_pretrained` loads them.
//!
//! For a base projection `W` (`[out, in]`) an adapter adds `scaling * B A`, with `A`
//! (`lora_A.weight`, `[r, in]`) and `B` (`lora_B.weight`, `[out, r]`), and `scaling =
//! alpha / r` (or `alpha / sqrt(r)` with rsLoRA). `A` starts as PEFT's Kaiming-uniform
//! draw and `B` at zero, so a fresh adapter changes nothing.
//!
//! What travels: a client downloads the base model once (it is frozen), and every round
//! only the adapter (`A` and `B` of every target module); it uploads the same.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::config::LlamaConfig;
use super::layer_tensor;
use crate::core::checkpoint::{decode_f32, write_safetensors};
use crate::core::error::{Error, Result};
use crate::core::io::StagingDir;
use crate::core::rng::SplitMix64;
use crate::core::tensor::HostTensor;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The projections an adapter may target, by PEFT's module name, with the layer key of
/// the base weight each adapts.
pub const TARGETS: [(&str, &str); 7] = [
    ("q_proj", "self_attn.q_proj"),
    ("k_proj", "self_attn.k_proj"),
    ("v_proj", "self_attn.v_proj"),
    ("o_proj", "self_attn.o_proj"),
    ("gate_proj", "mlp.gate_proj"),
    ("up_proj", "mlp.up_proj"),
    ("down_proj", "mlp.down_proj"),
];

/// The default targets: the attention projections.
pub const DEFAULT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// The options of an adapter, as `adapter_config.json` holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// PEFT module names (`q_proj`, ...), in [`TARGETS`] order.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    /// What the adapter was made for (PEFT's `base_model_name_or_path`).
    pub base_model: String,
}

impl LoraConfig {
    pub fn new(r: usize, lora_alpha: f64, lora_dropout: f64, targets: &[String]) -> Result<Self> {
        let config = LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules: TARGETS
                .iter()
                .filter(|(name, _)| targets.iter().any(|t| t == name))
                .map(|(name, _)| name.to_string())
                .collect(),
            use_rslora: false,
            base_model: String::new(),
        };
        if let Some(t) = targets
            .iter()
            .find(|t| !TARGETS.iter().any(|(n, _)| n == t))
        {
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            return Err(Error::Invalid(format!(
                "unknown LoRA target module `{t}` (expected some of {})",
                names.join(", ")
            )));
        }
        config.validate().map_err(Error::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("LoRA rank r must be at least 1".into());
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(format!("lora_alpha {} must be positive", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            ));
        }
        if self.target_modules.is_empty() {
            return Err("an adapter needs at least one target module".into());
        }
        Ok(())
    }

    /// The factor on `B A`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The layer keys of the adapted base weights (`self_attn.q_proj`, ...).
    pub fn target_keys(&self) -> Vec<&'static str> {
        TARGETS
            .iter()
            .filter(|(name, _)| self.target_modules.iter().any(|t| t == name))
            .map(|(_, key)| *key)
            .collect()
    }

    /// `adapter_config.json` as PEFT writes it for a LoRA on a causal LM.
    pub fn to_json(&self) -> Value {
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "layer_replication": null,
            "lora_alpha": self.lora_alpha,
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }

    /// Reads an `adapter_config.json`; what we cannot apply (DoRA, biases, per-module ranks)
    /// is an error naming the file.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::format(path, m);
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => return Err(bad(format!("peft_type {other:?} is not \"LORA\""))),
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
        let lora_alpha = get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("`lora_alpha` must be a number".into()))?;
        let lora_dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
        for unsupported in ["use_dora", "fan_in_fan_out"] {
            if flag(unsupported) {
                return Err(bad(format!("`{unsupported}` true is not supported")));
            }
        }
        if get("bias")
            .and_then(Value::as_str)
            .is_some_and(|b| b != "none")
        {
            return Err(bad("only `bias`: \"none\" is supported".into()));
        }
        for pattern in ["rank_pattern", "alpha_pattern"] {
            if get(pattern)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!("a non-empty `{pattern}` is not supported")));
            }
        }
        let targets: Vec<String> = match get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`target_modules` must be a list of names".into()))?,
            _ => return Err(bad("`target_modules` must be a list of names".into())),
        };
        let mut config = LoraConfig::new(r, lora_alpha, lora_dropout, &targets)
            .map_err(|e| bad(e.to_string()))?;
        config.use_rslora = flag("use_rslora");
        config.base_model = get("base_model_name_or_path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(config)
    }
}

/// PEFT's name of the A or B factor of the adapter on `module` (an HF module path such as
/// `model.layers.0.self_attn.q_proj`).
pub fn peft_name(module: &str, factor: Factor) -> String {
    let f = match factor {
        Factor::A => "lora_A",
        Factor::B => "lora_B",
    };
    format!("base_model.model.{module}.{f}.weight")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    A,
    B,
}

/// The two factors of one adapted projection.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: HostTensor,
    /// `[out, r]`
    pub b: HostTensor,
}

/// An adapter for a whole model: one [`LoraPair`] per adapted projection, by HF module
/// path, in model order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, LoraPair>,
}

impl LoraAdapter {
    /// The module paths an adapter of `lora` on `model` adapts, with each base weight's
    /// `[out, in]` shape.
    pub fn targets(lora: &LoraConfig, model: &LlamaConfig) -> Vec<(String, [usize; 2])> {
        let shapes = crate::models::families::ModelConfig::Llama(model.clone()).shapes();
        let shape_of = |name: &str| {
            let (_, s) = shapes
                .iter()
                .find(|(t, _)| t.name == name)
                .expect("a layer tensor");
            [s[0], s[1]]
        };
        (0..model.stack.len())
            .flat_map(|layer| {
                lora.target_keys()
                    .into_iter()
                    .map(move |key| layer_tensor(layer, key))
            })
            .map(|module| {
                let shape = shape_of(&format!("{module}.weight"));
                (module, shape)
            })
            .collect()
    }

    /// A fresh adapter: `A` drawn as PEFT draws it (Kaiming-uniform with a = sqrt(5), that
    /// is U(-1/sqrt(in), 1/sqrt(in))), seeded; `B` zero.
    pub fn init(lora: &LoraConfig, model: &LlamaConfig, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let modules = Self::targets(lora, model)
            .into_iter()
            .map(|(module, [out, inp])| {
                let bound = 1.0 / (inp as f64).sqrt();
                let a = (0..lora.r * inp)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let pair = LoraPair {
                    a: HostTensor::new(vec![lora.r, inp], a),
                    b: HostTensor::zeros(vec![out, lora.r]),
                };
                (module, pair)
            })
            .collect();
        LoraAdapter {
            config: lora.clone(),
            modules,
        }
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> u64 {
        self.modules
            .values()
            .map(|p| (p.a.numel() + p.b.numel()) as u64)
            .sum()
    }

    /// Checks the adapter fits `model`: every target module present with `[r, in]` and
    /// `[out, r]` factors, nothing else. `path` names the adapter in errors.
    pub fn check_against(&self, model: &LlamaConfig, path: &Path) -> Result<()> {
        let r = self.config.r;
        let targets = Self::targets(&self.config, model);
        for (module, [out, inp]) in &targets {
            let pair = self
                .modules
                .get(module)
                .ok_or_else(|| Error::format(path, format!("missing the adapter of `{module}`")))?;
            for (factor, t, want) in [
                (Factor::A, &pair.a, [r, *inp]),
                (Factor::B, &pair.b, [*out, r]),
            ] {
                if t.shape != want {
                    return Err(Error::format(
                        path,
                        format!(
                            "`{}` has shape {:?} but r = {r} and the base model imply {want:?}",
                            peft_name(module, factor),
                            t.shape
                        ),
                    ));
                }
            }
        }
        if self.modules.len() != targets.len() {
            let extra: Vec<&String> = self
                .modules
                .keys()
                .filter(|m| !targets.iter().any(|(t, _)| t == *m))
                .collect();
            return Err(Error::format(
                path,
                format!("adapters of modules the config does not target: {extra:?}"),
            ));
        }
        Ok(())
    }

    /// Reads an adapter folder and checks it against the base model's config.
    pub fn load(dir: &Path, model: &LlamaConfig) -> Result<Self> {
        let adapter = Self::read(dir)?;
        adapter.check_against(model, &dir.join(ADAPTER_WEIGHTS_FILE))?;
        Ok(adapter)
    }

    /// Reads an adapter folder without a base model to check it against (the caller
    /// checks what it makes of it, e.g. its restriction to a sub-model).
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
        let config = LoraConfig::from_json(&value, &config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let st = crate::core::safetensors_header::deserialize(&weights_path, &bytes)?;
        let mut halves: BTreeMap<String, [Option<HostTensor>; 2]> = BTreeMap::new();
        for (name, view) in st.tensors() {
            let (module, slot) = name
                .strip_prefix("base_model.model.")
                .and_then(|n| {
                    n.strip_suffix(".lora_A.weight")
                        .map(|m| (m, 0))
                        .or_else(|| n.strip_suffix(".lora_B.weight").map(|m| (m, 1)))
                })
                .ok_or_else(|| {
                    Error::format(
                        &weights_path,
                        format!("`{name}` is not a PEFT LoRA tensor name"),
                    )
                })?;
            let data = decode_f32(&weights_path, &name, &view)?;
            if let Some(i) = crate::core::tensor::first_non_finite(&data) {
                return Err(Error::format(
                    &weights_path,
                    format!("tensor `{name}` has a non-finite value at element {i}"),
                ));
            }
            let tensor = HostTensor::new(view.shape().to_vec(), data);
            halves.entry(module.to_string()).or_default()[slot] = Some(tensor);
        }
        let mut modules = BTreeMap::new();
        for (module, [a, b]) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::format(
                    &weights_path,
                    format!("`{module}` has only one of lora_A and lora_B"),
                ));
            };
            modules.insert(module, LoraPair { a, b });
        }
        Ok(LoraAdapter { config, modules })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into a folder under
    /// construction; an adapter with a non-finite value is refused before anything is
    /// written, as every reader would refuse it.
    pub fn write_into(&self, staging: &mut StagingDir) -> Result<()> {
        for (module, pair) in &self.modules {
            for (factor, t) in [(Factor::A, &pair.a), (Factor::B, &pair.b)] {
                if let Some(i) = crate::core::tensor::first_non_finite(&t.data) {
                    return Err(Error::format(
                        staging.target(),
                        format!(
                            "not written: `{}` has a non-finite value ({}) at element {i}",
                            peft_name(module, factor),
                            t.data[i]
                        ),
                    ));
                }
            }
        }
        let text = serde_json::to_string_pretty(&self.config.to_json()).expect("config serializes");
        staging.write(ADAPTER_CONFIG_FILE, format!("{text}\n").as_bytes())?;
        let mut named: Vec<(String, &HostTensor)> = Vec::new();
        for (module, pair) in &self.modules {
            named.push((peft_name(module, Factor::A), &pair.a));
            named.push((peft_name(module, Factor::B), &pair.b));
        }
        staging.write_with(ADAPTER_WEIGHTS_FILE, |out| write_safetensors(out, &named))?;
        Ok(())
    }

    /// `W + scaling * B A` for every adapted weight of `tensors` (a base model's, by HF
    /// name): the merged model, a plain HF checkpoint.
    pub fn merge_into(&self, tensors: &mut BTreeMap<String, HostTensor>) {
        let scaling = self.config.scaling();
        for (module, pair) in &self.modules {
            let w = tensors
                .get_mut(&format!("{module}.weight"))
                .expect("check_against found every base weight");
            let (out, inp, r) = (w.shape[0], w.shape[1], self.config.r);
            // Accumulate in f64 so the merged weight is the exact sum rounded once.
            for o in 0..out {
                let b_row = &pair.b.data[o * r..(o + 1) * r];
                for i in 0..inp {
                    let delta: f64 = b_row
                        .iter()
                        .enumerate()
                        .map(|(k, &b)| b as f64 * pair.a.data[k * inp + i] as f64)
                        .sum();
                    let w_oi = &mut w.data[o * inp + i];
                    *w_oi = (*w_oi as f64 + scaling * delta) as f32;
                }
            }
        }
    }

    /// The weighted mean of adapters of one config, factor by factor (FedAvg of A and of
    /// B), in f64: identical adapters average to themselves exactly.
    pub fn average(adapters: &[(&LoraAdapter, f64)]) -> Result<LoraAdapter> {
        let (first, _) = adapters
            .first()
            .ok_or_else(|| Error::Invalid("no adapters to average".into()))?;
        if let Some((other, _)) = adapters.iter().find(|(a, _)| {
            a.config.r != first.config.r
                || a.config.target_modules != first.config.target_modules
                || a.modules.keys().ne(first.modules.keys())
        }) {
            return Err(Error::Invalid(format!(
                "adapters differ in rank or targets (r {} {:?} vs r {} {:?}); average adapters of one config",
                first.config.r, first.config.target_modules, other.config.r, other.config.target_modules
            )));
        }
        let total: f64 = adapters.iter().map(|(_, w)| w).sum();
        if total.is_nan() || total <= 0.0 {
            return Err(Error::Invalid(
                "adapter weights must sum to a positive number".into(),
            ));
        }
        let mean = |pick: &dyn Fn(&LoraPair) -> &HostTensor, module: &str| {
            let shape = pick(&first.modules[module]).shape.clone();
            let mut acc = vec![0f64; pick(&first.modules[module]).numel()];
            for (adapter, w) in adapters {
                for (s, &v) in acc.iter_mut().zip(&pick(&adapter.modules[module]).data) {
                    *s += w * v as f64;
                }
            }
            HostTensor::new(shape, acc.into_iter().map(|s| (s / total) as f32).collect())
        };
        let modules = first
            .modules
            .keys()
            .map(|m| {
                let pair = LoraPair {
                    a: mean(&|p| &p.a, m),
                    b: mean(&|p| &p.b, m),
                };
                (m.clone(), pair)
            })
            .collect();
        Ok(LoraAdapter {
            config: first.config.clone(),
            modules,
        })
    }
}

/// The keys `adapter_config.json` holds, for comparing with what PEFT writes.
pub fn config_keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(Map::keys)
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}
