//! Running weighted sums over the global model, one update at a time: memory stays at the
//! global model plus the sums, however many clients there are. FedAvg, clipped FedAvg and
//! DP-FedAvg finish from these sums.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use super::placement::RowPlacement;
use super::report::{HolderStats, TensorHoldings};
use super::rule::ServerRule;
use super::update::ClientUpdate;
use super::Coverage;
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::index::TensorIndex;
use crate::core::tensor::HostTensor;
use crate::fl::privacy::{fill_gaussian, noise_stream};

/// The sums of every global tensor.
pub struct Accumulator<'g> {
    global: &'g Checkpoint,
    /// Sum clients' updates w·s·(v − g) (clipping, DP) instead of their values w·v.
    deltas: bool,
    tensors: Vec<TensorSums>,
}

/// The sums of one global tensor, seen as rows (everything after the first dimension; a
/// 1-D tensor has rows of one element).
///
/// An element's total weight is the sum of the weights of the clients that hold it. A
/// client holds a set of rows and, in each, the same elements, so the total weight of a
/// row depends only on which clients hold some of that row. Rows keep an id of that set
/// and the weights are worked out once per distinct set at the end, instead of being
/// summed element by element with every update.
struct TensorSums {
    name: String,
    row_len: usize,
    shape: Vec<usize>,
    /// Weighted sums of client values (or updates); f64, so identical updates average to
    /// themselves.
    sums: Vec<f64>,
    /// Per row, an id into `sets`.
    row_set: Vec<u32>,
    /// Sets of holders (positions in `holders`), in the order they arose; 0 is empty.
    sets: Vec<Vec<u32>>,
    /// (set, holder) -> the set with that holder added.
    grown: HashMap<(u32, u32), u32>,
    /// The clients that hold part of this tensor: weight and element offsets in a row
    /// (`None`: the whole row).
    holders: Vec<(f64, Option<Vec<usize>>)>,
}

impl TensorSums {
    fn new(name: &str, t: &HostTensor) -> Self {
        let rows = t.shape.first().copied().unwrap_or(1);
        Self {
            name: name.to_string(),
            row_len: t.numel() / rows.max(1),
            shape: t.shape.clone(),
            // -0.0 is the identity of addition (+0.0 would turn a client's -0.0 into +0.0).
            sums: vec![-0.0; t.numel()],
            row_set: vec![0; rows],
            sets: vec![Vec::new()],
            grown: HashMap::new(),
            holders: Vec::new(),
        }
    }

    /// Adds a client's sub-tensor `sub`, placed by `index`, with weight `w`: its values, or
    /// with `delta = Some((s, old))` its update from `old` scaled by `s`.
    fn add(&mut self, sub: &[f32], index: &TensorIndex, w: f64, delta: Option<(f64, &[f32])>) {
        let holder = self.holders.len() as u32;
        let placement = RowPlacement::new(index, &self.shape);
        let row_len = self.row_len;
        placement.for_each_row(sub, |r, src| {
            let span = r * row_len..(r + 1) * row_len;
            let sum = &mut self.sums[span.clone()];
            match (&placement.offsets, delta) {
                (None, None) => sum
                    .iter_mut()
                    .zip(src)
                    .for_each(|(s, &v)| *s += w * v as f64),
                (Some(offsets), None) => {
                    for (&c, &v) in offsets.iter().zip(src) {
                        sum[c] += w * v as f64;
                    }
                }
                (None, Some((scale, old))) => {
                    for ((s, &v), &g) in sum.iter_mut().zip(src).zip(&old[span]) {
                        *s += w * scale * (v as f64 - g as f64);
                    }
                }
                (Some(offsets), Some((scale, old))) => {
                    let old = &old[span];
                    for (&c, &v) in offsets.iter().zip(src) {
                        sum[c] += w * scale * (v as f64 - old[c] as f64);
                    }
                }
            }
            let set = self.row_set[r];
            self.row_set[r] = match self.grown.get(&(set, holder)) {
                Some(&grown) => grown,
                None => {
                    let mut members = self.sets[set as usize].clone();
                    members.push(holder);
                    let grown = self.sets.len() as u32;
                    self.sets.push(members);
                    self.grown.insert((set, holder), grown);
                    grown
                }
            };
        });
        self.holders.push((w, placement.offsets));
    }

    /// Total weight and holder count of every element of a row held by set `set`.
    fn set_totals(&self, set: u32) -> (Vec<f64>, Vec<u32>) {
        let mut weights = vec![0.0; self.row_len];
        let mut counts = vec![0u32; self.row_len];
        for &h in &self.sets[set as usize] {
            let (w, offsets) = &self.holders[h as usize];
            match offsets {
                None => {
                    weights.iter_mut().for_each(|x| *x += w);
                    counts.iter_mut().for_each(|x| *x += 1);
                }
                Some(offsets) => offsets.iter().for_each(|&c| {
                    weights[c] += w;
                    counts[c] += 1;
                }),
            }
        }
        (weights, counts)
    }

    /// The new values: where a client contributed, the weighted mean of the values (or the
    /// old value plus the weighted mean update); `old` elsewhere. With DP, every element
    /// moves by the noisy sum over the fixed denominator.
    fn finish(
        self,
        old: &HostTensor,
        rule: &ServerRule,
        deltas: bool,
    ) -> (HostTensor, u64, HolderStats) {
        let eta = rule.server_lr;
        let mut totals_of_set: Vec<Option<(Vec<f64>, Vec<u32>)>> = vec![None; self.sets.len()];
        let mut data = old.data.clone();
        let mut updated = 0u64;
        let mut stats = HolderStats::default();
        let mut dp = rule.dp.as_ref().map(|dp| {
            let std = dp.settings.noise_multiplier * dp.settings.clip_norm;
            (
                noise_stream(dp.seed, dp.round, &self.name),
                std,
                dp.settings.expected_clients,
                vec![0.0f64; self.row_len],
            )
        });
        for (r, &set) in self.row_set.iter().enumerate() {
            let span = r * self.row_len..(r + 1) * self.row_len;
            if let Some((stream, std, denominator, noise)) = &mut dp {
                // Every element, held or not, in row order: one stream per tensor.
                fill_gaussian(stream, *std, noise);
                let sums = &self.sums[span.clone()];
                for ((value, &s), &z) in data[span.clone()].iter_mut().zip(sums).zip(noise.iter()) {
                    *value = (*value as f64 + eta * (s + z) / *denominator) as f32;
                }
                updated += self.row_len as u64;
            }
            if set == 0 {
                stats.add_unheld(self.row_len as u64);
                continue;
            }
            let (weights, counts) =
                totals_of_set[set as usize].get_or_insert_with(|| self.set_totals(set));
            counts.iter().for_each(|&n| stats.add(n, false));
            if dp.is_some() {
                continue;
            }
            for ((value, s), &w) in data[span.clone()]
                .iter_mut()
                .zip(&self.sums[span])
                .zip(weights.iter())
            {
                if w > 0.0 {
                    *value = if deltas {
                        (*value as f64 + eta * s / w) as f32
                    } else if eta == 1.0 {
                        (s / w) as f32
                    } else {
                        let mean = s / w;
                        (*value as f64 + eta * (mean - *value as f64)) as f32
                    };
                    updated += 1;
                }
            }
        }
        (HostTensor::new(old.shape.clone(), data), updated, stats)
    }
}

impl<'g> Accumulator<'g> {
    /// Sums over `global`; `deltas`: sum clients' (scaled) updates rather than their values,
    /// as clipping and DP need.
    pub fn new(global: &'g Checkpoint, deltas: bool) -> Self {
        let tensors = global
            .tensors
            .par_iter()
            .map(|(name, t)| TensorSums::new(name, t))
            .collect();
        Self {
            global,
            deltas,
            tensors,
        }
    }

    /// Adds a checked update with weight `w`, its update scaled by `scale` (clipping; 1
    /// otherwise). A client contributes to the global tensors its index map places its
    /// tensors onto; the others it leaves alone. Tensors in parallel.
    pub fn add(&mut self, update: &ClientUpdate, w: f64, scale: f64) {
        assert!(self.deltas || scale == 1.0, "scaling needs sums of deltas");
        let by_global: BTreeMap<&str, (&str, &TensorIndex)> = update
            .index_map
            .iter()
            .map(|(name, index)| (index.source(name), (name.as_str(), index)))
            .collect();
        let (global, deltas) = (self.global, self.deltas);
        self.tensors.par_iter_mut().for_each(|sums| {
            if let Some(&(name, index)) = by_global.get(sums.name.as_str()) {
                if let Some((_, sub)) = update.weights.get(name) {
                    let old = deltas.then(|| (scale, global.tensors[&sums.name].data.as_slice()));
                    sums.add(sub, index, w, old);
                }
            }
        });
    }

    /// The new global model: the rule's result where any client contributed, the old value
    /// elsewhere (bit for bit); with DP, the noisy sum everywhere.
    pub fn finish(self, rule: &ServerRule) -> (Checkpoint, Coverage, Vec<TensorHoldings>) {
        let (global, deltas) = (self.global, self.deltas);
        let results: Vec<(String, HostTensor, u64, HolderStats)> = self
            .tensors
            .into_par_iter()
            .map(|sums| {
                let name = sums.name.clone();
                let (tensor, updated, stats) = sums.finish(&global.tensors[&name], rule, deltas);
                (name, tensor, updated, stats)
            })
            .collect();
        let mut tensors = BTreeMap::new();
        let mut coverage = Coverage::default();
        let mut reports = Vec::new();
        for (name, tensor, updated, stats) in results {
            coverage.updated_elements += updated;
            coverage.total_elements += tensor.numel() as u64;
            reports.push(stats.report(&name, false));
            tensors.insert(name, tensor);
        }
        (global.with_tensors(tensors), coverage, reports)
    }
}

#[cfg(test)]
mod dp {
    use super::super::test_support::*;
    use super::super::{aggregate_with, DpRound, ServerRule, Weighting};
    use crate::core::checkpoint::Checkpoint;
    use crate::core::elastic::Axis;
    use crate::fl::privacy::DpFedAvg;
    use crate::models::families::bert::{tiny_model, Variant};

    fn dp_rule(sigma: f64, clip: f64, expected: f64, seed: u64, round: u64) -> ServerRule {
        ServerRule {
            dp: Some(DpRound {
                settings: DpFedAvg {
                    noise_multiplier: sigma,
                    clip_norm: clip,
                    sample_rate: 0.2,
                    expected_clients: expected,
                    delta: 1e-5,
                    target_epsilon: None,
                },
                seed,
                round,
            }),
            ..ServerRule::fedavg(Weighting::Uniform, 1.0)
        }
    }

    /// A global model of about 1.6 million elements, all zero: its next value is the noise.
    fn zero_global() -> Checkpoint {
        let mut g = Checkpoint::random(&tiny_model(Variant::Bert, 2, 256, 4, 1024, true), 1);
        g.tensors.values_mut().for_each(|t| t.data.fill(0.0));
        g
    }

    /// Mean, variance and lag-1 correlation of `x`.
    fn moments(x: &[f64]) -> (f64, f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let lag = x
            .windows(2)
            .map(|w| (w[0] - mean) * (w[1] - mean))
            .sum::<f64>()
            / (n - 1.0);
        (mean, var, lag / var)
    }

    /// Checks `x` against N(0, std²) and independence of neighbours, to 4 standard errors.
    fn assert_gaussian(x: &[f64], std: f64, what: &str) {
        let n = x.len() as f64;
        let (mean, var, corr) = moments(x);
        let want = std * std;
        assert!(mean.abs() < 4.0 * std / n.sqrt(), "{what}: mean {mean}");
        assert!(
            (var - want).abs() < 4.0 * want * (2.0 / (n - 1.0)).sqrt(),
            "{what}: variance {var}, want {want}"
        );
        assert!(
            corr.abs() < 4.0 / n.sqrt(),
            "{what}: neighbour correlation {corr}"
        );
    }

    #[test]
    fn the_noise_is_gaussian_with_variance_sigma_s_over_m_squared_and_independent() {
        let g = zero_global();
        let (sigma, clip, m) = (1.3, 2.0, 4.0);
        // Nobody drawn this round: the new model is the noise over the denominator alone.
        let (out, coverage, reports) = aggregate_with(&g, &[], &dp_rule(sigma, clip, m, 9, 1));
        let all: Vec<f64> = out
            .tensors
            .values()
            .flat_map(|t| t.data.iter().map(|&v| v as f64))
            .collect();
        assert!(all.len() >= 1_000_000, "{} draws", all.len());
        assert_eq!(coverage.updated_elements, coverage.total_elements);
        let std = sigma * clip / m;
        assert_gaussian(&all, std, "all elements");
        assert!(reports.iter().all(|r| r.noise_std == Some(std)));
        // Two tensors of one shape: their streams are uncorrelated.
        let name0 = matrix(&g, 0, Axis::Ffn, None);
        let name1 = matrix(&g, 1, Axis::Ffn, None);
        let (a, b) = (&out.tensors[&name0].data, &out.tensors[&name1].data);
        let n = a.len() as f64;
        let cross = a
            .iter()
            .zip(b.iter())
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum::<f64>()
            / n
            / (std * std);
        assert!(
            cross.abs() < 4.0 / n.sqrt(),
            "cross-tensor correlation {cross}"
        );
        // The same seed and round give the same noise; another round, other noise.
        let (again, _, _) = aggregate_with(&g, &[], &dp_rule(sigma, clip, m, 9, 1));
        let (next, _, _) = aggregate_with(&g, &[], &dp_rule(sigma, clip, m, 9, 2));
        assert!(out.tensors[&name0].bit_eq(&again.tensors[&name0]));
        assert!(!out.tensors[&name0].bit_eq(&next.tensors[&name0]));
    }

    #[test]
    fn clipped_updates_are_summed_over_the_fixed_denominator_plus_noise() {
        // Fails if the noise is skipped (the residual's variance would be 0) or if the sum
        // is divided by the two clients received rather than the four expected (its mean
        // would be off by half the updates).
        let g = zero_global();
        let name = matrix(&g, 0, Axis::Ffn, None); // [1024, 256]
        let rows: Vec<usize> = (0..1024).collect();
        let step = 0.01f32; // norm 0.01 · 512 = 5.12, clipped to 2 (scale 0.390625)
        let a = held_update(&g, "a", &name, &rows, None, move |_, _| step);
        let b = held_update(&g, "b", &name, &rows, None, move |_, _| step);
        // σ small enough that the wrong denominator's shift (clip/512 / 2 per element) is
        // five standard errors of the residual's mean.
        let (sigma, clip, m) = (0.1, 2.0, 4.0);
        let (out, _, reports) =
            aggregate_with(&g, &[(&a, 1.0), (&b, 1.0)], &dp_rule(sigma, clip, m, 3, 1));
        let scale = clip / (step as f64 * 512.0);
        let signal = 2.0 * scale * step as f64 / m;
        let residual: Vec<f64> = out.tensors[&name]
            .data
            .iter()
            .map(|&v| v as f64 - signal)
            .collect();
        assert_gaussian(&residual, sigma * clip / m, "residual");
        let report = reports.iter().find(|r| r.name == name).unwrap();
        assert_eq!(report.holders_mean, 2.0);
        assert_eq!(report.noise_per_holder, Some(sigma / 2.0));
        // Elements nobody held moved too: by the noise alone.
        let other = matrix(&g, 1, Axis::Ffn, None);
        assert!(out.tensors[&other].data.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn a_client_vocabulary_is_refused_under_dp_only() {
        let g = global();
        let mut u = full_update(&g, 1);
        u.vocab_size = Some(VOCAB - 10);
        let e = super::super::rule_admits(&dp_rule(1.0, 1.0, 4.0, 0, 1), &u, &g).unwrap_err();
        assert!(
            e.contains("client vocabulary") && e.contains("DP-FedAvg"),
            "{e}"
        );
        assert!(
            super::super::rule_admits(&ServerRule::fedavg(Weighting::Examples, 1.0), &u, &g)
                .is_ok()
        );
    }
}
