//! Rotary position embeddings, applied to queries and keys inside the attention kernel.

/// Rotary position embeddings applied to queries and keys inside the kernel, as HF's
/// `apply_rotary_pos_emb`: `x * cos + rotate_half(x) * sin`, per position `[seq,
/// head_dim]` tables.
#[derive(Debug, Clone)]
pub struct RotaryTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

multiversion! {
    /// Rotates every head of `[seq, heads * d]` rows by position (`inverse`: the transpose,
    /// which takes a gradient back through the rotation).
    pub(super) fn rotate(x: &[f32], d: usize, cos: &[f32], sin: &[f32], inverse: bool, out: &mut [f32]) {
        let half = d / 2;
        let width = x.len() / (cos.len() / d);
        for (p, (row, out_row)) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)).enumerate() {
            let (c, s) = (&cos[p * d..(p + 1) * d], &sin[p * d..(p + 1) * d]);
            for (head, out_head) in row.chunks_exact(d).zip(out_row.chunks_exact_mut(d)) {
                let (x1, x2) = head.split_at(half);
                let (o1, o2) = out_head.split_at_mut(half);
                for i in 0..half {
                    if inverse {
                        o1[i] = x1[i] * c[i] + x2[i] * s[half + i];
                        o2[i] = x2[i] * c[half + i] - x1[i] * s[i];
                    } else {
                        o1[i] = x1[i] * c[i] - x2[i] * s[i];
                        o2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
                    }
                }
            }
        }
    }
}

/// `x` rotated, or `x` itself without rotary embeddings.
pub(super) fn rotated<'a>(
    x: &'a [f32],
    d: usize,
    rotary: Option<&RotaryTables>,
    inverse: bool,
) -> std::borrow::Cow<'a, [f32]> {
    match rotary {
        None => std::borrow::Cow::Borrowed(x),
        Some(t) => {
            let mut out = vec![0.0; x.len()];
            rotate(x, d, &t.cos, &t.sin, inverse, &mut out);
            std::borrow::Cow::Owned(out)
        }
    }
}
