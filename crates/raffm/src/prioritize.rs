//! Salient parameter prioritization (paper 3.1.1-3.1.2), extended to every elastic axis.
//!
//! Per encoder layer, channels are scored by a norm of their weights and reordered so the
//! most salient come first; every reordering is a symmetry of the network, so the model's
//! function is unchanged (to float rounding):
//!
//! * Q/K channels inside a head share one permutation (Theorem 1: `q·k` sums over the
//!   channels, so permuting both alike changes nothing). Score: mean of the Q row norm and
//!   the K row norm (eq. 5).
//! * V channels inside a head move with the matching input columns of the attention output
//!   projection (the head's context vector is only ever multiplied by those columns).
//!   Score: mean of the V row norm and the output column norm.
//! * Heads move as wholes (Q, K, V rows and output columns). Score: the sum of the head's
//!   Q/K and V channel scores.
//! * FFN neurons move with their bias and the matching column of the second matrix.
//!   Score: mean of the first matrix's row norm and the second's column norm.
//!
//! Biases are not scored (eq. 1 scores weights) but always move with their channel.
//! Ties keep their current order, so prioritizing twice is the identity.

use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::layout::layer_tensor;
use crate::tensor::{HostTensor, Norm};

/// Salience of every channel of one layer, in the checkpoint's current order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSalience {
    pub heads: Vec<f64>,
    /// Per head, per channel.
    pub qk_channels: Vec<Vec<f64>>,
    pub v_channels: Vec<Vec<f64>>,
    pub ffn_neurons: Vec<f64>,
}

/// How one layer was reordered: for each new position, the index it came from. Channel
/// permutations are listed per head in the new head order and index within the head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPermutation {
    pub layer: usize,
    pub heads: Vec<usize>,
    pub qk_channels: Vec<Vec<usize>>,
    pub v_channels: Vec<Vec<usize>>,
    pub ffn_neurons: Vec<usize>,
    /// Scores after reordering (non-increasing along every axis).
    pub salience: LayerSalience,
}

impl LayerPermutation {
    /// True when nothing moved.
    pub fn is_identity(&self) -> bool {
        let id = |p: &Vec<usize>| p.iter().enumerate().all(|(i, &j)| i == j);
        id(&self.heads)
            && self.qk_channels.iter().all(id)
            && self.v_channels.iter().all(id)
            && id(&self.ffn_neurons)
    }
}

fn mean_pair(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.into_iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect()
}

/// Scores one layer's channels.
pub fn layer_salience(checkpoint: &Checkpoint, layer: usize, norm: Norm) -> LayerSalience {
    let arch = checkpoint.config.layers[layer];
    let t = |suffix: &str| checkpoint.tensor(&layer_tensor(layer, suffix));
    let qk = mean_pair(
        t("attention.self.query.weight").row_norms(norm),
        t("attention.self.key.weight").row_norms(norm),
    );
    let v = mean_pair(
        t("attention.self.value.weight").row_norms(norm),
        t("attention.output.dense.weight").col_norms(norm),
    );
    let per_head = |scores: &[f64]| -> Vec<Vec<f64>> {
        scores.chunks(arch.head_dim).map(<[f64]>::to_vec).collect()
    };
    let qk_channels = per_head(&qk);
    let v_channels = per_head(&v);
    // Summed in descending order so a head's score does not depend on how its channels
    // are currently ordered (float addition is not associative).
    let ordered_sum =
        |scores: &[f64]| -> f64 { descending_order(scores).iter().map(|&i| scores[i]).sum() };
    let heads = qk_channels
        .iter()
        .zip(&v_channels)
        .map(|(a, b)| ordered_sum(a) + ordered_sum(b))
        .collect();
    let ffn_neurons = mean_pair(
        t("intermediate.dense.weight").row_norms(norm),
        t("output.dense.weight").col_norms(norm),
    );
    LayerSalience {
        heads,
        qk_channels,
        v_channels,
        ffn_neurons,
    }
}

/// Indices ordered by descending score; ties keep their order.
pub fn descending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

fn reorder<T: Clone>(values: &[T], order: &[usize]) -> Vec<T> {
    order.iter().map(|&i| values[i].clone()).collect()
}

/// Reorders every elastic axis of every layer by salience. `on_layer` is called after each
/// layer (for progress reporting).
pub fn prioritize(
    checkpoint: &Checkpoint,
    norm: Norm,
    mut on_layer: impl FnMut(usize),
) -> (Checkpoint, Vec<LayerPermutation>) {
    let mut out = checkpoint.clone();
    out.files.clear();
    let mut permutations = Vec::with_capacity(checkpoint.config.layers.len());
    for (layer, arch) in checkpoint.config.layers.iter().enumerate() {
        let scores = layer_salience(checkpoint, layer, norm);
        let heads = descending_order(&scores.heads);
        let qk_channels: Vec<Vec<usize>> = heads
            .iter()
            .map(|&h| descending_order(&scores.qk_channels[h]))
            .collect();
        let v_channels: Vec<Vec<usize>> = heads
            .iter()
            .map(|&h| descending_order(&scores.v_channels[h]))
            .collect();
        let ffn_neurons = descending_order(&scores.ffn_neurons);

        // Row indices into the [heads * head_dim] axis, new position -> old row.
        let flatten = |within: &[Vec<usize>]| -> Vec<usize> {
            heads
                .iter()
                .zip(within)
                .flat_map(|(&h, channels)| channels.iter().map(move |&c| h * arch.head_dim + c))
                .collect()
        };
        let qk_rows = flatten(&qk_channels);
        let v_rows = flatten(&v_channels);

        let mut apply = |suffix: &str, f: &dyn Fn(&HostTensor) -> HostTensor| {
            let t = out.tensor_mut(&layer_tensor(layer, suffix));
            *t = f(t);
        };
        for suffix in ["attention.self.query", "attention.self.key"] {
            apply(&format!("{suffix}.weight"), &|t| t.select_rows(&qk_rows));
            apply(&format!("{suffix}.bias"), &|t| t.select_rows(&qk_rows));
        }
        apply("attention.self.value.weight", &|t| t.select_rows(&v_rows));
        apply("attention.self.value.bias", &|t| t.select_rows(&v_rows));
        apply("attention.output.dense.weight", &|t| t.select_cols(&v_rows));
        apply("intermediate.dense.weight", &|t| {
            t.select_rows(&ffn_neurons)
        });
        apply("intermediate.dense.bias", &|t| t.select_rows(&ffn_neurons));
        apply("output.dense.weight", &|t| t.select_cols(&ffn_neurons));

        let salience = LayerSalience {
            heads: reorder(&scores.heads, &heads),
            qk_channels: heads
                .iter()
                .zip(&qk_channels)
                .map(|(&h, order)| reorder(&scores.qk_channels[h], order))
                .collect(),
            v_channels: heads
                .iter()
                .zip(&v_channels)
                .map(|(&h, order)| reorder(&scores.v_channels[h], order))
                .collect(),
            ffn_neurons: reorder(&scores.ffn_neurons, &ffn_neurons),
        };
        permutations.push(LayerPermutation {
            layer,
            heads,
            qk_channels,
            v_channels,
            ffn_neurons,
            salience,
        });
        on_layer(layer);
    }
    (out, permutations)
}

/// True when `scores` never increases.
pub fn is_non_increasing(scores: &[f64]) -> bool {
    scores.windows(2).all(|w| w[0] >= w[1])
}

/// True when every axis of the layer's salience is ordered.
pub fn is_prioritized(s: &LayerSalience) -> bool {
    is_non_increasing(&s.heads)
        && s.qk_channels.iter().all(|c| is_non_increasing(c))
        && s.v_channels.iter().all(|c| is_non_increasing(c))
        && is_non_increasing(&s.ffn_neurons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::{Family, LayerArch};
    use crate::model::BertForSequenceClassification;
    use crate::tokenizer::EncodedBatch;
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

    fn batch(family: Family) -> EncodedBatch {
        // Two rows, the second padded, to exercise the mask; RoBERTa has one token type.
        let second_segment = if family == Family::Roberta { 0 } else { 1 };
        let s = second_segment;
        EncodedBatch {
            batch: 2,
            seq: 6,
            input_ids: vec![2, 7, 9, 11, 13, 3, 2, 5, 8, 3, 0, 0],
            token_type_ids: vec![0, 0, 0, s, s, s, 0, 0, 0, 0, 0, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        }
    }

    #[test]
    fn prioritized_tiny_models_compute_the_same_function_in_every_family() {
        for family in [Family::Bert, Family::Roberta, Family::DistilBert] {
            let config = tiny_config(family, 2, 16, 4, 24);
            let ckpt = Checkpoint::random(&config, 11, true, true);
            let (out, perms) = prioritize(&ckpt, Norm::L1, |_| {});
            assert!(
                perms.iter().any(|p| !p.is_identity()),
                "{family:?}: nothing moved"
            );
            let (a, b) = (logits(&ckpt, &batch(family)), logits(&out, &batch(family)));
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "{family:?}: logits moved by {diff}");
        }
    }

    #[test]
    fn scores_are_ordered_after_and_a_second_pass_is_the_identity() {
        let config = tiny_config(Family::Bert, 3, 24, 4, 40);
        // An elastic sub-model too: narrower heads and FFN in one layer.
        let layers = vec![
            config.layers[0],
            LayerArch {
                num_heads: 3,
                head_dim: 4,
                intermediate_size: 17,
            },
            config.layers[2],
        ];
        for config in [config.clone(), config.with_layers(layers).unwrap()] {
            for norm in [Norm::L1, Norm::L2] {
                let ckpt = Checkpoint::random(&config, 2, true, false);
                let (out, perms) = prioritize(&ckpt, norm, |_| {});
                for (layer, p) in perms.iter().enumerate() {
                    let recomputed = layer_salience(&out, layer, norm);
                    assert!(
                        is_prioritized(&recomputed),
                        "layer {layer} not ordered: {recomputed:?}"
                    );
                    assert_eq!(
                        recomputed, p.salience,
                        "manifest scores disagree with the weights"
                    );
                }
                let (_, again) = prioritize(&out, norm, |_| {});
                assert!(again.iter().all(LayerPermutation::is_identity));
            }
        }
    }

    #[test]
    fn descending_order_is_stable() {
        assert_eq!(descending_order(&[1.0, 3.0, 1.0, 2.0]), vec![1, 3, 0, 2]);
    }
}
