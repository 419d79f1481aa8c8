//! Norm clipping of client updates: Δ_c = w_c − w_global over the elements client c holds.

use rayon::prelude::*;

use super::placement::RowPlacement;
use super::update::ClientUpdate;
use crate::core::checkpoint::Checkpoint;

/// The L2 norm of a checked update's change to `global`, over the elements it holds.
pub fn delta_norm(update: &ClientUpdate, global: &Checkpoint) -> f64 {
    let squares: f64 = update
        .index_map
        .par_iter()
        .map(|(name, index)| {
            let old = &global.tensors[index.source(name)];
            let Some((_, sub)) = update.weights.get(name) else {
                return 0.0;
            };
            let placement = RowPlacement::new(index, &old.shape);
            let mut sum = 0.0f64;
            placement.for_each_row(sub, |r, src| {
                let row = &old.data[r * placement.row_len..(r + 1) * placement.row_len];
                match &placement.offsets {
                    None => {
                        for (&v, &g) in src.iter().zip(row) {
                            sum += (v as f64 - g as f64).powi(2);
                        }
                    }
                    Some(offsets) => {
                        for (&v, &c) in src.iter().zip(offsets) {
                            sum += (v as f64 - row[c] as f64).powi(2);
                        }
                    }
                }
            });
            sum
        })
        .sum();
    squares.sqrt()
}

/// The factor that brings an update of norm `norm` within `bound`: 1 when it already is.
pub fn clip_scale(norm: f64, bound: f64) -> f64 {
    if norm > bound {
        bound / norm
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{aggregate_with, ServerRule, Weighting};
    use super::*;
    use crate::core::elastic::Axis;

    #[test]
    fn clipping_scales_an_update_to_exactly_the_bound_and_keeps_its_direction() {
        let g = global();
        let name = matrix(&g, 0, Axis::Ffn, None);
        let rows: Vec<usize> = (3..15).collect();
        let cols: Vec<usize> = (2..9).collect();
        let old = g.tensors[&name].clone();
        let u = held_update(&g, "a", &name, &rows, Some(&cols), |r, c| {
            old.data[r * 16 + c] + 0.5 * ((r + c) % 5) as f32 - 1.0
        });
        let norm = delta_norm(&u, &g);
        let by_hand: f64 = rows
            .iter()
            .flat_map(|&r| cols.iter().map(move |&c| (r, c)))
            .map(|(r, c)| {
                let i = r * 16 + c;
                (u.weights.get(&name).unwrap().1[(r - 3) * 7 + (c - 2)] as f64 - old.data[i] as f64)
                    .powi(2)
            })
            .sum::<f64>()
            .sqrt();
        assert!((norm - by_hand).abs() < 1e-12 * by_hand);
        let bound = 0.25;
        let rule = ServerRule {
            clip_norm: Some(bound),
            ..ServerRule::fedavg(Weighting::Uniform, 1.0)
        };
        let (out, _, _) = aggregate_with(&g, &[(&u, 1.0)], &rule);
        let mut sent = 0.0;
        for &r in &rows {
            for &c in &cols {
                let i = r * 16 + c;
                let delta = u.weights.get(&name).unwrap().1[(r - 3) * 7 + (c - 2)] as f64
                    - old.data[i] as f64;
                let moved = out.tensors[&name].data[i] as f64 - old.data[i] as f64;
                assert!((moved - delta * bound / norm).abs() < 1e-6, "({r}, {c})");
                sent += moved * moved;
            }
        }
        assert!((sent.sqrt() - bound).abs() < 1e-5, "{}", sent.sqrt());
        // Elements it does not hold are untouched, and an update within the bound is not
        // scaled.
        assert_eq!(out.tensors[&name].data[0].to_bits(), old.data[0].to_bits());
        assert_eq!(clip_scale(0.1, bound), 1.0);
        assert_eq!(clip_scale(norm, bound), bound / norm);
    }

    #[test]
    fn fedavg_with_a_bound_nobody_reaches_is_fedavg() {
        let g = global();
        let (a, b) = (full_update(&g, 3), full_update(&g, 4));
        let plain = ServerRule::fedavg(Weighting::Examples, 1.0);
        let loose = ServerRule {
            clip_norm: Some(1e9),
            ..plain.clone()
        };
        let (x, _, _) = aggregate_with(&g, &[(&a, 3.0), (&b, 1.0)], &plain);
        let (y, _, _) = aggregate_with(&g, &[(&a, 3.0), (&b, 1.0)], &loose);
        for (name, t) in &x.tensors {
            for (p, q) in t.data.iter().zip(&y.tensors[name].data) {
                assert!((p - q).abs() <= 1e-6 * p.abs().max(1e-3), "{name}: {p} {q}");
            }
        }
    }
}
