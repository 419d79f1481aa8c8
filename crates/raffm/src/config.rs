//! `config.json` as HuggingFace writes it, plus the per-layer elastic architecture that a
//! sub-model needs (kept under the key `"raffm"`, so HF tooling ignores it and our
//! checkpoints stay self-describing).
//!
//! The config is kept as its raw JSON object and a typed view of the fields we use: keys we
//! do not know survive a load/save round trip untouched.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The key under which the elastic architecture lives in `config.json`.
pub const ELASTIC_KEY: &str = "raffm";

/// The HF model families whose checkpoints we read and write. All three are the same
/// post-LayerNorm encoder; they differ in tensor names and a few details handled where
/// they matter (position ids, pooler activation, token types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
}

impl Family {
    /// The prefix HF puts before the encoder's tensors in task-head checkpoints.
    pub fn base_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
        }
    }

    /// HF class name of the model with a sequence-classification head.
    pub fn classification_architecture(self) -> &'static str {
        match self {
            Family::Bert => "BertForSequenceClassification",
            Family::Roberta => "RobertaForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
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

/// The elastic widths of one encoder layer. A full model has `num_heads =
/// num_attention_heads`, `head_dim = hidden_size / num_attention_heads` and
/// `intermediate_size` equal to the config's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerArch {
    pub num_heads: usize,
    /// Channels per head, shared by Q/K and V.
    pub head_dim: usize,
    pub intermediate_size: usize,
}

impl LayerArch {
    /// Width of the Q, K and V projections' outputs.
    pub fn attention_width(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

/// Typed view of an HF encoder `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// Heads of the full model; a sub-model's per-layer count is in `layers`.
    pub num_attention_heads: usize,
    /// FFN width of the full model; a sub-model's per-layer width is in `layers`.
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// 0 when the family has no token-type embeddings (DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub pad_token_id: usize,
    pub num_labels: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub classifier_dropout: Option<f64>,
    /// Per-layer elastic architecture.
    pub layers: Vec<LayerArch>,
    /// Head dimension of the full model. The attention scale is `1/sqrt(this)` in every
    /// sub-model, so a sub-model with narrower heads approximates its parent.
    pub attention_scale_head_dim: usize,
    raw: Map<String, Value>,
}

fn field<'a>(raw: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| raw.get(*k).filter(|v| !v.is_null()))
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json(value, path)
    }

    /// Builds the typed view from a parsed `config.json`; `path` only names it in errors.
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::format(path, m);
        let Value::Object(raw) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let model_type = field(&raw, &["model_type"])
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing `model_type`".into()))?;
        let family = match model_type {
            "bert" => Family::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            "distilbert" => Family::DistilBert,
            other => {
                return Err(Error::UnknownModelType {
                    path: path.to_path_buf(),
                    model_type: other.to_string(),
                })
            }
        };
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
        let distil = family == Family::DistilBert;
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
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        let num_labels = match field(&raw, &["id2label"]).and_then(Value::as_object) {
            Some(map) => map.len(),
            None => usize_of(&["num_labels"], Some(2))?,
        };
        let full_head_dim = hidden_size / num_attention_heads;
        let full_layer = LayerArch {
            num_heads: num_attention_heads,
            head_dim: full_head_dim,
            intermediate_size,
        };
        let (layers, attention_scale_head_dim) = match raw.get(ELASTIC_KEY) {
            Some(elastic) => {
                let elastic: ElasticJson = serde_json::from_value(elastic.clone())
                    .map_err(|e| bad(format!("invalid `{ELASTIC_KEY}` section: {e}")))?;
                (elastic.layers, elastic.attention_scale_head_dim)
            }
            None => (vec![full_layer; num_hidden_layers], full_head_dim),
        };
        let config = BertConfig {
            family,
            vocab_size: usize_of(&["vocab_size"], None)?,
            hidden_size,
            num_hidden_layers,
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
            layers,
            attention_scale_head_dim,
            raw,
        };
        config.validate().map_err(|m| bad(m))?;
        Ok(config)
    }

    /// Checks the per-layer architecture against the full model's dimensions.
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
        if self.layers.len() != self.num_hidden_layers {
            return Err(format!(
                "`{ELASTIC_KEY}.layers` has {} entries but num_hidden_layers is {}",
                self.layers.len(),
                self.num_hidden_layers
            ));
        }
        let full = self.full_layer();
        for (i, l) in self.layers.iter().enumerate() {
            if l.num_heads == 0 || l.head_dim == 0 || l.intermediate_size == 0 {
                return Err(format!(
                    "layer {i}: every elastic width must be at least 1, got {l:?}"
                ));
            }
            if l.num_heads > full.num_heads
                || l.head_dim > full.head_dim
                || l.intermediate_size > full.intermediate_size
            {
                return Err(format!(
                    "layer {i}: {l:?} exceeds the full model's {full:?}"
                ));
            }
        }
        if self.attention_scale_head_dim == 0 {
            return Err("attention_scale_head_dim must be positive".into());
        }
        Ok(())
    }

    /// The widths of one layer of the full (un-extracted) model.
    pub fn full_layer(&self) -> LayerArch {
        LayerArch {
            num_heads: self.num_attention_heads,
            head_dim: self.hidden_size / self.num_attention_heads,
            intermediate_size: self.intermediate_size,
        }
    }

    /// True when every layer has the full model's widths.
    pub fn is_full(&self) -> bool {
        let full = self.full_layer();
        self.layers.iter().all(|l| *l == full)
    }

    /// A copy with another per-layer architecture (a sub-model's config).
    pub fn with_layers(&self, layers: Vec<LayerArch>) -> Result<Self> {
        let mut c = self.clone();
        c.layers = layers;
        c.validate().map_err(Error::Invalid)?;
        Ok(c)
    }

    /// The config as HF's `config.json`: the original object with our fields written back
    /// under the family's own key names.
    pub fn to_json(&self, has_classifier: bool) -> Value {
        let mut raw = self.raw.clone();
        let distil = self.family == Family::DistilBert;
        let set = |raw: &mut Map<String, Value>, bert: &str, distil_key: &str, v: Value| {
            raw.insert(if distil { distil_key } else { bert }.to_string(), v);
        };
        set(&mut raw, "hidden_size", "dim", json!(self.hidden_size));
        set(
            &mut raw,
            "num_hidden_layers",
            "n_layers",
            json!(self.num_hidden_layers),
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
        if has_classifier {
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
                json!([self.family.classification_architecture()]),
            );
        }
        if self.is_full() && self.attention_scale_head_dim == self.full_layer().head_dim {
            raw.remove(ELASTIC_KEY);
        } else {
            let elastic = ElasticJson {
                attention_scale_head_dim: self.attention_scale_head_dim,
                layers: self.layers.clone(),
            };
            raw.insert(
                ELASTIC_KEY.into(),
                serde_json::to_value(elastic).expect("plain struct serializes"),
            );
        }
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
}

#[derive(Serialize, Deserialize)]
struct ElasticJson {
    attention_scale_head_dim: usize,
    layers: Vec<LayerArch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_like() -> Value {
        json!({
            "model_type": "bert", "vocab_size": 100, "hidden_size": 384,
            "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 1536,
            "hidden_act": "gelu", "some_unknown_key": [1, 2, 3]
        })
    }

    #[test]
    fn full_model_has_full_layers_and_keeps_unknown_keys() {
        let c = BertConfig::from_json(minilm_like(), Path::new("c.json")).unwrap();
        assert!(c.is_full());
        assert_eq!(
            c.layers[1],
            LayerArch {
                num_heads: 12,
                head_dim: 32,
                intermediate_size: 1536
            }
        );
        let back = c.to_json(false);
        assert_eq!(back["some_unknown_key"], json!([1, 2, 3]));
        assert!(back.get(ELASTIC_KEY).is_none());
    }

    #[test]
    fn elastic_layers_round_trip_through_json() {
        let c = BertConfig::from_json(minilm_like(), Path::new("c.json")).unwrap();
        let layers = vec![
            LayerArch {
                num_heads: 6,
                head_dim: 16,
                intermediate_size: 700,
            },
            LayerArch {
                num_heads: 12,
                head_dim: 32,
                intermediate_size: 1,
            },
        ];
        let sub = c.with_layers(layers.clone()).unwrap();
        let back = BertConfig::from_json(sub.to_json(true), Path::new("c.json")).unwrap();
        assert_eq!(back.layers, layers);
        assert_eq!(back.attention_scale_head_dim, 32);
        assert_eq!(
            back.to_json(true)["architectures"],
            json!(["BertForSequenceClassification"])
        );
    }

    #[test]
    fn rejects_bad_configs_with_the_reason() {
        let mut v = minilm_like();
        v["model_type"] = json!("gpt2");
        let e = BertConfig::from_json(v, Path::new("x/config.json")).unwrap_err();
        assert!(e.to_string().contains("unknown model_type `gpt2`"), "{e}");
        let mut v = minilm_like();
        v["num_attention_heads"] = json!(5);
        let e = BertConfig::from_json(v, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let mut v = minilm_like();
        v["attention_probs_dropout_prob"] = json!(1.0);
        let e = BertConfig::from_json(v, Path::new("config.json")).unwrap_err();
        assert!(
            e.to_string()
                .contains("attention_probs_dropout_prob 1 is outside"),
            "{e}"
        );
        let c = BertConfig::from_json(minilm_like(), Path::new("c.json")).unwrap();
        let too_wide = LayerArch {
            num_heads: 13,
            head_dim: 32,
            intermediate_size: 10,
        };
        assert!(c.with_layers(vec![too_wide; 2]).is_err());
    }

    #[test]
    fn distilbert_names_map_to_the_same_fields() {
        let v = json!({"model_type": "distilbert", "vocab_size": 50, "dim": 64, "n_layers": 3,
                       "n_heads": 4, "hidden_dim": 128, "activation": "gelu"});
        let c = BertConfig::from_json(v, Path::new("c.json")).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.intermediate_size
            ),
            (64, 3, 4, 128)
        );
        assert_eq!(c.type_vocab_size, 0);
        let back = c.to_json(false);
        assert_eq!(back["dim"], json!(64));
        assert!(back.get("hidden_size").is_none());
    }
}
