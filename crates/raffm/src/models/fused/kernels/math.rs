//! Scalar math the compiler can vectorise: `exp` and `erf` without libm calls, and
//! reductions with 16 partial sums.

/// `e^x` to about 2 ulp: range reduction by ln 2, a degree-7 Taylor polynomial on
/// |r| <= ln2/2, and the power of two built in the exponent bits.
///
/// Below `e^-80` (1.8e-35) the result is exactly 0. A softmax weight that small is far below
/// f32 resolution next to the row's largest weight (1), and keeping it would leave
/// subnormal numbers in the probabilities: masked keys (bias -1e9) then made every
/// matmul that reads them stall on subnormal arithmetic, 10x slower end to end.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const FLUSH_BELOW: f32 = -80.0;
    let flush = x < FLUSH_BELOW;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted`'s bits are ROUND's plus n (one ulp is 1 in [2^23, 2^24)): the integer n
    // without a float-to-int conversion, which would not vectorise.
    let biased_exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let value = p * f32::from_bits(biased_exponent << 23);
    if flush {
        0.0
    } else {
        value
    }
}

/// `erf(x)` with absolute error below 1.5e-7 (Abramowitz & Stegun 7.1.26), and
/// `exp(-x^2)` which it computes on the way.
#[inline(always)]
pub(super) fn erf_and_gaussian(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let gaussian = exp(-z * z);
    let magnitude = 1.0 - poly * gaussian;
    (magnitude.copysign(x), gaussian)
}

/// `sum(f(a[i], b[i]))` with 16 partial sums, so it vectorises.
#[inline(always)]
pub(super) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = (a_chunks.remainder().iter())
        .zip(b_chunks.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            lanes[l] += f(x[l], y[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Sum with 16 partial sums.
#[inline(always)]
pub(super) fn sum(a: &[f32]) -> f32 {
    sum_zip(a, a, |x, _| x)
}

/// Maximum with 16 partial maxima.
#[inline(always)]
pub(super) fn max(a: &[f32]) -> f32 {
    let mut lanes = [f32::MIN; 16];
    let chunks = a.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(f32::MIN, |m, &x| m.max(x));
    for x in chunks {
        for l in 0..16 {
            lanes[l] = lanes[l].max(x[l]);
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// Dot product with 16 partial sums.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_zip(a, b, |x, y| x * y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fused::kernels::test_support::libm_erf;

    #[test]
    fn exp_and_erf_match_libm() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let (ours, reference) = (exp(x), x.exp());
            assert!(
                ((ours - reference) / reference).abs() < 5e-7,
                "exp({x}) = {ours}, libm {reference}"
            );
        }
        // No subnormal results: tiny values are flushed to exactly 0.
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(-80.5), 0.0);
        for i in 0..2000 {
            let y = exp(-i as f32 / 10.0);
            assert!(
                y == 0.0 || y.is_normal(),
                "exp({}) = {y:e}",
                -i as f32 / 10.0
            );
        }
        for i in -600..600 {
            let x = i as f64 / 100.0;
            let reference = libm_erf(x);
            let ours = erf_and_gaussian(x as f32).0 as f64;
            assert!(
                (ours - reference).abs() < 3e-7,
                "erf({x}) = {ours}, {reference}"
            );
        }
    }
}
