//! Matrix products of strided views into slices, through gemm: attention reads each head
//! in place, without head-split copies.

/// A strided matrix inside a slice: element (i, j) is at `offset + i * row + j * col`.
#[derive(Debug, Clone, Copy)]
pub struct Strided {
    offset: usize,
    row: usize,
    col: usize,
}

impl Strided {
    /// Row-major rows of `row` elements from `offset` (a row stride wider than the
    /// matrix skips the rest of each row).
    pub fn rows(offset: usize, row: usize) -> Self {
        Self {
            offset,
            row,
            col: 1,
        }
    }
    /// The same elements read as the transposed matrix.
    pub fn transposed(self) -> Self {
        Self {
            row: self.col,
            col: self.row,
            ..self
        }
    }
    /// Where element (i, j) is.
    pub(super) fn at(&self, i: usize, j: usize) -> usize {
        self.offset + i * self.row + j * self.col
    }
    /// How far apart a column's consecutive elements are.
    pub(super) fn row_step(&self) -> usize {
        self.row
    }
    /// Whether a row's elements are adjacent.
    pub(super) fn contiguous_rows(&self) -> bool {
        self.col == 1
    }
    /// Whether the `[rows, cols]` elements of the view are distinct elements of the slice
    /// (row-major or column-major layouts, with any padding).
    pub(super) fn disjoint(&self, rows: usize, cols: usize) -> bool {
        rows <= 1 && (cols <= 1 || self.col >= 1)
            || cols <= 1 && self.row >= 1
            || self.col >= 1 && self.row >= self.col * cols
            || self.row >= 1 && self.col >= self.row * rows
    }
    pub(super) fn check(&self, len: usize, rows: usize, cols: usize) {
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
pub(super) fn matmul(
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
pub(super) fn matmul_on(
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

/// `dst = lhs · rhs` in fp32 on rayon's threads: the product [`super::bf16::matmul`] is
/// measured against.
pub fn matmul_fp32(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    d: Strided,
    lhs: &[f32],
    l: Strided,
    rhs: &[f32],
    r: Strided,
) {
    matmul_on(
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
        dims,
        dst,
        d,
        lhs,
        l,
        rhs,
        r,
        false,
    );
}
