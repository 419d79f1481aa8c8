//! Matrix products with bf16 operands and fp32 accumulation: what `torch.autocast("cpu",
//! dtype=torch.bfloat16)` does to a matmul, on the instructions this CPU has.
//!
//! Both operands are rounded to bf16, round-to-nearest-even, and every product is summed
//! in fp32. A bf16 × bf16 product has at most 16 significant bits, so it is exact in
//! fp32: the only rounding beyond the operands' is the fp32 summation. Which instructions
//! run the products is an [`Engine`], chosen once per process ([`engine`]).
//!
//! The error bound the tests hold every element to (derived in [`error_bound`]): with
//! `u = 2⁻⁸` bf16's unit roundoff and `γ_k = k·2⁻²⁴ / (1 − k·2⁻²⁴)` fp32's for a sum of `k`
//! terms, `|ĉ − c| ≤ (2u + u² + γ_k) · Σ_p |a_p|·|b_p|`.
//!
//! Why kernels of our own: the AVX512-BF16 one is plain Rust (`core::arch`'s intrinsics
//! for it are stable) and the AMX one stable `asm!` (its intrinsics are nightly-only),
//! so there is no C or C++ library to build, and no second copy of the operands: both
//! round to bf16 while they pack, straight from our strided views (transposed operands
//! need no copy), and both sum each element in a fixed order, so results do not depend
//! on the thread count. Not tried: oneDNN (what PyTorch calls; a C++ build, and its own
//! threads beside rayon's) and tract-linalg's AMX kernel. Tried on the AVX512-BF16 engine: micro-tiles of 12 × 32 instead of
//! 8 × 32 (no gain: 550-676 against 527-675 GFLOP/s on the bench's shapes). Tried on
//! the AMX engine: k blocks of 4, 8, 16 and 32 tiles and none (within the noise of one
//! another, 1,000-1,400 GFLOP/s on the bench's shapes; 8 kept).
//!
//! Where we differ from PyTorch: the AVX512-BF16 and AMX instructions treat subnormal
//! inputs as zero and flush subnormal results, in oneDNN's kernels and in ours; our
//! emulated engine keeps them. Both are below 2⁻¹²⁶ in magnitude. And autocast also stores a product's output
//! in bf16; ours stay fp32 (see `precision`).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::sync::OnceLock;

use super::matmul::Strided;
use crate::core::error::{Error, Result};

/// The environment variable that chooses the engine: `auto` (the default), `amx`,
/// `avx512bf16` or `emulated`.
pub const ENGINE_VAR: &str = "RAFFM_BF16_ENGINE";

/// What runs a bf16 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// AMX's `TDPBF16PS`: a 16 × 16 tile of fp32 sums gains 16 × 16 × 32 bf16 products
    /// per instruction.
    Amx,
    /// AVX512-BF16's `VDPBF16PS`: each of 16 fp32 lanes adds a pair of bf16 products.
    Avx512Bf16,
    /// No bf16 instruction: operands are rounded to bf16 and multiplied by the fp32
    /// GEMM. The same products (they are exact in fp32), at fp32 speed; what a CPU
    /// without AVX512-BF16 runs, and what tests force to check the fallback.
    Emulated,
}

impl Engine {
    /// The engine named by `choice` (`auto`, `amx`, `avx512bf16`, `emulated`) on this
    /// CPU; an engine the CPU cannot run is an error. `auto` takes the fastest there is.
    pub fn select(choice: &str) -> Result<Engine> {
        match choice {
            "auto" | "" => Ok(if amx_available() {
                Engine::Amx
            } else if avx512_bf16_available() {
                Engine::Avx512Bf16
            } else {
                Engine::Emulated
            }),
            "emulated" => Ok(Engine::Emulated),
            "amx" if amx_available() => Ok(Engine::Amx),
            "amx" => Err(Error::Invalid(format!(
                "{ENGINE_VAR}=amx: this CPU (or kernel) has no AMX-BF16"
            ))),
            "avx512bf16" if avx512_bf16_available() => Ok(Engine::Avx512Bf16),
            "avx512bf16" => Err(Error::Invalid(format!(
                "{ENGINE_VAR}=avx512bf16: this CPU has no AVX512-BF16"
            ))),
            other => Err(Error::Invalid(format!(
                "{ENGINE_VAR}={other}: expected auto, amx, avx512bf16 or emulated"
            ))),
        }
    }

    /// One line for `--help` and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Engine::Amx => "bf16 matmuls on AMX tiles (TDPBF16PS), fp32 accumulation",
            Engine::Avx512Bf16 => "bf16 matmuls on AVX512-BF16 (VDPBF16PS), fp32 accumulation",
            Engine::Emulated => "bf16 matmuls emulated in fp32 (bf16 numerics at fp32 speed)",
        }
    }
}

/// The engine of this process: [`ENGINE_VAR`]'s choice, read once.
pub fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let choice = std::env::var(ENGINE_VAR).unwrap_or_default();
            Engine::select(&choice).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Invalid)
}

fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16, round-to-nearest-even (NaN stays a quiet NaN, overflow becomes
/// infinity), as bf16's bits.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the
    // dropped half is above one half, or equal to it with the kept half odd.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    // A select, not a branch, so that packing loops vectorize.
    let quiet_nan = (bits >> 16) | 0x0040;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

/// The fp32 value of bf16 bits.
pub fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded through bf16.
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// The bound on `|ĉ − c|` for one element of a bf16 product over `k` terms whose
/// `Σ |a_p|·|b_p|` is `magnitude`. Each operand is off by a factor `(1 + δ)`, `|δ| ≤ u`,
/// so each exact product by at most `(2u + u²)` of its magnitude; the products are exact
/// in fp32, and summing `k` of them in any order adds at most `γ_k` of `Σ |terms|`.
pub fn error_bound(k: usize, magnitude: f64) -> f64 {
    let u = 2f64.powi(-8);
    let ku = k as f64 * 2f64.powi(-24);
    (2.0 * u + u * u + ku / (1.0 - ku)) * magnitude
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`) for an `[m, k] · [k, n]`
/// product of strided views, with bf16 operands, on rayon's threads. Each element is
/// summed in a fixed order whatever the threads, so results are bit-identical run to run.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    engine: Engine,
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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| (0..n).for_each(|j| dst[d.at(i, j)] = 0.0));
        }
        return;
    }
    assert!(
        d.disjoint(m, n),
        "the destination's elements overlap: {d:?} for [{m}, {n}]"
    );
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Bf16 => avx512::matmul((m, n, k), dst, d, lhs, l, rhs, r, accumulate),
        #[cfg(target_arch = "x86_64")]
        Engine::Amx => amx::matmul((m, n, k), dst, d, lhs, l, rhs, r, accumulate),
        #[cfg(not(target_arch = "x86_64"))]
        Engine::Avx512Bf16 | Engine::Amx => unreachable!("selected only where detected"),
        Engine::Emulated => {
            let rounded = |src: &[f32], s: Strided, rows: usize, cols: usize| {
                let mut out = Vec::with_capacity(rows * cols);
                for i in 0..rows {
                    out.extend((0..cols).map(|j| round_bf16(src[s.at(i, j)])));
                }
                out
            };
            let (a, b) = (rounded(lhs, l, m, k), rounded(rhs, r, k, n));
            super::matmul::matmul_on(
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
                (m, n, k),
                dst,
                d,
                &a,
                Strided::rows(0, k),
                &b,
                Strided::rows(0, n),
                accumulate,
            );
        }
    }
}

/// The destination of a tile engine's product, shared by its tasks, each of which
/// writes only its own elements.
#[cfg(target_arch = "x86_64")]
struct Destination(*mut f32);
// SAFETY: tasks write disjoint elements (distinct rows of a view whose elements do not
// overlap, asserted by `matmul`).
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Destination {}

#[cfg(test)]
mod tests;
