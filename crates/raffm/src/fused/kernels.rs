//! CPU kernels for the encoder's memory-bound steps, on plain `f32` slices.
//!
//! Each kernel does in one pass over memory what burn's composed ops do in several, and
//! splits its rows over rayon's threads. The math is written without branches or libm
//! calls so that the compiler vectorises it; `multiversion!` compiles each kernel for
//! AVX-512 and AVX2 besides the baseline and picks one at run time. Reductions keep 16
//! partial sums, since the compiler may not reorder float additions itself.
//!
//! Every parallel split is by a fixed number of rows, never by thread count or timing, so
//! results are bit-identical from run to run.

// Kernels take their inputs, outputs and saved state as separate slices: long argument
// lists are their shape, and index loops over rows that address several slices at once.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const TASK_ELEMENTS: usize = 32 * 1024;

/// Compiles `fn name(args) body` for AVX-512, for AVX2 + FMA and for the baseline, and
/// dispatches on what the CPU reports.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                if simd_level() >= 4 {
                    // SAFETY: the CPU reported these features.
                    return unsafe { v4($($arg),*) };
                }
                if simd_level() >= 3 {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// 4: AVX-512 (F, DQ, VL); 3: AVX2 + FMA; 0: baseline. Detected once.
#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let has = |f: &str| match f {
            "avx512f" => is_x86_feature_detected!("avx512f"),
            "avx512dq" => is_x86_feature_detected!("avx512dq"),
            "avx512vl" => is_x86_feature_detected!("avx512vl"),
            "avx2" => is_x86_feature_detected!("avx2"),
            _ => is_x86_feature_detected!("fma"),
        };
        if ["avx512f", "avx512dq", "avx512vl", "avx2", "fma"]
            .iter()
            .all(|f| has(f))
        {
            4
        } else if has("avx2") && has("fma") {
            3
        } else {
            0
        }
    })
}

// ---- scalar math the compiler can vectorise ------------------------------------------------

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
fn erf_and_gaussian(x: f32) -> (f32, f32) {
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

/// The exact (erf) GELU and its derivative.
#[inline(always)]
fn gelu_and_slope(x: f32) -> (f32, f32) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let (erf, gaussian) = erf_and_gaussian(x * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = 0.5 * (1.0 + erf);
    (x * cdf, cdf + x * FRAC_1_SQRT_2PI * gaussian)
}

/// `sum(f(a[i], b[i]))` with 16 partial sums, so it vectorises.
#[inline(always)]
fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
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
fn sum(a: &[f32]) -> f32 {
    sum_zip(a, a, |x, _| x)
}

/// Maximum with 16 partial maxima.
#[inline(always)]
fn max(a: &[f32]) -> f32 {
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
fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_zip(a, b, |x, y| x * y)
}

// ---- dropout ------------------------------------------------------------------------------

/// Which elements one dropout call keeps: a counter-based hash of (key, element index), so
/// the mask is the same whether the elements are visited by one thread or several, and
/// the backward pass recomputes it instead of storing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    key: [u32; 2],
    /// An element is dropped when its hash is below this.
    threshold: u32,
    /// `1 / (1 - p)`, the scale of kept elements.
    scale: f32,
}

impl DropoutMask {
    /// `None` when `prob` is 0 (nothing to drop). `prob` must be in `[0, 1)`.
    pub fn new(prob: f64, key: u64) -> Option<Self> {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} outside [0, 1)"
        );
        (prob > 0.0).then(|| Self {
            key: [key as u32, (key >> 32) as u32],
            threshold: (prob * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - prob)) as f32,
        })
    }

    /// The factor for element `index`: 0 if dropped, `1 / (1 - p)` if kept.
    #[inline(always)]
    pub fn factor(&self, index: usize) -> f32 {
        let hash = mix32(mix32(index as u32 ^ self.key[0]).wrapping_add(self.key[1]));
        if hash >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

/// A 32-bit integer hash with full avalanche (Wellons' "lowbias32").
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

multiversion! {
    /// `x[i] *= mask.factor(first + i)`.
    fn apply_mask_chunk(x: &mut [f32], mask: &DropoutMask, first: usize) {
        for (i, v) in x.iter_mut().enumerate() {
            *v *= mask.factor(first + i);
        }
    }
}

/// Multiplies `x` in place by the dropout factors of its elements.
pub fn apply_dropout(x: &mut [f32], mask: &DropoutMask) {
    x.par_chunks_mut(TASK_ELEMENTS)
        .enumerate()
        .for_each(|(c, chunk)| apply_mask_chunk(chunk, mask, c * TASK_ELEMENTS));
}

// ---- GELU ---------------------------------------------------------------------------------

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

// ---- residual + LayerNorm -----------------------------------------------------------------

/// Rows per task for row-wise kernels.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMENTS / width.max(1)).max(1)
}

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

// ---- RMSNorm ------------------------------------------------------------------------------

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

// ---- SwiGLU -------------------------------------------------------------------------------

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

// ---- log-probabilities of target tokens --------------------------------------------------

/// Rows of logits formed at once: `[LOGIT_ROWS, vocab]` (12.6 MB for a 49,152-token
/// vocabulary) instead of all of them.
const LOGIT_ROWS: usize = 64;

fn all_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

/// `out = hidden · weightᵀ` for a block of rows: `[rows, width] · [width, vocab]`.
fn logits_block(hidden: &[f32], weight: &[f32], width: usize, out: &mut [f32]) {
    let (rows, vocab) = (hidden.len() / width, weight.len() / width);
    let w = Strided::rows(0, width).transposed();
    matmul_on(
        all_threads(),
        (rows, vocab, width),
        out,
        Strided::rows(0, vocab),
        hidden,
        Strided::rows(0, width),
        weight,
        w,
        false,
    );
}

multiversion! {
    /// Per row of logits: its log-sum-exp.
    fn log_sum_exp_rows(logits: &[f32], vocab: usize, lse: &mut [f32]) {
        for (row, l) in logits.chunks_exact(vocab).zip(lse) {
            let top = max(row);
            let total = sum_zip(row, row, |x, _| exp(x - top));
            *l = top + total.ln();
        }
    }
}

multiversion! {
    /// Per row, the gradient of `grad * log_softmax(row)[target]`: `grad * (onehot - p)`.
    fn target_log_prob_grad_rows(logits: &mut [f32], vocab: usize, lse: &[f32], targets: &[usize], grad: &[f32]) {
        for (((row, &l), &t), &g) in logits.chunks_exact_mut(vocab).zip(lse).zip(targets).zip(grad) {
            for x in row.iter_mut() {
                *x = -g * exp(*x - l);
            }
            row[t] += g;
        }
    }
}

/// `log_softmax(hidden · weightᵀ)[i, targets[i]]` for every row i of `hidden` (`[n,
/// width]`, `weight` `[vocab, width]`), without the `[n, vocab]` logits: a block of rows at
/// a time. Returns the log-probabilities and each row's log-sum-exp.
pub fn target_log_probs(
    hidden: &[f32],
    weight: &[f32],
    width: usize,
    targets: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let (n, vocab) = (hidden.len() / width, weight.len() / width);
    assert_eq!(targets.len(), n, "one target per row");
    assert!(
        targets.iter().all(|&t| t < vocab),
        "targets inside the vocabulary"
    );
    let (mut log_probs, mut lse) = (vec![0.0; n], vec![0.0; n]);
    let mut logits = vec![0.0; LOGIT_ROWS * vocab];
    for start in (0..n).step_by(LOGIT_ROWS) {
        let rows = LOGIT_ROWS.min(n - start);
        let block = &mut logits[..rows * vocab];
        logits_block(
            &hidden[start * width..(start + rows) * width],
            weight,
            width,
            block,
        );
        let lse = &mut lse[start..start + rows];
        let per_task = rows.div_ceil(rayon::current_num_threads()).max(1);
        block
            .par_chunks(per_task * vocab)
            .zip(lse.par_chunks_mut(per_task))
            .for_each(|(b, l)| log_sum_exp_rows(b, vocab, l));
        for (i, l) in lse.iter().enumerate() {
            log_probs[start + i] = block[i * vocab + targets[start + i]] - l;
        }
    }
    (log_probs, lse)
}

/// Gradients of [`target_log_probs`] with respect to `hidden` and, if `with_weight`, to
/// `weight`, from the gradient of each row's log-probability. The logits are formed again,
/// a block at a time.
pub fn target_log_probs_backward(
    hidden: &[f32],
    weight: &[f32],
    width: usize,
    targets: &[usize],
    lse: &[f32],
    grad: &[f32],
    with_weight: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, vocab) = (hidden.len() / width, weight.len() / width);
    let mut d_hidden = vec![0.0; n * width];
    let mut d_weight = with_weight.then(|| vec![0.0; vocab * width]);
    let mut logits = vec![0.0; LOGIT_ROWS * vocab];
    for start in (0..n).step_by(LOGIT_ROWS) {
        let rows = LOGIT_ROWS.min(n - start);
        let span = start..start + rows;
        let h = &hidden[start * width..(start + rows) * width];
        let block = &mut logits[..rows * vocab];
        logits_block(h, weight, width, block);
        let per_task = rows.div_ceil(rayon::current_num_threads()).max(1);
        block
            .par_chunks_mut(per_task * vocab)
            .zip(lse[span.clone()].par_chunks(per_task))
            .zip(targets[span.clone()].par_chunks(per_task))
            .zip(grad[span].par_chunks(per_task))
            .for_each(|(((b, l), t), g)| target_log_prob_grad_rows(b, vocab, l, t, g));
        // d hidden = d logits · weight: [rows, vocab] · [vocab, width]
        let dh = &mut d_hidden[start * width..(start + rows) * width];
        let (d_rows, w_rows) = (Strided::rows(0, vocab), Strided::rows(0, width));
        matmul_on(
            all_threads(),
            (rows, width, vocab),
            dh,
            Strided::rows(0, width),
            block,
            d_rows,
            weight,
            w_rows,
            false,
        );
        if let Some(dw) = &mut d_weight {
            // d weight += d logitsᵀ · hidden: [vocab, rows] · [rows, width]
            matmul_on(
                all_threads(),
                (vocab, width, rows),
                dw,
                Strided::rows(0, width),
                block,
                d_rows.transposed(),
                h,
                w_rows,
                true,
            );
        }
    }
    (d_hidden, d_weight)
}

// ---- self-attention -----------------------------------------------------------------------

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
    fn rotate(x: &[f32], d: usize, cos: &[f32], sin: &[f32], inverse: bool, out: &mut [f32]) {
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
fn rotated<'a>(
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

/// A strided matrix inside a slice: element (i, j) is at `offset + i * row + j * col`.
#[derive(Clone, Copy)]
struct Strided {
    offset: usize,
    row: usize,
    col: usize,
}

impl Strided {
    fn rows(offset: usize, row: usize) -> Self {
        Self {
            offset,
            row,
            col: 1,
        }
    }
    fn transposed(self) -> Self {
        Self {
            row: self.col,
            col: self.row,
            ..self
        }
    }
    fn check(&self, len: usize, rows: usize, cols: usize) {
        assert!(
            rows == 0
                || cols == 0
                || self.offset + (rows - 1) * self.row + (cols - 1) * self.col < len,
            "strided matrix out of bounds"
        );
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`) for an `[m, k] · [k, n]`
/// product of strided views, on this thread (the callers already run one task per batch
/// row).
#[allow(clippy::too_many_arguments)]
fn matmul(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    d: Strided,
    lhs: &[f32],
    l: Strided,
    rhs: &[f32],
    r: Strided,
    accumulate: bool,
) {
    matmul_on(
        gemm::Parallelism::None,
        dims,
        dst,
        d,
        lhs,
        l,
        rhs,
        r,
        accumulate,
    );
}

/// [`matmul`] on `parallelism`'s threads.
#[allow(clippy::too_many_arguments)]
fn matmul_on(
    parallelism: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    d: Strided,
    lhs: &[f32],
    l: Strided,
    rhs: &[f32],
    r: Strided,
    accumulate: bool,
) {
    d.check(dst.len(), m, n);
    l.check(lhs.len(), m, k);
    r.check(rhs.len(), k, n);
    // SAFETY: every view was checked to lie inside its slice, and `dst` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            d.col as isize,
            d.row as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.col as isize,
            l.row as isize,
            rhs.as_ptr().add(r.offset),
            r.col as isize,
            r.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
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

// ---- AdamW ---------------------------------------------------------------------------------

/// One AdamW step's hyper-parameters, as PyTorch's `AdamW`: decoupled weight decay and
/// bias-corrected moments. `time` counts steps from 1.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub time: usize,
}

/// The per-element constants of one step, in f32.
#[derive(Clone, Copy)]
struct AdamWCoefficients {
    decay: f32,
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    step_size: f32,
    inv_bias_2: f32,
    epsilon: f32,
}

multiversion! {
    fn adamw_chunk(param: &mut [f32], grad: &[f32], moment_1: &mut [f32], moment_2: &mut [f32], c: &AdamWCoefficients) {
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(moment_1.iter_mut()).zip(moment_2.iter_mut()) {
            *m = c.beta_1 * *m + c.one_minus_beta_1 * g;
            *v = c.beta_2 * *v + c.one_minus_beta_2 * g * g;
            *p = *p * c.decay - c.step_size * *m / ((*v * c.inv_bias_2).sqrt() + c.epsilon);
        }
    }
}

/// Updates `param` and both moments in place, in one pass.
pub fn adamw(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: &AdamWStep,
) {
    assert!(
        param.len() == grad.len() && param.len() == moment_1.len() && param.len() == moment_2.len()
    );
    assert!(step.time >= 1, "AdamW steps count from 1");
    let t = step.time.min(i32::MAX as usize) as i32;
    let c = AdamWCoefficients {
        decay: (1.0 - step.learning_rate * step.weight_decay) as f32,
        beta_1: step.beta_1 as f32,
        one_minus_beta_1: (1.0 - step.beta_1) as f32,
        beta_2: step.beta_2 as f32,
        one_minus_beta_2: (1.0 - step.beta_2) as f32,
        // lr / (1 - beta_1^t) folds the first moment's bias correction into the step.
        step_size: (step.learning_rate / (1.0 - step.beta_1.powi(t))) as f32,
        inv_bias_2: (1.0 / (1.0 - step.beta_2.powi(t))) as f32,
        epsilon: step.epsilon as f32,
    };
    param
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(grad.par_chunks(TASK_ELEMENTS))
        .zip(moment_1.par_chunks_mut(TASK_ELEMENTS))
        .zip(moment_2.par_chunks_mut(TASK_ELEMENTS))
        .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, &c));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

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

    /// erf by its Taylor series (converges everywhere; enough terms for |x| <= 6 in f64).
    fn libm_erf(x: f64) -> f64 {
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

    #[test]
    fn dropout_keeps_the_expected_fraction_and_is_reproducible() {
        let mask = DropoutMask::new(0.1, 42).unwrap();
        let n = 1_000_000;
        let mut x = vec![1.0f32; n];
        apply_dropout(&mut x, &mask);
        let dropped = x.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.002, "dropped {dropped}");
        assert!(x.iter().all(|&v| v == 0.0 || v == (1.0 / 0.9f64) as f32));
        // The same key gives the same mask; another key another one.
        let mut again = vec![1.0f32; n];
        apply_dropout(&mut again, &mask);
        assert_eq!(x, again);
        let mut other = vec![1.0f32; n];
        apply_dropout(&mut other, &DropoutMask::new(0.1, 43).unwrap());
        assert_ne!(x, other);
        assert!(DropoutMask::new(0.0, 1).is_none());
    }

    #[test]
    fn adamw_matches_the_pytorch_update_in_f64() {
        let n = 70_001;
        let (mut param, grad) = (random(n, 20), random(n, 21));
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut reference: Vec<(f64, f64, f64)> =
            param.iter().map(|&p| (p as f64, 0.0, 0.0)).collect();
        for time in 1..=3 {
            let step = AdamWStep {
                learning_rate: 1e-2,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.01,
                time,
            };
            adamw(&mut param, &grad, &mut m, &mut v, &step);
            for ((p, m, v), &g) in reference.iter_mut().zip(&grad) {
                let g = g as f64;
                *p *= 1.0 - step.learning_rate * step.weight_decay;
                *m = 0.9 * *m + 0.1 * g;
                *v = 0.999 * *v + 0.001 * g * g;
                let m_hat = *m / (1.0 - 0.9f64.powi(time as i32));
                let v_hat = *v / (1.0 - 0.999f64.powi(time as i32));
                *p -= step.learning_rate * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        let worst = param
            .iter()
            .zip(&reference)
            .map(|(a, (b, _, _))| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{worst}");
    }

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
