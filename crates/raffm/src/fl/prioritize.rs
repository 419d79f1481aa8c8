//! Salient parameter prioritization (paper 3.1.1-3.1.2), on every permutable axis of the
//! family's elastic description.
//!
//! Each index of an axis is scored by the norm of the weight slices it indexes (see
//! [`Salience::CoupledSlices`]) and the axis is reordered so the most salient come first.
//! The reordering of an axis is applied to every slot the axis indexes, so it is a symmetry
//! of the network and the model's function is unchanged (to float rounding). For BERT:
//! Q/K channels inside a head share one permutation (Theorem 1), V channels move with the
//! output projection's columns, heads move whole, FFN neurons with both FFN matrices, and
//! hidden channels with everything on the residual stream, LayerNorms included.
//!
//! A nested axis (channels inside a head) is ordered per parent: each head by its own
//! channels' scores. Biases and norms are not scored (eq. 1 scores weights) but move with
//! their channel. Scores are exact integer sums ([`SliceSums`]), so they do not depend on
//! how other axes are ordered, ties keep their current order, and prioritizing twice is the
//! identity.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::index::{index_map, Indices, Kept, Selection};
use crate::core::elastic::norms::SliceSums;
use crate::core::elastic::{Axis, AxisSpec, Factor, Salience, Scope, TensorSpec, Widths};
use crate::core::tensor::{HostTensor, Norm};

/// The scores of one axis instance, in the model's current order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scores {
    Flat(Vec<f64>),
    /// A nested axis: per parent (in the parent's order), its own indices' scores.
    PerParent(Vec<Vec<f64>>),
}

impl Scores {
    /// True when no list of scores increases.
    pub fn is_ordered(&self) -> bool {
        match self {
            Scores::Flat(s) => is_non_increasing(s),
            Scores::PerParent(per) => per.iter().all(|s| is_non_increasing(s)),
        }
    }
}

/// The salience of one axis instance: a global axis, or a per-layer axis of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AxisSalience {
    pub axis: Axis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub scores: Scores,
}

/// How one axis instance was reordered: for each new position, the index it came from
/// (per parent, by the parent's new position, for a nested axis), and the scores after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AxisPermutation {
    pub axis: Axis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub order: Kept,
    pub salience: Scores,
}

impl AxisPermutation {
    pub fn is_identity(&self) -> bool {
        match &self.order {
            Kept::Shared(i) => i.is_leading(i.0.len()),
            Kept::PerParent(per) => per.iter().all(|i| i.is_leading(i.0.len())),
        }
    }
}

/// Indices ordered by descending score; ties keep their order.
pub fn descending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// True when `scores` never increases.
pub fn is_non_increasing(scores: &[f64]) -> bool {
    scores.windows(2).all(|w| w[0] >= w[1])
}

/// Exact slice sums of every weight matrix, by tensor name.
fn matrix_sums(
    checkpoint: &Checkpoint,
    tensors: &[TensorSpec],
    norm: Norm,
) -> BTreeMap<String, SliceSums> {
    tensors
        .par_iter()
        .filter(|t| t.is_matrix())
        .map(|t| {
            (
                t.name.clone(),
                SliceSums::new(checkpoint.tensor(&t.name), norm),
            )
        })
        .collect()
}

/// The scores of one axis instance: for each index (per parent, for a nested axis), the
/// mean over every slice the axis indexes in a weight matrix of the slice's norm.
fn axis_scores(
    axes: &[AxisSpec],
    spec: &AxisSpec,
    layer: Option<usize>,
    tensors: &[TensorSpec],
    widths: &Widths,
    sums: &BTreeMap<String, SliceSums>,
) -> Scores {
    let mut total: Vec<f64> = Vec::new();
    let mut occurrences = 0usize;
    for t in tensors.iter().filter(|t| t.is_matrix()) {
        if spec.scope == Scope::Layer && t.layer != layer {
            continue;
        }
        let s = &sums[&t.name];
        for (d, dim) in t.dims.iter().enumerate() {
            for (f, factor) in dim.iter().enumerate() {
                if *factor != Factor::Axis(spec.axis) {
                    continue;
                }
                let sizes: Vec<usize> = dim
                    .iter()
                    .map(|g| widths.factor_size(axes, *g, t.layer))
                    .collect();
                let grouped = s.grouped(d, &sizes, f, spec.nested_in.is_some());
                if total.is_empty() {
                    total = vec![0.0; grouped.len()];
                }
                for (acc, &v) in total.iter_mut().zip(&grouped) {
                    *acc += s.norm(v);
                }
                occurrences += 1;
            }
        }
    }
    let mean: Vec<f64> = total
        .iter()
        .map(|v| v / occurrences.max(1) as f64)
        .collect();
    match spec.nested_in {
        None => Scores::Flat(mean),
        Some(parent) => {
            let per_parent = widths.factor_size(axes, Factor::Axis(parent), layer);
            let n = mean.len() / per_parent.max(1);
            Scores::PerParent(mean.chunks(n.max(1)).map(<[f64]>::to_vec).collect())
        }
    }
}

fn is_scored(a: &&AxisSpec) -> bool {
    a.permutable && a.salience == Salience::CoupledSlices
}

/// How many axis instances [`salience`] scores (and [`prioritize`] reorders).
pub fn salience_instances(config: &crate::models::families::ModelConfig) -> usize {
    let depth = config.widths().layers.len();
    config
        .axes()
        .iter()
        .filter(is_scored)
        .map(|a| if a.scope == Scope::Global { 1 } else { depth })
        .sum()
}

/// The salience of every permutable axis instance of a checkpoint, in its current order:
/// global axes first, then each layer's axes.
pub fn salience(checkpoint: &Checkpoint, norm: Norm) -> Vec<AxisSalience> {
    let config = &checkpoint.config;
    let axes = config.axes();
    let tensors = config.tensors();
    let widths = config.widths();
    let sums = matrix_sums(checkpoint, &tensors, norm);
    let mut out = Vec::new();
    for spec in axes
        .iter()
        .filter(is_scored)
        .filter(|a| a.scope == Scope::Global)
    {
        let scores = axis_scores(axes, spec, None, &tensors, &widths, &sums);
        out.push(AxisSalience {
            axis: spec.axis,
            layer: None,
            scores,
        });
    }
    for layer in 0..widths.layers.len() {
        for spec in axes
            .iter()
            .filter(is_scored)
            .filter(|a| a.scope == Scope::Layer)
        {
            let scores = axis_scores(axes, spec, Some(layer), &tensors, &widths, &sums);
            out.push(AxisSalience {
                axis: spec.axis,
                layer: Some(layer),
                scores,
            });
        }
    }
    out
}

/// Every layer's salience for a depth policy: the mean absolute weight of its weight
/// matrices (root mean square for L2).
pub fn layer_salience(checkpoint: &Checkpoint, norm: Norm) -> Vec<f64> {
    let tensors = checkpoint.config.tensors();
    let sums = matrix_sums(checkpoint, &tensors, norm);
    let depth = checkpoint.config.widths().layers.len();
    (0..depth)
        .map(|layer| {
            let per_matrix: Vec<f64> = tensors
                .iter()
                .filter(|t| t.is_matrix() && t.layer == Some(layer))
                .map(|t| {
                    let s = &sums[&t.name];
                    let n = checkpoint.tensor(&t.name).numel() as f64;
                    match norm {
                        Norm::L1 => s.norm(s.total()) / n,
                        Norm::L2 => s.norm(s.total()) / n.sqrt(),
                    }
                })
                .collect();
            per_matrix.iter().sum::<f64>() / per_matrix.len().max(1) as f64
        })
        .collect()
}

/// The order of one axis instance from its scores; a nested axis orders each parent's
/// indices, listed by the parent's new position (`parent_order`).
fn order_of(scores: &Scores, parent_order: Option<&[usize]>) -> (Kept, Scores) {
    let reorder = |s: &[f64], order: &[usize]| order.iter().map(|&i| s[i]).collect::<Vec<f64>>();
    match scores {
        Scores::Flat(s) => {
            let order = descending_order(s);
            let after = reorder(s, &order);
            (Kept::Shared(Indices(order)), Scores::Flat(after))
        }
        Scores::PerParent(per) => {
            let parents = parent_order.expect("a nested axis has an ordered parent");
            let orders: Vec<Vec<usize>> =
                parents.iter().map(|&p| descending_order(&per[p])).collect();
            let after = parents
                .iter()
                .zip(&orders)
                .map(|(&p, o)| reorder(&per[p], o))
                .collect();
            (
                Kept::PerParent(orders.into_iter().map(Indices).collect()),
                Scores::PerParent(after),
            )
        }
    }
}

/// Reorders every permutable axis by salience. `on_axis` is called after each axis
/// instance is scored (for progress reporting).
pub fn prioritize(
    checkpoint: &Checkpoint,
    norm: Norm,
    mut on_axis: impl FnMut(usize),
) -> (Checkpoint, Vec<AxisPermutation>) {
    let config = &checkpoint.config;
    let axes = config.axes();
    let widths = config.widths();
    let scores = salience(checkpoint, norm);
    let mut selection = Selection {
        layers: (0..widths.layers.len()).collect(),
        per_layer: vec![BTreeMap::new(); widths.layers.len()],
        ..Selection::default()
    };
    let mut permutations = Vec::with_capacity(scores.len());
    for (i, s) in scores.iter().enumerate() {
        let spec = crate::core::elastic::axis_spec(axes, s.axis);
        // Parents come before their nested axes in `salience`'s order.
        let parent_order: Option<Vec<usize>> =
            spec.nested_in
                .map(|parent| match selection.kept(axes, parent, s.layer) {
                    Some(Kept::Shared(i)) => i.0.clone(),
                    _ => unreachable!("a parent axis is ordered before its nested axes"),
                });
        let (order, after) = order_of(&s.scores, parent_order.as_deref());
        match s.layer {
            None => selection.global.insert(s.axis, order.clone()),
            Some(l) => selection.per_layer[l].insert(s.axis, order.clone()),
        };
        permutations.push(AxisPermutation {
            axis: s.axis,
            layer: s.layer,
            order,
            salience: after,
        });
        on_axis(i);
    }
    let tensors = config.tensors();
    let map = index_map(axes, &tensors, &widths, &tensors, &selection);
    let out = checkpoint.with_tensors(
        map.par_iter()
            .map(|(name, index)| {
                let t: &HostTensor = checkpoint.tensor(name);
                (name.clone(), index.gather(t))
            })
            .collect(),
    );
    (out, permutations)
}

/// True when every axis's scores are ordered.
pub fn is_prioritized(salience: &[AxisSalience]) -> bool {
    salience.iter().all(|s| s.scores.is_ordered())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::core::elastic::AxisSizes;
    use crate::data::tokenizer::EncodedBatch;
    use crate::models::families::bert::model::BertForSequenceClassification;
    use crate::models::families::bert::{tiny_model, Variant};
    use crate::CpuBackend;

    fn logits(ckpt: &Checkpoint, batch: &EncodedBatch) -> Vec<f32> {
        let device = Default::default();
        let model =
            BertForSequenceClassification::<CpuBackend>::from_checkpoint(ckpt, &device).unwrap();
        model
            .forward(&batch.to_tensors(&device))
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    }

    fn batch(variant: Variant) -> EncodedBatch {
        // Two rows, the second padded, to exercise the mask; RoBERTa has one token type.
        let s = if variant == Variant::Roberta { 0 } else { 1 };
        EncodedBatch {
            batch: 2,
            seq: 6,
            input_ids: vec![2, 7, 9, 11, 13, 3, 2, 5, 8, 3, 0, 0],
            token_type_ids: vec![0, 0, 0, s, s, s, 0, 0, 0, 0, 0, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        }
    }

    #[test]
    fn prioritized_tiny_models_compute_the_same_function_in_every_variant() {
        for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
            let config = tiny_model(variant, 2, 16, 4, 24, true);
            let ckpt = Checkpoint::random(&config, 11);
            let (out, perms) = prioritize(&ckpt, Norm::L1, |_| {});
            for axis in [
                Axis::Hidden,
                Axis::Heads,
                Axis::HeadDim,
                Axis::ValueDim,
                Axis::Ffn,
            ] {
                assert!(
                    perms.iter().any(|p| p.axis == axis && !p.is_identity()),
                    "{variant:?}: {axis} did not move"
                );
            }
            let (a, b) = (
                logits(&ckpt, &batch(variant)),
                logits(&out, &batch(variant)),
            );
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "{variant:?}: logits moved by {diff}");
        }
    }

    #[test]
    fn scores_are_ordered_after_and_a_second_pass_is_the_identity() {
        let config = tiny_model(Variant::Bert, 3, 24, 4, 40, false);
        // An elastic sub-model too: narrower hidden size, heads and FFN in one layer.
        let mut widths = config.widths();
        widths.global = AxisSizes::of(&[(Axis::Hidden, 20), (Axis::Vocab, VOCAB)]);
        widths.layers[1] = crate::models::families::bert::config::full_layer(3, 4, 17);
        for config in [config.clone(), config.with_widths(&widths).unwrap()] {
            for norm in [Norm::L1, Norm::L2] {
                let ckpt = Checkpoint::random(&config, 2);
                let (out, perms) = prioritize(&ckpt, norm, |_| {});
                let recomputed = salience(&out, norm);
                assert!(is_prioritized(&recomputed), "not ordered: {recomputed:?}");
                for (r, p) in recomputed.iter().zip(&perms) {
                    assert_eq!(
                        r.scores, p.salience,
                        "manifest scores disagree with the weights"
                    );
                }
                assert!(!is_prioritized(&salience(&ckpt, norm)));
                let (again, second) = prioritize(&out, norm, |_| {});
                assert!(second.iter().all(AxisPermutation::is_identity));
                for (name, t) in &out.tensors {
                    assert!(t.bit_eq(&again.tensors[name]), "{name}");
                }
            }
        }
    }

    #[test]
    fn descending_order_is_stable() {
        assert_eq!(descending_order(&[1.0, 3.0, 1.0, 2.0]), vec![1, 3, 0, 2]);
    }
}
