//! The BERT encoder family: BERT, RoBERTa and DistilBERT (`config.rs`), their HF name table
//! (`names.rs`), the burn model (`model.rs`), and their elastic description (here).
//!
//! Axes: hidden channels (global: every tensor on the residual stream, and the pooler and
//! classifier that read it), depth, and per layer heads, Q/K channels per head (one shared
//! permutation for Q and K, paper Theorem 1), V channels per head (with the matching input
//! columns of the attention output projection), and FFN neurons (rows of the first FFN
//! matrix, columns of the second). Every axis but depth can be permuted without changing
//! the function: LayerNorm's mean and variance do not depend on the order of the hidden
//! channels. Slicing the hidden axis does change them (a sub-model's LayerNorms normalise
//! over the channels it keeps), so a narrower hidden size approximates the full model, as
//! in the paper's official code.

pub mod config;
pub mod model;
pub mod names;

pub use config::{tiny_config, Activation, BertConfig, Variant};

use serde_json::Value;

use crate::core::elastic::{
    Axis, AxisSizes, AxisSpec, Factor, Init, Salience, Scope, TensorKind, TensorSpec, Widths,
};
use crate::core::error::{Error, Result};
use crate::models::families::{Family, ModelConfig};

use names::layer_tensor;

const fn axis(axis: Axis, scope: Scope, nested_in: Option<Axis>, width_of: Axis) -> AxisSpec {
    AxisSpec {
        axis,
        scope,
        nested_in,
        width_of,
        // Layers are not interchangeable; token rows are tied to the tokenizer's ids.
        permutable: !matches!(axis, Axis::Layers | Axis::Vocab),
        // Post-LayerNorm: neither a dropped layer nor a narrower LayerNorm is a zeroed
        // slice; a model without some tokens needs a tokenizer without them.
        masked_equivalent: !matches!(axis, Axis::Layers | Axis::Hidden | Axis::Vocab),
        searchable: !matches!(axis, Axis::ValueDim | Axis::Vocab),
        salience: match axis {
            Axis::Layers => Salience::LayerMagnitude,
            Axis::Vocab => Salience::None,
            _ => Salience::CoupledSlices,
        },
    }
}

pub const AXES: [AxisSpec; 7] = [
    axis(Axis::Hidden, Scope::Global, None, Axis::Hidden),
    axis(Axis::Layers, Scope::Global, None, Axis::Layers),
    axis(Axis::Heads, Scope::Layer, None, Axis::Heads),
    axis(
        Axis::HeadDim,
        Scope::Layer,
        Some(Axis::Heads),
        Axis::HeadDim,
    ),
    axis(
        Axis::ValueDim,
        Scope::Layer,
        Some(Axis::Heads),
        Axis::HeadDim,
    ),
    axis(Axis::Ffn, Scope::Layer, None, Axis::Ffn),
    axis(Axis::Vocab, Scope::Global, None, Axis::Vocab),
];

use Factor::Axis as A;
const HIDDEN: &[Factor] = &[A(Axis::Hidden)];
const QK: &[Factor] = &[A(Axis::Heads), A(Axis::HeadDim)];
const V: &[Factor] = &[A(Axis::Heads), A(Axis::ValueDim)];
const FFN: &[Factor] = &[A(Axis::Ffn)];
const VOCAB: &[Factor] = &[A(Axis::Vocab)];

/// Every tensor of one encoder layer: name inside the layer, dimensions, initialisation.
const LAYER: [(&str, &[&[Factor]], Init); 16] = [
    ("attention.self.query.weight", &[QK, HIDDEN], Init::Weight),
    ("attention.self.query.bias", &[QK], Init::Bias),
    ("attention.self.key.weight", &[QK, HIDDEN], Init::Weight),
    ("attention.self.key.bias", &[QK], Init::Bias),
    ("attention.self.value.weight", &[V, HIDDEN], Init::Weight),
    ("attention.self.value.bias", &[V], Init::Bias),
    ("attention.output.dense.weight", &[HIDDEN, V], Init::Weight),
    ("attention.output.dense.bias", &[HIDDEN], Init::Bias),
    (
        "attention.output.LayerNorm.weight",
        &[HIDDEN],
        Init::NormScale,
    ),
    (
        "attention.output.LayerNorm.bias",
        &[HIDDEN],
        Init::NormShift,
    ),
    ("intermediate.dense.weight", &[FFN, HIDDEN], Init::Weight),
    ("intermediate.dense.bias", &[FFN], Init::Bias),
    ("output.dense.weight", &[HIDDEN, FFN], Init::Weight),
    ("output.dense.bias", &[HIDDEN], Init::Bias),
    ("output.LayerNorm.weight", &[HIDDEN], Init::NormScale),
    ("output.LayerNorm.bias", &[HIDDEN], Init::NormShift),
];

impl Family for BertConfig {
    fn model_type(&self) -> &str {
        BertConfig::model_type(self)
    }

    fn to_json(&self) -> Value {
        BertConfig::to_json(self)
    }

    fn axes(&self) -> &'static [AxisSpec] {
        &AXES
    }

    fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let fixed = |n: usize| [Factor::Fixed(n)];
        let (positions, types, labels) = (
            fixed(self.max_position_embeddings),
            fixed(self.type_vocab_size),
            fixed(self.num_labels),
        );
        use TensorKind::{Embedding, Head, Task};
        let mut before = vec![
            TensorSpec::outer(
                "embeddings.word_embeddings.weight",
                &[VOCAB, HIDDEN],
                Embedding,
                Init::Weight,
            ),
            TensorSpec::outer(
                "embeddings.position_embeddings.weight",
                &[&positions, HIDDEN],
                Embedding,
                Init::Weight,
            ),
        ];
        if self.type_vocab_size > 0 {
            before.push(TensorSpec::outer(
                "embeddings.token_type_embeddings.weight",
                &[&types, HIDDEN],
                Embedding,
                Init::Weight,
            ));
        }
        before.push(TensorSpec::outer(
            "embeddings.LayerNorm.weight",
            &[HIDDEN],
            Embedding,
            Init::NormScale,
        ));
        before.push(TensorSpec::outer(
            "embeddings.LayerNorm.bias",
            &[HIDDEN],
            Embedding,
            Init::NormShift,
        ));
        let mut after = Vec::new();
        if self.pooler {
            after.push(TensorSpec::outer(
                "pooler.dense.weight",
                &[HIDDEN, HIDDEN],
                Head,
                Init::Weight,
            ));
            after.push(TensorSpec::outer(
                "pooler.dense.bias",
                &[HIDDEN],
                Head,
                Init::Bias,
            ));
        }
        if self.classifier {
            after.push(TensorSpec::outer(
                "classifier.weight",
                &[&labels, HIDDEN],
                Task,
                Init::Weight,
            ));
            after.push(TensorSpec::outer(
                "classifier.bias",
                &[&labels],
                Task,
                Init::Bias,
            ));
        }
        (before, after)
    }

    /// Learns whether the model has a pooler and a classifier from its tensors' names.
    fn adopt_parts(&mut self, names: &std::collections::BTreeSet<&str>) {
        self.pooler = names.contains("pooler.dense.weight");
        self.classifier = names.contains("classifier.weight");
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
        BertConfig::widths(self)
    }

    fn with_widths(&self, widths: &Widths) -> Result<ModelConfig> {
        Ok(ModelConfig::Bert(BertConfig::with_widths(self, widths)?))
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
        embedding_activations(global, batch, seq)
    }

    fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)> {
        names::to_canonical(self.variant, hf_name)
    }

    fn hf_name(&self, canonical: &str, prefixed: bool) -> String {
        names::from_canonical(self.variant, canonical, prefixed, self.classifier)
    }

    fn needs_tokenizer(&self) -> bool {
        true
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn pad_token_id(&self) -> usize {
        self.pad_token_id
    }

    fn max_positions(&self) -> usize {
        match self.variant {
            // RoBERTa counts positions from pad_token_id + 1.
            Variant::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id + 1),
            Variant::Bert | Variant::DistilBert => self.max_position_embeddings,
        }
    }

    fn remap_vocabulary(&mut self, kept: &[usize]) -> Result<()> {
        let pad = self.pad_token_id;
        self.pad_token_id = kept.iter().position(|&g| g == pad).ok_or_else(|| {
            Error::Invalid(format!(
                "a client vocabulary must keep the padding token (id {pad})"
            ))
        })?;
        Ok(())
    }

    fn takes_classification_head(&self) -> bool {
        true
    }

    fn has_classifier(&self) -> bool {
        self.classifier
    }

    fn set_classification_head(&mut self, labels: &[String]) {
        self.set_labels(labels);
        self.pooler = true;
        self.classifier = true;
    }

    fn num_labels(&self) -> usize {
        self.num_labels
    }

    fn label_names(&self) -> Vec<String> {
        BertConfig::label_names(self)
    }
}

/// A small model config of a variant, with a pooler and, if asked, a classification head:
/// for tests and fixtures.
pub fn tiny_model(
    variant: Variant,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
    classifier: bool,
) -> crate::models::families::ModelConfig {
    let mut config = tiny_config(variant, layers, hidden, heads, ffn);
    config.classifier = classifier;
    crate::models::families::ModelConfig::Bert(config)
}

/// Activations of one encoder layer, in elements, for `tokens = batch * seq` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerActivations {
    /// Kept for the backward pass.
    pub train: u64,
    /// Held at once in a forward pass without gradients.
    pub inference: u64,
}

/// What one layer of these widths holds, for a batch of `batch` sequences of `seq` tokens.
///
/// Training keeps, with attention width `a = heads * head_dim`, FFN width `f` and hidden
/// size `h`: the layer input, Q, K, V, the attention context, the attention output before
/// and after LayerNorm, the FFN's pre- and post-activation, and the FFN output before and
/// after LayerNorm, `T * (5h + 4a + 2f)` values, plus the attention scores and
/// probabilities, `2 * batch * heads * seq^2`. Inference holds `T * (3h + 3a + f)` plus
/// one copy of the scores. Dropout masks, the allocator's slack and the framework's
/// workspace are not counted.
pub fn layer_activations(
    global: &AxisSizes,
    layer: &AxisSizes,
    batch: u64,
    seq: u64,
) -> LayerActivations {
    let h = global.get(Axis::Hidden) as u64;
    let heads = layer.get(Axis::Heads) as u64;
    let a = heads * layer.get(Axis::HeadDim) as u64;
    let f = layer.get(Axis::Ffn) as u64;
    let tokens = batch * seq;
    LayerActivations {
        train: tokens * (5 * h + 4 * a + 2 * f) + 2 * batch * heads * seq * seq,
        inference: tokens * (3 * h + 3 * a + f) + batch * heads * seq * seq,
    }
}

/// The embeddings keep their sum and its normalised form for the backward pass.
pub fn embedding_activations(global: &AxisSizes, batch: u64, seq: u64) -> u64 {
    2 * batch * seq * global.get(Axis::Hidden) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::elastic::check_description;

    #[test]
    fn the_description_is_well_formed_for_every_variant() {
        for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
            let mut c = tiny_config(variant, 2, 16, 4, 24);
            c.classifier = true;
            let (before, after) = c.outer_tensors();
            let mut all = before;
            all.extend(c.layer_tensors(0));
            all.extend(c.layer_tensors(1));
            all.extend(after);
            check_description(&AXES, &all).unwrap();
            // The residual stream: every tensor but the biases of the projections out of it
            // (Q, K, V, the first FFN matrix) and the classifier's is indexed by the hidden
            // axis, so permuting it reaches every slot.
            let off_stream = |t: &TensorSpec| {
                t.dims.len() == 1 && matches!(t.dims[0][0], Factor::Axis(Axis::Heads | Axis::Ffn))
                    || t.kind == TensorKind::Task && !t.is_matrix()
            };
            for t in &all {
                assert_eq!(
                    t.has_axis(Axis::Hidden),
                    !off_stream(t),
                    "{variant:?} {}",
                    t.name
                );
            }
        }
    }
}
