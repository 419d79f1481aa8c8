//! SwiGLU, LLaMA's gated feed-forward activation, and its gradients.

use rayon::prelude::*;

use super::math::exp;
use super::TASK_ELEMENTS;

/// `sigmoid(x)`, from the same `exp` as the softmax.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

multiversion! {
    fn swiglu_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

multiversion! {
    /// `d up = grad * silu(gate)`, `d gate = grad * up * s * (1 + gate * (1 - s))` with
    /// `s = sigmoid(gate)`.
    fn swiglu_backward_chunk(gate: &[f32], up: &[f32], grad: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for i in 0..gate.len() {
            let (g, s) = (gate[i], sigmoid(gate[i]));
            dup[i] = grad[i] * g * s;
            dgate[i] = grad[i] * up[i] * s * (1.0 + g * (1.0 - s));
        }
    }
}

/// `out = silu(gate) * up`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len());
    out.par_chunks_mut(TASK_ELEMENTS)
        .zip(gate.par_chunks(TASK_ELEMENTS))
        .zip(up.par_chunks(TASK_ELEMENTS))
        .for_each(|((o, g), u)| swiglu_chunk(g, u, o));
}

/// Gradients of [`swiglu`] with respect to `gate` and `up`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dgate, mut dup) = (vec![0.0; gate.len()], vec![0.0; gate.len()]);
    dgate
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(dup.par_chunks_mut(TASK_ELEMENTS))
        .zip(
            gate.par_chunks(TASK_ELEMENTS)
                .zip(up.par_chunks(TASK_ELEMENTS)),
        )
        .zip(grad.par_chunks(TASK_ELEMENTS))
        .for_each(|(((dg, du), (g, u)), gr)| swiglu_backward_chunk(g, u, gr, dg, du));
    (dgate, dup)
}
