//! What a model family gives the stages: its elastic description, its HF tensor names,
//! its tokens and its task head. Each family's config implements [`Family`];
//! [`super::ModelConfig`] dispatches to it in one place, so a new family is one enum
//! variant and one implementation.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{LayerActivations, ModelConfig};
use crate::core::elastic::{AxisSizes, AxisSpec, TensorSpec, Widths};
use crate::core::error::Result;

pub trait Family {
    /// HF's `model_type`.
    fn model_type(&self) -> &str;

    /// `config.json`, as HF writes it.
    fn to_json(&self) -> Value;

    // ---- the elastic description ----

    fn axes(&self) -> &'static [AxisSpec];

    /// Tensors before and after the layers, in model order.
    fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>);

    /// The tensors of layer `layer`.
    fn layer_tensors(&self, layer: usize) -> Vec<TensorSpec>;

    fn widths(&self) -> Widths;

    /// The config of a model of this family with other widths.
    fn with_widths(&self, widths: &Widths) -> Result<ModelConfig>;

    /// Activations one layer of widths `layer` holds, for `batch` sequences of `seq`
    /// tokens.
    fn layer_activations(
        &self,
        global: &AxisSizes,
        layer: &AxisSizes,
        batch: u64,
        seq: u64,
    ) -> LayerActivations;

    /// Activations outside the layers that training keeps.
    fn outer_activations(&self, global: &AxisSizes, batch: u64, seq: u64) -> u64;

    // ---- names ----

    /// The canonical name of an HF tensor name, and whether it carried the base prefix;
    /// `None` for tensors that are not part of the model (buffers, other heads).
    fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)>;

    /// The HF name to write a canonical name under.
    fn hf_name(&self, canonical: &str, prefixed: bool) -> String;

    /// Learns which optional parts (a pooler, a task head) the model has from the
    /// canonical names of the tensors its file holds.
    fn adopt_parts(&mut self, _names: &BTreeSet<&str>) {}

    // ---- tokens ----

    /// Whether the family reads text through a tokenizer that travels with its
    /// checkpoints.
    fn needs_tokenizer(&self) -> bool;

    fn vocab_size(&self) -> usize {
        0
    }

    fn pad_token_id(&self) -> usize {
        0
    }

    /// The longest sequence the model's position embeddings cover.
    fn max_positions(&self) -> usize;

    /// Moves the special-token ids the config names (padding) to their positions among
    /// the kept global token ids `kept` (a client's vocabulary).
    fn remap_vocabulary(&mut self, kept: &[usize]) -> Result<()>;

    // ---- classification ----

    /// Whether the family takes a classification head (the encoders; a decoder scores
    /// its answers with its language-model head).
    fn takes_classification_head(&self) -> bool {
        false
    }

    fn has_classifier(&self) -> bool {
        false
    }

    /// Declares a classification head for `labels` (and whatever it reads, a pooler); a
    /// family that takes none is unchanged.
    fn set_classification_head(&mut self, _labels: &[String]) {}

    fn num_labels(&self) -> usize {
        0
    }

    fn label_names(&self) -> Vec<String> {
        Vec::new()
    }
}
