//! Host-side tensors: the form in which checkpoints are read, permuted, sliced, scattered
//! and written. Model math runs in burn; index bookkeeping is plain, exact Rust on these.

/// Channel salience metric (paper eq. 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    L1,
    L2,
}

impl std::str::FromStr for Norm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "l1" => Ok(Norm::L1),
            "l2" => Ok(Norm::L2),
            _ => Err(format!("unknown norm `{s}` (expected l1 or l2)")),
        }
    }
}

impl Norm {
    #[cfg(test)]
    fn of(self, values: impl Iterator<Item = f32>) -> f64 {
        match self {
            Norm::L1 => values.map(|v| (v as f64).abs()).sum(),
            Norm::L2 => values.map(|v| (v as f64) * (v as f64)).sum::<f64>().sqrt(),
        }
    }
}

/// Index of the first NaN or infinity. Scans in branch-free chunks (which vectorize) and
/// searches element by element only in a chunk that has one.
pub fn first_non_finite(data: &[f32]) -> Option<usize> {
    const CHUNK: usize = 4096;
    data.chunks(CHUNK).enumerate().find_map(|(k, chunk)| {
        let all_finite = chunk.iter().fold(true, |ok, v| ok & v.is_finite());
        (!all_finite).then(|| {
            k * CHUNK
                + chunk
                    .iter()
                    .position(|v| !v.is_finite())
                    .expect("chunk has one")
        })
    })
}

/// A dense row-major f32 tensor. Linear weights keep PyTorch's `[out, in]` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match data"
        );
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A matrix's transpose: PyTorch's Linear stores `[out, in]`, burn's `[in, out]`.
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.numel()];
        for (i, row) in self.data.chunks_exact(cols).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                data[j * rows + i] = v;
            }
        }
        HostTensor::new(vec![cols, rows], data)
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    // Test-only below: the direct forms, the reference the fast index and norm code is
    // tested against.

    /// Length of one slice along the first axis (1 for a vector).
    #[cfg(test)]
    fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Selects entries along the first axis: rows of a matrix, elements of a vector.
    #[cfg(test)]
    pub fn select_rows(&self, index: &[usize]) -> HostTensor {
        let row = self.row_len();
        let mut data = Vec::with_capacity(index.len() * row);
        for &i in index {
            data.extend_from_slice(&self.data[i * row..(i + 1) * row]);
        }
        let mut shape = self.shape.clone();
        shape[0] = index.len();
        HostTensor { shape, data }
    }

    /// Selects columns of a matrix.
    #[cfg(test)]
    pub fn select_cols(&self, index: &[usize]) -> HostTensor {
        assert_eq!(self.shape.len(), 2, "select_cols needs a matrix");
        let cols = self.shape[1];
        let mut data = Vec::with_capacity(self.shape[0] * index.len());
        for row in self.data.chunks_exact(cols) {
            data.extend(index.iter().map(|&j| row[j]));
        }
        HostTensor {
            shape: vec![self.shape[0], index.len()],
            data,
        }
    }

    /// Norm of every slice along the first axis (each row of a matrix).
    #[cfg(test)]
    pub fn row_norms(&self, norm: Norm) -> Vec<f64> {
        self.data
            .chunks_exact(self.row_len().max(1))
            .map(|row| norm.of(row.iter().copied()))
            .collect()
    }

    /// Norm of every column of a matrix.
    #[cfg(test)]
    pub fn col_norms(&self, norm: Norm) -> Vec<f64> {
        assert_eq!(self.shape.len(), 2, "col_norms needs a matrix");
        let (rows, cols) = (self.shape[0], self.shape[1]);
        (0..cols)
            .map(|j| norm.of((0..rows).map(|i| self.data[i * cols + j])))
            .collect()
    }

    /// Largest absolute element-wise difference; shapes must agree.
    pub fn max_abs_diff(&self, other: &HostTensor) -> f32 {
        assert_eq!(self.shape, other.shape, "shapes differ");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// Bit-level equality (distinguishes -0.0 from 0.0 and compares NaNs by payload).
    pub fn bit_eq(&self, other: &HostTensor) -> bool {
        self.shape == other.shape
            && self
                .data
                .iter()
                .zip(&other.data)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_and_norms() {
        let t = HostTensor::new(vec![2, 3], vec![1., -2., 3., -4., 5., -6.]);
        assert_eq!(t.select_rows(&[1]).data, vec![-4., 5., -6.]);
        assert_eq!(t.select_cols(&[2, 0]).data, vec![3., 1., -6., -4.]);
        assert_eq!(t.row_norms(Norm::L1), vec![6., 15.]);
        assert_eq!(t.col_norms(Norm::L1), vec![5., 7., 9.]);
        assert!((t.col_norms(Norm::L2)[0] - 17f64.sqrt()).abs() < 1e-12);
        let v = HostTensor::new(vec![3], vec![7., 8., 9.]);
        assert_eq!(v.select_rows(&[2, 2, 0]).data, vec![9., 9., 7.]);
    }
}
