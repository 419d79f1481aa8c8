//! The shape of a client's base sub-model in a LoRA round, as a pipeline's `submodels`
//! tier gives it: a share of the heads and FFN, of the hidden size, and a depth.

use serde::Serialize;

use crate::core::elastic::{Axis, Widths};
use crate::core::error::{Error, Result};
use crate::fl::extract::DepthPolicy;
use crate::models::families::ModelConfig;

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
    /// The depth, after checking that the shares are in (0, 1] and the depth within the
    /// model's `total` layers: a tier outside them is an error, not a clamped sub-model.
    pub fn checked_depth(&self, total: usize) -> Result<usize> {
        for (key, f) in [("width", self.width), ("hidden", self.hidden)] {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Invalid(format!(
                    "submodels: `{key}` must be in (0, 1], got {f}"
                )));
            }
        }
        let depth = self.depth.unwrap_or(total);
        if depth == 0 || depth > total {
            return Err(Error::Invalid(format!(
                "submodels: `depth` must be between 1 and the model's {total} layers, got {depth}"
            )));
        }
        Ok(depth)
    }

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
    let width = shape.width;
    let full = global.widths();
    let total = full.layers.len();
    let depth = shape.checked_depth(total)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::llama::tiny_config;

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
}
