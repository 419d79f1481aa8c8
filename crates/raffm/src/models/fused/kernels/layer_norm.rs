//! Dropout + residual + LayerNorm in one pass, and its gradients.

use rayon::prelude::*;

use super::dropout::DropoutMask;
use super::math::{dot, sum, sum_zip};
use super::rows_per_task;

/// What the LayerNorm backward pass needs from its forward pass.
pub struct LayerNormSaved {
    /// `(z - mean) / std` per row, `[rows, width]`.
    pub normalized: Vec<f32>,
    /// `1 / std` per row.
    pub inv_std: Vec<f32>,
}

multiversion! {
    fn add_layer_norm_chunk(
        y: &[f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        mask: Option<&DropoutMask>,
        first: usize,
        out: &mut [f32],
        normalized: &mut [f32],
        inv_std: &mut [f32],
    ) {
        let width = gamma.len();
        let rows = y.len() / width;
        for r in 0..rows {
            let span = r * width..(r + 1) * width;
            let z = &mut normalized[span.clone()];
            match mask {
                Some(m) => {
                    let base = first + r * width;
                    for (i, ((z, &y), &res)) in z.iter_mut().zip(&y[span.clone()]).zip(&residual[span.clone()]).enumerate() {
                        *z = y * m.factor(base + i) + res;
                    }
                }
                None => {
                    for ((z, &y), &res) in z.iter_mut().zip(&y[span.clone()]).zip(&residual[span.clone()]) {
                        *z = y + res;
                    }
                }
            }
            let mean = sum(z) / width as f32;
            let var = sum_zip(z, z, |v, _| (v - mean) * (v - mean)) / width as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            inv_std[r] = rstd;
            for (((o, z), &g), &b) in out[span].iter_mut().zip(z.iter_mut()).zip(gamma).zip(beta) {
                *z = (*z - mean) * rstd;
                *o = *z * g + b;
            }
        }
    }
}

/// `out = LayerNorm(dropout(y) + residual)` over rows of `gamma.len()`, with the biased
/// variance as PyTorch. `mask` indexes the elements of `y`. With `save` it also returns
/// what the backward pass needs; inference does without.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm(
    y: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    mask: Option<&DropoutMask>,
    out: &mut [f32],
    save: bool,
) -> Option<LayerNormSaved> {
    let width = gamma.len();
    assert!(beta.len() == width && y.len() == residual.len() && y.len() == out.len());
    assert_eq!(y.len() % width, 0, "rows of {width}");
    let rows = rows_per_task(width);
    let chunk = rows * width;
    let run = |c: usize, out: &mut [f32], normalized: &mut [f32], inv_std: &mut [f32]| {
        let span = c * chunk..c * chunk + out.len();
        add_layer_norm_chunk(
            &y[span.clone()],
            &residual[span],
            gamma,
            beta,
            eps,
            mask,
            c * chunk,
            out,
            normalized,
            inv_std,
        );
    };
    if !save {
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
            let (mut normalized, mut inv_std) = (vec![0.0; out.len()], vec![0.0; rows]);
            run(c, out, &mut normalized, &mut inv_std);
        });
        return None;
    }
    let mut saved = LayerNormSaved {
        normalized: vec![0.0; y.len()],
        inv_std: vec![0.0; y.len() / width],
    };
    out.par_chunks_mut(chunk)
        .zip(saved.normalized.par_chunks_mut(chunk))
        .zip(saved.inv_std.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(c, ((out, normalized), inv_std))| run(c, out, normalized, inv_std));
    Some(saved)
}

multiversion! {
    fn add_layer_norm_backward_chunk(
        grad: &[f32],
        normalized: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        grad_z: &mut [f32],
        grad_gamma: &mut [f32],
        grad_beta: &mut [f32],
    ) {
        let width = gamma.len();
        for (r, &rstd) in inv_std.iter().enumerate() {
            let span = r * width..(r + 1) * width;
            let (g, xhat, dz) = (&grad[span.clone()], &normalized[span.clone()], &mut grad_z[span]);
            for i in 0..width {
                grad_gamma[i] += g[i] * xhat[i];
                grad_beta[i] += g[i];
                dz[i] = g[i] * gamma[i]; // the gradient at the normalised value, for now
            }
            let mean_dxhat = sum(dz) / width as f32;
            let mean_dxhat_xhat = dot(dz, xhat) / width as f32;
            for (dz, &x) in dz.iter_mut().zip(xhat) {
                *dz = rstd * (*dz - mean_dxhat - x * mean_dxhat_xhat);
            }
        }
    }
}

/// Gradients of [`add_layer_norm`]: with respect to its input sum `z` (which is also the
/// residual's gradient), to `gamma` and to `beta`. `y`'s gradient is `grad_z` with the
/// forward pass's dropout mask applied.
pub fn add_layer_norm_backward(
    grad: &[f32],
    saved: &LayerNormSaved,
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    assert_eq!(grad.len(), saved.normalized.len());
    let mut grad_z = vec![0.0; grad.len()];
    let rows = rows_per_task(width);
    let chunk = rows * width;
    // One partial (gamma, beta) gradient per task, summed in task order afterwards.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = grad_z
        .par_chunks_mut(chunk)
        .zip(saved.inv_std.par_chunks(rows))
        .enumerate()
        .map(|(c, (grad_z, inv_std))| {
            let span = c * chunk..c * chunk + grad_z.len();
            let (mut grad_gamma, mut grad_beta) = (vec![0.0; width], vec![0.0; width]);
            add_layer_norm_backward_chunk(
                &grad[span.clone()],
                &saved.normalized[span],
                inv_std,
                gamma,
                grad_z,
                &mut grad_gamma,
                &mut grad_beta,
            );
            (grad_gamma, grad_beta)
        })
        .collect();
    let (mut grad_gamma, mut grad_beta) = (vec![0.0; width], vec![0.0; width]);
    for (g, b) in &partials {
        grad_gamma.iter_mut().zip(g).for_each(|(acc, v)| *acc += v);
        grad_beta.iter_mut().zip(b).for_each(|(acc, v)| *acc += v);
    }
    (grad_z, grad_gamma, grad_beta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fused::kernels::test_support::{max_diff, random};

    /// `LayerNorm(y * factors + residual)` in f64, row by row.
    fn layer_norm_reference(
        y: &[f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        factors: &[f32],
    ) -> Vec<f32> {
        let width = gamma.len();
        let mut out = Vec::new();
        for r in 0..y.len() / width {
            let z: Vec<f64> = (0..width)
                .map(|i| {
                    let j = r * width + i;
                    y[j] as f64 * factors[j] as f64 + residual[j] as f64
                })
                .collect();
            let mean = z.iter().sum::<f64>() / width as f64;
            let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            let rstd = 1.0 / (var + 1e-12).sqrt();
            out.extend(
                (0..width)
                    .map(|i| ((z[i] - mean) * rstd * gamma[i] as f64 + beta[i] as f64) as f32),
            );
        }
        out
    }

    #[test]
    fn layer_norm_with_dropout_matches_the_reference_and_its_gradients_match_differences() {
        let (rows, width) = (300, 24);
        let (y, residual) = (random(rows * width, 3), random(rows * width, 4));
        let (gamma, beta) = (random(width, 5), random(width, 6));
        let mask = DropoutMask::new(0.2, 9).unwrap();
        let factors: Vec<f32> = (0..y.len()).map(|i| mask.factor(i)).collect();
        let mut out = vec![0.0; y.len()];
        let saved = add_layer_norm(
            &y,
            &residual,
            &gamma,
            &beta,
            1e-12,
            Some(&mask),
            &mut out,
            true,
        )
        .unwrap();
        let reference = layer_norm_reference(&y, &residual, &gamma, &beta, &factors);
        assert!(max_diff(&out, &reference) < 2e-5);

        // Loss = sum(out * w): compare analytic gradients with central differences.
        let w = random(y.len(), 7);
        let (grad_z, grad_gamma, grad_beta) = add_layer_norm_backward(&w, &saved, &gamma);
        let loss = |y: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let out = layer_norm_reference(y, residual, gamma, beta, &factors);
            out.iter().zip(&w).map(|(o, w)| *o as f64 * *w as f64).sum()
        };
        let h = 1e-2f32;
        for j in [0, 7, 100, 555, rows * width - 1] {
            let (mut plus, mut minus) = (residual.clone(), residual.clone());
            plus[j] += h;
            minus[j] -= h;
            let numeric = (loss(&y, &plus, &gamma, &beta) - loss(&y, &minus, &gamma, &beta))
                / (2.0 * h as f64);
            assert!(
                (grad_z[j] as f64 - numeric).abs() < 2e-3,
                "residual {j}: {} vs {numeric}",
                grad_z[j]
            );
        }
        for j in [0, 5, width - 1] {
            let (mut plus, mut minus) = (gamma.clone(), gamma.clone());
            plus[j] += h;
            minus[j] -= h;
            let numeric = (loss(&y, &residual, &plus, &beta) - loss(&y, &residual, &minus, &beta))
                / (2.0 * h as f64);
            assert!(
                (grad_gamma[j] as f64 - numeric).abs() < 1e-2 * numeric.abs().max(1.0),
                "gamma {j}"
            );
            let expected: f64 = (0..rows).map(|r| w[r * width + j] as f64).sum();
            assert!((grad_beta[j] as f64 - expected).abs() < 1e-3, "beta {j}");
        }
    }
}
