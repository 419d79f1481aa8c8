//! `config.json` as HuggingFace writes it for ViT (`ViTModel`, `ViTForImageClassification`)
//! and DINOv2 (`Dinov2Model`, `Dinov2ForImageClassification`), plus a sub-model's elastic
//! widths under the key `"raffm"`, as for the other families.
//!
//! The config is kept as its raw JSON object and a typed view of the fields we use: keys we
//! do not know survive a load/save round trip untouched.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::core::elastic::{Axis, AxisSizes, Widths};
use crate::core::error::{Error, Result};
use crate::models::families::config_fields::Fields;
use crate::models::families::layer_stack::LayerStack;

/// Which HF layout: the names, the layer's parts and the classification head differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `ViTModel`: `layernorm_before`/`layernorm_after`, `intermediate`/`output`, no
    /// LayerScale; the classifier reads the CLS token.
    Vit,
    /// `Dinov2Model`: `norm1`/`norm2`, `mlp.fc1`/`mlp.fc2`, LayerScale; the classifier reads
    /// the CLS token concatenated with the mean of the patch tokens.
    Dinov2,
}

impl Variant {
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "vit" => Some(Variant::Vit),
            "dinov2" => Some(Variant::Dinov2),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Variant::Vit => "vit",
            Variant::Dinov2 => "dinov2",
        }
    }

    /// The prefix HF gives the backbone inside `...ForImageClassification`.
    pub fn base_prefix(self) -> &'static str {
        match self {
            Variant::Vit => "vit.",
            Variant::Dinov2 => "dinov2.",
        }
    }
}

/// The widths of a layer of a full model.
pub fn full_layer(heads: usize, head_dim: usize, ffn: usize) -> AxisSizes {
    AxisSizes::of(&[
        (Axis::Heads, heads),
        (Axis::HeadDim, head_dim),
        (Axis::Ffn, ffn),
    ])
}

/// Typed view of an HF ViT or DINOv2 `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub variant: Variant,
    pub hidden_size: usize,
    /// Heads of the model the config was made for; per-layer counts are in `layers`.
    pub num_attention_heads: usize,
    pub head_dim: usize,
    /// The full model's head dimension: the attention scale stays `1/sqrt` of it in a
    /// sub-model with narrower heads, which then computes the masked full model.
    pub attention_scale_head_dim: usize,
    /// FFN width of the model the config was made for (DINOv2: `mlp_ratio * hidden_size`).
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    /// The input size the position embeddings were trained at.
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// DINOv2's LayerScale (a per-channel scale on each residual branch).
    pub layer_scale: bool,
    /// DINOv2's mask token (used only with masked patches; HF's default is to have one).
    pub use_mask_token: bool,
    /// Task head: `...ForImageClassification` with these labels (empty: a backbone).
    pub classifier: bool,
    pub num_labels: usize,
    /// Per-layer widths (heads, head_dim, ffn) and the global layer each is.
    pub stack: LayerStack,
    raw: Map<String, Value>,
}

/// The widths of each layer.
const LAYER_AXES: [Axis; 3] = [Axis::Heads, Axis::HeadDim, Axis::Ffn];

impl VitConfig {
    /// Builds the typed view from a parsed `config.json`; `path` only names it in errors.
    pub fn from_json(variant: Variant, raw: Map<String, Value>, path: &Path) -> Result<Self> {
        let f = Fields::new(&raw, path);
        let bad = |m: String| Error::format(path, m);
        let act = f
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            return Err(bad(format!(
                "unsupported activation `{act}` (ViT and DINOv2 use gelu)"
            )));
        }
        if !f.bool("qkv_bias", true)? {
            return Err(bad("`qkv_bias` false is not supported".into()));
        }
        if f.bool("use_swiglu_ffn", false)? {
            return Err(bad(
                "`use_swiglu_ffn` (DINOv2 giant) is not supported".into()
            ));
        }
        let hidden_size = f.usize("hidden_size", None)?;
        let num_hidden_layers = f.usize("num_hidden_layers", None)?;
        let num_attention_heads = f.usize("num_attention_heads", None)?;
        if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        let head_dim = hidden_size / num_attention_heads;
        let intermediate_size = match variant {
            Variant::Vit => f.usize("intermediate_size", None)?,
            Variant::Dinov2 => {
                let ratio = f.f64("mlp_ratio", 4.0)?;
                let n = hidden_size as f64 * ratio;
                if !(n >= 1.0 && n.fract() == 0.0) {
                    return Err(bad(format!(
                        "mlp_ratio {ratio} times hidden_size {hidden_size} is not a whole number"
                    )));
                }
                n as usize
            }
        };
        let default_eps = match variant {
            Variant::Vit => 1e-12,
            Variant::Dinov2 => 1e-6,
        };
        let full = || Ok(full_layer(num_attention_heads, head_dim, intermediate_size));
        let (stack, scale) = LayerStack::read(&raw, num_hidden_layers, full).map_err(bad)?;
        let attention_scale_head_dim = scale.unwrap_or(head_dim);
        let architectures: Vec<&str> = f
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let classifier = architectures
            .iter()
            .any(|a| a.ends_with("ForImageClassification"));
        let num_labels = match f.get("id2label").and_then(Value::as_object) {
            Some(labels) => labels.len(),
            None => f.usize("num_labels", Some(0))?,
        };
        let config = VitConfig {
            variant,
            hidden_size,
            num_attention_heads,
            head_dim,
            attention_scale_head_dim,
            intermediate_size,
            layer_norm_eps: f.f64("layer_norm_eps", default_eps)?,
            image_size: f.usize("image_size", Some(224))?,
            patch_size: f.usize("patch_size", None)?,
            num_channels: f.usize("num_channels", Some(3))?,
            layer_scale: variant == Variant::Dinov2,
            use_mask_token: variant == Variant::Dinov2 && f.bool("use_mask_token", true)?,
            classifier,
            num_labels,
            stack,
            raw,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the widths: at least one of everything, and a patch that fits the image.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_size == 0
            || self.patch_size == 0
            || self.num_channels == 0
            || self.attention_scale_head_dim == 0
        {
            return Err(
                "hidden_size, patch_size, num_channels and the attention scale must be positive"
                    .into(),
            );
        }
        if self.image_size < self.patch_size {
            return Err(format!(
                "image_size {} is smaller than patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err("layer_norm_eps must be positive".into());
        }
        if self.classifier && self.num_labels == 0 {
            return Err("an image classifier needs id2label or num_labels".into());
        }
        self.stack.validate(&LAYER_AXES)?;
        Ok(())
    }

    /// Patches per side at the pre-training size: the position grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens of an input `size` pixels square: the CLS token and the patches.
    pub fn tokens_at(&self, size: usize) -> usize {
        1 + (size / self.patch_size).pow(2)
    }

    fn full_layer(&self) -> AxisSizes {
        full_layer(
            self.num_attention_heads,
            self.head_dim,
            self.intermediate_size,
        )
    }

    /// True when HF's reading of the config describes the model exactly.
    pub fn is_uniform_full(&self) -> bool {
        self.stack.is_full(&self.full_layer())
            && self.attention_scale_head_dim == self.head_dim
            && self.num_attention_heads * self.head_dim == self.hidden_size
            && (self.variant == Variant::Vit
                || self.intermediate_size.is_multiple_of(self.hidden_size))
    }

    pub fn widths(&self) -> Widths {
        self.stack
            .widths(AxisSizes::of(&[(Axis::Hidden, self.hidden_size)]))
    }

    /// A copy with other widths (a sub-model's config). Where every layer is alike and
    /// heads times head_dim is the hidden size, the HF fields say so and HF tooling loads
    /// the sub-model as it is.
    pub fn with_widths(&self, widths: &Widths) -> Result<Self> {
        let mut c = self.clone();
        c.hidden_size = widths.global.get(Axis::Hidden);
        if let Some(first) = c.stack.set(widths) {
            c.num_attention_heads = first.get(Axis::Heads);
            c.head_dim = first.get(Axis::HeadDim);
            c.intermediate_size = first.get(Axis::Ffn);
        }
        c.validate().map_err(Error::Invalid)?;
        Ok(c)
    }

    /// The labels, in id order (`LABEL_i` where the config names none).
    pub fn label_names(&self) -> Vec<String> {
        let names = self.raw.get("id2label").and_then(Value::as_object);
        (0..self.num_labels)
            .map(|i| {
                names
                    .and_then(|m| m.get(&i.to_string()))
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("LABEL_{i}"), str::to_string)
            })
            .collect()
    }

    /// Declares a classification head for `labels`.
    pub fn set_labels(&mut self, labels: &[String]) {
        let id2label: Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        self.raw.insert("id2label".into(), Value::Object(id2label));
        self.raw.insert("label2id".into(), Value::Object(label2id));
        self.num_labels = labels.len();
        self.classifier = true;
    }

    /// The config as HF's `config.json`: the original object with our fields written back.
    pub fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("model_type".into(), json!(self.variant.model_type()));
        raw.insert("hidden_size".into(), json!(self.hidden_size));
        raw.insert("num_hidden_layers".into(), json!(self.stack.len()));
        raw.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        match self.variant {
            Variant::Vit => {
                raw.insert("intermediate_size".into(), json!(self.intermediate_size));
            }
            // HF's mlp_ratio is an integer; other widths live in the elastic section.
            Variant::Dinov2 if self.intermediate_size.is_multiple_of(self.hidden_size) => {
                let ratio = self.intermediate_size / self.hidden_size;
                raw.insert("mlp_ratio".into(), json!(ratio));
            }
            Variant::Dinov2 => {}
        }
        if self.classifier {
            let name = match self.variant {
                Variant::Vit => "ViTForImageClassification",
                Variant::Dinov2 => "Dinov2ForImageClassification",
            };
            raw.insert("architectures".into(), json!([name]));
            raw.insert("num_labels".into(), json!(self.num_labels));
        }
        let scale = Some(self.attention_scale_head_dim);
        self.stack.write(&mut raw, self.is_uniform_full(), scale);
        Value::Object(raw)
    }
}

/// Config of a small vision transformer, for tests and fixtures.
pub fn tiny_config(
    variant: Variant,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    image: usize,
    patch: usize,
) -> VitConfig {
    let mut value = json!({
        "model_type": variant.model_type(),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image,
        "patch_size": patch,
        "num_channels": 3,
        "hidden_act": "gelu",
    });
    match variant {
        Variant::Vit => value["intermediate_size"] = json!(ffn),
        Variant::Dinov2 => value["mlp_ratio"] = json!(ffn as f64 / hidden as f64),
    }
    let Value::Object(raw) = value else {
        unreachable!()
    };
    VitConfig::from_json(variant, raw, Path::new("<tiny config>")).expect("tiny config is valid")
}
