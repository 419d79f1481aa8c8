//! FlexLoRA's arithmetic: the weighted mean of the clients' full updates ΔW_c = s_c B_c A_c,
//! exactly, split back into factors by a truncated SVD. A client of rank r then starts
//! from the best rank-r approximation of the mean (Eckart–Young): what lies beyond rank r
//! is lost.
//!
//! It works on scaled factors (√s A and √s B, with PEFT's s = alpha / r), so clients with
//! different ranks and the same alpha combine what they add to the weights. The result is
//! stored at the largest rank with its components in descending order of singular value,
//! so a client of rank r takes its first r components: [`LoraAdapter::truncated`].

use std::collections::BTreeMap;

use super::block::Block;
use super::svd::{low_rank_svd, Svd};
use crate::core::error::{Error, Result};
use crate::core::tensor::HostTensor;
use crate::models::families::llama::lora::{LoraAdapter, LoraConfig, LoraPair};

/// One client's adapter in a round.
#[derive(Debug, Clone, Copy)]
pub struct ClientAdapter<'a> {
    pub adapter: &'a LoraAdapter,
    /// Where its projections sit in the global ones, by global module name: a client on
    /// a RaFFM base sub-model (see [`super::block`]). `None`: it adapts the global
    /// base itself.
    pub blocks: Option<&'a BTreeMap<String, Block>>,
    pub weight: f64,
}

impl<'a> ClientAdapter<'a> {
    /// A client on the global base.
    pub fn whole(adapter: &'a LoraAdapter, weight: f64) -> Self {
        Self {
            adapter,
            blocks: None,
            weight,
        }
    }
}

/// One client's factors of one global projection in f64, scaled by √s: `a` `[r, cols]`,
/// `b` `[rows, r]`, with the global column of each of A's columns and the global row of
/// each of B's rows.
struct Part {
    r: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    rows: Vec<usize>,
    cols: Vec<usize>,
    weight: f64,
}

impl Part {
    fn new(pair: &LoraPair, config: &LoraConfig, block: Option<&Block>, weight: f64) -> Self {
        let root = config.scaling().sqrt();
        let all = |n: usize| (0..n).collect();
        Part {
            r: config.r,
            a: pair.a.data.iter().map(|&v| v as f64 * root).collect(),
            b: pair.b.data.iter().map(|&v| v as f64 * root).collect(),
            rows: block
                .and_then(|b| b.rows.clone())
                .unwrap_or_else(|| all(pair.b.shape[0])),
            cols: block
                .and_then(|b| b.cols.clone())
                .unwrap_or_else(|| all(pair.a.shape[1])),
            weight,
        }
    }

    /// Where each global index of a dimension of size `n` sits in `held` (`None`: not held).
    fn positions(held: &[usize], n: usize) -> Vec<Option<usize>> {
        let mut at = vec![None; n];
        for (p, &g) in held.iter().enumerate() {
            at[g] = Some(p);
        }
        at
    }
}

/// Checks the clients can be combined: one set of target modules, weights that make a
/// mean, and every placed adapter's factors matching its blocks inside the global shapes.
fn check_round(clients: &[ClientAdapter], shapes: &BTreeMap<String, [usize; 2]>) -> Result<()> {
    let first = clients
        .first()
        .ok_or_else(|| Error::Invalid("no adapters to aggregate".into()))?;
    let targets = &first.adapter.config.target_modules;
    if let Some(other) = clients
        .iter()
        .find(|c| &c.adapter.config.target_modules != targets)
    {
        return Err(Error::Invalid(format!(
            "adapters for different target modules in one round ({targets:?} and {:?})",
            other.adapter.config.target_modules
        )));
    }
    let total: f64 = clients.iter().map(|c| c.weight).sum();
    if total.is_nan()
        || total <= 0.0
        || clients
            .iter()
            .any(|c| !(c.weight.is_finite() && c.weight >= 0.0))
    {
        return Err(Error::Invalid(
            "adapter weights must be non-negative and sum to a positive number".into(),
        ));
    }
    for (n, c) in clients.iter().enumerate() {
        let placed: BTreeMap<&str, (&str, Option<&Block>)> = match c.blocks {
            None => c
                .adapter
                .modules
                .keys()
                .map(|m| (m.as_str(), (m.as_str(), None)))
                .collect(),
            Some(blocks) => blocks
                .iter()
                .map(|(g, b)| (b.module.as_str(), (g.as_str(), Some(b))))
                .collect(),
        };
        if c.blocks.is_none() && c.adapter.modules.keys().ne(shapes.keys()) {
            return Err(Error::Invalid(format!(
                "adapter {n} adapts other modules than the global adapter (different target modules in one round?)"
            )));
        }
        for (module, pair) in &c.adapter.modules {
            let Some(&(global, block)) = placed.get(module.as_str()) else {
                return Err(Error::Invalid(format!(
                    "adapter {n}: its placement does not place `{module}`"
                )));
            };
            let Some(&[out, inp]) = shapes.get(global) else {
                return Err(Error::Invalid(format!(
                    "adapter {n}: `{module}` is placed at `{global}`, which the global adapter does not adapt"
                )));
            };
            let len = |held: Option<&Vec<usize>>, n: usize| held.map_or(n, Vec::len);
            let (rows, cols) = (
                len(block.and_then(|b| b.rows.as_ref()), out),
                len(block.and_then(|b| b.cols.as_ref()), inp),
            );
            let r = c.adapter.config.r;
            if pair.a.shape != [r, cols] || pair.b.shape != [rows, r] {
                return Err(Error::Invalid(format!(
                    "adapter {n}: `{module}` has factors {:?} and {:?}, its placement implies [{r}, {cols}] and [{rows}, {r}]",
                    pair.a.shape, pair.b.shape
                )));
            }
            let in_range = |held: Option<&Vec<usize>>, n: usize| {
                held.is_none_or(|h| {
                    let mut seen = vec![false; n];
                    h.iter()
                        .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
                })
            };
            if let Some(b) = block {
                if !in_range(b.rows.as_ref(), out) || !in_range(b.cols.as_ref(), inp) {
                    return Err(Error::Invalid(format!(
                        "adapter {n}: the placement of `{module}` repeats an index or points outside [{out}, {inp}]"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Combines adapters of any ranks, each on the global base or on a base sub-model, into
/// one global adapter (see the module docs). Its rank is the largest of the clients' and
/// `previous`'s. `previous` is the round's starting global adapter: it gives the global
/// shapes, which clients on sub-models do not have, and the value of every element no
/// client holds (nothing is lost). It is needed only when some client is placed.
pub fn flexlora(clients: &[ClientAdapter], previous: Option<&LoraAdapter>) -> Result<LoraAdapter> {
    let widest = clients
        .iter()
        .map(|c| c.adapter)
        .chain(previous)
        .max_by_key(|a| a.config.r)
        .ok_or_else(|| Error::Invalid("no adapters to aggregate".into()))?;
    let reference = match (previous, clients.iter().any(|c| c.blocks.is_some())) {
        (Some(p), _) => p,
        (None, false) => widest,
        (None, true) => {
            return Err(Error::Invalid(
                "adapters on base sub-models need the round's global adapter: it gives the global shapes and the values no client trained".into(),
            ))
        }
    };
    let shapes: BTreeMap<String, [usize; 2]> = reference
        .modules
        .iter()
        .map(|(m, p)| (m.clone(), [p.b.shape[0], p.a.shape[1]]))
        .collect();
    check_round(clients, &shapes)?;
    if let Some(p) = previous {
        if p.config.target_modules != clients[0].adapter.config.target_modules {
            return Err(Error::Invalid(format!(
                "the global adapter targets {:?}, the clients' {:?}",
                p.config.target_modules, clients[0].adapter.config.target_modules
            )));
        }
    }
    let rank = widest.config.r;
    let mut config = reference.config.clone();
    config.r = rank;
    let root = config.scaling().sqrt();
    let mut modules = BTreeMap::new();
    for (module, &[out, inp]) in &shapes {
        let parts: Vec<Part> = clients
            .iter()
            .filter_map(|c| {
                let (name, block) = match c.blocks {
                    None => (module.as_str(), None),
                    Some(blocks) => {
                        let b = blocks.get(module)?;
                        (b.module.as_str(), Some(b))
                    }
                };
                let pair = &c.adapter.modules[name];
                Some(Part::new(pair, &c.adapter.config, block, c.weight))
            })
            .collect();
        let fallback = previous.map(|p| Part::new(&p.modules[module], &p.config, None, 1.0));
        let (a, b) = mean_update_svd(&parts, fallback.as_ref(), out, inp).split(rank);
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

/// The SVD of the element-wise weighted mean of the placed updates `B_c A_c` (scaled
/// factors) over the clients that hold each element, the fallback's update where nobody
/// does, computed on stacked factors without forming the dense matrix.
///
/// The rows fall into groups by the set of clients holding them, and so do the columns;
/// in the block of row group g and column group h the mean divides by one number,
/// `D(g, h) = Σ_{c holds both} w_c`. So client c's share of the rows of group g is
/// `B_c[g rows] · (A_c diag(w_c / D(g, h(i))))`: one term of rank r_c per client and row
/// group. With every client on the whole base there is one group and this is
/// `Σ_c (w_c / Σw) B_c A_c`.
fn mean_update_svd(parts: &[Part], fallback: Option<&Part>, out: usize, inp: usize) -> Svd {
    let row_at: Vec<Vec<Option<usize>>> = parts
        .iter()
        .map(|p| Part::positions(&p.rows, out))
        .collect();
    let col_at: Vec<Vec<Option<usize>>> = parts
        .iter()
        .map(|p| Part::positions(&p.cols, inp))
        .collect();
    let holders = |at: &[Vec<Option<usize>>], x: usize| -> Vec<bool> {
        at.iter().map(|p| p[x].is_some()).collect()
    };
    let mut row_groups: BTreeMap<Vec<bool>, Vec<usize>> = BTreeMap::new();
    for o in 0..out {
        row_groups.entry(holders(&row_at, o)).or_default().push(o);
    }
    let col_holders: Vec<Vec<bool>> = (0..inp).map(|i| holders(&col_at, i)).collect();
    // (B term [out, r] with only the group's rows, A term [r, inp]), stacked afterwards.
    let mut terms: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    for (row_holders, rows) in &row_groups {
        let denominators: Vec<f64> = col_holders
            .iter()
            .map(|col| {
                parts
                    .iter()
                    .zip(row_holders.iter().zip(col))
                    .filter(|(_, (&r, &c))| r && c)
                    .map(|(p, _)| p.weight)
                    .sum()
            })
            .collect();
        for (c, p) in parts.iter().enumerate().filter(|(c, _)| row_holders[*c]) {
            let mut b = vec![0.0; out * p.r];
            for &o in rows {
                let j = row_at[c][o].expect("the group's rows are held");
                b[o * p.r..(o + 1) * p.r].copy_from_slice(&p.b[j * p.r..(j + 1) * p.r]);
            }
            let mut a = vec![0.0; p.r * inp];
            let n_cols = p.cols.len();
            for i in 0..inp {
                let (Some(j), d) = (col_at[c][i], denominators[i]) else {
                    continue;
                };
                if d > 0.0 {
                    for k in 0..p.r {
                        a[k * inp + i] = p.a[k * n_cols + j] * p.weight / d;
                    }
                }
            }
            terms.push((p.r, b, a));
        }
        if let Some(f) = fallback.filter(|_| denominators.contains(&0.0)) {
            let mut b = vec![0.0; out * f.r];
            for &o in rows {
                b[o * f.r..(o + 1) * f.r].copy_from_slice(&f.b[o * f.r..(o + 1) * f.r]);
            }
            let mut a = vec![0.0; f.r * inp];
            for (i, _) in denominators.iter().enumerate().filter(|(_, d)| **d == 0.0) {
                for k in 0..f.r {
                    a[k * inp + i] = f.a[k * inp + i];
                }
            }
            terms.push((f.r, b, a));
        }
    }
    let stacked: usize = terms.iter().map(|(r, _, _)| r).sum();
    let mut b_cat = vec![0.0; out * stacked];
    let mut a_cat = Vec::with_capacity(stacked * inp);
    let mut col = 0;
    for (r, b, a) in terms {
        for o in 0..out {
            b_cat[o * stacked + col..o * stacked + col + r].copy_from_slice(&b[o * r..(o + 1) * r]);
        }
        a_cat.extend_from_slice(&a);
        col += r;
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
    use crate::core::rng::SplitMix64;

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

    /// Aggregates clients that all adapt the global base.
    fn whole(clients: &[(&LoraAdapter, f64)]) -> Result<LoraAdapter> {
        let clients: Vec<ClientAdapter> = clients
            .iter()
            .map(|&(a, w)| ClientAdapter::whole(a, w))
            .collect();
        flexlora(&clients, None)
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
    fn identical_updates_come_back_unchanged() {
        let a = adapter(4, 1);
        let same = [(&a, 1.0), (&a, 2.0), (&a, 5.0)];
        let flex = whole(&same).unwrap();
        assert!(max_diff(&update(&flex), &update(&a)) < 1e-5);
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
        let parts: Vec<Part> = clients
            .iter()
            .zip(weights)
            .map(|(c, w)| Part::new(&c.modules[MODULE], &c.config, None, w))
            .collect();
        let svd = mean_update_svd(&parts, None, OUT, IN);
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
        let global = whole(&clients.iter().zip(weights).collect::<Vec<_>>()).unwrap();
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

    /// An adapter of rank `r` on a sub-model holding `rows` x `cols` of the module.
    fn placed(
        r: usize,
        rows: &[usize],
        cols: &[usize],
        seed: u64,
    ) -> (LoraAdapter, BTreeMap<String, Block>) {
        let mut rng = SplitMix64::new(seed);
        let mut draw = |n: usize| {
            (0..n)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect()
        };
        let config = LoraConfig::new(r, 16.0, 0.0, &["q_proj".to_string()]).unwrap();
        let pair = LoraPair {
            a: HostTensor::new(vec![r, cols.len()], draw(r * cols.len())),
            b: HostTensor::new(vec![rows.len(), r], draw(rows.len() * r)),
        };
        let sub = "model.layers.0.self_attn.q_proj".to_string();
        let block = Block {
            module: sub.clone(),
            rows: Some(rows.to_vec()),
            cols: Some(cols.to_vec()),
        };
        let adapter = LoraAdapter {
            config,
            modules: [(sub, pair)].into(),
        };
        (adapter, [(MODULE.to_string(), block)].into())
    }

    /// The element-wise weighted mean of the placed updates over the clients holding each
    /// element, `previous`'s update where none does: the definition, computed densely.
    fn dense_mean(clients: &[ClientAdapter], previous: &LoraAdapter) -> Vec<f64> {
        let (mut sum, mut weight) = (vec![0.0; OUT * IN], vec![0.0; OUT * IN]);
        for c in clients {
            let (name, rows, cols) = match c.blocks {
                None => (MODULE.to_string(), (0..OUT).collect(), (0..IN).collect()),
                Some(b) => {
                    let b = &b[MODULE];
                    (
                        b.module.clone(),
                        b.rows.clone().unwrap(),
                        b.cols.clone().unwrap(),
                    )
                }
            };
            let (p, r, s) = (
                &c.adapter.modules[&name],
                c.adapter.config.r,
                c.adapter.config.scaling(),
            );
            let rows: Vec<usize> = rows;
            let cols: Vec<usize> = cols;
            for (jo, &o) in rows.iter().enumerate() {
                for (ji, &i) in cols.iter().enumerate() {
                    let u: f64 = (0..r)
                        .map(|k| p.b.data[jo * r + k] as f64 * p.a.data[k * cols.len() + ji] as f64)
                        .sum();
                    sum[o * IN + i] += c.weight * s * u;
                    weight[o * IN + i] += c.weight;
                }
            }
        }
        let fallback = update(previous);
        (0..OUT * IN)
            .map(|x| {
                if weight[x] > 0.0 {
                    sum[x] / weight[x]
                } else {
                    fallback[x]
                }
            })
            .collect()
    }

    #[test]
    fn placed_adapters_are_combined_over_the_elements_their_clients_hold() {
        let previous = adapter(4, 20);
        // A sub-model holding the odd rows and even columns, and one holding the first
        // rows and columns: some elements are held by both, some by one, some by neither.
        let (odd, odd_blocks) = placed(2, &[1, 3, 5, 7, 9, 11], &[0, 2, 4, 6, 8], 21);
        let (low, low_blocks) = placed(3, &[0, 1, 2, 3, 4, 5], &[0, 1, 2, 3, 4], 22);
        let clients = [
            ClientAdapter {
                adapter: &odd,
                blocks: Some(&odd_blocks),
                weight: 3.0,
            },
            ClientAdapter {
                adapter: &low,
                blocks: Some(&low_blocks),
                weight: 1.0,
            },
        ];
        assert!(
            flexlora(&clients, None).is_err(),
            "the global shapes are unknown"
        );
        let pp = &previous.modules[MODULE];

        // FlexLoRA: at full rank the stacked SVD is the element-wise mean exactly; the
        // global adapter is its best rank-4 approximation.
        let mean = dense_mean(&clients, &previous);
        let parts: Vec<Part> = clients
            .iter()
            .map(|c| {
                let b = &c.blocks.unwrap()[MODULE];
                Part::new(
                    &c.adapter.modules[&b.module],
                    &c.adapter.config,
                    Some(b),
                    c.weight,
                )
            })
            .collect();
        let fallback = Part::new(pp, &previous.config, None, 1.0);
        let svd = mean_update_svd(&parts, Some(&fallback), OUT, IN);
        let (a, b) = svd.split(svd.k);
        let full: Vec<f64> = (0..OUT * IN)
            .map(|x| {
                (0..svd.k)
                    .map(|k| b[(x / IN) * svd.k + k] * a[k * IN + x % IN])
                    .sum()
            })
            .collect();
        assert!(max_diff(&full, &mean) < 1e-12, "{}", max_diff(&full, &mean));
        let flex = flexlora(&clients, Some(&previous)).unwrap();
        let mtm: Vec<f64> = (0..IN * IN)
            .map(|x| {
                (0..OUT)
                    .map(|o| mean[o * IN + x / IN] * mean[o * IN + x % IN])
                    .sum()
            })
            .collect();
        let sigma2 = symmetric_eigenvalues(mtm, IN);
        let error: f64 = update(&flex)
            .iter()
            .zip(&mean)
            .map(|(x, y)| (x - y).powi(2))
            .sum();
        let eckart_young: f64 = sigma2[4..].iter().sum();
        assert!(
            (error - eckart_young).abs() < 1e-5 * eckart_young,
            "{error} vs {eckart_young}"
        );
    }

    #[test]
    fn placements_that_do_not_fit_are_refused() {
        let previous = adapter(4, 30);
        let (sub, mut blocks) = placed(2, &[0, 1], &[0, 1, 2], 31);
        blocks.get_mut(MODULE).unwrap().cols = Some(vec![0, 1, IN]);
        let c = [ClientAdapter {
            adapter: &sub,
            blocks: Some(&blocks),
            weight: 1.0,
        }];
        let err = flexlora(&c, Some(&previous)).unwrap_err().to_string();
        assert!(err.contains("points outside"), "{err}");
        blocks.get_mut(MODULE).unwrap().cols = Some(vec![0, 1]);
        let c = [ClientAdapter {
            adapter: &sub,
            blocks: Some(&blocks),
            weight: 1.0,
        }];
        let err = flexlora(&c, Some(&previous)).unwrap_err().to_string();
        assert!(err.contains("its placement implies"), "{err}");
    }

    #[test]
    fn adapters_of_different_targets_are_refused() {
        let a = adapter(2, 7);
        let mut other = adapter(2, 8);
        other.config.target_modules = vec!["v_proj".into()];
        let err = whole(&[(&a, 1.0), (&other, 1.0)]).unwrap_err().to_string();
        assert!(err.contains("different target modules"), "{err}");
        assert!(a.truncated(3).is_err());
    }
}
