//! What a sub-model costs a client: parameters, bytes on the wire, and an estimate of the
//! memory that training and inference need.
//!
//! Parameters are exact: a sum over the tensors of the family's description at the
//! sub-model's widths (a test checks it against written files). Memory is an estimate, in
//! float32 bytes:
//!
//! * training = weights + gradients + AdamW's two moments (of the trained parameters)
//!   + the activations kept for the backward pass;
//! * training a LoRA adapter on the frozen model ([`CostModel::with_adapter`]) = weights
//!   plus the adapter with its gradients and moments plus the activations, among them,
//!   per adapted projection, the input that A's gradient reads and the rank-r product
//!   `x Aᵀ` that B's reads;
//! * inference = weights + the activations of one layer at a time.
//!
//! Activations are a small per-family function (see the family's `layer_activations`).
//! Costs split into a part outside the layers, which depends only on the global widths
//! (hidden size), and one term per layer: the search adds layers up one by one.

use serde::{Deserialize, Serialize};

use crate::core::elastic::{AxisSizes, TensorKind, TensorSpec, Widths};
use crate::models::families::ModelConfig;

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

/// A LoRA adapter to train on the frozen model: its rank and the projections of each layer
/// it adapts, by their name inside the layer (`self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterShape {
    pub rank: usize,
    pub modules: Vec<String>,
}

/// Costs of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub parameters: u64,
    /// Parameters of the layers (what per-layer widths and depth change).
    pub layer_parameters: u64,
    /// Parameters of the LoRA adapter trained on the model, if one is.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adapter_parameters: u64,
    pub bytes_on_wire: u64,
    pub train_memory_bytes: u64,
    pub inference_memory_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The costs of the tensors outside the layers, for given global widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterCost {
    pub parameters: u64,
    /// What training holds for them besides their weights, in floats: the gradients and
    /// moments of those trained, and the activations kept for the backward pass.
    pub train_state: u64,
}

/// The costs of one layer, for given global widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerCost {
    pub parameters: u64,
    /// What training holds for the layer besides its weights, in floats: gradients and
    /// moments of what it trains (its weights, or its adapter and the adapter itself), and
    /// the activations kept for the backward pass. Memory is a sum of parameters and
    /// states, so the search adds layers up in two numbers.
    pub train_state: u64,
    pub inference_activations: u64,
    pub adapter_parameters: u64,
}

/// The cost model of one global model and training shape.
#[derive(Debug, Clone)]
pub struct CostModel {
    config: ModelConfig,
    pub shape: TrainingShape,
    /// The description's tensors outside the layers, and those of one layer.
    outer_tensors: Vec<TensorSpec>,
    layer_tensors: Vec<TensorSpec>,
    /// The adapter trained on the frozen model, where one is.
    adapter: Option<AdapterShape>,
}

impl CostModel {
    pub fn new(config: &ModelConfig, shape: TrainingShape) -> Self {
        let (before, after) = config.outer_tensors();
        Self {
            config: config.clone(),
            shape,
            outer_tensors: before.into_iter().chain(after).collect(),
            layer_tensors: config.layer_tensors(0),
            adapter: None,
        }
    }

    /// The same model trained through a LoRA adapter: the model frozen, the adapter
    /// trained.
    pub fn with_adapter(mut self, adapter: AdapterShape) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// The cost model of the same model with some global widths fixed at other sizes: a
    /// client's sub-models all have its own vocabulary, whatever else the search chooses.
    pub fn pinned(&self, sizes: &AxisSizes) -> crate::Result<Self> {
        let mut widths = self.config.widths();
        for (&axis, &n) in &sizes.0 {
            widths.global.set(axis, n);
        }
        let pinned = Self::new(&self.config.with_widths(&widths)?, self.shape);
        Ok(Self {
            adapter: self.adapter.clone(),
            ..pinned
        })
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
        let (mut parameters, mut trained) = (0, 0);
        for t in &self.outer_tensors {
            let n = widths.shape(axes, t).iter().product::<usize>() as u64;
            parameters += n;
            let frozen = self.adapter.is_some()
                || (self.shape.freeze_embeddings && t.kind == TensorKind::Embedding);
            if !frozen {
                trained += n;
            }
        }
        let (b, s) = self.batch_and_seq();
        OuterCost {
            parameters,
            train_state: 3 * trained + self.config.outer_activations(global, b, s),
        }
    }

    /// Costs of one layer of widths `layer` at global widths `global`.
    pub fn layer(&self, global: &AxisSizes, layer: &AxisSizes) -> LayerCost {
        let widths = Widths {
            global: global.clone(),
            layers: vec![layer.clone()],
            global_layers: vec![0],
        };
        let axes = self.config.axes();
        let parameters = widths.parameter_count(axes, &self.layer_tensors);
        let (b, s) = self.batch_and_seq();
        let activations = self.config.layer_activations(global, layer, b, s);
        let (trained, adapter_parameters, adapter_activations) = match &self.adapter {
            None => (parameters, 0, 0),
            Some(adapter) => {
                let r = adapter.rank as u64;
                let (mut params, mut kept) = (0, 0);
                for t in self.adapted(adapter) {
                    let shape = widths.shape(axes, t); // [out, in]
                    let (out, inp) = (shape[0] as u64, shape[1] as u64);
                    params += r * (out + inp);
                    kept += b * s * (inp + r);
                }
                // The adapter's weights count here: the model's are `parameters`.
                (params, params, params + kept)
            }
        };
        LayerCost {
            parameters,
            train_state: 3 * trained + activations.train + adapter_activations,
            inference_activations: activations.inference,
            adapter_parameters,
        }
    }

    /// The layer's weight matrices that `adapter` adapts.
    fn adapted<'a>(&'a self, adapter: &'a AdapterShape) -> impl Iterator<Item = &'a TensorSpec> {
        self.layer_tensors.iter().filter(move |t| {
            adapter.modules.iter().any(|m| {
                t.name
                    .strip_suffix(".weight")
                    .is_some_and(|stem| stem.ends_with(&format!(".{m}")) || stem == m)
            })
        })
    }

    /// Training memory of a model whose layers add up to `layer_parameters` and
    /// `layer_state` (see [`LayerCost::train_state`]).
    pub fn train_memory(&self, outer: &OuterCost, layer_parameters: u64, layer_state: u64) -> u64 {
        F32 * (outer.parameters + layer_parameters + outer.train_state + layer_state)
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
        let train_state: u64 = layers.iter().map(|l| l.train_state).sum();
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
            adapter_parameters: layers.iter().map(|l| l.adapter_parameters).sum(),
            bytes_on_wire: F32 * parameters,
            train_memory_bytes: self.train_memory(&outer, layer_parameters, train_state),
            inference_memory_bytes: F32 * (parameters + inference_activations),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::core::elastic::Axis;
    use crate::models::families::bert::config::full_layer;
    use crate::models::families::bert::{tiny_model, Variant};

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
        use crate::models::families::vit::{tiny_config, Variant};
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

    /// LoRA on a frozen model: the model's weights, the adapter with its gradients and
    /// AdamW's moments, the family's activations, and per adapted projection the input and
    /// the rank-r product that the factors' gradients read. Against the closed form.
    #[test]
    fn an_adapter_on_a_frozen_model_trains_only_the_adapter() {
        use crate::models::families::llama::tiny_config;
        let config = ModelConfig::Llama(tiny_config(2, 16, 4, 2, 24));
        let shape = TrainingShape {
            batch_size: 2,
            max_seq_len: 8,
            freeze_embeddings: true,
            image_size: None,
        };
        let plain = CostModel::new(&config, shape);
        let adapter = |rank| {
            let modules = ["self_attn.q_proj", "self_attn.v_proj"].map(String::from);
            plain.clone().with_adapter(AdapterShape {
                rank,
                modules: modules.to_vec(),
            })
        };
        let w = config.widths();
        let family = config.outer_activations(&w.global, 2, 8)
            + w.layers
                .iter()
                .map(|l| config.layer_activations(&w.global, l, 2, 8).train)
                .sum::<u64>();
        let embeddings: u64 = config
            .tensors()
            .iter()
            .filter(|t| t.kind == TensorKind::Embedding)
            .map(|t| w.shape(config.axes(), t).iter().product::<usize>() as u64)
            .sum();
        let full = plain.cost(&w);
        let p = full.parameters;
        assert_eq!(
            full.train_memory_bytes,
            4 * (p + 3 * (p - embeddings) + family)
        );

        let lora = adapter(4).cost(&w);
        // q_proj [16, 16] and v_proj [8, 16] in each of 2 layers, rank 4; 16 tokens.
        let adapter_parameters = 2 * 4 * ((16 + 16) + (8 + 16));
        let kept = 2 * 16 * ((16 + 4) + (16 + 4));
        assert_eq!(lora.adapter_parameters, adapter_parameters);
        assert_eq!(
            (lora.parameters, lora.inference_memory_bytes),
            (p, full.inference_memory_bytes)
        );
        assert_eq!(
            lora.train_memory_bytes,
            4 * (p + 4 * adapter_parameters + family + kept)
        );
        assert!(adapter(8).cost(&w).train_memory_bytes > lora.train_memory_bytes);
        // A pinned cost model trains the same adapter.
        let pinned = adapter(4).pinned(&w.global).unwrap();
        assert_eq!(pinned.cost(&w), lora);
    }
}
