//! Where a client's sub-tensor lies in its global tensor, row by row.

use crate::core::elastic::index::TensorIndex;

/// A sub-tensor laid onto its global tensor, seen as rows (everything after the first
/// dimension): the global rows it holds and, in each, the element offsets it holds.
pub(super) struct RowPlacement<'a> {
    /// Global row of each sub-tensor row (`None`: row i is global row i, all rows).
    rows: Option<&'a [usize]>,
    /// Offsets within a global row, in the sub-tensor's order (`None`: the whole row).
    pub offsets: Option<Vec<usize>>,
    /// Elements of a global row.
    pub row_len: usize,
    /// Elements of a sub-tensor row.
    pub sub_row_len: usize,
    /// Rows of the sub-tensor.
    pub row_count: usize,
}

impl<'a> RowPlacement<'a> {
    pub fn new(index: &'a TensorIndex, shape: &[usize]) -> Self {
        let global_rows = shape.first().copied().unwrap_or(1);
        let row_len = shape.iter().skip(1).product::<usize>();
        let offsets = index.row_offsets(shape);
        let rows = index.rows();
        Self {
            rows,
            sub_row_len: offsets.as_ref().map_or(row_len, Vec::len),
            offsets,
            row_len,
            row_count: rows.map_or(global_rows, <[usize]>::len),
        }
    }

    /// The global row of sub-tensor row `i`.
    pub fn global_row(&self, i: usize) -> usize {
        self.rows.map_or(i, |rows| rows[i])
    }

    /// Calls `f(global_row, values)` for every row held, with the sub-tensor's values of it.
    pub fn for_each_row<'s>(&self, sub: &'s [f32], mut f: impl FnMut(usize, &'s [f32])) {
        for i in 0..self.row_count {
            f(
                self.global_row(i),
                &sub[i * self.sub_row_len..(i + 1) * self.sub_row_len],
            );
        }
    }

    /// For every global row, the sub-tensor row that holds it (`u32::MAX`: none); and for
    /// every element of a global row, its offset in a sub-tensor row (`None`: the same).
    pub fn inverse(&self, global_rows: usize) -> (Vec<u32>, Option<Vec<u32>>) {
        let mut row_of = vec![u32::MAX; global_rows];
        for i in 0..self.row_count {
            row_of[self.global_row(i)] = i as u32;
        }
        let col_of = self.offsets.as_ref().map(|offsets| {
            let mut col_of = vec![u32::MAX; self.row_len];
            for (j, &c) in offsets.iter().enumerate() {
                col_of[c] = j as u32;
            }
            col_of
        });
        (row_of, col_of)
    }
}
