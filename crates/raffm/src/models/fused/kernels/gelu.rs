//! The exact (erf) GELU and its gradient.

use rayon::prelude::*;

use super::math::erf_and_gaussian;
use super::TASK_ELEMENTS;

/// The exact (erf) GELU and its derivative.
#[inline(always)]
fn gelu_and_slope(x: f32) -> (f32, f32) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let (erf, gaussian) = erf_and_gaussian(x * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = 0.5 * (1.0 + erf);
    (x * cdf, cdf + x * FRAC_1_SQRT_2PI * gaussian)
}

multiversion! {
    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu_and_slope(x).0;
        }
    }
}

multiversion! {
    fn gelu_backward_chunk(x: &[f32], grad: &[f32], out: &mut [f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
            *o = g * gelu_and_slope(x).1;
        }
    }
}

/// `y = gelu(x)`, the exact (erf) form.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    y.par_chunks_mut(TASK_ELEMENTS)
        .zip(x.par_chunks(TASK_ELEMENTS))
        .for_each(|(y, x)| gelu_chunk(x, y));
}

/// `out = grad * gelu'(x)`.
pub fn gelu_backward(x: &[f32], grad: &[f32], out: &mut [f32]) {
    assert!(x.len() == grad.len() && x.len() == out.len());
    out.par_chunks_mut(TASK_ELEMENTS)
        .zip(x.par_chunks(TASK_ELEMENTS))
        .zip(grad.par_chunks(TASK_ELEMENTS))
        .for_each(|((o, x), g)| gelu_backward_chunk(x, g, o));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fused::kernels::test_support::{libm_erf, max_diff, random};

    #[test]
    fn gelu_and_its_gradient_match_the_definition() {
        let x = random(100_000, 1);
        let mut y = vec![0.0; x.len()];
        gelu(&x, &mut y);
        let reference: Vec<f32> = x
            .iter()
            .map(|&x| (0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()))) as f32)
            .collect();
        assert!(max_diff(&y, &reference) < 1e-6);
        // Central differences of the reference function.
        let grad = random(x.len(), 2);
        let mut dx = vec![0.0; x.len()];
        gelu_backward(&x, &grad, &mut dx);
        let f = |x: f64| 0.5 * x * (1.0 + libm_erf(x / 2f64.sqrt()));
        for i in (0..x.len()).step_by(97) {
            let h = 1e-5;
            let slope = (f(x[i] as f64 + h) - f(x[i] as f64 - h)) / (2.0 * h);
            assert!(
                (dx[i] as f64 - grad[i] as f64 * slope).abs() < 1e-5,
                "at {}",
                x[i]
            );
        }
    }
}
