//! Inputs and references shared by the kernels' tests.

use crate::core::rng::SplitMix64;

pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// erf by its Taylor series (converges everywhere; enough terms for |x| <= 6 in f64).
pub fn libm_erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut term, mut total) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        total += term / (2 * n + 1) as f64;
    }
    total * 2.0 / std::f64::consts::PI.sqrt()
}
