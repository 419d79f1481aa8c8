//! Heterogeneous FedAvg (paper eq. 7): every element of the global model becomes the
//! weighted mean of the values that the participating clients hold for it, placed by each
//! client's index map; elements that no client holds keep their value, bit for bit.
//!
//! With a server learning rate `eta` the new value is `old + eta * (mean - old)`; `eta = 1`
//! is plain FedAvg and assigns the mean itself. Sums are kept in f64, so identical
//! updates average back to exactly themselves.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::extract::{IndexMap, TensorIndex};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::tensor::HostTensor;

/// How clients are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// By the number of examples each client trained on (FedAvg).
    Examples,
    Uniform,
}

impl std::str::FromStr for Weighting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "examples" => Ok(Weighting::Examples),
            "uniform" => Ok(Weighting::Uniform),
            _ => Err(format!(
                "unknown weighting `{s}` (expected examples or uniform)"
            )),
        }
    }
}

/// A trained client model with what is needed to place it.
#[derive(Debug, Clone)]
pub struct ClientUpdate {
    pub client: String,
    pub checkpoint: Checkpoint,
    pub index_map: IndexMap,
    /// sha256 of the global weights the sub-model was extracted from.
    pub global_sha256: Option<String>,
    pub num_examples: u64,
}

impl ClientUpdate {
    /// Reads a client's trained folder (checkpoint + local-train manifest). An update
    /// without an index map is a full model (every index).
    pub fn load(dir: &Path) -> Result<Self> {
        // Not re-hashed: the producing stage's manifest records the hashes of its outputs.
        let mut checkpoint = Checkpoint::load_with(dir, false)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::load(&manifest_path)?;
        checkpoint.files = manifest
            .outputs
            .iter()
            .filter(|f| !f.path.ends_with(MANIFEST_FILE))
            .cloned()
            .collect();
        let detail = |k: &str| manifest.details.get(k);
        let client = detail("client")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let index_map = match detail("index_map") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::format(&manifest_path, format!("invalid index_map: {e}")))?,
            None => checkpoint
                .tensors
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        TensorIndex {
                            rows: None,
                            cols: None,
                        },
                    )
                })
                .collect(),
        };
        Ok(Self {
            client,
            global_sha256: detail("global_sha256")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            num_examples: detail("num_examples").and_then(|v| v.as_u64()).unwrap_or(0),
            checkpoint,
            index_map,
        })
    }

    /// Why this update cannot be aggregated into `global`, if it cannot.
    pub fn check(&self, global: &Checkpoint) -> std::result::Result<(), String> {
        let expected = global.weights_sha256();
        match (&self.global_sha256, expected) {
            (Some(got), Some(want)) if got != want => {
                return Err(format!(
                    "was extracted from global weights {} but this round's global is {} (an update from another round?)",
                    &got[..12.min(got.len())],
                    &want[..12]
                ))
            }
            (None, Some(_)) => return Err("its manifest does not say which global model it came from".into()),
            _ => {}
        }
        if self.index_map.len() != self.checkpoint.tensors.len() {
            return Err(format!(
                "index map has {} tensors, the checkpoint {}",
                self.index_map.len(),
                self.checkpoint.tensors.len()
            ));
        }
        for (name, index) in &self.index_map {
            let g = global
                .tensors
                .get(name)
                .ok_or_else(|| format!("tensor `{name}` is not in the global model"))?;
            let t = self
                .checkpoint
                .tensors
                .get(name)
                .ok_or_else(|| format!("index map names `{name}`, which the update lacks"))?;
            let want = index.sub_shape(&g.shape);
            if t.shape != want {
                return Err(format!(
                    "tensor `{name}` has shape {:?} but its index map places {:?} into {:?}",
                    t.shape, want, g.shape
                ));
            }
            let bounds = |idx: &Option<crate::extract::Indices>, n: usize| {
                idx.as_ref().is_none_or(|i| i.0.iter().all(|&k| k < n))
            };
            if !bounds(&index.rows, g.shape[0])
                || !bounds(&index.cols, *g.shape.get(1).unwrap_or(&1))
            {
                return Err(format!(
                    "index map of `{name}` points outside the global tensor {:?}",
                    g.shape
                ));
            }
            if let Some(i) = first_non_finite(&t.data) {
                return Err(format!(
                    "tensor `{name}` has a non-finite value ({}) at element {i}",
                    t.data[i]
                ));
            }
        }
        Ok(())
    }
}

/// Index of the first NaN or infinity. Scans in branch-free chunks (which vectorize) and
/// searches element by element only in a chunk that has one.
fn first_non_finite(data: &[f32]) -> Option<usize> {
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

/// Per-tensor statistics of an aggregation.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Elements of the global model that at least one client updated.
    pub updated_elements: u64,
    pub total_elements: u64,
}

/// Running weighted sums of client values over the global model, one update at a time:
/// memory stays at the global model plus the sums, however many clients there are.
pub struct Accumulator {
    /// Per global tensor: weighted sums (f64, so means are exact) and weights.
    sums: Vec<(String, Vec<f64>, Vec<f32>)>,
}

impl Accumulator {
    pub fn new(global: &Checkpoint) -> Self {
        let sums = global
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), vec![0f64; t.numel()], vec![0f32; t.numel()]))
            .collect();
        Self { sums }
    }

    /// Adds a checked update with weight `w` (tensors in parallel). A client contributes to
    /// the tensors it holds; a partial update leaves the others alone.
    pub fn add(&mut self, global: &Checkpoint, update: &ClientUpdate, w: f64) {
        self.sums.par_iter_mut().for_each(|(name, sum, weight)| {
            if let (Some(sub), Some(index)) = (
                update.checkpoint.tensors.get(name.as_str()),
                update.index_map.get(name.as_str()),
            ) {
                scatter_add(
                    &global.tensors[name.as_str()].shape,
                    sub,
                    index,
                    w,
                    sum,
                    weight,
                );
            }
        });
    }

    /// The new global model: the weighted mean where any client contributed, the old value
    /// elsewhere (bit for bit).
    pub fn finish(self, global: &Checkpoint, server_lr: f64) -> (Checkpoint, Coverage) {
        let results: Vec<(String, HostTensor, u64)> = self
            .sums
            .into_par_iter()
            .map(|(name, sum, weight)| {
                let old = &global.tensors[&name];
                let mut data = old.data.clone();
                let mut updated = 0;
                for ((value, s), w) in data.iter_mut().zip(&sum).zip(&weight) {
                    if *w > 0.0 {
                        let mean = s / *w as f64;
                        *value = if server_lr == 1.0 {
                            mean as f32
                        } else {
                            (*value as f64 + server_lr * (mean - *value as f64)) as f32
                        };
                        updated += 1;
                    }
                }
                let shape = old.shape.clone();
                (name, HostTensor::new(shape, data), updated)
            })
            .collect();
        let mut out = global.clone();
        out.files.clear();
        let mut coverage = Coverage {
            updated_elements: 0,
            total_elements: 0,
        };
        for (name, tensor, updated) in results {
            coverage.updated_elements += updated;
            coverage.total_elements += tensor.numel() as u64;
            out.tensors.insert(name, tensor);
        }
        (out, coverage)
    }
}

/// A client that took part in an aggregation.
#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub client: String,
    pub weight: f64,
    pub parameters: u64,
}

/// An update that was left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub dir: PathBuf,
    pub client: Option<String>,
    pub reason: String,
}

/// The result of aggregating a round's update folders.
pub struct Outcome {
    pub model: Checkpoint,
    pub coverage: Coverage,
    pub clients: Vec<Contribution>,
    pub skipped: Vec<Skipped>,
    /// Every update file read, with the hash its producer recorded.
    pub inputs: Vec<crate::io::FileRecord>,
}

/// Reads, checks and aggregates the update folders `dirs` into the next global model.
/// One thread reads and checks the next update while the other adds the current one, so
/// reading overlaps the arithmetic and one update at a time is in memory. A bad update is
/// an error naming the client, or with `skip_bad` is left out and recorded.
pub fn aggregate_dirs(
    global: &Checkpoint,
    dirs: &[PathBuf],
    weighting: Weighting,
    server_lr: f64,
    skip_bad: bool,
) -> Result<Outcome> {
    let mut accumulator = Accumulator::new(global);
    let mut clients: Vec<Contribution> = Vec::new();
    let mut skipped = Vec::new();
    let mut inputs = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for dir in dirs {
                let loaded = ClientUpdate::load(dir).map(|u| {
                    let verdict = u.check(global);
                    (u, verdict)
                });
                if sender.send((dir, loaded)).is_err() {
                    break; // the receiver stopped on an error
                }
            }
        });
        for (dir, loaded) in receiver {
            let (update, verdict) = match loaded {
                Ok(x) => x,
                Err(e) if skip_bad => {
                    skipped.push(Skipped {
                        dir: dir.clone(),
                        client: None,
                        reason: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let verdict =
                verdict.and_then(
                    |()| match clients.iter().any(|c| c.client == update.client) {
                        true => Err("given twice; each client counts once per round".to_string()),
                        false => Ok(()),
                    },
                );
            if let Err(reason) = verdict {
                if !skip_bad {
                    return Err(Error::Invalid(format!(
                        "client {} ({}): {reason}",
                        update.client,
                        dir.display()
                    )));
                }
                skipped.push(Skipped {
                    dir: dir.clone(),
                    client: Some(update.client.clone()),
                    reason,
                });
                continue;
            }
            let weight = match weighting {
                Weighting::Examples => update.num_examples.max(1) as f64,
                Weighting::Uniform => 1.0,
            };
            accumulator.add(global, &update, weight);
            inputs.extend(update.checkpoint.files.iter().cloned());
            inputs.push(crate::io::sha256_file(&dir.join(MANIFEST_FILE))?);
            clients.push(Contribution {
                client: update.client.clone(),
                weight,
                parameters: update.checkpoint.parameter_count(),
            });
        }
        Ok(())
    })?;
    if clients.is_empty() {
        return Err(Error::Invalid("no update to aggregate".into()));
    }
    let (model, coverage) = accumulator.finish(global, server_lr);
    Ok(Outcome {
        model,
        coverage,
        clients,
        skipped,
        inputs,
    })
}

/// Aggregates checked `updates` (with their weights) into a new global model.
pub fn aggregate(
    global: &Checkpoint,
    updates: &[(&ClientUpdate, f64)],
    server_lr: f64,
) -> (Checkpoint, Coverage) {
    let mut acc = Accumulator::new(global);
    for (u, w) in updates {
        acc.add(global, u, *w);
    }
    acc.finish(global, server_lr)
}

/// Scatter-adds one client's sub-tensor, placed by its index, into the sums and weights.
fn scatter_add(
    global_shape: &[usize],
    sub: &HostTensor,
    index: &TensorIndex,
    w: f64,
    sum: &mut [f64],
    weight: &mut [f32],
) {
    let row_len: usize = global_shape[1..].iter().product::<usize>().max(1);
    let sub_row_len: usize = sub.shape[1..].iter().product::<usize>().max(1);
    let rows: Vec<usize> = index
        .rows
        .as_ref()
        .map_or_else(|| (0..global_shape[0]).collect(), |r| r.0.clone());
    let wf = w as f32;
    for (i, &r) in rows.iter().enumerate() {
        let src = &sub.data[i * sub_row_len..(i + 1) * sub_row_len];
        let (sum, weight) = (
            &mut sum[r * row_len..(r + 1) * row_len],
            &mut weight[r * row_len..(r + 1) * row_len],
        );
        match &index.cols {
            None => {
                for ((s, k), &v) in sum.iter_mut().zip(weight.iter_mut()).zip(src) {
                    *s += w * v as f64;
                    *k += wf;
                }
            }
            Some(cols) => {
                for (&c, &v) in cols.0.iter().zip(src) {
                    sum[c] += w * v as f64;
                    weight[c] += wf;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;
    use crate::extract::{extract, index_map, select, Indices, Strategy};

    fn global() -> Checkpoint {
        let mut g = Checkpoint::random(&tiny_config(Family::Bert, 2, 16, 4, 24), 1, true, true);
        // As if read from disk: the hash updates are checked against.
        g.files.push(crate::io::FileRecord {
            path: "g/model.safetensors".into(),
            sha256: "cd".repeat(32),
            bytes: 0,
        });
        g
    }

    fn update(global: &Checkpoint, sub: Checkpoint, map: IndexMap, seed: u64) -> ClientUpdate {
        // A "trained" sub-model: its own random values in the selected places.
        let noise = Checkpoint::random(&sub.config, seed, true, true);
        let mut trained = sub;
        for (name, t) in trained.tensors.iter_mut() {
            t.data.clone_from(&noise.tensors[name].data);
        }
        ClientUpdate {
            client: format!("c{seed}"),
            checkpoint: trained,
            index_map: map,
            global_sha256: global.weights_sha256().map(str::to_string),
            num_examples: 10,
        }
    }

    fn full_update(global: &Checkpoint, seed: u64) -> ClientUpdate {
        let map = index_map(
            global,
            &select(
                Strategy::Static,
                &global.config.layers,
                &global.config.layers,
                0,
                0,
                "x",
            ),
        );
        update(global, global.clone(), map, seed)
    }

    #[test]
    fn identical_full_updates_return_that_model() {
        let g = global();
        let u = full_update(&g, 5);
        let (out, coverage) = aggregate(&g, &[(&u, 3.0), (&u, 7.0), (&u, 1.0)], 1.0);
        for (name, t) in &u.checkpoint.tensors {
            assert!(t.bit_eq(&out.tensors[name]), "{name}");
        }
        assert_eq!(coverage.updated_elements, coverage.total_elements);
    }

    #[test]
    fn disjoint_halves_take_their_own_clients_values_and_the_rest_is_untouched() {
        let g = global();
        let name = "encoder.layer.0.intermediate.dense.weight"; // [24, 16]
        let half = |rows: std::ops::Range<usize>| -> (Checkpoint, IndexMap) {
            let mut map = IndexMap::new();
            map.insert(
                name.to_string(),
                TensorIndex {
                    rows: Some(Indices(rows.collect())),
                    cols: None,
                },
            );
            let mut sub = g.clone();
            sub.tensors.retain(|n, _| n == name);
            let t = map[name].gather(&g.tensors[name]);
            sub.tensors.insert(name.to_string(), t);
            (sub, map)
        };
        let (a_sub, a_map) = half(0..12);
        let (b_sub, b_map) = half(12..24);
        let mut a = update(&g, a_sub, a_map, 0);
        let mut b = update(&g, b_sub, b_map, 0);
        a.checkpoint
            .tensors
            .get_mut(name)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|v| *v = 1.0);
        b.checkpoint
            .tensors
            .get_mut(name)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|v| *v = 2.0);
        let (out, coverage) = aggregate(&g, &[(&a, 1.0), (&b, 5.0)], 1.0);
        let t = &out.tensors[name];
        assert!(
            t.data[..12 * 16].iter().all(|&v| v == 1.0)
                && t.data[12 * 16..].iter().all(|&v| v == 2.0)
        );
        assert_eq!(coverage.updated_elements, 24 * 16);
        for (n, t) in &g.tensors {
            if n != name {
                assert!(t.bit_eq(&out.tensors[n]), "{n} changed");
            }
        }
    }

    #[test]
    fn overlapping_holdings_give_the_closed_form_weighted_mean() {
        let g = global();
        let small = vec![
            crate::config::LayerArch {
                num_heads: 2,
                head_dim: 2,
                intermediate_size: 10
            };
            2
        ];
        let map_small = index_map(
            &g,
            &select(Strategy::Static, &g.config.layers, &small, 0, 0, "x"),
        );
        let sub_small = extract(&g, &small, &map_small).unwrap();
        let a = update(&g, sub_small, map_small, 11);
        let b = full_update(&g, 12);
        let (wa, wb) = (30.0, 10.0);
        let (out, _) = aggregate(&g, &[(&a, wa), (&b, wb)], 1.0);
        let name = "encoder.layer.1.intermediate.dense.weight"; // [24, 16], a holds rows 0..10
        let (ta, tb, to) = (
            &a.checkpoint.tensors[name],
            &b.checkpoint.tensors[name],
            &out.tensors[name],
        );
        for r in 0..24 {
            for c in 0..16 {
                let want = if r < 10 {
                    ((wa * ta.data[r * 16 + c] as f64 + wb * tb.data[r * 16 + c] as f64)
                        / (wa + wb)) as f32
                } else {
                    tb.data[r * 16 + c]
                };
                assert_eq!(to.data[r * 16 + c], want, "({r}, {c})");
            }
        }
        // Output projection: a holds columns of kept heads/channels only.
        let o = "encoder.layer.1.attention.output.dense.weight"; // [16, 16]
        let cols = &a.index_map[o].cols.as_ref().unwrap().0;
        let (ta, tb, to) = (
            &a.checkpoint.tensors[o],
            &b.checkpoint.tensors[o],
            &out.tensors[o],
        );
        for (j, &c) in cols.iter().enumerate() {
            let want = ((wa * ta.data[3 * cols.len() + j] as f64 + wb * tb.data[3 * 16 + c] as f64)
                / (wa + wb)) as f32;
            assert_eq!(to.data[3 * 16 + c], want);
        }
        // Server learning rate: halfway from the old value to the mean.
        let (half, _) = aggregate(&g, &[(&b, 1.0)], 0.5);
        let (old, new) = (
            g.tensors[name].data[0] as f64,
            b.checkpoint.tensors[name].data[0] as f64,
        );
        let v = (old + 0.5 * (new - old)) as f32;
        assert_eq!(half.tensors[name].data[0], v);
    }

    #[test]
    fn bad_updates_are_rejected_with_the_reason() {
        let g = global();
        let mut other_round = full_update(&g, 1);
        other_round.global_sha256 = Some("ab".repeat(32));
        assert!(other_round.check(&g).unwrap_err().contains("another round"));
        let mut nan = full_update(&g, 2);
        nan.checkpoint
            .tensors
            .get_mut("pooler.dense.bias")
            .unwrap()
            .data[3] = f32::NAN;
        let e = nan.check(&g).unwrap_err();
        assert!(
            e.contains("pooler.dense.bias") && e.contains("non-finite") && e.contains("element 3"),
            "{e}"
        );
        let mut shape = full_update(&g, 3);
        let t = shape
            .checkpoint
            .tensors
            .get_mut("classifier.weight")
            .unwrap();
        *t = HostTensor::zeros(vec![3, 16]);
        let e = shape.check(&g).unwrap_err();
        assert!(
            e.contains("classifier.weight") && e.contains("[3, 16]"),
            "{e}"
        );
        assert!(full_update(&g, 4).check(&g).is_ok());
    }
}
