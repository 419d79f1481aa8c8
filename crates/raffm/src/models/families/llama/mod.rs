//! The LLaMA-style decoder (`LlamaForCausalLM`: grouped-query attention, rotary position
//! embeddings, SwiGLU feed-forward, RMSNorm, optionally tied embeddings): its config
//! (`config.rs`), the burn model (`model.rs`), LoRA adapters in PEFT's format (`lora.rs`)
//! and its elastic description (here). Federating adapters is [`crate::fl::adapter`]'s.
//!
//! Canonical names are HF's own (`model.layers.3.self_attn.q_proj.weight`).
//!
//! Axes: hidden channels (global: the embeddings, every projection's input or output on
//! the residual stream, and the RMSNorm scales; RMSNorm has no mean, so permuting the
//! channels keeps the function exactly, while slicing them changes the root mean square
//! and approximates it), depth, and per layer: KV groups (a key/value head with its query
//! heads, moved whole: rows of `k_proj` and `v_proj`, the group's rows of `q_proj` and
//! columns of `o_proj`), query heads within their group (rows of `q_proj`, columns of
//! `o_proj`), and FFN neurons (rows of `gate_proj` and `up_proj`, columns of `down_proj`).
//!
//! The head dimension is an axis that can be neither permuted nor cut: rotary embeddings
//! rotate channel i with channel i + d/2 at a frequency fixed by i, so reordering or
//! dropping channels inside a head changes the function.

pub mod config;
pub mod lora;
pub mod model;

pub use config::{tiny_config, LlamaConfig};

use serde_json::Value;

use crate::core::elastic::{
    Axis, AxisSizes, AxisSpec, Factor, Init, Salience, Scope, TensorKind, TensorSpec, Widths,
};
use crate::core::error::{Error, Result};
use crate::models::families::LayerActivations;
use crate::models::families::{Family, ModelConfig};

const fn axis(axis: Axis, scope: Scope, nested_in: Option<Axis>) -> AxisSpec {
    let head_dim = matches!(axis, Axis::HeadDim);
    AxisSpec {
        axis,
        scope,
        nested_in,
        width_of: axis,
        // Layers are not interchangeable, token rows are tied to the tokenizer's ids, and
        // rotary embeddings pin every channel of a head.
        permutable: !matches!(axis, Axis::Layers | Axis::Vocab | Axis::HeadDim),
        // RMSNorm over fewer channels is not a zeroed slice; a dropped layer is not one.
        masked_equivalent: !matches!(axis, Axis::Layers | Axis::Hidden | Axis::Vocab),
        searchable: !matches!(axis, Axis::Vocab | Axis::HeadDim),
        salience: match axis {
            Axis::Layers => Salience::LayerMagnitude,
            Axis::Vocab => Salience::None,
            _ if head_dim => Salience::None,
            _ => Salience::CoupledSlices,
        },
    }
}

pub const AXES: [AxisSpec; 7] = [
    axis(Axis::Hidden, Scope::Global, None),
    axis(Axis::Layers, Scope::Global, None),
    axis(Axis::KvHeads, Scope::Layer, None),
    // Query heads are ordered inside their KV group: they share its key and value.
    axis(Axis::Heads, Scope::Layer, Some(Axis::KvHeads)),
    // Follows `heads` in the query rows and `kv_heads` in the key rows, so it names no
    // parent; it is never permuted.
    axis(Axis::HeadDim, Scope::Layer, None),
    axis(Axis::Ffn, Scope::Layer, None),
    axis(Axis::Vocab, Scope::Global, None),
];

use Factor::Axis as A;
const HIDDEN: &[Factor] = &[A(Axis::Hidden)];
const QUERY: &[Factor] = &[A(Axis::KvHeads), A(Axis::Heads), A(Axis::HeadDim)];
const KEY_VALUE: &[Factor] = &[A(Axis::KvHeads), A(Axis::HeadDim)];
const FFN: &[Factor] = &[A(Axis::Ffn)];
const VOCAB: &[Factor] = &[A(Axis::Vocab)];

/// Every tensor of one decoder layer: name inside the layer, dimensions, initialisation.
pub const LAYER: [(&str, &[&[Factor]], Init); 9] = [
    ("self_attn.q_proj.weight", &[QUERY, HIDDEN], Init::Weight),
    (
        "self_attn.k_proj.weight",
        &[KEY_VALUE, HIDDEN],
        Init::Weight,
    ),
    (
        "self_attn.v_proj.weight",
        &[KEY_VALUE, HIDDEN],
        Init::Weight,
    ),
    ("self_attn.o_proj.weight", &[HIDDEN, QUERY], Init::Weight),
    ("mlp.gate_proj.weight", &[FFN, HIDDEN], Init::Weight),
    ("mlp.up_proj.weight", &[FFN, HIDDEN], Init::Weight),
    ("mlp.down_proj.weight", &[HIDDEN, FFN], Init::Weight),
    ("input_layernorm.weight", &[HIDDEN], Init::NormScale),
    (
        "post_attention_layernorm.weight",
        &[HIDDEN],
        Init::NormScale,
    ),
];

/// HF name of a decoder-layer tensor.
pub fn layer_tensor(layer: usize, key: &str) -> String {
    format!("model.layers.{layer}.{key}")
}

impl Family for LlamaConfig {
    fn model_type(&self) -> &str {
        "llama"
    }

    fn to_json(&self) -> Value {
        LlamaConfig::to_json(self)
    }

    fn axes(&self) -> &'static [AxisSpec] {
        &AXES
    }

    /// A tied `lm_head` has no tensor.
    fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        use TensorKind::{Embedding, Head};
        let before = vec![TensorSpec::outer(
            "model.embed_tokens.weight",
            &[VOCAB, HIDDEN],
            Embedding,
            Init::Weight,
        )];
        let mut after = vec![TensorSpec::outer(
            "model.norm.weight",
            &[HIDDEN],
            Head,
            Init::NormScale,
        )];
        if !self.tie_word_embeddings {
            after.push(TensorSpec::outer(
                "lm_head.weight",
                &[VOCAB, HIDDEN],
                Head,
                Init::Weight,
            ));
        }
        (before, after)
    }

    fn layer_tensors(&self, layer: usize) -> Vec<TensorSpec> {
        LAYER
            .iter()
            .map(|(key, dims, init)| {
                TensorSpec::in_layer(layer_tensor(layer, key), layer, key, dims, *init)
            })
            .collect()
    }

    fn widths(&self) -> Widths {
        LlamaConfig::widths(self)
    }

    fn with_widths(&self, widths: &Widths) -> Result<ModelConfig> {
        Ok(ModelConfig::Llama(LlamaConfig::with_widths(self, widths)?))
    }

    fn layer_activations(
        &self,
        global: &AxisSizes,
        layer: &AxisSizes,
        batch: u64,
        seq: u64,
    ) -> LayerActivations {
        layer_activations(global, layer, batch, seq)
    }

    fn outer_activations(&self, global: &AxisSizes, batch: u64, seq: u64) -> u64 {
        outer_activations(global, batch, seq)
    }

    fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)> {
        to_canonical(hf_name)
    }

    fn hf_name(&self, canonical: &str, _prefixed: bool) -> String {
        canonical.to_string()
    }

    // Whether lm_head is tied comes from the config, as in HF: no parts to adopt.

    fn needs_tokenizer(&self) -> bool {
        true
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Right padding behind a causal mask is never attended to: any id will do.
    fn pad_token_id(&self) -> usize {
        self.pad_token_id.unwrap_or(0)
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    /// The special-token ids (bos, eos, pad) and the chat template would all have to move
    /// with the kept rows.
    fn remap_vocabulary(&mut self, _kept: &[usize]) -> Result<()> {
        Err(Error::Invalid(
            "client vocabularies are implemented for the encoders only, not for llama".into(),
        ))
    }
}

/// The canonical name of an HF tensor name (HF's own); `None` for names that are not part
/// of the model (rotary buffers some exporters write).
pub fn to_canonical(hf_name: &str) -> Option<(String, bool)> {
    (!hf_name.ends_with("rotary_emb.inv_freq")).then(|| (hf_name.to_string(), false))
}

/// What one decoder layer of these widths holds, for `batch` sequences of `seq` tokens.
///
/// Training keeps, with `q = heads * head_dim` query channels, `k = kv_heads * head_dim`
/// key (and value) channels, FFN width `f` and hidden size `h`: the layer input and its
/// RMSNorm, Q and K before and after rotation, V, the attention context, the residual sum
/// and its RMSNorm, the gate and up projections, the gate's SiLU and their product,
/// `T * (4h + 3q + 3k + 4f)` values, plus the scores and probabilities of every query head,
/// `2 * batch * heads * seq^2`. Inference holds `T * (3h + 2q + 2k + 2f)` plus one copy of
/// the scores.
pub fn layer_activations(
    global: &AxisSizes,
    layer: &AxisSizes,
    batch: u64,
    seq: u64,
) -> LayerActivations {
    let h = global.get(Axis::Hidden) as u64;
    let heads = (layer.get(Axis::KvHeads) * layer.get(Axis::Heads)) as u64;
    let d = layer.get(Axis::HeadDim) as u64;
    let (q, k) = (heads * d, layer.get(Axis::KvHeads) as u64 * d);
    let f = layer.get(Axis::Ffn) as u64;
    let tokens = batch * seq;
    LayerActivations {
        train: tokens * (4 * h + 3 * q + 3 * k + 4 * f) + 2 * batch * heads * seq * seq,
        inference: tokens * (3 * h + 2 * q + 2 * k + 2 * f) + batch * heads * seq * seq,
    }
}

/// The embeddings' output and the final norm's input and output.
pub fn outer_activations(global: &AxisSizes, batch: u64, seq: u64) -> u64 {
    3 * batch * seq * global.get(Axis::Hidden) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::elastic::check_description;
    use crate::models::families::ModelConfig;

    #[test]
    fn the_description_is_well_formed_and_counts_smollm2() {
        let c = tiny_config(2, 16, 4, 2, 24);
        let (before, after) = c.outer_tensors();
        let mut all = before;
        all.extend(c.layer_tensors(0));
        all.extend(c.layer_tensors(1));
        all.extend(after);
        check_description(&AXES, &all).unwrap();
        // Every tensor sits on the residual stream.
        assert!(all.iter().all(|t| t.has_axis(Axis::Hidden)), "{all:?}");

        // SmolLM2-135M: 134,515,008 parameters, as HF counts them (tied lm_head once).
        let mut smol = tiny_config(30, 576, 9, 3, 1536);
        smol.vocab_size = 49152;
        let smol = ModelConfig::Llama(smol);
        assert_eq!(smol.parameter_count(), 134_515_008);
    }
}
