//! What a sub-model costs a client: parameters, bytes on the wire, and an estimate of the
//! memory that training and inference need.
//!
//! Parameters are exact (the count of the tensors a checkpoint of that config holds; a
//! test checks it against written files). Memory is an estimate, in float32 bytes:
//!
//! * training = weights + gradients + AdamW's two moments (of the trained parameters)
//!   + activations kept for the backward pass;
//! * inference = weights + the activations of one layer at a time.
//!
//! Activations per encoder layer for `T = batch * seq` tokens, with attention width
//! `a = heads * head_dim`, FFN width `f` and hidden size `h`: the layer input, Q, K, V,
//! the attention context, the attention output before and after LayerNorm, the FFN's
//! pre- and post-activation, and the FFN output before and after LayerNorm,
//! `T * (5h + 4a + 2f)` values, plus the attention scores and probabilities,
//! `2 * batch * heads * seq^2`. Embeddings keep `2 * T * h`. Dropout masks, the
//! allocator's slack and the framework's workspace are not counted.

use serde::{Deserialize, Serialize};

use crate::checkpoint::parameter_count;
use crate::config::{BertConfig, LayerArch};

const F32: u64 = 4;

/// The training shape the memory estimate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingShape {
    pub batch_size: usize,
    pub max_seq_len: usize,
    /// Frozen embeddings have no gradients or optimizer state.
    pub freeze_embeddings: bool,
}

impl Default for TrainingShape {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_seq_len: 64,
            freeze_embeddings: false,
        }
    }
}

/// Costs of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub parameters: u64,
    /// Parameters outside the embedding tables (what changes with the elastic widths).
    pub encoder_parameters: u64,
    pub bytes_on_wire: u64,
    pub train_memory_bytes: u64,
    pub inference_memory_bytes: u64,
}

/// The cost model of one global model and training shape.
#[derive(Debug, Clone)]
pub struct CostModel {
    config: BertConfig,
    pub shape: TrainingShape,
    /// Whether checkpoints carry a pooler, and a classifier.
    pub pooler: bool,
    pub classifier: bool,
}

/// The per-layer quantities that costs are linear in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LayerTotals {
    pub heads: u64,
    pub attention_width: u64,
    pub ffn_width: u64,
}

impl LayerTotals {
    pub fn of(arch: &LayerArch) -> Self {
        Self {
            heads: arch.num_heads as u64,
            attention_width: arch.attention_width() as u64,
            ffn_width: arch.intermediate_size as u64,
        }
    }

    pub fn plus(self, other: Self) -> Self {
        Self {
            heads: self.heads + other.heads,
            attention_width: self.attention_width + other.attention_width,
            ffn_width: self.ffn_width + other.ffn_width,
        }
    }

    pub fn minus(self, other: Self) -> Option<Self> {
        Some(Self {
            heads: self.heads.checked_sub(other.heads)?,
            attention_width: self.attention_width.checked_sub(other.attention_width)?,
            ffn_width: self.ffn_width.checked_sub(other.ffn_width)?,
        })
    }
}

impl CostModel {
    pub fn new(config: &BertConfig, shape: TrainingShape, pooler: bool, classifier: bool) -> Self {
        Self {
            config: config.clone(),
            shape,
            pooler,
            classifier,
        }
    }

    /// The cost model of sub-models of `global` (same embeddings, pooler and head).
    pub fn for_checkpoint(global: &crate::Checkpoint, shape: TrainingShape) -> Self {
        Self::new(
            &global.config,
            shape,
            global.has_pooler(),
            global.has_classifier(),
        )
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    fn embedding_parameters(&self) -> u64 {
        let c = &self.config;
        ((c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * c.hidden_size
            + 2 * c.hidden_size) as u64
    }

    /// Parameters of a configuration given its layer totals (summed over layers).
    pub fn parameters_of(&self, totals: LayerTotals) -> u64 {
        let c = &self.config;
        let (h, layers) = (c.hidden_size as u64, c.num_hidden_layers as u64);
        // Per layer: Q, K, V (a*h + a each), output (h*a + h), two LayerNorms (2h each),
        // FFN in (f*h + f) and out (h*f + h).
        let layer_params =
            totals.attention_width * (4 * h + 3) + totals.ffn_width * (2 * h + 1) + layers * 6 * h;
        let pooler = if self.pooler { h * h + h } else { 0 };
        let classifier = if self.classifier {
            (c.num_labels as u64) * (h + 1)
        } else {
            0
        };
        let head_params = pooler + classifier;
        self.embedding_parameters() + layer_params + head_params
    }

    /// Training memory estimate given the layer totals.
    pub fn train_memory_of(&self, totals: LayerTotals) -> u64 {
        let c = &self.config;
        let (h, layers) = (c.hidden_size as u64, c.num_hidden_layers as u64);
        let parameters = self.parameters_of(totals);
        let trained = if self.shape.freeze_embeddings {
            parameters - self.embedding_parameters()
        } else {
            parameters
        };
        let (b, s) = (self.shape.batch_size as u64, self.shape.max_seq_len as u64);
        let tokens = b * s;
        let kept_activations = tokens
            * (5 * h * layers + 4 * totals.attention_width + 2 * totals.ffn_width)
            + 2 * b * totals.heads * s * s
            + 2 * tokens * h;
        F32 * (parameters + 3 * trained + kept_activations)
    }

    /// Every cost of a configuration.
    pub fn cost(&self, layers: &[LayerArch]) -> Cost {
        let totals = layers
            .iter()
            .map(LayerTotals::of)
            .fold(LayerTotals::default(), LayerTotals::plus);
        let parameters = self.parameters_of(totals);
        // Inference holds one layer's activations at a time: the largest layer's.
        let layer_activations = layers
            .iter()
            .map(|l| self.layer_activations(l))
            .max()
            .unwrap_or(0);
        Cost {
            parameters,
            encoder_parameters: parameters - self.embedding_parameters(),
            bytes_on_wire: F32 * parameters,
            train_memory_bytes: self.train_memory_of(totals),
            inference_memory_bytes: F32 * (parameters + layer_activations),
        }
    }

    /// Activations (elements) one layer of this width holds during inference.
    pub fn layer_activations(&self, layer: &LayerArch) -> u64 {
        let (h, b, s) = (
            self.config.hidden_size as u64,
            self.shape.batch_size as u64,
            self.shape.max_seq_len as u64,
        );
        let t = LayerTotals::of(layer);
        b * s * (3 * h + 3 * t.attention_width + t.ffn_width) + b * t.heads * s * s
    }

    /// The exact parameter count, computed from tensor shapes rather than the formula.
    pub fn counted_parameters(&self, layers: &[LayerArch]) -> u64 {
        let sub = self
            .config
            .with_layers(layers.to_vec())
            .expect("valid layers");
        parameter_count(&sub, self.pooler, self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;

    #[test]
    fn formula_counts_the_same_parameters_as_the_tensor_shapes() {
        let config = tiny_config(Family::Bert, 3, 24, 4, 40);
        let model = CostModel::new(&config, TrainingShape::default(), true, true);
        let layers = vec![
            LayerArch {
                num_heads: 1,
                head_dim: 3,
                intermediate_size: 7,
            },
            LayerArch {
                num_heads: 4,
                head_dim: 6,
                intermediate_size: 40,
            },
            LayerArch {
                num_heads: 2,
                head_dim: 5,
                intermediate_size: 1,
            },
        ];
        assert_eq!(
            model.cost(&layers).parameters,
            model.counted_parameters(&layers)
        );
        assert_eq!(
            model.cost(&config.layers).parameters,
            model.counted_parameters(&config.layers)
        );
        let pooler_only = CostModel::new(&config, TrainingShape::default(), true, false);
        assert_eq!(
            pooler_only.cost(&layers).parameters,
            pooler_only.counted_parameters(&layers)
        );
    }

    #[test]
    fn memory_grows_with_width_and_batch_and_shrinks_with_frozen_embeddings() {
        let config = tiny_config(Family::Bert, 2, 24, 4, 40);
        let small = vec![
            LayerArch {
                num_heads: 2,
                head_dim: 6,
                intermediate_size: 20
            };
            2
        ];
        let base = CostModel::new(&config, TrainingShape::default(), true, true);
        assert!(
            base.cost(&small).train_memory_bytes < base.cost(&config.layers).train_memory_bytes
        );
        let big_batch = CostModel::new(
            &config,
            TrainingShape {
                batch_size: 64,
                ..Default::default()
            },
            true,
            true,
        );
        assert!(big_batch.cost(&small).train_memory_bytes > base.cost(&small).train_memory_bytes);
        let frozen = CostModel::new(
            &config,
            TrainingShape {
                freeze_embeddings: true,
                ..Default::default()
            },
            true,
            true,
        );
        assert!(frozen.cost(&small).train_memory_bytes < base.cost(&small).train_memory_bytes);
        assert!(base.cost(&small).inference_memory_bytes < base.cost(&small).train_memory_bytes);
    }
}
