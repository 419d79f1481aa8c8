//! What a sub-model costs a client: parameters, bytes on the wire, and an estimate of the
//! memory that training and inference need.
//!
//! Parameters are exact: a sum over the tensors of the family's description at the
//! sub-model's widths (a test checks it against written files). Memory is an estimate, in
//! float32 bytes:
//!
//! * training = weights + gradients + AdamW's two moments (of the trained parameters)
//!   + the activations kept for the backward pass;
//! * inference = weights + the activations of one layer at a time.
//!
//! Activations are a small per-family function (see the family's `layer_activations`).
//! Costs split into a part outside the layers, which depends only on the global widths
//! (hidden size), and one term per layer: the search adds layers up one by one.

use serde::{Deserialize, Serialize};

use crate::elastic::{AxisSizes, TensorKind, TensorSpec, Widths};
use crate::families::ModelConfig;

const F32: u64 = 4;

/// The training shape the memory estimate is for; a field left out takes its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingShape {
    pub batch_size: usize,
    /// Tokens per example of a text model.
    pub max_seq_len: usize,
    /// Frozen embeddings have no gradients or optimizer state.
    pub freeze_embeddings: bool,
    /// Input side in pixels of a vision model (its tokens: the CLS token and the
    /// patches); without it, the model's pre-training size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
}

impl Default for TrainingShape {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_seq_len: 64,
            freeze_embeddings: false,
            image_size: None,
        }
    }
}

/// Costs of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub parameters: u64,
    /// Parameters of the layers (what per-layer widths and depth change).
    pub layer_parameters: u64,
    pub bytes_on_wire: u64,
    pub train_memory_bytes: u64,
    pub inference_memory_bytes: u64,
}

/// The costs of the tensors outside the layers, for given global widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterCost {
    pub parameters: u64,
    /// Of which embeddings (not trained when frozen).
    pub embedding_parameters: u64,
    /// Activations they keep for training.
    pub train_activations: u64,
}

/// The costs of one layer, for given global widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerCost {
    pub parameters: u64,
    pub train_activations: u64,
    pub inference_activations: u64,
}

/// The cost model of one global model and training shape.
#[derive(Debug, Clone)]
pub struct CostModel {
    config: ModelConfig,
    pub shape: TrainingShape,
    /// The description's tensors outside the layers, and those of one layer.
    outer_tensors: Vec<TensorSpec>,
    layer_tensors: Vec<TensorSpec>,
}

impl CostModel {
    pub fn new(config: &ModelConfig, shape: TrainingShape) -> Self {
        let (before, after) = config.outer_tensors();
        Self {
            config: config.clone(),
            shape,
            outer_tensors: before.into_iter().chain(after).collect(),
            layer_tensors: config.layer_tensors(0),
        }
    }

    /// The cost model of the same model with some global widths fixed at other sizes: a
    /// client's sub-models all have its own vocabulary, whatever else the search chooses.
    pub fn pinned(&self, sizes: &AxisSizes) -> crate::Result<Self> {
        let mut widths = self.config.widths();
        for (&axis, &n) in &sizes.0 {
            widths.global.set(axis, n);
        }
        Ok(Self::new(&self.config.with_widths(&widths)?, self.shape))
    }

    /// The cost model of sub-models of `global`.
    pub fn for_checkpoint(global: &crate::Checkpoint, shape: TrainingShape) -> Self {
        Self::new(&global.config, shape)
    }

    /// The global model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The batch and the tokens per example.
    fn batch_and_seq(&self) -> (u64, u64) {
        let tokens = match self.config.vit() {
            Some(vit) => vit.tokens_at(self.shape.image_size.unwrap_or(vit.image_size)),
            None => self.shape.max_seq_len,
        };
        (self.shape.batch_size as u64, tokens as u64)
    }

    /// Costs outside the layers at global widths `global`.
    pub fn outer(&self, global: &AxisSizes) -> OuterCost {
        let widths = Widths {
            global: global.clone(),
            layers: Vec::new(),
            global_layers: Vec::new(),
        };
        let axes = self.config.axes();
        let (mut parameters, mut embedding_parameters) = (0, 0);
        for t in &self.outer_tensors {
            let n = widths.shape(axes, t).iter().product::<usize>() as u64;
            parameters += n;
            if t.kind == TensorKind::Embedding {
                embedding_parameters += n;
            }
        }
        let (b, s) = self.batch_and_seq();
        OuterCost {
            parameters,
            embedding_parameters,
            train_activations: self.config.outer_activations(global, b, s),
        }
    }

    /// Costs of one layer of widths `layer` at global widths `global`.
    pub fn layer(&self, global: &AxisSizes, layer: &AxisSizes) -> LayerCost {
        let widths = Widths {
            global: global.clone(),
            layers: vec![layer.clone()],
            global_layers: vec![0],
        };
        let parameters = widths.parameter_count(self.config.axes(), &self.layer_tensors);
        let (b, s) = self.batch_and_seq();
        let activations = self.config.layer_activations(global, layer, b, s);
        LayerCost {
            parameters,
            train_activations: activations.train,
            inference_activations: activations.inference,
        }
    }

    /// Training memory of a model whose layers add up to `layer_parameters` and
    /// `layer_activations`.
    pub fn train_memory(
        &self,
        outer: &OuterCost,
        layer_parameters: u64,
        layer_activations: u64,
    ) -> u64 {
        let parameters = outer.parameters + layer_parameters;
        let trained = if self.shape.freeze_embeddings {
            parameters - outer.embedding_parameters
        } else {
            parameters
        };
        F32 * (parameters + 3 * trained + outer.train_activations + layer_activations)
    }

    /// Every cost of a model with these widths.
    pub fn cost(&self, widths: &Widths) -> Cost {
        let outer = self.outer(&widths.global);
        let layers: Vec<LayerCost> = widths
            .layers
            .iter()
            .map(|l| self.layer(&widths.global, l))
            .collect();
        let layer_parameters: u64 = layers.iter().map(|l| l.parameters).sum();
        let train_activations: u64 = layers.iter().map(|l| l.train_activations).sum();
        // Inference holds one layer's activations at a time: the largest layer's.
        let inference_activations = layers
            .iter()
            .map(|l| l.inference_activations)
            .max()
            .unwrap_or(0);
        let parameters = outer.parameters + layer_parameters;
        Cost {
            parameters,
            layer_parameters,
            bytes_on_wire: F32 * parameters,
            train_memory_bytes: self.train_memory(&outer, layer_parameters, train_activations),
            inference_memory_bytes: F32 * (parameters + inference_activations),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::elastic::Axis;
    use crate::families::bert::config::full_layer;
    use crate::families::bert::{tiny_model, Variant};

    fn widths(hidden: usize, layers: Vec<AxisSizes>) -> Widths {
        Widths {
            global: AxisSizes::of(&[(Axis::Hidden, hidden), (Axis::Vocab, VOCAB)]),
            global_layers: (0..layers.len()).collect(),
            layers,
        }
    }

    #[test]
    fn costs_count_the_same_parameters_as_the_tensor_shapes() {
        let config = tiny_model(Variant::Bert, 3, 24, 4, 40, true);
        let model = CostModel::new(&config, TrainingShape::default());
        let sub = widths(
            17,
            vec![
                full_layer(1, 3, 7),
                full_layer(4, 6, 40),
                full_layer(2, 5, 1),
            ],
        );
        for w in [sub.clone(), config.widths()] {
            let counted = config.with_widths(&w).unwrap().parameter_count();
            assert_eq!(model.cost(&w).parameters, counted);
        }
        let shallow = widths(24, vec![full_layer(4, 6, 40)]);
        let cost = model.cost(&shallow);
        assert_eq!(
            cost.parameters,
            config.with_widths(&shallow).unwrap().parameter_count()
        );
        assert_eq!(
            3 * cost.layer_parameters,
            model.cost(&config.widths()).layer_parameters
        );
    }

    #[test]
    fn memory_grows_with_width_depth_and_batch_and_shrinks_with_frozen_embeddings() {
        let config = tiny_model(Variant::Bert, 2, 24, 4, 40, true);
        let small = widths(24, vec![full_layer(2, 6, 20); 2]);
        let base = CostModel::new(&config, TrainingShape::default());
        let full = base.cost(&config.widths());
        assert!(base.cost(&small).train_memory_bytes < full.train_memory_bytes);
        let narrow = widths(12, vec![full_layer(2, 6, 20); 2]);
        assert!(base.cost(&narrow).train_memory_bytes < base.cost(&small).train_memory_bytes);
        let shallow = widths(24, vec![full_layer(2, 6, 20)]);
        assert!(base.cost(&shallow).train_memory_bytes < base.cost(&small).train_memory_bytes);
        let big_batch = CostModel::new(
            &config,
            TrainingShape {
                batch_size: 64,
                ..Default::default()
            },
        );
        assert!(big_batch.cost(&small).train_memory_bytes > base.cost(&small).train_memory_bytes);
        let frozen = CostModel::new(
            &config,
            TrainingShape {
                freeze_embeddings: true,
                ..Default::default()
            },
        );
        assert!(frozen.cost(&small).train_memory_bytes < base.cost(&small).train_memory_bytes);
        assert!(base.cost(&small).inference_memory_bytes < base.cost(&small).train_memory_bytes);
    }

    /// A vision model's tokens come from the input size, not from max_seq_len: the CLS
    /// token and the patches.
    #[test]
    fn vision_activations_follow_the_image_size() {
        use crate::families::vit::{tiny_config, Variant};
        let config = ModelConfig::Vit(tiny_config(Variant::Dinov2, 2, 24, 4, 48, 32, 4));
        let at = |image_size, max_seq_len| {
            let shape = TrainingShape {
                image_size,
                max_seq_len,
                ..Default::default()
            };
            CostModel::new(&config, shape).cost(&config.widths())
        };
        // Pre-training size 32 / patch 4: 65 tokens, whatever max_seq_len says.
        assert_eq!(at(None, 8), at(Some(32), 512));
        let (small, large) = (at(Some(16), 64), at(Some(64), 64));
        assert_eq!(small.parameters, large.parameters);
        assert!(small.train_memory_bytes < at(None, 64).train_memory_bytes);
        assert!(at(None, 64).train_memory_bytes < large.train_memory_bytes);
        assert_eq!(config.vit().unwrap().tokens_at(16), 1 + 16);
    }
}
