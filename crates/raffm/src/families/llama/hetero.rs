//! Aggregating LoRA adapters of different ranks (one rank per client tier), two ways:
//!
//! - [`HeteroRule::Padded`] (HetLoRA-style): each factor zero-padded to the largest rank and
//!   averaged element by element over the clients that hold the element: row k of A and
//!   column k of B over the clients whose rank exceeds k. It averages the factors, not the
//!   products: the mean of B_c A_c is not the product of the means.
//! - [`HeteroRule::FlexLora`] (FlexLoRA): the weighted mean of the full updates ΔW_c =
//!   s_c B_c A_c, exactly, split back into factors by a truncated SVD. A client of rank r
//!   then starts from the best rank-r approximation of the mean (Eckart–Young): what lies
//!   beyond rank r is lost.
//!
//! Both work on scaled factors (√s A and √s B, with PEFT's s = alpha / r), so clients with
//! different ranks and the same alpha combine what they add to the weights. The result is
//! stored at the largest rank with its components in descending order of importance (for
//! FlexLoRA the singular values), so a client of rank r takes its first r components:
//! [`LoraAdapter::truncated`].

use std::collections::BTreeMap;

use super::lora::{LoraAdapter, LoraConfig, LoraPair};
use super::svd::{low_rank_svd, Svd};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// How adapters of different ranks are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeteroRule {
    Padded,
    FlexLora,
}

impl std::str::FromStr for HeteroRule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "padded" => Ok(HeteroRule::Padded),
            "flexlora" => Ok(HeteroRule::FlexLora),
            _ => Err(format!("unknown rule `{s}` (expected padded or flexlora)")),
        }
    }
}

/// A factor pair in f64, scaled by √s: `[r, in]` and `[out, r]`.
struct Scaled {
    r: usize,
    a: Vec<f64>,
    b: Vec<f64>,
}

fn scaled(pair: &LoraPair, config: &LoraConfig) -> Scaled {
    let root = config.scaling().sqrt();
    Scaled {
        r: config.r,
        a: pair.a.data.iter().map(|&v| v as f64 * root).collect(),
        b: pair.b.data.iter().map(|&v| v as f64 * root).collect(),
    }
}

/// Checks that the adapters target the same modules of the same model.
fn check_same_targets(adapters: &[(&LoraAdapter, f64)]) -> Result<()> {
    let (first, _) = adapters
        .first()
        .ok_or_else(|| Error::Invalid("no adapters to aggregate".into()))?;
    if let Some((other, _)) = adapters.iter().find(|(a, _)| {
        a.config.target_modules != first.config.target_modules
            || a.modules.keys().ne(first.modules.keys())
    }) {
        return Err(Error::Invalid(format!(
            "adapters for different target modules in one round ({:?} and {:?})",
            first.config.target_modules, other.config.target_modules
        )));
    }
    let total: f64 = adapters.iter().map(|(_, w)| w).sum();
    if total.is_nan() || total <= 0.0 || adapters.iter().any(|(_, w)| !(w.is_finite() && *w >= 0.0))
    {
        return Err(Error::Invalid(
            "adapter weights must be non-negative and sum to a positive number".into(),
        ));
    }
    Ok(())
}

/// Combines adapters of any ranks into one of rank `max(r_c)` (see the module docs). Its
/// config is the largest-rank client's, with that rank.
pub fn aggregate(adapters: &[(&LoraAdapter, f64)], rule: HeteroRule) -> Result<LoraAdapter> {
    check_same_targets(adapters)?;
    let (widest, _) = adapters
        .iter()
        .max_by_key(|(a, _)| a.config.r)
        .expect("checked non-empty");
    let rank = widest.config.r;
    let config = widest.config.clone();
    let root = config.scaling().sqrt();
    let mut modules = BTreeMap::new();
    for module in widest.modules.keys() {
        let parts: Vec<(Scaled, f64)> = adapters
            .iter()
            .map(|(a, w)| (scaled(&a.modules[module], &a.config), *w))
            .collect();
        let (out, inp) = (
            widest.modules[module].b.shape[0],
            widest.modules[module].a.shape[1],
        );
        let (a, b) = match rule {
            HeteroRule::Padded => padded_mean(&parts, rank, out, inp),
            HeteroRule::FlexLora => {
                let svd = mean_update_svd(&parts, out, inp);
                svd.split(rank)
            }
        };
        // Back from scaled factors to the adapter's own: divide by √s of rank `rank`.
        let unscale = |v: Vec<f64>, shape: Vec<usize>| {
            HostTensor::new(shape, v.into_iter().map(|x| (x / root) as f32).collect())
        };
        let pair = LoraPair {
            a: unscale(a, vec![rank, inp]),
            b: unscale(b, vec![out, rank]),
        };
        modules.insert(module.clone(), pair);
    }
    Ok(LoraAdapter { config, modules })
}

/// Row k of A and column k of B: the weighted mean over the clients with rank > k.
fn padded_mean(
    parts: &[(Scaled, f64)],
    rank: usize,
    out: usize,
    inp: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut a, mut b) = (vec![0.0; rank * inp], vec![0.0; out * rank]);
    for k in 0..rank {
        let holders: Vec<&(Scaled, f64)> = parts.iter().filter(|(p, _)| p.r > k).collect();
        let total: f64 = holders.iter().map(|(_, w)| w).sum();
        if total == 0.0 {
            continue;
        }
        for (p, w) in &holders {
            for i in 0..inp {
                a[k * inp + i] += w * p.a[k * inp + i] / total;
            }
            for o in 0..out {
                b[o * rank + k] += w * p.b[o * p.r + k] / total;
            }
        }
    }
    (a, b)
}

/// The SVD of `Σ_c w_c B_c A_c / Σ_c w_c` (scaled factors), computed on the stacked factors
/// without forming the dense matrix.
fn mean_update_svd(parts: &[(Scaled, f64)], out: usize, inp: usize) -> Svd {
    let total: f64 = parts.iter().map(|(_, w)| w).sum();
    let stacked: usize = parts.iter().map(|(p, _)| p.r).sum();
    // B_cat = [w_1 B_1 | w_2 B_2 | ...] / total: [out, stacked]; A_cat = [A_1; A_2; ...].
    let mut b_cat = vec![0.0; out * stacked];
    let mut a_cat = Vec::with_capacity(stacked * inp);
    let mut col = 0;
    for (p, w) in parts {
        for o in 0..out {
            for k in 0..p.r {
                b_cat[o * stacked + col + k] = p.b[o * p.r + k] * w / total;
            }
        }
        a_cat.extend_from_slice(&p.a);
        col += p.r;
    }
    low_rank_svd(&b_cat, &a_cat, out, stacked, inp)
}

impl Svd {
    /// The first `rank` components as factors, FlexLoRA's way: `B = U Σ` (`[out, rank]`)
    /// and `A = Vᵀ` (`[rank, in]`, orthonormal rows, so A keeps a useful scale for training
    /// even where Σ is small). Zero beyond the matrix's rank.
    pub fn split(&self, rank: usize) -> (Vec<f64>, Vec<f64>) {
        let (out, inp) = (self.rows, self.cols);
        let (mut a, mut b) = (vec![0.0; rank * inp], vec![0.0; out * rank]);
        for k in 0..rank.min(self.sigma.len()) {
            for o in 0..out {
                b[o * rank + k] = self.u[o * self.k + k] * self.sigma[k];
            }
            for i in 0..inp {
                a[k * inp + i] = self.v[i * self.k + k];
            }
        }
        (a, b)
    }
}

impl LoraAdapter {
    /// The adapter's first `rank` components, as an adapter of that rank with the same
    /// alpha: the factors rescaled so that its update is the first `rank` components of
    /// this one's (a client of a lower tier starts from the aggregate this way).
    pub fn truncated(&self, rank: usize) -> Result<LoraAdapter> {
        if rank == 0 || rank > self.config.r {
            return Err(Error::Invalid(format!(
                "cannot take rank {rank} from an adapter of rank {}",
                self.config.r
            )));
        }
        let mut config = self.config.clone();
        config.r = rank;
        // s B A keeps its value: each factor times sqrt(s_from / s_to).
        let factor = (self.config.scaling() / config.scaling()).sqrt() as f32;
        let modules = self
            .modules
            .iter()
            .map(|(m, p)| {
                let (out, inp, r) = (p.b.shape[0], p.a.shape[1], self.config.r);
                let a = p.a.data[..rank * inp].iter().map(|v| v * factor).collect();
                let b = (0..out)
                    .flat_map(|o| p.b.data[o * r..o * r + rank].iter().map(|v| v * factor))
                    .collect();
                let pair = LoraPair {
                    a: HostTensor::new(vec![rank, inp], a),
                    b: HostTensor::new(vec![out, rank], b),
                };
                (m.clone(), pair)
            })
            .collect();
        Ok(LoraAdapter { config, modules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    const OUT: usize = 12;
    const IN: usize = 10;
    const MODULE: &str = "model.layers.0.self_attn.q_proj";

    fn adapter(r: usize, seed: u64) -> LoraAdapter {
        let mut rng = SplitMix64::new(seed);
        let mut draw = |n: usize| {
            (0..n)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect()
        };
        let config = LoraConfig::new(r, 16.0, 0.0, &["q_proj".to_string()]).unwrap();
        let pair = LoraPair {
            a: HostTensor::new(vec![r, IN], draw(r * IN)),
            b: HostTensor::new(vec![OUT, r], draw(OUT * r)),
        };
        LoraAdapter {
            config,
            modules: [(MODULE.to_string(), pair)].into(),
        }
    }

    /// `s B A`, the update an adapter adds: `[OUT, IN]`.
    fn update(a: &LoraAdapter) -> Vec<f64> {
        let (p, r, s) = (&a.modules[MODULE], a.config.r, a.config.scaling());
        (0..OUT * IN)
            .map(|x| {
                let (o, i) = (x / IN, x % IN);
                s * (0..r)
                    .map(|k| p.b.data[o * r + k] as f64 * p.a.data[k * IN + i] as f64)
                    .sum::<f64>()
            })
            .collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Eigenvalues of a symmetric matrix by the classical two-sided Jacobi method, an
    /// algorithm independent of the one the SVD uses.
    fn symmetric_eigenvalues(mut m: Vec<f64>, n: usize) -> Vec<f64> {
        // Rotate away the largest off-diagonal element until none is left.
        for _ in 0..100_000 {
            let (mut p, mut q, mut big) = (0, 1, 0.0);
            for i in 0..n {
                for j in i + 1..n {
                    if m[i * n + j].abs() > big {
                        (p, q, big) = (i, j, m[i * n + j].abs());
                    }
                }
            }
            if big < 1e-13 {
                break;
            }
            let theta = 0.5 * (2.0 * m[p * n + q]).atan2(m[q * n + q] - m[p * n + p]);
            let (c, s) = (theta.cos(), theta.sin());
            for k in 0..n {
                let (x, y) = (m[k * n + p], m[k * n + q]);
                m[k * n + p] = c * x - s * y;
                m[k * n + q] = s * x + c * y;
            }
            for k in 0..n {
                let (x, y) = (m[p * n + k], m[q * n + k]);
                m[p * n + k] = c * x - s * y;
                m[q * n + k] = s * x + c * y;
            }
        }
        let mut e: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
        e.sort_by(|a, b| b.total_cmp(a));
        e
    }

    #[test]
    fn identical_updates_come_back_unchanged_under_both_rules() {
        let a = adapter(4, 1);
        let same = [(&a, 1.0), (&a, 2.0), (&a, 5.0)];
        let padded = aggregate(&same, HeteroRule::Padded).unwrap();
        let pair = &padded.modules[MODULE];
        for (x, y) in pair.a.data.iter().chain(&pair.b.data).zip(
            a.modules[MODULE]
                .a
                .data
                .iter()
                .chain(&a.modules[MODULE].b.data),
        ) {
            assert!((x - y).abs() <= 1e-7 * y.abs(), "{x} vs {y}");
        }
        let flex = aggregate(&same, HeteroRule::FlexLora).unwrap();
        assert!(max_diff(&update(&flex), &update(&a)) < 1e-5);
    }

    #[test]
    fn padded_mean_averages_each_element_over_its_holders() {
        // Ranks 2 and 4: rows 0-1 of A (columns of B) are held by both, rows 2-3 by one.
        let (small, large) = (adapter(2, 2), adapter(4, 3));
        let out = aggregate(&[(&small, 1.0), (&large, 3.0)], HeteroRule::Padded).unwrap();
        assert_eq!(out.config.r, 4);
        let root = |a: &LoraAdapter| a.config.scaling().sqrt();
        let (rs, rl, ro) = (root(&small), root(&large), root(&out));
        let (ps, pl, po) = (
            &small.modules[MODULE],
            &large.modules[MODULE],
            &out.modules[MODULE],
        );
        for k in 0..4 {
            for i in 0..IN {
                let l = pl.a.data[k * IN + i] as f64 * rl;
                let want = if k < 2 {
                    (ps.a.data[k * IN + i] as f64 * rs + 3.0 * l) / 4.0
                } else {
                    l
                };
                assert!(
                    (po.a.data[k * IN + i] as f64 * ro - want).abs() < 1e-6,
                    "A[{k},{i}]"
                );
            }
            for o in 0..OUT {
                let l = pl.b.data[o * 4 + k] as f64 * rl;
                let want = if k < 2 {
                    (ps.b.data[o * 2 + k] as f64 * rs + 3.0 * l) / 4.0
                } else {
                    l
                };
                assert!(
                    (po.b.data[o * 4 + k] as f64 * ro - want).abs() < 1e-6,
                    "B[{o},{k}]"
                );
            }
        }
    }

    #[test]
    fn flexlora_is_the_exact_mean_then_the_best_low_rank_approximation() {
        let clients = [adapter(2, 4), adapter(3, 5), adapter(4, 6)];
        let weights = [1.0, 2.0, 3.0];
        let mut mean = vec![0.0; OUT * IN];
        for (c, w) in clients.iter().zip(weights) {
            for (m, u) in mean.iter_mut().zip(update(c)) {
                *m += w * u / 6.0;
            }
        }
        // At full rank (2 + 3 + 4 = 9) the redistribution reproduces the mean exactly.
        let parts: Vec<(Scaled, f64)> = clients
            .iter()
            .zip(weights)
            .map(|(c, w)| (scaled(&c.modules[MODULE], &c.config), w))
            .collect();
        let svd = mean_update_svd(&parts, OUT, IN);
        let (a, b) = svd.split(9);
        let full: Vec<f64> = (0..OUT * IN)
            .map(|x| {
                (0..9)
                    .map(|k| b[(x / IN) * 9 + k] * a[k * IN + x % IN])
                    .sum()
            })
            .collect();
        assert!(max_diff(&full, &mean) < 1e-12, "{}", max_diff(&full, &mean));

        // At each client's rank: the best rank-r approximation. Its squared error is the sum
        // of the squared singular values beyond r (Eckart-Young), with the singular values
        // from the eigenvalues of MᵀM by an independent method.
        let mtm: Vec<f64> = (0..IN * IN)
            .map(|x| {
                (0..OUT)
                    .map(|o| mean[o * IN + x / IN] * mean[o * IN + x % IN])
                    .sum()
            })
            .collect();
        let sigma2 = symmetric_eigenvalues(mtm, IN);
        for (s, e) in svd.sigma.iter().zip(&sigma2) {
            assert!((s * s - e).abs() < 1e-9 * sigma2[0], "{} vs {e}", s * s);
        }
        let global = aggregate(
            &clients.iter().zip(weights).collect::<Vec<_>>(),
            HeteroRule::FlexLora,
        )
        .unwrap();
        assert_eq!(global.config.r, 4);
        for r in [2, 3, 4] {
            let client = global.truncated(r).unwrap();
            let error: f64 = update(&client)
                .iter()
                .zip(&mean)
                .map(|(x, y)| (x - y).powi(2))
                .sum();
            let eckart_young: f64 = sigma2[r..].iter().sum();
            assert!(
                (error - eckart_young).abs() < 1e-5 * eckart_young,
                "rank {r}: {error} vs {eckart_young}"
            );
        }
    }

    #[test]
    fn adapters_of_different_targets_are_refused() {
        let a = adapter(2, 7);
        let mut other = adapter(2, 8);
        other.config.target_modules = vec!["v_proj".into()];
        let err = aggregate(&[(&a, 1.0), (&other, 1.0)], HeteroRule::FlexLora)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different target modules"), "{err}");
        assert!(a.truncated(3).is_err());
    }
}
