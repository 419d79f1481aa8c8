//! Exact, order-free slice norms, for salience scores.
//!
//! A score sums many values. Summed in floating point, the result depends on their order,
//! so scores recomputed after a permutation of some other axis would differ in the last
//! bits, and a second prioritization could swap near-ties. Here each |x| (L1) or x² (L2)
//! becomes a fixed-point integer, with one scale per tensor chosen so that no sum can
//! overflow: sums are exact integer sums, the same in any order, and any grouping of them
//! (rows, heads, columns) adds up exactly. Bits below 2^-100 or so of a tensor's largest
//! term are dropped, far below anything that could decide an order.

use crate::core::tensor::{HostTensor, Norm};

/// Per-index sums along every dimension of one tensor.
#[derive(Debug, Clone)]
pub struct SliceSums {
    /// Fixed-point scale: a term `t` is held as `t * 2^shift`.
    shift: i32,
    norm: Norm,
    per_dim: Vec<Vec<i128>>,
}

/// Mantissa and biased exponent of |x|, with the implicit bit; subnormals get exponent 1.
fn split(x: f32) -> (u64, i32) {
    let bits = x.to_bits() & 0x7fff_ffff;
    let exponent = (bits >> 23) as i32;
    let fraction = (bits & 0x7f_ffff) as u64;
    if exponent == 0 {
        (fraction, 1)
    } else {
        (fraction | 1 << 23, exponent)
    }
}

/// `value * 2^amount`, truncated toward zero.
fn scaled(value: u64, amount: i32) -> i128 {
    if amount >= 0 {
        (value as i128) << amount
    } else if amount > -64 {
        (value >> -amount) as i128
    } else {
        0
    }
}

impl SliceSums {
    pub fn new(t: &HostTensor, norm: Norm) -> Self {
        let max_exponent = t
            .data
            .iter()
            .map(|&x| split(x).1)
            .max()
            .unwrap_or(1)
            .min(254); // NaN and infinity are rejected on load; keep the shifts in range
                       // |x| < 2^(e - 126); n terms must stay below 2^126.
        let count_bits = (usize::BITS - t.numel().leading_zeros()) as i32;
        let shift = match norm {
            Norm::L1 => 126 - count_bits - (max_exponent - 126),
            Norm::L2 => 126 - count_bits - 2 * (max_exponent - 126),
        };
        let term = |x: f32| -> i128 {
            let (m, e) = split(x);
            match norm {
                // |x| = m * 2^(e - 150)
                Norm::L1 => scaled(m, e - 150 + shift),
                // x² = m² * 2^(2e - 300)
                Norm::L2 => scaled(m * m, 2 * e - 300 + shift),
            }
        };
        let shape = if t.shape.is_empty() {
            vec![1]
        } else {
            t.shape.clone()
        };
        let mut per_dim: Vec<Vec<i128>> = shape.iter().map(|&n| vec![0; n]).collect();
        let row_len: usize = shape[1..].iter().product();
        for (r, row) in t.data.chunks(row_len.max(1)).enumerate() {
            if shape.len() == 2 {
                let mut row_sum = 0i128;
                for (c, &x) in row.iter().enumerate() {
                    let v = term(x);
                    row_sum += v;
                    per_dim[1][c] += v;
                }
                per_dim[0][r] += row_sum;
                continue;
            }
            // General case: walk the multi-index of the row's elements.
            let mut index = vec![0usize; shape.len()];
            index[0] = r;
            for &x in row {
                let v = term(x);
                for (d, &i) in index.iter().enumerate() {
                    per_dim[d][i] += v;
                }
                for d in (1..shape.len()).rev() {
                    index[d] += 1;
                    if index[d] < shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
        Self {
            shift,
            norm,
            per_dim,
        }
    }

    /// Sums of the slices at each index of dimension `dim`.
    pub fn along(&self, dim: usize) -> &[i128] {
        &self.per_dim[dim]
    }

    /// The sum of every term.
    pub fn total(&self) -> i128 {
        self.per_dim[0].iter().sum()
    }

    /// Slice sums of dimension `dim` grouped by one of its factors: the dimension's index
    /// is read as mixed-radix digits of `sizes` (outer first), and the group is the digit
    /// of factor `factor`, or with `with_parent` the pair of it and the digit before it
    /// (as `parent * sizes[factor] + digit`).
    pub fn grouped(
        &self,
        dim: usize,
        sizes: &[usize],
        factor: usize,
        with_parent: bool,
    ) -> Vec<i128> {
        let stride: usize = sizes[factor + 1..].iter().product();
        let groups = if with_parent {
            sizes[factor - 1] * sizes[factor]
        } else {
            sizes[factor]
        };
        let mut out = vec![0i128; groups];
        for (x, &v) in self.per_dim[dim].iter().enumerate() {
            out[(x / stride) % groups] += v;
        }
        out
    }

    /// The norm of a slice whose terms sum to `sum`.
    pub fn norm(&self, sum: i128) -> f64 {
        let value = sum as f64 * 2f64.powi(-self.shift);
        match self.norm {
            Norm::L1 => value,
            Norm::L2 => value.sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_direct_norms_and_ignore_order() {
        let t = HostTensor::new(vec![2, 3], vec![1.5, -2.0, 0.25, -4.0, 1e-7, 3.0]);
        for norm in [Norm::L1, Norm::L2] {
            let s = SliceSums::new(&t, norm);
            let rows: Vec<f64> = s.along(0).iter().map(|&v| s.norm(v)).collect();
            let cols: Vec<f64> = s.along(1).iter().map(|&v| s.norm(v)).collect();
            for (got, want) in rows.iter().zip(t.row_norms(norm)) {
                assert!(
                    (got - want).abs() < 1e-12 * want.max(1.0),
                    "{norm:?} {got} {want}"
                );
            }
            for (got, want) in cols.iter().zip(t.col_norms(norm)) {
                assert!(
                    (got - want).abs() < 1e-12 * want.max(1.0),
                    "{norm:?} {got} {want}"
                );
            }
        }
        // Reversing the columns reverses the column sums exactly and keeps the row sums.
        let reversed = t.select_cols(&[2, 1, 0]);
        let (a, b) = (
            SliceSums::new(&t, Norm::L1),
            SliceSums::new(&reversed, Norm::L1),
        );
        assert_eq!(a.along(0), b.along(0));
        let mut cols = a.along(1).to_vec();
        cols.reverse();
        assert_eq!(cols, b.along(1));
    }

    #[test]
    fn grouping_by_a_factor_adds_up_the_slices() {
        // 2 heads x 3 channels = 6 rows of 2 columns.
        let t = HostTensor::new(vec![6, 2], (1..=12).map(|v| v as f32).collect());
        let s = SliceSums::new(&t, Norm::L1);
        let heads: Vec<f64> = s
            .grouped(0, &[2, 3], 0, false)
            .iter()
            .map(|&v| s.norm(v))
            .collect();
        assert_eq!(heads, vec![21.0, 57.0]);
        let channels = s.grouped(0, &[2, 3], 1, false);
        assert_eq!(s.norm(channels[0]), 1.0 + 2.0 + 7.0 + 8.0);
        let per_head = s.grouped(0, &[2, 3], 1, true);
        assert_eq!(per_head.len(), 6);
        assert_eq!(s.norm(per_head[4]), 9.0 + 10.0);
        let three_d = HostTensor::new(vec![2, 2, 2], (1..=8).map(|v| v as f32).collect());
        let s = SliceSums::new(&three_d, Norm::L1);
        assert_eq!(
            s.along(2).iter().map(|&v| s.norm(v)).collect::<Vec<_>>(),
            vec![16.0, 20.0]
        );
    }
}
