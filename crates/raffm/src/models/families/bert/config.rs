//! `config.json` as HuggingFace writes it for BERT, RoBERTa and DistilBERT, plus a
//! sub-model's elastic widths (kept under the key `"raffm"`, so HF tooling ignores it and
//! our checkpoints stay self-describing).
//!
//! The config is kept as its raw JSON object and a typed view of the fields we use: keys we
//! do not know survive a load/save round trip untouched.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::elastic::{Axis, AxisSizes, Widths};
use crate::core::error::{Error, Result};
use crate::models::families::layer_stack::LayerStack;

/// The key under which the elastic widths live in `config.json`.
pub use crate::models::families::layer_stack::ELASTIC_KEY;

/// The model types of the family. All three are the same post-LayerNorm encoder; they
/// differ in tensor names and a few details handled where they matter (position ids,
/// pooler activation, token types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Bert,
    Roberta,
    DistilBert,
}

impl Variant {
    /// The variant of an HF `model_type`, if it is one of ours.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(Variant::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(Variant::Roberta),
            "distilbert" => Some(Variant::DistilBert),
            _ => None,
        }
    }

    /// The prefix HF puts before the encoder's tensors in task-head checkpoints.
    pub fn base_prefix(self) -> &'static str {
        match self {
            Variant::Bert => "bert.",
            Variant::Roberta => "roberta.",
            Variant::DistilBert => "distilbert.",
        }
    }

    /// HF class name of the model with a sequence-classification head.
    pub fn classification_architecture(self) -> &'static str {
        match self {
            Variant::Bert => "BertForSequenceClassification",
            Variant::Roberta => "RobertaForSequenceClassification",
            Variant::DistilBert => "DistilBertForSequenceClassification",
        }
    }
}

/// Feed-forward activation, by HF's `hidden_act` / `activation` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`"gelu"`).
    Gelu,
    /// Tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// The widths of a layer of a full model.
pub fn full_layer(num_heads: usize, head_dim: usize, ffn: usize) -> AxisSizes {
    AxisSizes::of(&[
        (Axis::Heads, num_heads),
        (Axis::HeadDim, head_dim),
        (Axis::Ffn, ffn),
    ])
}

/// Typed view of an HF encoder `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub variant: Variant,
    pub vocab_size: usize,
    /// This model's own hidden size (a sub-model's may be smaller than its global model's).
    pub hidden_size: usize,
    /// Heads of the model the config was made for; per-layer counts are in `layers`.
    pub num_attention_heads: usize,
    /// FFN width of the model the config was made for; per-layer widths are in `layers`.
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// 0 when the variant has no token-type embeddings (DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub pad_token_id: usize,
    pub num_labels: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub classifier_dropout: Option<f64>,
    /// Per-layer widths (heads, head_dim, ffn) and the global layer each is.
    pub stack: LayerStack,
    /// Head dimension of the full model. The attention scale is `1/sqrt(this)` in every
    /// sub-model, so a sub-model with narrower heads computes its masked parent's function.
    pub attention_scale_head_dim: usize,
    /// Whether the model has a pooler, and a classification head (from its tensors).
    pub pooler: bool,
    pub classifier: bool,
    raw: Map<String, Value>,
}

fn field<'a>(raw: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| raw.get(*k).filter(|v| !v.is_null()))
}

/// The widths of each layer.
const LAYER_AXES: [Axis; 3] = [Axis::Heads, Axis::HeadDim, Axis::Ffn];

impl BertConfig {
    /// Builds the typed view from a parsed `config.json` of a known `model_type`; `path`
    /// only names it in errors.
    pub fn from_json(variant: Variant, raw: Map<String, Value>, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::format(path, m);
        let usize_of = |keys: &[&str], default: Option<usize>| -> Result<usize> {
            match field(&raw, keys) {
                Some(v) => v
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(format!("`{}` must be a non-negative integer", keys[0]))),
                None => default.ok_or_else(|| bad(format!("missing `{}`", keys[0]))),
            }
        };
        let f64_of = |keys: &[&str], default: f64| -> Result<f64> {
            match field(&raw, keys) {
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad(format!("`{}` must be a number", keys[0]))),
                None => Ok(default),
            }
        };
        let distil = variant == Variant::DistilBert;
        let hidden_size = usize_of(&["hidden_size", "dim"], None)?;
        let num_hidden_layers = usize_of(&["num_hidden_layers", "n_layers"], None)?;
        let num_attention_heads = usize_of(&["num_attention_heads", "n_heads"], None)?;
        let intermediate_size = usize_of(&["intermediate_size", "hidden_dim"], None)?;
        let act_name = field(&raw, &["hidden_act", "activation"])
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        let hidden_act = Activation::parse(act_name)
            .ok_or_else(|| bad(format!("unsupported activation `{act_name}`")))?;
        if distil && field(&raw, &["sinusoidal_pos_embds"]).and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "sinusoidal position embeddings are not supported".into()
            ));
        }
        let num_labels = match field(&raw, &["id2label"]).and_then(Value::as_object) {
            Some(map) => map.len(),
            None => usize_of(&["num_labels"], Some(2))?,
        };
        // HF's reading needs whole heads; a sub-model's section gives its widths itself.
        let head_dim = (num_attention_heads > 0 && hidden_size.is_multiple_of(num_attention_heads))
            .then(|| hidden_size / num_attention_heads);
        let full = || {
            let head_dim = head_dim.ok_or_else(|| {
                format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
            })?;
            Ok(full_layer(num_attention_heads, head_dim, intermediate_size))
        };
        let (stack, scale) = LayerStack::read(&raw, num_hidden_layers, full).map_err(bad)?;
        // A sub-model's heads may be narrower than hidden / heads says: its section must
        // give the full model's head dimension, which no field of its own implies.
        let attention_scale_head_dim = match raw.contains_key(ELASTIC_KEY) {
            true => scale.ok_or_else(|| {
                bad(format!("`{ELASTIC_KEY}.attention_scale_head_dim` is missing: a sub-model's section gives the full model's head dimension"))
            })?,
            false => head_dim.expect("without a section, read() took whole heads"),
        };
        let classifier = field(&raw, &["architectures"])
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter().any(|v| {
                    v.as_str()
                        .is_some_and(|s| s.ends_with("ForSequenceClassification"))
                })
            });
        let config = BertConfig {
            variant,
            vocab_size: usize_of(&["vocab_size"], None)?,
            hidden_size,
            num_attention_heads,
            intermediate_size,
            max_position_embeddings: usize_of(&["max_position_embeddings"], Some(512))?,
            type_vocab_size: if distil {
                0
            } else {
                usize_of(&["type_vocab_size"], Some(2))?
            },
            layer_norm_eps: if distil {
                1e-12
            } else {
                f64_of(&["layer_norm_eps"], 1e-12)?
            },
            hidden_act,
            pad_token_id: usize_of(&["pad_token_id"], Some(0))?,
            num_labels,
            hidden_dropout_prob: f64_of(&["hidden_dropout_prob", "dropout"], 0.1)?,
            attention_probs_dropout_prob: f64_of(
                &["attention_probs_dropout_prob", "attention_dropout"],
                0.1,
            )?,
            classifier_dropout: field(&raw, &["classifier_dropout", "seq_classif_dropout"])
                .and_then(Value::as_f64),
            stack,
            attention_scale_head_dim,
            pooler: true,
            classifier,
            raw,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the widths and the dropout probabilities.
    fn validate(&self) -> std::result::Result<(), String> {
        let dropouts = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (name, p) in dropouts {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!("{name} {p} is outside [0, 1)"));
            }
        }
        if self.hidden_size == 0 || self.attention_scale_head_dim == 0 {
            return Err("hidden_size and the attention head dimension must be positive".into());
        }
        self.stack.validate(&LAYER_AXES)?;
        Ok(())
    }

    /// The widths of the config's hidden size and heads: a model with nothing cut.
    fn derived_full_layer(&self) -> Option<AxisSizes> {
        (self.num_attention_heads > 0 && self.hidden_size.is_multiple_of(self.num_attention_heads))
            .then(|| {
                full_layer(
                    self.num_attention_heads,
                    self.hidden_size / self.num_attention_heads,
                    self.intermediate_size,
                )
            })
    }

    /// True when HF's reading of the config (uniform layers from hidden size, heads and
    /// FFN width) describes the model exactly, so no `"raffm"` section is needed.
    pub fn is_uniform_full(&self) -> bool {
        let Some(full) = self.derived_full_layer() else {
            return false;
        };
        self.stack.is_full(&full) && self.attention_scale_head_dim == full.get(Axis::HeadDim)
    }

    pub fn widths(&self) -> Widths {
        self.stack.widths(AxisSizes::of(&[
            (Axis::Hidden, self.hidden_size),
            (Axis::Vocab, self.vocab_size),
        ]))
    }

    /// A copy with other widths (a sub-model's config).
    pub fn with_widths(&self, widths: &Widths) -> Result<Self> {
        let mut c = self.clone();
        c.hidden_size = widths.global.get(Axis::Hidden);
        c.vocab_size = widths.global.get(Axis::Vocab);
        c.stack.set(widths);
        c.validate().map_err(Error::Invalid)?;
        Ok(c)
    }

    /// The config as HF's `config.json`: the original object with our fields written back
    /// under the variant's own key names.
    pub fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        let distil = self.variant == Variant::DistilBert;
        let set = |raw: &mut Map<String, Value>, bert: &str, distil_key: &str, v: Value| {
            raw.insert(if distil { distil_key } else { bert }.to_string(), v);
        };
        set(&mut raw, "hidden_size", "dim", json!(self.hidden_size));
        set(
            &mut raw,
            "num_hidden_layers",
            "n_layers",
            json!(self.stack.len()),
        );
        set(
            &mut raw,
            "num_attention_heads",
            "n_heads",
            json!(self.num_attention_heads),
        );
        set(
            &mut raw,
            "intermediate_size",
            "hidden_dim",
            json!(self.intermediate_size),
        );
        raw.insert("vocab_size".into(), json!(self.vocab_size));
        if self.classifier {
            let same_size = raw
                .get("id2label")
                .and_then(Value::as_object)
                .is_some_and(|m| m.len() == self.num_labels);
            if !same_size {
                let id2label: Map<String, Value> = (0..self.num_labels)
                    .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                    .collect();
                let label2id: Map<String, Value> = (0..self.num_labels)
                    .map(|i| (format!("LABEL_{i}"), json!(i)))
                    .collect();
                raw.insert("id2label".into(), Value::Object(id2label));
                raw.insert("label2id".into(), Value::Object(label2id));
            }
            raw.remove("num_labels");
            raw.insert(
                "architectures".into(),
                json!([self.variant.classification_architecture()]),
            );
        }
        let scale = Some(self.attention_scale_head_dim);
        self.stack.write(&mut raw, self.is_uniform_full(), scale);
        Value::Object(raw)
    }

    /// Label names, by class index, where `config.json` gives them.
    pub fn label_names(&self) -> Vec<String> {
        let map = self.raw.get("id2label").and_then(Value::as_object);
        (0..self.num_labels)
            .map(|i| {
                map.and_then(|m| m.get(&i.to_string()))
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("LABEL_{i}"), str::to_string)
            })
            .collect()
    }

    /// Sets the classification labels (names by class index).
    pub fn set_labels(&mut self, names: &[String]) {
        self.num_labels = names.len();
        let id2label: Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), json!(n)))
            .collect();
        let label2id: Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(i)))
            .collect();
        self.raw.insert("id2label".into(), Value::Object(id2label));
        self.raw.insert("label2id".into(), Value::Object(label2id));
    }

    /// The `model_type` as `config.json` gives it.
    pub fn model_type(&self) -> &str {
        self.raw
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("bert")
    }
}

/// Config of a small model of a variant, for tests and fixtures.
pub fn tiny_config(
    variant: Variant,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
) -> BertConfig {
    let value = match variant {
        Variant::DistilBert => json!({
            "model_type": "distilbert", "vocab_size": 64, "dim": hidden, "n_layers": layers,
            "n_heads": heads, "hidden_dim": ffn, "activation": "gelu",
            "max_position_embeddings": 32, "pad_token_id": 0
        }),
        Variant::Roberta => json!({
            "model_type": "roberta", "vocab_size": 64, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "hidden_act": "gelu", "max_position_embeddings": 40, "type_vocab_size": 1,
            "layer_norm_eps": 1e-5, "pad_token_id": 1
        }),
        Variant::Bert => json!({
            "model_type": "bert", "vocab_size": 64, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "hidden_act": "gelu", "max_position_embeddings": 32, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        }),
    };
    let Value::Object(raw) = value else {
        unreachable!("a JSON object literal")
    };
    BertConfig::from_json(variant, raw, Path::new("<tiny config>")).expect("tiny config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_like() -> Map<String, Value> {
        let Value::Object(raw) = json!({
            "model_type": "bert", "vocab_size": 100, "hidden_size": 384,
            "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 1536,
            "hidden_act": "gelu", "some_unknown_key": [1, 2, 3]
        }) else {
            unreachable!()
        };
        raw
    }

    fn parse(raw: Map<String, Value>) -> Result<BertConfig> {
        BertConfig::from_json(Variant::Bert, raw, Path::new("config.json"))
    }

    #[test]
    fn full_model_has_full_layers_and_keeps_unknown_keys() {
        let c = parse(minilm_like()).unwrap();
        assert!(c.is_uniform_full());
        assert_eq!(c.stack.layers[1], full_layer(12, 32, 1536));
        let back = c.to_json();
        assert_eq!(back["some_unknown_key"], json!([1, 2, 3]));
        assert!(back.get(ELASTIC_KEY).is_none());
    }

    #[test]
    fn elastic_widths_round_trip_through_json() {
        let mut c = parse(minilm_like()).unwrap();
        c.classifier = true;
        let widths = Widths {
            global: AxisSizes::of(&[(Axis::Hidden, 200), (Axis::Vocab, 100)]),
            layers: vec![full_layer(6, 16, 700)],
            global_layers: vec![1],
        };
        let sub = c.with_widths(&widths).unwrap();
        let Value::Object(raw) = sub.to_json() else {
            unreachable!()
        };
        assert_eq!(raw["num_hidden_layers"], json!(1));
        assert_eq!(raw[ELASTIC_KEY]["global_layers"], json!([1]));
        let back = parse(raw).unwrap();
        assert_eq!(back.widths(), widths);
        assert_eq!(back.attention_scale_head_dim, 32);
        assert_eq!(
            back.to_json()["architectures"],
            json!(["BertForSequenceClassification"])
        );
    }

    #[test]
    fn rejects_bad_configs_with_the_reason() {
        let mut v = minilm_like();
        v.insert("num_attention_heads".into(), json!(5));
        let e = parse(v).unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let mut v = minilm_like();
        v.insert("attention_probs_dropout_prob".into(), json!(1.0));
        let e = parse(v).unwrap_err();
        assert!(
            e.to_string()
                .contains("attention_probs_dropout_prob 1 is outside"),
            "{e}"
        );
        let c = parse(minilm_like()).unwrap();
        let mut zero = c.widths();
        zero.layers[0].set(Axis::Ffn, 0);
        assert!(c.with_widths(&zero).is_err());

        // A sub-model's section without the full head dimension: no field implies it.
        let mut narrow = c.widths();
        narrow.layers[0].set(Axis::HeadDim, 16);
        let Value::Object(mut raw) = c.with_widths(&narrow).unwrap().to_json() else {
            unreachable!()
        };
        raw[ELASTIC_KEY]
            .as_object_mut()
            .unwrap()
            .remove("attention_scale_head_dim");
        let e = parse(raw).unwrap_err();
        assert!(e.to_string().contains("attention_scale_head_dim"), "{e}");
    }

    #[test]
    fn distilbert_names_map_to_the_same_fields() {
        let Value::Object(raw) = json!({"model_type": "distilbert", "vocab_size": 50, "dim": 64, "n_layers": 3,
                       "n_heads": 4, "hidden_dim": 128, "activation": "gelu"})
        else {
            unreachable!()
        };
        let c = BertConfig::from_json(Variant::DistilBert, raw, Path::new("c.json")).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.stack.len(),
                c.num_attention_heads,
                c.intermediate_size
            ),
            (64, 3, 4, 128)
        );
        assert_eq!(c.type_vocab_size, 0);
        let back = c.to_json();
        assert_eq!(back["dim"], json!(64));
        assert!(back.get("hidden_size").is_none());
    }
}
