//! The AMX engine: `TDPBF16PS` on 16 × 16 tiles, fp32 accumulation in the tiles.
//!
//! One `TDPBF16PS` multiplies a tile of A (16 rows × 16 bf16 pairs along k) by a tile of
//! B (16 pairs × 16 columns, each element a pair along k) into a tile of C (16 × 16
//! fp32): 8,192 multiply-adds. The micro-kernel holds a 32 × 32 block of C in four tiles,
//! and for every 32 values of k loads two A tiles and two B tiles and issues four
//! products (the eight tile registers all in use). It walks k in blocks whose B tiles
//! stay in L1, storing C between blocks and loading it back (fp32 in, fp32 out: exact),
//! so each element of C is summed in k order by one task, as in a single pass: the
//! result does not depend on the blocking or on the threads.
//!
//! Both operands are packed once per call into 1 KiB tiles (64-byte rows, so every
//! tile load reads 16 consecutive cache lines), rounded to bf16 while they are packed.
//! A tile of A is `[row][pair]`, a tile of B `[pair][column]`. Each operand is read
//! along whichever of its axes is contiguous; where that gives the tile's transpose
//! (either operand read down its columns: A = xᵀ in a weight's gradient, B = Wᵀ in an
//! input's), the 16 × 16 block is transposed in registers.
//!
//! Why `asm!`: `core::arch`'s AMX intrinsics are nightly-only, and stable `asm!` takes
//! the mnemonics. The compiler never uses tile registers itself, so the tile state set
//! by one `asm!` block (the configuration, the accumulators) is still there in the next.
//! Linux hands tile data to a process only after `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`; [`available`] asks once.

use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::super::matmul::Strided;
use super::Destination;

/// Rows of a tile, and 32-bit pairs per tile row.
const TILE: usize = 16;
/// The micro-kernel's block of C: two tiles each way.
const BLOCK: usize = 2 * TILE;
/// Values of k per tile: 16 pairs.
const K_STEP: usize = 2 * TILE;
/// Rows of C per task: a fixed split (the result does not depend on it, see above)
/// that gives two threads enough tasks to balance.
const ROWS_PER_TASK: usize = 4 * BLOCK;
/// Tiles of k per block: 8 KiB of each B panel, 16 KiB for the pair, held in L1.
const K_TILES: usize = 8;

/// One 64-byte tile row of packed pairs.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct TileRow([u32; TILE]);

/// Whether this CPU and kernel run AMX bf16: CPUID's AMX-TILE and AMX-BF16 bits (with
/// the AVX-512 the packing uses), and Linux's permission for tile data, asked once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let edx = __cpuid_count(7, 0).edx;
        let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        cpu && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && tile_data_permitted()
    })
}

#[cfg(target_os = "linux")]
fn tile_data_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for an extended-state permission; it changes nothing else, and
    // fails cleanly on kernels that do not know it.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn tile_data_permitted() -> bool {
    false
}

/// The tile configuration of this thread, for as long as it lives: every tile 16 rows of
/// 64 bytes. Released on drop, so that the kernel stops saving tile state for the thread.
struct Tiles;

impl Tiles {
    /// # Safety
    /// [`available`] returned true.
    unsafe fn configure() -> Tiles {
        // Palette 1; bytes 16.. are each tile's bytes per row (u16), 48.. its rows (u8).
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = (4 * TILE) as u8;
            config.0[48 + t] = TILE as u8;
        }
        // SAFETY: a valid palette-1 configuration, on a CPU with AMX.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: this thread's tiles were configured by `configure`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `c[0..32][0..32] (+)= Σ_chunks A-block · B-block`: `a` the two A tiles' panels (16
/// rows each), `b` the two B tiles' panels (16 columns each), from the same tile of k,
/// `chunks` tiles each; C is 32 rows `c_row` bytes apart, overwritten when `first`,
/// added to otherwise (its fp32 values go back into the tiles exactly, so summing k in
/// blocks gives the bits of one pass).
///
/// # Safety
/// The tiles are configured ([`Tiles`]); each panel holds `chunks` tiles; `c` is
/// readable and writable for 32 rows of 32 floats `c_row` bytes apart.
unsafe fn kernel(
    chunks: usize,
    a: [*const TileRow; 2],
    b: [*const TileRow; 2],
    c: *mut f32,
    c_row: usize,
    first: bool,
) {
    debug_assert!(chunks > 0);
    // tmm0..3 are C (rows 0-15 / 16-31 × columns 0-15 / 16-31), tmm4-5 A, tmm6-7 B.
    let c_low = c.wrapping_byte_add(TILE * c_row);
    // SAFETY (all three blocks): as the caller guarantees.
    if first {
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    } else {
        unsafe {
            asm!(
                "tileloadd tmm0, [{c} + {c_row}*1]",
                "tileloadd tmm1, [{c} + {c_row}*1 + 64]",
                "tileloadd tmm2, [{c_low} + {c_row}*1]",
                "tileloadd tmm3, [{c_low} + {c_row}*1 + 64]",
                c = in(reg) c,
                c_low = in(reg) c_low,
                c_row = in(reg) c_row,
                options(nostack, readonly),
            )
        };
    }
    unsafe {
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {step}*1]",
            "tileloadd tmm6, [{b0} + {step}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {step}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {step}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {chunks}",
            "jnz 2b",
            "tilestored [{c} + {c_row}*1], tmm0",
            "tilestored [{c} + {c_row}*1 + 64], tmm1",
            "tilestored [{c_low} + {c_row}*1], tmm2",
            "tilestored [{c_low} + {c_row}*1 + 64], tmm3",
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a[1] => _,
            b0 = inout(reg) b[0] => _,
            b1 = inout(reg) b[1] => _,
            chunks = inout(reg) chunks => _,
            c = in(reg) c,
            c_low = in(reg) c_low,
            c_row = in(reg) c_row,
            step = in(reg) 4 * TILE,
            options(nostack),
        )
    };
}

/// The bits of `x` with bf16's half rounded to nearest even (NaN made quiet): the high
/// 16 bits of each lane are [`super::to_bf16`] of it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn round_high(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_mask_blend_epi32(nan, rounded, quiet)
}

/// Up to 16 values from `src` (zeros beyond `len`).
///
/// # Safety
/// `len` values (at most 16) are readable at `src`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load(src: *const f32, len: usize) -> __m512 {
    let mask = if len >= 16 { 0xffff } else { (1u16 << len) - 1 };
    // SAFETY: the caller's `len` values are readable; masked-off lanes are not read.
    unsafe { _mm512_maskz_loadu_ps(mask, src) }
}

/// Pairs along a contiguous run of up to 32 values: lane p is `(run[2p], run[2p + 1])`.
///
/// # Safety
/// `len` values (at most 32) are readable at `run`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pairs_along(run: *const f32, len: usize) -> __m512i {
    // SAFETY: the first 16 and the rest of the caller's `len` values.
    unsafe {
        let low = _mm512_srli_epi32::<16>(round_high(load(run, len.min(16))));
        let high = _mm512_srli_epi32::<16>(round_high(load(
            run.add(16.min(len)),
            len.saturating_sub(16),
        )));
        let low = _mm512_cvtepi32_epi16(low);
        let high = _mm512_cvtepi32_epi16(high);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
    }
}

/// Pairs across two runs: lane j is `(first[j], second[j])`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pairs_across(first: __m512, second: __m512) -> __m512i {
    let low = _mm512_srli_epi32::<16>(round_high(first));
    let high = _mm512_and_si512(round_high(second), _mm512_set1_epi32(0xffff_0000u32 as i32));
    _mm512_or_si512(low, high)
}

/// The 16 × 16 transpose of 32-bit lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose(rows: &mut [__m512i; 16]) {
    let r = *rows;
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], 128-bit lane L: column 4L + c of rows 4g .. 4g + 4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (lo, hi) = (4 * g, 4 * g + 2);
        u[4 * g] = _mm512_unpacklo_epi64(t[lo], t[hi]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[lo], t[hi]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[lo + 1], t[hi + 1]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[lo + 1], t[hi + 1]);
    }
    // Column 4L + c gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xee>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_i32x4::<0xee>(u[8 + c], u[12 + c]);
        rows[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        rows[4 + c] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        rows[8 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        rows[12 + c] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
}

/// How a packed tile is laid out.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// `[line][pair]`: A's tiles (a line is a row of A).
    LinePairs,
    /// `[pair][line]`: B's tiles (a line is a column of B).
    PairLines,
}

/// An operand read as `lines × k` (`view`'s rows are the lines), packed into panels of
/// 16 lines, each `k.div_ceil(32)` tiles in `layout`; the panels are padded with zeros
/// to an even count (the kernel takes them two at a time), k to whole tiles.
fn pack(src: &[f32], view: Strided, lines: usize, k: usize, layout: Layout) -> Vec<TileRow> {
    let chunks = k.div_ceil(K_STEP);
    let panels = 2 * lines.div_ceil(BLOCK);
    let len = panels * chunks * TILE;
    // Every tile row is written below (padding with zeros), so the buffer is not
    // cleared first.
    let mut packed = Vec::with_capacity(len);
    packed.spare_capacity_mut()[..len]
        .par_chunks_mut(chunks * TILE)
        .enumerate()
        .for_each(|(panel, tiles)| {
            let first = panel * TILE;
            let count = TILE.min(lines.saturating_sub(first));
            // SAFETY: the engine runs only where `available` holds.
            unsafe { pack_panel(src, view, first, count, k, layout, tiles) };
        });
    // SAFETY: `pack_panel` wrote every one of the `len` rows.
    unsafe { packed.set_len(len) };
    packed
}

/// One panel: lines `first .. first + count` (zeros beyond), every tile of k; writes
/// every row of `tiles`.
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
fn pack_panel(
    src: &[f32],
    view: Strided,
    first: usize,
    count: usize,
    k: usize,
    layout: Layout,
    tiles: &mut [MaybeUninit<TileRow>],
) {
    let mut block = [_mm512_setzero_si512(); TILE];
    for (chunk, tile) in tiles.chunks_exact_mut(TILE).enumerate() {
        let (k0, span) = (chunk * K_STEP, K_STEP.min(k - chunk * K_STEP));
        // Either way `block` ends up `[line][pair]` or its transpose, `produced`.
        let produced = if count == 0 {
            block = [_mm512_setzero_si512(); TILE];
            layout
        } else if view.contiguous_rows() {
            for (line, row) in block.iter_mut().enumerate() {
                *row = if line < count {
                    let run = &src[view.at(first + line, k0)..];
                    // SAFETY: the line's `span` values from k0 are in the slice (the
                    // caller checked the view) and adjacent.
                    unsafe { pairs_along(run.as_ptr(), span) }
                } else {
                    _mm512_setzero_si512()
                };
            }
            Layout::LinePairs
        } else {
            assert_eq!(
                view.row_step(),
                1,
                "a strided view with neither rows nor columns contiguous"
            );
            for (pair, row) in block.iter_mut().enumerate() {
                let at = |p: usize| {
                    let run = &src[view.at(first, k0 + p)..];
                    // SAFETY: the `count` lines at k0 + p are in the slice and adjacent.
                    unsafe { load(run.as_ptr(), count) }
                };
                *row = match 2 * pair {
                    p if p + 1 < span => pairs_across(at(p), at(p + 1)),
                    p if p < span => pairs_across(at(p), _mm512_setzero_ps()),
                    _ => _mm512_setzero_si512(),
                };
            }
            Layout::PairLines
        };
        if produced != layout {
            transpose(&mut block);
        }
        for (row, out) in block.iter().zip(tile.iter_mut()) {
            // SAFETY: a tile row is 64 aligned bytes.
            unsafe { _mm512_store_si512(out.as_mut_ptr() as *mut __m512i, *row) };
        }
    }
}

/// [`super::matmul`] on AMX, for m, n and k above zero.
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
    let chunks = k.div_ceil(K_STEP);
    let (a, b) = rayon::join(
        || pack(lhs, l, m, k, Layout::LinePairs),
        || pack(rhs, r.transposed(), n, k, Layout::PairLines),
    );
    let panel = |packed: &[TileRow], index: usize, chunk: usize| {
        packed[(index * chunks + chunk) * TILE..].as_ptr()
    };
    let out = Destination(dst.as_mut_ptr());
    let out = &out;
    // Tasks are blocks of rows by groups of column blocks. With few rows (a weight's
    // gradient has a layer's width of them) the columns are split too, so that every
    // thread has work; the split changes no result (see the module's comment).
    let (row_tasks, blocks) = (m.div_ceil(ROWS_PER_TASK), n.div_ceil(BLOCK));
    let column_tasks = (4 * rayon::current_num_threads())
        .div_ceil(row_tasks)
        .clamp(1, blocks);
    let blocks_per_task = blocks.div_ceil(column_tasks);
    (0..row_tasks * column_tasks)
        .into_par_iter()
        .for_each(|task| {
            let first = (task / column_tasks) * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(m - first);
            let first_block = (task % column_tasks) * blocks_per_task;
            // SAFETY: the engine runs only where `available` holds.
            let _tiles = unsafe { Tiles::configure() };
            // The task's sums for one block of columns, where they cannot go straight into
            // the destination: 32 floats a row.
            let mut sums = [0f32; ROWS_PER_TASK * BLOCK];
            for q in first_block..(first_block + blocks_per_task).min(blocks) {
                let (j0, cols) = (q * BLOCK, BLOCK.min(n - q * BLOCK));
                // Whole blocks that are overwritten go straight into the destination.
                let direct = |height: usize| {
                    !accumulate && d.contiguous_rows() && height == BLOCK && cols == BLOCK
                };
                // k in blocks: the B tiles of a block stay in L1 while every row of the task
                // passes over them.
                for c0 in (0..chunks).step_by(K_TILES) {
                    let span = K_TILES.min(chunks - c0);
                    let b_panels = [panel(&b, 2 * q, c0), panel(&b, 2 * q + 1, c0)];
                    for i0 in (first..first + rows).step_by(BLOCK) {
                        let s = i0 / TILE;
                        let a_panels = [panel(&a, s, c0), panel(&a, s + 1, c0)];
                        let (c, c_row) = if direct(BLOCK.min(m - i0)) {
                            (out.0.wrapping_add(d.at(i0, j0)), 4 * d.row_step())
                        } else {
                            (sums[(i0 - first) * BLOCK..].as_mut_ptr(), 4 * BLOCK)
                        };
                        // SAFETY: tiles configured; the panels hold `span` tiles from c0; C
                        // is either this task's rows of the destination (in bounds, checked
                        // by the caller) or its 32 rows of `sums`.
                        unsafe { kernel(span, a_panels, b_panels, c, c_row, c0 == 0) };
                    }
                }
                for i0 in (first..first + rows).step_by(BLOCK) {
                    let height = BLOCK.min(m - i0);
                    if direct(height) {
                        continue;
                    }
                    for ii in 0..height {
                        let row = &sums[(i0 - first + ii) * BLOCK..][..cols];
                        for (jj, &sum) in row.iter().enumerate() {
                            // SAFETY: in bounds and this task's alone, as above.
                            unsafe {
                                let c = out.0.add(d.at(i0 + ii, j0 + jj));
                                *c = if accumulate { *c + sum } else { sum };
                            }
                        }
                    }
                }
            }
        });
}
