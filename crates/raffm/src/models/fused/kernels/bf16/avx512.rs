//! The AVX512-BF16 engine. Operands are packed as bf16 pairs along k (what `VDPBF16PS`
//! multiplies: lane j adds `a[2p]·b[2p][j] + a[2p+1]·b[2p+1][j]`), and a micro-kernel
//! keeps an `MR × NR` block of C in registers while it walks k.
//!
//! Blocking: B is packed once per call into column panels of `NR`; each task packs its
//! `MC` rows of A into row panels of `MR`; k is walked in blocks of `KP` pairs, so that
//! one B panel block (16 KiB) stays in L1 while every row panel of the task passes over
//! it.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::super::matmul::Strided;
use super::to_bf16;
use super::Destination;

/// Rows of C per micro-kernel call: one broadcast A pair each.
const MR: usize = 8;
/// Columns of C per micro-kernel call: two registers of 16 fp32 lanes. `MR × 2` = 16
/// accumulators, two B registers and one A broadcast fit AVX-512's 32 registers.
const NR: usize = 32;
/// k pairs per block.
const KP: usize = 128;
/// Rows of C per task. The split is fixed, never by thread count, and each element is
/// summed by one task in k order, so the result does not depend on the threads.
const MC: usize = 64;

/// Two values rounded to bf16 and packed as `VDPBF16PS` reads a pair: the lower-indexed
/// element in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// `out[j] = pair(lo[j], hi[j])` (`hi` absent: zeros), compiled for AVX-512 so that the
/// rounding vectorizes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn pack_rows(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    match hi {
        Some(hi) => {
            for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
                *o = pair(a, b);
            }
        }
        None => {
            for (o, &a) in out.iter_mut().zip(lo) {
                *o = to_bf16(a) as u32;
            }
        }
    }
}

/// `out[p] = pair(run[2p], run[2p + 1])` for a contiguous run along k.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn pack_run(run: &[f32], mut out: impl FnMut(usize, u32)) {
    let mut pairs = run.chunks_exact(2);
    for (p, two) in pairs.by_ref().enumerate() {
        out(p, pair(two[0], two[1]));
    }
    if let [last] = pairs.remainder() {
        out(run.len() / 2, pair(*last, 0.0));
    }
}

/// B as bf16 pairs: panel q (columns `q·NR ..`) holds, for each pair p, the `NR` pairs
/// `(B[2p][j], B[2p+1][j])`; zero beyond k and n. Reads along B's rows or its columns,
/// whichever is contiguous.
fn pack_b(rhs: &[f32], r: Strided, k: usize, n: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut packed = vec![0u32; n.div_ceil(NR) * pairs * NR];
    packed
        .par_chunks_mut(pairs * NR)
        .enumerate()
        .for_each(|(q, panel)| {
            let (j0, cols) = (q * NR, NR.min(n - q * NR));
            if r.contiguous_rows() {
                let row = |p: usize| &rhs[r.at(p, j0)..r.at(p, j0) + cols];
                for p in 0..pairs {
                    let hi = (2 * p + 1 < k).then(|| row(2 * p + 1));
                    // SAFETY: this engine runs only where the CPU has AVX-512.
                    unsafe { pack_rows(row(2 * p), hi, &mut panel[p * NR..p * NR + cols]) };
                }
            } else {
                // The columns are contiguous (see `pack_a`): each is one run along k.
                assert_eq!(
                    r.row_step(),
                    1,
                    "a strided view with neither rows nor columns contiguous"
                );
                for jj in 0..cols {
                    let start = r.at(0, j0 + jj);
                    // SAFETY: as above.
                    unsafe { pack_run(&rhs[start..start + k], |p, v| panel[p * NR + jj] = v) };
                }
            }
        });
    packed
}

/// Rows `first .. first + rows` of A as bf16 pairs: panel s holds, for each pair p, the
/// `MR` pairs `(A[i][2p], A[i][2p+1])`; zero beyond k and the rows. Reads along A's rows
/// or its columns, whichever is contiguous.
fn pack_a(lhs: &[f32], l: Strided, first: usize, rows: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut packed = vec![0u32; rows.div_ceil(MR) * pairs * MR];
    let mut put_row = |i: usize, run: &[f32]| {
        let at = |p: usize| ((i / MR) * pairs + p) * MR + i % MR;
        // SAFETY: this engine runs only where the CPU has AVX-512.
        unsafe { pack_run(run, |p, v| packed[at(p)] = v) };
    };
    if l.contiguous_rows() {
        for i in 0..rows {
            let start = l.at(first + i, 0);
            put_row(i, &lhs[start..start + k]);
        }
    } else {
        // A view's rows or its columns are contiguous (`Strided` makes no other kind, and
        // `check` keeps every element inside the slice): here the columns, so each
        // panel's MR rows of a pair are two short runs.
        assert_eq!(
            l.row_step(),
            1,
            "a strided view with neither rows nor columns contiguous"
        );
        let column = |c: usize, i0: usize, n: usize| &lhs[l.at(first + i0, c)..][..n];
        for s in 0..rows.div_ceil(MR) {
            let (i0, n) = (s * MR, MR.min(rows - s * MR));
            for p in 0..pairs {
                let hi = (2 * p + 1 < k).then(|| column(2 * p + 1, i0, n));
                let out = &mut packed[(s * pairs + p) * MR..][..n];
                // SAFETY: as above.
                unsafe { pack_rows(column(2 * p, i0, n), hi, out) };
            }
        }
    }
    packed
}

/// 32 bf16 values: the same 512 bits.
#[inline(always)]
fn as_bf16(x: __m512i) -> __m512bh {
    // SAFETY: both types are 512 bits of plain data, valid for any bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
}

/// `tile = Σ_p A-pairs[p] · B-pairs[p]` over `pairs` pairs of one row panel and one
/// column panel: `[MR, NR]`, row-major.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `a` holds `pairs × MR` and `b` `pairs × NR`
/// pairs.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(pairs: usize, a: *const u32, b: *const u32, tile: &mut [f32; MR * NR]) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: within the panels, as the caller guarantees.
        let (b0, b1) = unsafe {
            let row = b.add(p * NR) as *const __m512i;
            (_mm512_loadu_si512(row), _mm512_loadu_si512(row.add(1)))
        };
        let (b0, b1) = (as_bf16(b0), as_bf16(b1));
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let a = unsafe { *a.add(p * MR + r) } as i32;
            let a = as_bf16(_mm512_set1_epi32(a));
            acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: `tile` holds MR rows of NR = 2 × 16 floats.
        unsafe {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), acc[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), acc[1]);
        }
    }
}

/// [`super::matmul`] on AVX512-BF16, for m, n and k above zero.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    d: Strided,
    lhs: &[f32],
    l: Strided,
    rhs: &[f32],
    r: Strided,
    accumulate: bool,
) {
    let b = pack_b(rhs, r, k, n);
    let pairs = k.div_ceil(2);
    let out = Destination(dst.as_mut_ptr());
    let out = &out;
    (0..m.div_ceil(MC)).into_par_iter().for_each(|task| {
        let first = task * MC;
        let rows = MC.min(m - first);
        let a = pack_a(lhs, l, first, rows, k);
        let mut tile = [0f32; MR * NR];
        for p0 in (0..pairs).step_by(KP) {
            let block = KP.min(pairs - p0);
            let overwrite = p0 == 0 && !accumulate;
            for q in 0..n.div_ceil(NR) {
                let cols = NR.min(n - q * NR);
                let b_block = &b[(q * pairs + p0) * NR..];
                for s in 0..rows.div_ceil(MR) {
                    let a_block = &a[(s * pairs + p0) * MR..];
                    // SAFETY: the engine is chosen only where the CPU has these
                    // features; the blocks hold `block` pairs of their panels.
                    unsafe { kernel(block, a_block.as_ptr(), b_block.as_ptr(), &mut tile) };
                    for ii in 0..MR.min(rows - s * MR) {
                        let i = first + s * MR + ii;
                        let sums = &tile[ii * NR..ii * NR + cols];
                        if d.contiguous_rows() {
                            // SAFETY: in bounds (checked by the caller), contiguous, and
                            // written by this task alone.
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(out.0.add(d.at(i, q * NR)), cols)
                            };
                            if overwrite {
                                row.copy_from_slice(sums);
                            } else {
                                row.iter_mut().zip(sums).for_each(|(c, s)| *c += s);
                            }
                            continue;
                        }
                        for (jj, &sum) in sums.iter().enumerate() {
                            // SAFETY: as above, one element at a time.
                            unsafe {
                                let c = out.0.add(d.at(i, q * NR + jj));
                                *c = if overwrite { sum } else { *c + sum };
                            }
                        }
                    }
                }
            }
        }
    });
}
