//! Self-attention from projected queries, keys and values to the context, and its
//! gradients: multi-head or grouped-query, optionally causal, with rotary embeddings.

use rayon::prelude::*;

use super::dropout::DropoutMask;
use super::math::{dot, exp, max, sum};
use super::matmul::{matmul, Strided};
use super::rotary::{rotate, rotated, RotaryTables};

/// Shapes of one self-attention call. Queries and the output are `[batch, seq, heads *
/// head_dim]` with head `h` in columns `h * head_dim..`, keys and values `[batch, seq,
/// kv_heads * head_dim]`, as the projections produce them: no head-split copies. Query head
/// `h` reads key/value head `h / (heads / kv_heads)` (grouped-query attention; `kv_heads ==
/// heads` is ordinary multi-head attention).
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax.
    pub scale: f32,
    /// Each query sees only the keys at or before its position.
    pub causal: bool,
}

impl AttentionShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn probs(&self) -> usize {
        self.heads * self.seq * self.seq
    }
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    fn check(&self) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "query heads must be a multiple of key/value heads"
        );
    }
}

multiversion! {
    /// Scores to probabilities in place, row by row: `softmax(scale * s + bias)`; with
    /// `causal`, row i over its first i + 1 keys, the rest 0.
    fn softmax_rows(scores: &mut [f32], bias: &[f32], scale: f32, causal: bool) {
        let seq = bias.len();
        for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
            let (live, masked) = row.split_at_mut(if causal { i + 1 } else { seq });
            for (s, &b) in live.iter_mut().zip(bias) {
                *s = *s * scale + b;
            }
            let top = max(live);
            for s in live.iter_mut() {
                *s = exp(*s - top);
            }
            let inv = 1.0 / sum(live);
            live.iter_mut().for_each(|s| *s *= inv);
            masked.fill(0.0);
        }
    }
}

multiversion! {
    /// `out = probs * mask` with the mask's element indices starting at `first`.
    fn masked_copy(probs: &[f32], mask: &DropoutMask, first: usize, out: &mut [f32]) {
        for (i, (o, &p)) in out.iter_mut().zip(probs).enumerate() {
            *o = p * mask.factor(first + i);
        }
    }
}

multiversion! {
    /// Softmax backward in place: `g <- p * (g * mask - sum_j p * g * mask)` per row, times
    /// `scale`. Masked keys have p = 0, so they get no gradient.
    fn softmax_backward_rows(grad: &mut [f32], probs: &[f32], mask: Option<&DropoutMask>, first: usize, seq: usize, scale: f32) {
        if let Some(m) = mask {
            for (i, g) in grad.iter_mut().enumerate() {
                *g *= m.factor(first + i);
            }
        }
        for (g, p) in grad.chunks_exact_mut(seq).zip(probs.chunks_exact(seq)) {
            let inner = dot(g, p);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - inner);
            }
        }
    }
}

/// What the attention backward pass needs: the softmax probabilities before dropout,
/// `[batch, heads, seq, seq]`.
pub struct AttentionSaved {
    pub probs: Vec<f32>,
}

/// `out = dropout(softmax(scale * q kᵀ + bias)) v` per batch row and head, queries and
/// keys rotated first where `rotary` is given. `bias` is `[batch, seq]`, added to every
/// query's scores for that key (0 or a large negative number for padding). The dropout
/// mask indexes the `[batch, heads, seq, seq]` probabilities.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    rotary: Option<&RotaryTables>,
    mask: Option<&DropoutMask>,
    out: &mut [f32],
    save: bool,
) -> Option<AttentionSaved> {
    shape.check();
    let AttentionShape { seq, head_dim, .. } = *shape;
    let (width, kv_width, per_row) = (shape.width(), shape.kv_width(), shape.probs());
    for t in [q, &*out] {
        assert_eq!(t.len(), shape.batch * seq * width, "attention query size");
    }
    for t in [k, v] {
        assert_eq!(t.len(), shape.batch * seq * kv_width, "attention key size");
    }
    assert_eq!(bias.len(), shape.batch * seq, "attention bias size");
    let run = |b: usize, out: &mut [f32], probs: &mut [f32]| {
        let (qs, ks) = (seq * width, seq * kv_width);
        let q = rotated(&q[b * qs..(b + 1) * qs], head_dim, rotary, false);
        let k = rotated(&k[b * ks..(b + 1) * ks], head_dim, rotary, false);
        let v = &v[b * ks..(b + 1) * ks];
        let mut dropped = mask.map(|_| vec![0.0; seq * seq]);
        for h in 0..shape.heads {
            let g = h / shape.group();
            let p = &mut probs[h * seq * seq..(h + 1) * seq * seq];
            let square = Strided::rows(0, seq);
            let (qh, kg) = (
                Strided::rows(h * head_dim, width),
                Strided::rows(g * head_dim, kv_width),
            );
            // [seq, head_dim] · [head_dim, seq]
            matmul(
                (seq, seq, head_dim),
                p,
                square,
                &q,
                qh,
                &k,
                kg.transposed(),
                false,
            );
            softmax_rows(p, &bias[b * seq..(b + 1) * seq], shape.scale, shape.causal);
            let weights: &[f32] = match (&mut dropped, mask) {
                (Some(buf), Some(m)) => {
                    masked_copy(p, m, (b * shape.heads + h) * seq * seq, buf);
                    buf
                }
                _ => p,
            };
            // [seq, seq] · [seq, head_dim]
            matmul((seq, head_dim, seq), out, qh, weights, square, v, kg, false);
        }
    };
    let tokens = seq * width;
    if !save {
        // Inference keeps one batch row's probabilities at a time instead of all of them.
        out.par_chunks_mut(tokens)
            .enumerate()
            .for_each(|(b, out)| run(b, out, &mut vec![0.0; per_row]));
        return None;
    }
    let mut probs = vec![0.0; shape.batch * per_row];
    out.par_chunks_mut(tokens)
        .zip(probs.par_chunks_mut(per_row))
        .enumerate()
        .for_each(|(b, (out, probs))| run(b, out, probs));
    Some(AttentionSaved { probs })
}

/// Gradients of [`attention`] with respect to q, k and v (before rotation), from the
/// output's gradient.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rotary: Option<&RotaryTables>,
    saved: &AttentionSaved,
    mask: Option<&DropoutMask>,
    grad: &[f32],
) -> [Vec<f32>; 3] {
    let AttentionShape { seq, head_dim, .. } = *shape;
    let (width, kv_width, per_row) = (shape.width(), shape.kv_width(), shape.probs());
    let (qs, ks) = (seq * width, seq * kv_width);
    let mut dq = vec![0.0; shape.batch * qs];
    let (mut dk, mut dv) = (vec![0.0; shape.batch * ks], vec![0.0; shape.batch * ks]);
    dq.par_chunks_mut(qs)
        .zip(dk.par_chunks_mut(ks))
        .zip(dv.par_chunks_mut(ks))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let q = rotated(&q[b * qs..(b + 1) * qs], head_dim, rotary, false);
            let k = rotated(&k[b * ks..(b + 1) * ks], head_dim, rotary, false);
            let (v, g) = (&v[b * ks..(b + 1) * ks], &grad[b * qs..(b + 1) * qs]);
            let probs = &saved.probs[b * per_row..(b + 1) * per_row];
            // Gradients of the rotated queries and keys, rotated back at the end.
            let (mut dq_rot, mut dk_rot) = (vec![0.0; qs], vec![0.0; ks]);
            let (dq_out, dk_out): (&mut [f32], &mut [f32]) = if rotary.is_some() {
                (&mut dq_rot, &mut dk_rot)
            } else {
                (dq, dk)
            };
            let mut weights = vec![0.0; seq * seq];
            let mut grad_scores = vec![0.0; seq * seq];
            let square = Strided::rows(0, seq);
            for h in 0..shape.heads {
                let (kv, first_of_group) = (h / shape.group(), h % shape.group() == 0);
                let first = (b * shape.heads + h) * seq * seq;
                let p = &probs[h * seq * seq..(h + 1) * seq * seq];
                let weights: &[f32] = match mask {
                    Some(m) => {
                        masked_copy(p, m, first, &mut weights);
                        &weights
                    }
                    None => p,
                };
                let (qh, kg) = (
                    Strided::rows(h * head_dim, width),
                    Strided::rows(kv * head_dim, kv_width),
                );
                // dv += weightsᵀ · grad: [seq, seq] · [seq, head_dim], summed over the group
                let acc = !first_of_group;
                matmul(
                    (seq, head_dim, seq),
                    dv,
                    kg,
                    weights,
                    square.transposed(),
                    g,
                    qh,
                    acc,
                );
                // d weights = grad · vᵀ: [seq, head_dim] · [head_dim, seq]
                matmul(
                    (seq, seq, head_dim),
                    &mut grad_scores,
                    square,
                    g,
                    qh,
                    v,
                    kg.transposed(),
                    false,
                );
                softmax_backward_rows(&mut grad_scores, p, mask, first, seq, shape.scale);
                // dq = d scores · k, dk += d scoresᵀ · q: [seq, seq] · [seq, head_dim]
                matmul(
                    (seq, head_dim, seq),
                    dq_out,
                    qh,
                    &grad_scores,
                    square,
                    &k,
                    kg,
                    false,
                );
                matmul(
                    (seq, head_dim, seq),
                    dk_out,
                    kg,
                    &grad_scores,
                    square.transposed(),
                    &q,
                    qh,
                    acc,
                );
            }
            if let Some(t) = rotary {
                rotate(&dq_rot, head_dim, &t.cos, &t.sin, true, dq);
                rotate(&dk_rot, head_dim, &t.cos, &t.sin, true, dk);
            }
        });
    [dq, dk, dv]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fused::kernels::test_support::{max_diff, random};

    /// Attention in f64 with plain loops, for one batch row and head at a time.
    fn attention_reference(
        shape: &AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bias: &[f32],
        mask: Option<&DropoutMask>,
    ) -> Vec<f32> {
        let AttentionShape {
            batch,
            seq,
            heads,
            head_dim,
            scale,
            ..
        } = *shape;
        let width = heads * head_dim;
        let mut out = vec![0.0f32; batch * seq * width];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..seq {
                    let at = |t: &[f32], j: usize, c: usize| {
                        t[(b * seq + j) * width + h * head_dim + c] as f64
                    };
                    let scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            (0..head_dim)
                                .map(|c| at(q, i, c) * at(k, j, c))
                                .sum::<f64>()
                                * scale as f64
                                + bias[b * seq + j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for c in 0..head_dim {
                        let value: f64 = (0..seq)
                            .map(|j| {
                                let index = ((b * heads + h) * seq + i) * seq + j;
                                let factor = mask.map_or(1.0, |m| m.factor(index) as f64);
                                (scores[j] - max).exp() / total * factor * at(v, j, c)
                            })
                            .sum();
                        out[(b * seq + i) * width + h * head_dim + c] = value as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_reference_and_its_gradients_match_differences() {
        let shape = AttentionShape {
            batch: 3,
            seq: 7,
            heads: 2,
            kv_heads: 2,
            head_dim: 5,
            scale: 0.4,
            causal: false,
        };
        let n = shape.batch * shape.seq * shape.width();
        let (q, k, v) = (random(n, 10), random(n, 11), random(n, 12));
        let mut bias = vec![0.0f32; shape.batch * shape.seq];
        bias[shape.seq - 1] = -1e9; // the last key of the first row is padding
        bias[2 * shape.seq - 2] = -1e9;
        for mask in [None, DropoutMask::new(0.3, 5)] {
            let mut out = vec![0.0; n];
            let saved = attention(
                &shape,
                &q,
                &k,
                &v,
                &bias,
                None,
                mask.as_ref(),
                &mut out,
                true,
            )
            .unwrap();
            // Padding gets exactly zero weight (no subnormals to slow the matmuls down).
            let seq = shape.seq;
            for row in saved.probs.chunks_exact(seq).take(shape.heads * seq) {
                assert_eq!(row[seq - 1], 0.0, "first batch row, padded last key");
            }
            let reference = attention_reference(&shape, &q, &k, &v, &bias, mask.as_ref());
            assert!(
                max_diff(&out, &reference) < 1e-5,
                "{:?}",
                max_diff(&out, &reference)
            );

            let w = random(n, 13);
            let grads = attention_backward(&shape, &q, &k, &v, None, &saved, mask.as_ref(), &w);
            let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                let out = attention_reference(&shape, q, k, v, &bias, mask.as_ref());
                out.iter().zip(&w).map(|(o, w)| *o as f64 * *w as f64).sum()
            };
            let h = 1e-2f32;
            for (which, grad) in grads.iter().enumerate() {
                for j in [0, 3, 17, 44, n - 1] {
                    let mut inputs = [q.clone(), k.clone(), v.clone()];
                    inputs[which][j] += h;
                    let plus = loss(&inputs[0], &inputs[1], &inputs[2]);
                    inputs[which][j] -= 2.0 * h;
                    let minus = loss(&inputs[0], &inputs[1], &inputs[2]);
                    let numeric = (plus - minus) / (2.0 * h as f64);
                    assert!(
                        (grad[j] as f64 - numeric).abs() < 2e-3 * numeric.abs().max(1.0),
                        "input {which} element {j}: {} vs {numeric}",
                        grad[j]
                    );
                }
            }
        }
    }
}
