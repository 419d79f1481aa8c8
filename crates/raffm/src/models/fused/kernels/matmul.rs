//! Matrix products of strided views into slices, through gemm: attention reads each head
//! in place, without head-split copies.

/// A strided matrix inside a slice: element (i, j) is at `offset + i * row + j * col`.
#[derive(Clone, Copy)]
pub(super) struct Strided {
    offset: usize,
    row: usize,
    col: usize,
}

impl Strided {
    pub(super) fn rows(offset: usize, row: usize) -> Self {
        Self {
            offset,
            row,
            col: 1,
        }
    }
    pub(super) fn transposed(self) -> Self {
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
