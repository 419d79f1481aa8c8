//! RMSNorm, as LLaMA normalises, and its gradients.

use rayon::prelude::*;

use super::math::dot;
use super::rows_per_task;

multiversion! {
    fn rms_norm_chunk(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], inv_rms: &mut [f32]) {
        let width = weight.len();
        for ((row, out), r) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)).zip(inv_rms) {
            *r = 1.0 / (dot(row, row) / width as f32 + eps).sqrt();
            for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
                *o = x * *r * w;
            }
        }
    }
}

/// `out = weight * x / sqrt(mean(x^2) + eps)` over rows of `weight.len()`, as HF's
/// `LlamaRMSNorm`; returns each row's `1 / rms`, what the backward pass needs.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Vec<f32> {
    let width = weight.len();
    assert!(
        x.len() == out.len() && x.len().is_multiple_of(width),
        "rows of {width}"
    );
    let rows = rows_per_task(width);
    let mut inv_rms = vec![0.0; x.len() / width];
    out.par_chunks_mut(rows * width)
        .zip(x.par_chunks(rows * width))
        .zip(inv_rms.par_chunks_mut(rows))
        .for_each(|((out, x), inv)| rms_norm_chunk(x, weight, eps, out, inv));
    inv_rms
}

multiversion! {
    /// Per row, with `r = 1 / rms` and `gw = grad * weight`: `dx = r * gw - x * r^3 *
    /// mean(gw * x)`; `dweight += grad * x * r`.
    fn rms_norm_backward_chunk(grad: &[f32], x: &[f32], weight: &[f32], inv_rms: &[f32], dx: &mut [f32], dweight: &mut [f32]) {
        let width = weight.len();
        let rows = grad.chunks_exact(width).zip(x.chunks_exact(width));
        for (((g, x), dx), &r) in rows.zip(dx.chunks_exact_mut(width)).zip(inv_rms) {
            let inner = (0..width).map(|j| g[j] * weight[j] * x[j]).sum::<f32>() / width as f32;
            let c = r * r * r * inner;
            for j in 0..width {
                dx[j] = r * g[j] * weight[j] - x[j] * c;
                dweight[j] += g[j] * x[j] * r;
            }
        }
    }
}

/// Gradients of [`rms_norm`] with respect to `x` and `weight`.
pub fn rms_norm_backward(
    grad: &[f32],
    x: &[f32],
    weight: &[f32],
    inv_rms: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let width = weight.len();
    let rows = rows_per_task(width);
    let mut dx = vec![0.0; x.len()];
    // One partial weight gradient per task, summed in task order afterwards.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * width)
        .zip(grad.par_chunks(rows * width))
        .zip(x.par_chunks(rows * width))
        .zip(inv_rms.par_chunks(rows))
        .map(|(((dx, g), x), inv)| {
            let mut dweight = vec![0.0; width];
            rms_norm_backward_chunk(g, x, weight, inv, dx, &mut dweight);
            dweight
        })
        .collect();
    let mut dweight = vec![0.0; width];
    for p in &partials {
        dweight.iter_mut().zip(p).for_each(|(acc, v)| *acc += v);
    }
    (dx, dweight)
}
