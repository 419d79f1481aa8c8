//! Coordinate-wise median and trimmed mean over heterogeneous holdings: each element of the
//! global model is combined over the clients that hold it, however many that is.
//!
//! Both need every holder's value of an element at once, so the updates stay mapped
//! together and each global tensor is worked through in blocks of rows (in parallel): only
//! the pages of the rows at hand are touched.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::placement::RowPlacement;
use super::report::{HolderStats, TensorHoldings};
use super::rule::{Rule, ServerRule};
use super::update::ClientUpdate;
use super::Coverage;
use crate::core::checkpoint::Checkpoint;
use crate::core::tensor::HostTensor;

/// Elements per block of rows.
const BLOCK_ELEMENTS: usize = 1 << 16;

/// One client's part of one global tensor.
struct Holder<'a> {
    values: &'a [f32],
    /// Sub-tensor row of every global row (`u32::MAX`: not held).
    row_of: Vec<u32>,
    /// Sub-tensor offset of every element of a row (`None`: the same; `u32::MAX`: not held).
    col_of: Option<Vec<u32>>,
    sub_row_len: usize,
    /// Clip scale of the client's update (1: unclipped).
    scale: f64,
}

/// Combines checked `updates` (each with the scale that clips it; 1 for none) into the next
/// global model by `rule.rule`, a median or trimmed mean.
pub fn combine(
    global: &Checkpoint,
    updates: &[(&ClientUpdate, f64)],
    rule: &ServerRule,
) -> (Checkpoint, Coverage, Vec<TensorHoldings>) {
    assert!(rule.rule.is_order_statistic() && rule.dp.is_none());
    // Per update: global tensor -> its own tensor placed there.
    let placed: Vec<BTreeMap<&str, &str>> = updates
        .iter()
        .map(|(u, _)| {
            u.index_map
                .iter()
                .map(|(name, index)| (index.source(name), name.as_str()))
                .collect()
        })
        .collect();
    let mut tensors = BTreeMap::new();
    let mut coverage = Coverage::default();
    let mut reports = Vec::new();
    for (name, old) in &global.tensors {
        let holders: Vec<Holder> = updates
            .iter()
            .zip(&placed)
            .filter_map(|((u, scale), placed)| {
                let own = placed.get(name.as_str())?;
                let (_, values) = u.weights.get(own)?;
                let placement = RowPlacement::new(&u.index_map[*own], &old.shape);
                let (row_of, col_of) = placement.inverse(old.shape.first().copied().unwrap_or(1));
                Some(Holder {
                    values,
                    row_of,
                    col_of,
                    sub_row_len: placement.sub_row_len,
                    scale: *scale,
                })
            })
            .collect();
        let (tensor, updated, stats) = combine_tensor(old, &holders, rule);
        coverage.updated_elements += updated;
        coverage.total_elements += tensor.numel() as u64;
        reports.push(stats.report(name, matches!(rule.rule, Rule::TrimmedMean { .. })));
        tensors.insert(name.clone(), tensor);
    }
    (global.with_tensors(tensors), coverage, reports)
}

/// One global tensor, block by block.
fn combine_tensor(
    old: &HostTensor,
    holders: &[Holder],
    rule: &ServerRule,
) -> (HostTensor, u64, HolderStats) {
    let rows = old.shape.first().copied().unwrap_or(1);
    let row_len = old.numel() / rows.max(1);
    let block_rows = (BLOCK_ELEMENTS / row_len.max(1)).max(1);
    let mut data = old.data.clone();
    let (updated, stats) = data
        .par_chunks_mut(block_rows * row_len.max(1))
        .enumerate()
        .map(|(b, block)| {
            let mut stats = HolderStats::default();
            let mut updated = 0u64;
            let mut values: Vec<f64> = Vec::with_capacity(holders.len());
            // The holders of row r, each with where that row starts in its values.
            let mut row_holders: Vec<(&Holder, usize)> = Vec::with_capacity(holders.len());
            for (i, row) in block.chunks_mut(row_len).enumerate() {
                let r = b * block_rows + i;
                row_holders.clear();
                row_holders.extend(holders.iter().filter_map(|h| {
                    let sub_row = h.row_of[r];
                    (sub_row != u32::MAX).then(|| (h, sub_row as usize * h.sub_row_len))
                }));
                for (c, value) in row.iter_mut().enumerate() {
                    let g = *value as f64;
                    values.clear();
                    for &(h, start) in &row_holders {
                        let col = h.col_of.as_ref().map_or(c as u32, |cols| cols[c]);
                        if col == u32::MAX {
                            continue;
                        }
                        let v = h.values[start + col as usize] as f64;
                        values.push(if h.scale == 1.0 {
                            v
                        } else {
                            g + h.scale * (v - g)
                        });
                    }
                    let (combined, untrimmed) = match order_statistic(&mut values, rule.rule) {
                        Some(x) => x,
                        None => {
                            stats.add(0, false);
                            continue;
                        }
                    };
                    stats.add(values.len() as u32, untrimmed);
                    *value = if rule.server_lr == 1.0 {
                        combined as f32
                    } else {
                        (g + rule.server_lr * (combined - g)) as f32
                    };
                    updated += 1;
                }
            }
            (updated, stats)
        })
        .reduce(
            || (0, HolderStats::default()),
            |(a, mut sa), (b, sb)| {
                sa.merge(&sb);
                (a + b, sa)
            },
        );
    (HostTensor::new(old.shape.clone(), data), updated, stats)
}

/// The median or trimmed mean of `values` (reordered), and whether a trimmed mean could
/// trim nothing; `None` for no values.
fn order_statistic(values: &mut [f64], rule: Rule) -> Option<(f64, bool)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    Some(match rule {
        Rule::Median if n % 2 == 1 => (values[n / 2], false),
        Rule::Median => ((values[n / 2 - 1] + values[n / 2]) / 2.0, false),
        Rule::TrimmedMean { trim_fraction } => {
            let k = (trim_fraction * n as f64).floor() as usize;
            let kept = &values[k..n - k];
            (kept.iter().sum::<f64>() / kept.len() as f64, k == 0)
        }
        Rule::Fedavg => unreachable!("FedAvg is a running sum"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics_by_hand() {
        let median = |v: &[f64]| order_statistic(&mut v.to_vec(), Rule::Median).unwrap().0;
        assert_eq!(median(&[3.0, -1.0, 100.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 100.0]), 3.0);
        assert_eq!(median(&[7.5]), 7.5);
        let trimmed = |v: &[f64], beta| {
            order_statistic(
                &mut v.to_vec(),
                Rule::TrimmedMean {
                    trim_fraction: beta,
                },
            )
            .unwrap()
        };
        // β = 0.25 of 4 drops one at each end: mean of 1 and 2.
        assert_eq!(trimmed(&[100.0, 1.0, 2.0, -50.0], 0.25), (1.5, false));
        // Of 3, ⌊0.75⌋ = 0: nothing can be dropped, the plain mean, marked untrimmed.
        assert_eq!(trimmed(&[3.0, 6.0, 9.0], 0.25), (6.0, true));
        assert_eq!(
            trimmed(&[1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], 0.2),
            (3.5, false)
        );
        assert!(order_statistic(&mut [], Rule::Median).is_none());
    }
}

#[cfg(test)]
mod holdings {
    use super::super::test_support::*;
    use super::super::{aggregate_with, Rule, ServerRule, Weighting};
    use crate::core::elastic::Axis;

    /// Four clients over one [24, 16] matrix: A rows 0-11, B all rows, C rows 0-5 and
    /// columns 0-7 only, D rows 0-5. Every element gets its own value per client.
    fn four_clients(
        g: &crate::core::checkpoint::Checkpoint,
        name: &str,
    ) -> Vec<super::super::ClientUpdate> {
        let value = |base: f32| move |r: usize, c: usize| base + 0.001 * (r * 16 + c) as f32;
        let cols: Vec<usize> = (0..8).collect();
        vec![
            held_update(g, "a", name, &(0..12).collect::<Vec<_>>(), None, value(1.0)),
            held_update(g, "b", name, &(0..24).collect::<Vec<_>>(), None, value(2.0)),
            held_update(
                g,
                "c",
                name,
                &(0..6).collect::<Vec<_>>(),
                Some(&cols),
                value(10.0),
            ),
            held_update(g, "d", name, &(0..6).collect::<Vec<_>>(), None, value(-5.0)),
        ]
    }

    fn rule(rule: Rule) -> ServerRule {
        ServerRule {
            rule,
            ..ServerRule::fedavg(Weighting::Uniform, 1.0)
        }
    }

    #[test]
    fn median_and_trimmed_mean_per_element_over_its_holders() {
        let g = global();
        let name = matrix(&g, 0, Axis::Ffn, None);
        let updates = four_clients(&g, &name);
        let refs: Vec<_> = updates.iter().map(|u| (u, 1.0)).collect();
        let v = |base: f32, r: usize, c: usize| (base + 0.001 * (r * 16 + c) as f32) as f64;
        let (median, _, m_report) = aggregate_with(&g, &refs, &rule(Rule::Median));
        let beta = Rule::TrimmedMean {
            trim_fraction: 0.25,
        };
        let (trimmed, _, t_report) = aggregate_with(&g, &refs, &rule(beta));
        for r in 0..24 {
            for c in 0..16 {
                // c's values (base 10) are the largest wherever c holds the element.
                let (a, b, d) = (v(1.0, r, c), v(2.0, r, c), v(-5.0, r, c));
                // Worked out by hand per region: who holds the element, sorted values.
                let (want_median, want_trimmed) = match (r, c) {
                    // a, b, c, d: sorted d < a < b < c; the middle two are a and b, and
                    // trimming one at each end leaves the same two.
                    (0..6, 0..8) => ((a + b) / 2.0, (a + b) / 2.0),
                    // a, b, d: median a; ⌊0.25 · 3⌋ = 0, nothing trimmed, plain mean.
                    (0..6, _) => (a, (a + b + d) / 3.0),
                    (6..12, _) => ((a + b) / 2.0, (a + b) / 2.0),
                    _ => (b, b),
                };
                let i = r * 16 + c;
                assert_eq!(
                    median.tensors[&name].data[i], want_median as f32,
                    "median ({r}, {c})"
                );
                assert_eq!(
                    trimmed.tensors[&name].data[i], want_trimmed as f32,
                    "trimmed ({r}, {c})"
                );
            }
        }
        // Tensors no one holds are untouched, bit for bit.
        for (n, t) in &g.tensors {
            if *n != name {
                assert!(
                    t.bit_eq(&median.tensors[n]) && t.bit_eq(&trimmed.tensors[n]),
                    "{n}"
                );
            }
        }
        let m = m_report.iter().find(|t| t.name == name).unwrap();
        assert_eq!((m.held, m.holders_min, m.holders_max), (24 * 16, 1, 4));
        assert_eq!(m.single_holder, 12 * 16);
        assert_eq!(m.untrimmed, None);
        let t = t_report.iter().find(|t| t.name == name).unwrap();
        // Untrimmed: 3 holders (rows 0-5, columns 8-15), 2 holders (rows 6-11), 1 (12-23).
        assert_eq!(t.untrimmed, Some(6 * 8 + 6 * 16 + 12 * 16));
        let mean = (6.0 * 8.0 * 4.0 + 6.0 * 8.0 * 3.0 + 6.0 * 16.0 * 2.0 + 12.0 * 16.0) / 384.0;
        assert!((t.holders_mean - mean).abs() < 1e-12);
    }

    #[test]
    fn robust_rules_hold_off_one_scaled_client_where_fedavg_follows_it() {
        let g = global();
        let name = matrix(&g, 1, Axis::Ffn, None);
        let rows: Vec<usize> = (0..24).collect();
        let old = &g.tensors[&name].data;
        // Every element moves by `step`.
        let moved = |step: f32| move |r: usize, c: usize| old[r * 16 + c] + step;
        let updates = [
            held_update(&g, "a", &name, &rows, None, moved(0.01)),
            held_update(&g, "b", &name, &rows, None, moved(0.02)),
            held_update(&g, "c", &name, &rows, None, moved(0.03)),
            // 100 times an honest update.
            held_update(&g, "m", &name, &rows, None, moved(100.0 * 0.02)),
        ];
        let refs: Vec<_> = updates.iter().map(|u| (u, 1.0)).collect();
        let shift = |rule: &ServerRule| {
            let (out, _, _) = aggregate_with(&g, &refs, rule);
            let d: Vec<f64> = out.tensors[&name]
                .data
                .iter()
                .zip(&g.tensors[&name].data)
                .map(|(&n, &o)| n as f64 - o as f64)
                .collect();
            d.iter().sum::<f64>() / d.len() as f64
        };
        let fedavg = shift(&ServerRule::fedavg(Weighting::Uniform, 1.0));
        let median = shift(&rule(Rule::Median));
        let trimmed = shift(&rule(Rule::TrimmedMean {
            trim_fraction: 0.25,
        }));
        assert!((fedavg - 0.515).abs() < 1e-4, "{fedavg}");
        assert!((median - 0.025).abs() < 1e-4, "{median}");
        assert!((trimmed - 0.025).abs() < 1e-4, "{trimmed}");
        // Clipping every update to the honest norm bounds the scaled one's pull on FedAvg.
        let bound = 0.03 * (24.0f64 * 16.0).sqrt();
        let clipped = shift(&ServerRule {
            clip_norm: Some(bound),
            ..ServerRule::fedavg(Weighting::Uniform, 1.0)
        });
        assert!(
            (clipped - (0.01 + 0.02 + 0.03 + 0.03) / 4.0).abs() < 1e-4,
            "{clipped}"
        );
    }
}
