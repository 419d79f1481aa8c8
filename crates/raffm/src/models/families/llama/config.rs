//! `config.json` as HuggingFace writes it for `LlamaForCausalLM`, plus a sub-model's elastic
//! widths under the key `"raffm"` (as for the encoders, so HF tooling ignores it).
//!
//! The config is kept as its raw JSON object and a typed view of the fields we use: keys we
//! do not know survive a load/save round trip untouched.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::core::elastic::{Axis, AxisSizes, Widths};
use crate::core::error::{Error, Result};
use crate::models::families::config_fields::Fields;

use crate::models::families::layer_stack::LayerStack;

/// The widths of a layer of a full model.
pub fn full_layer(
    kv_heads: usize,
    heads_per_group: usize,
    head_dim: usize,
    ffn: usize,
) -> AxisSizes {
    AxisSizes::of(&[
        (Axis::KvHeads, kv_heads),
        (Axis::Heads, heads_per_group),
        (Axis::HeadDim, head_dim),
        (Axis::Ffn, ffn),
    ])
}

/// Typed view of an HF LLaMA `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// FFN width of the model the config was made for; per-layer widths are in `layers`.
    pub intermediate_size: usize,
    /// Query heads of the model the config was made for; per-layer counts are in `layers`.
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Whether `lm_head` is the transposed input embedding (no tensor of its own).
    pub tie_word_embeddings: bool,
    pub pad_token_id: Option<usize>,
    /// Per-layer widths (KV groups, query heads per group, head_dim, ffn) and the
    /// global layer each is.
    pub stack: LayerStack,
    raw: Map<String, Value>,
}

/// The widths of each layer.
const LAYER_AXES: [Axis; 4] = [Axis::KvHeads, Axis::Heads, Axis::HeadDim, Axis::Ffn];

impl LlamaConfig {
    /// Builds the typed view from a parsed `config.json` with `model_type` "llama"; `path`
    /// only names it in errors.
    pub fn from_json(raw: Map<String, Value>, path: &Path) -> Result<Self> {
        let f = Fields::new(&raw, path);
        let bad = |m: String| Error::format(path, m);
        let act = f
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(bad(format!(
                "unsupported activation `{act}` (LLaMA uses silu)"
            )));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if f.bool(key, false)? {
                return Err(bad(format!("`{key}` true is not supported")));
            }
        }
        // transformers 5 nests the rotary settings in `rope_parameters`; 4.x has `rope_theta`
        // and `rope_scaling` at the top level.
        let rope = f.get("rope_parameters").and_then(Value::as_object);
        let scaling = rope
            .and_then(|r| r.get("rope_type"))
            .or_else(|| {
                f.get("rope_scaling")
                    .and_then(|s| s.get("rope_type").or(s.get("type")))
            })
            .and_then(Value::as_str)
            .unwrap_or("default");
        if scaling != "default" {
            return Err(bad(format!("rotary scaling `{scaling}` is not supported")));
        }
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("`rope_parameters.rope_theta` must be a number".into()))?,
            None => f.f64("rope_theta", 10_000.0)?,
        };
        let hidden_size = f.usize("hidden_size", None)?;
        let num_hidden_layers = f.usize("num_hidden_layers", None)?;
        let num_attention_heads = f.usize("num_attention_heads", None)?;
        let num_key_value_heads = f.usize("num_key_value_heads", Some(num_attention_heads))?;
        let intermediate_size = f.usize("intermediate_size", None)?;
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(bad(format!(
                "num_attention_heads {num_attention_heads} is not a positive multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        let head_dim = match f.get("head_dim") {
            Some(_) => f.usize("head_dim", None)?,
            None if hidden_size.is_multiple_of(num_attention_heads) => hidden_size / num_attention_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                )))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive (rotary pairs)"
            )));
        }
        let full = || {
            Ok(full_layer(
                num_key_value_heads,
                num_attention_heads / num_key_value_heads,
                head_dim,
                intermediate_size,
            ))
        };
        let (stack, _) = LayerStack::read(&raw, num_hidden_layers, full).map_err(bad)?;
        let config = LlamaConfig {
            vocab_size: f.usize("vocab_size", None)?,
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: f.usize("max_position_embeddings", Some(2048))?,
            rms_norm_eps: f.f64("rms_norm_eps", 1e-6)?,
            rope_theta,
            tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
            pad_token_id: match f.get("pad_token_id") {
                Some(_) => Some(f.usize("pad_token_id", None)?),
                None => None,
            },
            stack,
            raw,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the widths: every layer keeps the full head dimension (rotary embeddings pin
    /// it), and at least one of everything else.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_size == 0 || self.vocab_size == 0 {
            return Err("hidden_size and vocab_size must be positive".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        self.stack.validate(&LAYER_AXES)?;
        for (i, l) in self.stack.layers.iter().enumerate() {
            if l.get(Axis::HeadDim) != self.head_dim {
                return Err(format!(
                    "layer {i}: head_dim {} differs from the model's {} (rotary embeddings fix it)",
                    l.get(Axis::HeadDim),
                    self.head_dim
                ));
            }
        }
        Ok(())
    }

    fn full_layer(&self) -> AxisSizes {
        full_layer(
            self.num_key_value_heads,
            self.num_attention_heads / self.num_key_value_heads,
            self.head_dim,
            self.intermediate_size,
        )
    }

    /// True when HF's reading of the config describes the model exactly.
    pub fn is_uniform_full(&self) -> bool {
        self.stack.is_full(&self.full_layer())
    }

    pub fn widths(&self) -> Widths {
        self.stack.widths(AxisSizes::of(&[
            (Axis::Hidden, self.hidden_size),
            (Axis::Vocab, self.vocab_size),
        ]))
    }

    /// A copy with other widths (a sub-model's config). Where every layer is alike the
    /// HF fields say so, and HF tooling loads the sub-model as it is.
    pub fn with_widths(&self, widths: &Widths) -> Result<Self> {
        let mut c = self.clone();
        c.hidden_size = widths.global.get(Axis::Hidden);
        c.vocab_size = widths.global.get(Axis::Vocab);
        if let Some(first) = c.stack.set(widths) {
            c.num_key_value_heads = first.get(Axis::KvHeads);
            c.num_attention_heads = c.num_key_value_heads * first.get(Axis::Heads);
            c.intermediate_size = first.get(Axis::Ffn);
        }
        c.validate().map_err(Error::Invalid)?;
        Ok(c)
    }

    /// The config as HF's `config.json`: the original object with our fields written back.
    pub fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("hidden_size".into(), json!(self.hidden_size));
        raw.insert("num_hidden_layers".into(), json!(self.stack.len()));
        raw.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        raw.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        raw.insert("intermediate_size".into(), json!(self.intermediate_size));
        raw.insert("head_dim".into(), json!(self.head_dim));
        raw.insert("vocab_size".into(), json!(self.vocab_size));
        if let Some(pad) = self.pad_token_id {
            raw.insert("pad_token_id".into(), json!(pad));
        }
        self.stack.write(&mut raw, self.is_uniform_full(), None);
        Value::Object(raw)
    }
}

/// Config of a small decoder, for tests and fixtures.
pub fn tiny_config(
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
) -> LlamaConfig {
    let Value::Object(raw) = json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": ffn, "hidden_act": "silu",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "pad_token_id": 0
    }) else {
        unreachable!("a JSON object literal")
    };
    LlamaConfig::from_json(raw, Path::new("<tiny config>")).expect("tiny config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::layer_stack::ELASTIC_KEY;

    fn smollm_like() -> Map<String, Value> {
        let Value::Object(raw) = json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "intermediate_size": 1536, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "tie_word_embeddings": true, "some_unknown_key": [1, 2]
        }) else {
            unreachable!()
        };
        raw
    }

    fn parse(raw: Map<String, Value>) -> Result<LlamaConfig> {
        LlamaConfig::from_json(raw, Path::new("config.json"))
    }

    #[test]
    fn reads_grouped_query_attention_and_the_rotary_base() {
        let c = parse(smollm_like()).unwrap();
        assert_eq!(c.stack.layers[29], full_layer(3, 3, 64, 1536));
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.is_uniform_full());
        let back = c.to_json();
        assert_eq!(back["some_unknown_key"], json!([1, 2]));
        assert!(back.get(ELASTIC_KEY).is_none());
    }

    #[test]
    fn elastic_widths_round_trip_through_json() {
        let c = parse(smollm_like()).unwrap();
        let mut layers = vec![full_layer(2, 3, 64, 768), full_layer(3, 1, 64, 1536)];
        let widths = Widths {
            global: AxisSizes::of(&[(Axis::Hidden, 512), (Axis::Vocab, 49152)]),
            layers: layers.clone(),
            global_layers: vec![4, 9],
        };
        let sub = c.with_widths(&widths).unwrap();
        let Value::Object(raw) = sub.to_json() else {
            unreachable!()
        };
        let again = parse(raw).unwrap();
        assert_eq!(again.widths(), widths);
        // A uniform sub-model's HF fields describe it.
        layers[1] = layers[0].clone();
        let uniform = c.with_widths(&Widths { layers, ..widths }).unwrap();
        assert_eq!(
            (uniform.num_attention_heads, uniform.num_key_value_heads),
            (6, 2)
        );
        assert_eq!(uniform.intermediate_size, 768);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let cases: [(&str, Value, &str); 5] = [
            ("hidden_act", json!("gelu"), "unsupported activation"),
            ("attention_bias", json!(true), "attention_bias"),
            ("num_key_value_heads", json!(4), "not a positive multiple"),
            ("head_dim", json!(63), "must be even"),
            (
                "rope_parameters",
                json!({"rope_type": "llama3", "rope_theta": 5e5}),
                "rotary scaling",
            ),
        ];
        for (key, value, message) in cases {
            let mut raw = smollm_like();
            raw.insert(key.into(), value);
            let err = parse(raw).unwrap_err().to_string();
            assert!(err.contains(message), "{key}: {err}");
            assert!(err.contains("config.json"), "{key}: {err}");
        }
    }

    #[test]
    fn a_sub_model_cannot_cut_the_head_dimension() {
        let c = parse(smollm_like()).unwrap();
        let widths = Widths {
            global: AxisSizes::of(&[(Axis::Hidden, 576), (Axis::Vocab, 49152)]),
            layers: vec![full_layer(3, 3, 32, 1536)],
            global_layers: vec![0],
        };
        let err = c.with_widths(&widths).unwrap_err().to_string();
        assert!(err.contains("rotary"), "{err}");
    }
}
