//! The SVD of a low-rank product `L · R` (`[rows, k] · [k, cols]`, k small), in f64, for
//! FlexLoRA's redistribution: QR of both factors, then a one-sided Jacobi SVD of the
//! `[k, k]` core. The dense `[rows, cols]` matrix is never formed.

/// `M = U diag(sigma) Vᵀ`, with `sigma` descending; `u` is `[rows, k]`, `v` `[cols, k]`.
#[derive(Debug, Clone)]
pub struct Svd {
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub u: Vec<f64>,
    pub sigma: Vec<f64>,
    pub v: Vec<f64>,
}

/// Thin QR of `[n, k]` by modified Gram–Schmidt, twice (reorthogonalised): `q` `[n, k]`
/// with orthonormal columns (zero for a column dependent on the earlier ones), `r` `[k, k]`
/// upper triangular.
fn thin_qr(m: &[f64], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut q = m.to_vec();
    let mut r = vec![0.0; k * k];
    let scale = m
        .iter()
        .fold(0.0f64, |s, v| s.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    for j in 0..k {
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..n).map(|t| q[t * k + i] * q[t * k + j]).sum();
                r[i * k + j] += dot;
                for t in 0..n {
                    q[t * k + j] -= dot * q[t * k + i];
                }
            }
        }
        let norm = (0..n).map(|t| q[t * k + j].powi(2)).sum::<f64>().sqrt();
        if norm > 1e-13 * scale {
            r[j * k + j] = norm;
            (0..n).for_each(|t| q[t * k + j] /= norm);
        } else {
            (0..n).for_each(|t| q[t * k + j] = 0.0);
        }
    }
    (q, r)
}

/// One-sided Jacobi SVD of a square `[k, k]` matrix: `(u, sigma, v)`, sigma descending.
fn jacobi_svd(m: &[f64], k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut w = m.to_vec(); // columns rotated until orthogonal: W = M V
    let mut v: Vec<f64> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
        .collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for t in 0..k {
                    let (x, y) = (w[t * k + p], w[t * k + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut w, &mut v] {
                    for row in 0..k {
                        let (x, y) = (mat[row * k + p], mat[row * k + q]);
                        mat[row * k + p] = c * x - s * y;
                        mat[row * k + q] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..k)
        .map(|j| (0..k).map(|t| w[t * k + j].powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
    let mut u = vec![0.0; k * k];
    let mut vs = vec![0.0; k * k];
    let mut sigma = vec![0.0; k];
    for (new, &old) in order.iter().enumerate() {
        sigma[new] = norms[old];
        for t in 0..k {
            u[t * k + new] = if norms[old] > 0.0 {
                w[t * k + old] / norms[old]
            } else {
                0.0
            };
            vs[t * k + new] = v[t * k + old];
        }
    }
    (u, sigma, vs)
}

/// `[a_rows, k] · [k, b_cols]`.
fn matmul(a: &[f64], b: &[f64], a_rows: usize, k: usize, b_cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; a_rows * b_cols];
    for i in 0..a_rows {
        for t in 0..k {
            let x = a[i * k + t];
            if x != 0.0 {
                for j in 0..b_cols {
                    out[i * b_cols + j] += x * b[t * b_cols + j];
                }
            }
        }
    }
    out
}

/// The SVD of `l · r`, `l` `[rows, k]` and `r` `[k, cols]`.
pub fn low_rank_svd(l: &[f64], r: &[f64], rows: usize, k: usize, cols: usize) -> Svd {
    let (q_l, r_l) = thin_qr(l, rows, k);
    // rᵀ: [cols, k]
    let r_t: Vec<f64> = (0..cols * k).map(|i| r[(i % k) * cols + i / k]).collect();
    let (q_r, r_r) = thin_qr(&r_t, cols, k);
    // core = R_l · R_rᵀ: l · r = Q_l R_l (Q_r R_r)ᵀ = Q_l (R_l R_rᵀ) Q_rᵀ
    let r_r_t: Vec<f64> = (0..k * k).map(|i| r_r[(i % k) * k + i / k]).collect();
    let core = matmul(&r_l, &r_r_t, k, k, k);
    let (u_c, sigma, v_c) = jacobi_svd(&core, k);
    Svd {
        rows,
        cols,
        k,
        u: matmul(&q_l, &u_c, rows, k, k),
        sigma,
        v: matmul(&q_r, &v_c, cols, k, k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rng::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
    }

    #[test]
    fn reconstructs_the_product_with_orthonormal_factors() {
        let (rows, k, cols) = (9, 4, 7);
        let (l, r) = (random(rows * k, 1), random(k * cols, 2));
        let svd = low_rank_svd(&l, &r, rows, k, cols);
        let dense = matmul(&l, &r, rows, k, cols);
        for i in 0..rows {
            for j in 0..cols {
                let back: f64 = (0..k)
                    .map(|t| svd.u[i * k + t] * svd.sigma[t] * svd.v[j * k + t])
                    .sum();
                assert!((back - dense[i * cols + j]).abs() < 1e-12);
            }
        }
        for (x, y) in [(0, 1), (1, 3), (2, 2)] {
            let dot: f64 = (0..cols).map(|j| svd.v[j * k + x] * svd.v[j * k + y]).sum();
            assert!((dot - if x == y { 1.0 } else { 0.0 }).abs() < 1e-12);
        }
        assert!(svd.sigma.windows(2).all(|w| w[0] >= w[1]));
    }
}
