//! RaFFM + LoRA: a client's base sub-model, and what training an adapter on it costs in
//! memory.
//!
//! The estimate, in float32 bytes, counts the frozen base weights (no gradients, no
//! optimizer state), the adapter with its gradients and AdamW's two moments, and the
//! activations kept for the backward pass: the family's per-layer estimate (the same one
//! the encoders' budgets use) plus, per adapted projection, the dropped-out input that A's
//! gradient reads and the rank-r product `x Aᵀ` that B's reads.

use serde::Serialize;

use crate::cost::{CostModel, TrainingShape};
use crate::elastic::{Axis, Widths};
use crate::error::{Error, Result};
use crate::extract::DepthPolicy;
use crate::families::llama::lora::{LoraAdapter, LoraConfig};
use crate::families::ModelConfig;

const F32: u64 = 4;

/// How much of the base a client's sub-model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SubmodelShape {
    /// Share of the query heads in each KV group (rounded up, so a group keeps at least
    /// one) and of the FFN neurons.
    pub width: f64,
    /// Share of the hidden channels. Slicing them changes every RMSNorm's root mean
    /// square, so it costs the most accuracy of the axes.
    pub hidden: f64,
    /// Layers kept, spread evenly (the first one kept); `None`: all.
    pub depth: Option<usize>,
}

impl SubmodelShape {
    /// Every axis at `width`, all layers.
    pub fn uniform(width: f64) -> Self {
        Self {
            width,
            hidden: width,
            depth: None,
        }
    }
}

/// The widths of a base sub-model of `shape`. KV groups and the head dimension stay
/// whole. With a prioritized base the leading channels are the salient ones.
pub fn submodel_widths(global: &ModelConfig, shape: SubmodelShape) -> Result<Widths> {
    for (option, f) in [("--width", shape.width), ("--hidden", shape.hidden)] {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::Invalid(format!(
                "{option} must be in (0, 1], got {f}"
            )));
        }
    }
    let (width, depth) = (shape.width, shape.depth);
    let full = global.widths();
    let total = full.layers.len();
    let depth = depth.unwrap_or(total);
    if depth == 0 || depth > total {
        return Err(Error::Invalid(format!(
            "--depth must be between 1 and the model's {total} layers, got {depth}"
        )));
    }
    let scaled = |n: usize, fraction: f64, round_up: bool| {
        let x = n as f64 * fraction;
        (if round_up { x.ceil() } else { x.round() } as usize).clamp(1, n)
    };
    let mut widths = full.clone();
    widths.global.set(
        Axis::Hidden,
        scaled(full.global.get(Axis::Hidden), shape.hidden, false),
    );
    widths.global_layers = DepthPolicy::Even.layers(total, depth, &[]);
    widths.layers = widths
        .global_layers
        .iter()
        .map(|&g| {
            let mut layer = full.layers[g].clone();
            layer.set(Axis::Heads, scaled(layer.get(Axis::Heads), width, true));
            layer.set(Axis::Ffn, scaled(layer.get(Axis::Ffn), width, false));
            layer
        })
        .collect();
    Ok(widths)
}

/// Training memory of a LoRA adapter on a (sub-)model, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoraMemory {
    pub base_parameters: u64,
    pub adapter_parameters: u64,
    /// The frozen base weights.
    pub base_bytes: u64,
    /// The adapter, its gradients and AdamW's two moments.
    pub adapter_bytes: u64,
    pub activation_bytes: u64,
    pub total_bytes: u64,
}

/// The estimate for `model` (the client's sub-model config) with an adapter of `lora`, at
/// `batch` sequences of `seq` tokens.
pub fn lora_train_memory(
    model: &ModelConfig,
    lora: &LoraConfig,
    batch: usize,
    seq: usize,
) -> Result<LoraMemory> {
    let ModelConfig::Llama(llama) = model else {
        return Err(Error::Invalid(
            "LoRA budgets are for the decoder family".into(),
        ));
    };
    let shape = TrainingShape {
        batch_size: batch,
        max_seq_len: seq,
        freeze_embeddings: true,
        image_size: None,
    };
    let cost_model = CostModel::new(model, shape);
    let widths = model.widths();
    let outer = cost_model.outer(&widths.global);
    let family: u64 = outer.train_activations
        + widths
            .layers
            .iter()
            .map(|l| cost_model.layer(&widths.global, l).train_activations)
            .sum::<u64>();
    let tokens = (batch * seq) as u64;
    let targets = LoraAdapter::targets(lora, llama);
    let adapter_parameters: u64 = targets
        .iter()
        .map(|(_, [out, inp])| (lora.r * (out + inp)) as u64)
        .sum();
    let lora_activations: u64 = targets
        .iter()
        .map(|(_, [_, inp])| tokens * (*inp as u64 + lora.r as u64))
        .sum();
    let base_parameters = model.parameter_count();
    let base_bytes = F32 * base_parameters;
    let adapter_bytes = F32 * 4 * adapter_parameters;
    let activation_bytes = F32 * (family + lora_activations);
    Ok(LoraMemory {
        base_parameters,
        adapter_parameters,
        base_bytes,
        adapter_bytes,
        activation_bytes,
        total_bytes: base_bytes + adapter_bytes + activation_bytes,
    })
}

/// The widths tried for a memory budget, widest first.
pub const WIDTHS: [f64; 7] = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25];

/// The widest of [`WIDTHS`] whose estimate fits `budget_bytes`, with its estimate: each
/// width sets the heads and FFN, and the hidden size too unless `hidden` fixes it (at
/// `depth` layers); an error naming the smallest estimate when none fits.
pub fn widest_within(
    global: &ModelConfig,
    lora: &LoraConfig,
    hidden: Option<f64>,
    depth: Option<usize>,
    batch: usize,
    seq: usize,
    budget_bytes: u64,
) -> Result<(SubmodelShape, LoraMemory)> {
    let mut smallest = None;
    for width in WIDTHS {
        let shape = SubmodelShape {
            width,
            hidden: hidden.unwrap_or(width),
            depth,
        };
        let config = global.with_widths(&submodel_widths(global, shape)?)?;
        let memory = lora_train_memory(&config, lora, batch, seq)?;
        if memory.total_bytes <= budget_bytes {
            return Ok((shape, memory));
        }
        smallest = Some(memory.total_bytes);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Err(Error::Invalid(format!(
        "--memory-budget {:.0} MiB: even width {} needs an estimated {:.0} MiB",
        mib(budget_bytes),
        WIDTHS[WIDTHS.len() - 1],
        mib(smallest.unwrap_or(0))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::llama::tiny_config;

    fn lora(r: usize) -> LoraConfig {
        let targets: Vec<String> = ["q_proj", "v_proj"].map(String::from).to_vec();
        LoraConfig::new(r, 16.0, 0.0, &targets).unwrap()
    }

    #[test]
    fn submodel_widths_scale_every_axis_and_keep_the_groups() {
        let global = ModelConfig::Llama(tiny_config(4, 24, 6, 2, 24));
        let shape = SubmodelShape {
            depth: Some(2),
            ..SubmodelShape::uniform(0.5)
        };
        let w = submodel_widths(&global, shape).unwrap();
        assert_eq!(w.global.get(Axis::Hidden), 12);
        assert_eq!(w.global_layers, vec![0, 2]);
        for layer in &w.layers {
            assert_eq!(layer.get(Axis::KvHeads), 2);
            // 3 query heads per group: half, rounded up.
            assert_eq!(layer.get(Axis::Heads), 2);
            assert_eq!(layer.get(Axis::Ffn), 12);
        }
        global.with_widths(&w).unwrap();
        let narrow = SubmodelShape {
            hidden: 1.0,
            ..SubmodelShape::uniform(0.5)
        };
        let w = submodel_widths(&global, narrow).unwrap();
        assert_eq!((w.global.get(Axis::Hidden), w.layers.len()), (24, 4));
        assert!(submodel_widths(&global, SubmodelShape::uniform(0.0)).is_err());
        let deep = SubmodelShape {
            depth: Some(5),
            ..SubmodelShape::uniform(1.0)
        };
        assert!(submodel_widths(&global, deep).is_err());
    }

    #[test]
    fn the_estimate_counts_base_adapter_state_and_activations() {
        let global = ModelConfig::Llama(tiny_config(2, 16, 4, 2, 24));
        let m = lora_train_memory(&global, &lora(4), 2, 8).unwrap();
        assert_eq!(m.base_parameters, global.parameter_count());
        // q_proj [16, 16] and v_proj [8, 16] in each of 2 layers, rank 4.
        assert_eq!(m.adapter_parameters, 2 * 4 * ((16 + 16) + (8 + 16)));
        assert_eq!(m.adapter_bytes, 16 * m.adapter_parameters);
        assert_eq!(
            m.total_bytes,
            m.base_bytes + m.adapter_bytes + m.activation_bytes
        );
        // Twice the batch: the same weights, more activations.
        let twice = lora_train_memory(&global, &lora(4), 4, 8).unwrap();
        assert_eq!(twice.base_bytes, m.base_bytes);
        assert!(twice.activation_bytes > m.activation_bytes);
        // A higher rank costs more adapter state; a narrower model less of everything.
        assert!(
            lora_train_memory(&global, &lora(8), 2, 8)
                .unwrap()
                .adapter_bytes
                > m.adapter_bytes
        );
        let half = global
            .with_widths(&submodel_widths(&global, SubmodelShape::uniform(0.5)).unwrap())
            .unwrap();
        let h = lora_train_memory(&half, &lora(4), 2, 8).unwrap();
        assert!(h.base_bytes < m.base_bytes && h.activation_bytes < m.activation_bytes);
    }

    #[test]
    fn a_budget_picks_the_widest_sub_model_that_fits() {
        let global = ModelConfig::Llama(tiny_config(2, 16, 4, 2, 24));
        let full = lora_train_memory(&global, &lora(4), 2, 8)
            .unwrap()
            .total_bytes;
        let (w, m) = widest_within(&global, &lora(4), None, None, 2, 8, full).unwrap();
        assert_eq!((w.width, m.total_bytes), (1.0, full));
        let (w, m) = widest_within(&global, &lora(4), None, None, 2, 8, full - 1).unwrap();
        assert!(w.width < 1.0 && w.hidden == w.width && m.total_bytes < full);
        let (w, _) = widest_within(&global, &lora(4), Some(1.0), None, 2, 8, full - 1).unwrap();
        assert_eq!(w.hidden, 1.0);
        let err = widest_within(&global, &lora(4), None, None, 2, 8, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--memory-budget"), "{err}");
    }
}
