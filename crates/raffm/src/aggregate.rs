//! Heterogeneous FedAvg (paper eq. 7): every element of the global model becomes the
//! weighted mean of the values that the participating clients hold for it, placed by each
//! client's index map; elements that no client holds keep their value, bit for bit.
//!
//! With a server learning rate `eta` the new value is `old + eta * (mean - old)`; `eta = 1`
//! is plain FedAvg and assigns the mean itself. Sums are kept in f64, so identical
//! updates average back to exactly themselves.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{decode_f32, map_file, read_config, Checkpoint, WEIGHTS_FILE};
use crate::config::Family;
use crate::error::{Error, Result};
use crate::extract::{IndexMap, Indices, TensorIndex};
use crate::io::FileRecord;
use crate::layout;
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

/// A client's trained tensors by canonical name. Little-endian F32 data, which is what
/// our stages write, is used in place from the mapped file: aggregation reads each update
/// once, straight from the page cache. Other dtypes are decoded.
pub struct UpdateWeights {
    map: Option<memmap2::Mmap>,
    tensors: BTreeMap<String, UpdateTensor>,
}

struct UpdateTensor {
    shape: Vec<usize>,
    data: UpdateData,
}

enum UpdateData {
    /// Byte range in the mapped file, 4-byte aligned.
    Mapped(Range<usize>),
    Owned(Vec<f32>),
}

impl UpdateWeights {
    /// Reads the safetensors file `path` of a checkpoint of `family`.
    pub fn read(path: &Path, family: Family) -> Result<Self> {
        let map = map_file(path)?;
        let mut tensors = BTreeMap::new();
        {
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                Error::format(
                    path,
                    format!("not a valid safetensors file ({e}); is it truncated?"),
                )
            })?;
            let base = map.as_ptr() as usize;
            for (hf_name, view) in st.tensors() {
                let Some((canonical, _)) = layout::to_canonical(family, &hf_name) else {
                    continue;
                };
                let raw = view.data();
                let in_place = view.dtype() == Dtype::F32
                    && cfg!(target_endian = "little")
                    && bytemuck::try_cast_slice::<u8, f32>(raw).is_ok();
                let data = if in_place {
                    let start = raw.as_ptr() as usize - base;
                    UpdateData::Mapped(start..start + raw.len())
                } else {
                    UpdateData::Owned(decode_f32(path, &hf_name, &view)?)
                };
                let tensor = UpdateTensor {
                    shape: view.shape().to_vec(),
                    data,
                };
                if tensors.insert(canonical.clone(), tensor).is_some() {
                    return Err(Error::format(
                        path,
                        format!("two tensors map to `{canonical}` (the second is `{hf_name}`)"),
                    ));
                }
            }
        }
        Ok(Self {
            map: Some(map),
            tensors,
        })
    }

    /// The tensors of an in-memory checkpoint (tests, library users).
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Self {
        let tensors = checkpoint
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let tensor = UpdateTensor {
                    shape: t.shape,
                    data: UpdateData::Owned(t.data),
                };
                (name, tensor)
            })
            .collect();
        Self { map: None, tensors }
    }

    /// Shape and values of tensor `name`.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        let t = self.tensors.get(name)?;
        let data = match &t.data {
            UpdateData::Owned(v) => v.as_slice(),
            UpdateData::Mapped(range) => {
                let map = self.map.as_ref().expect("mapped data has a map");
                bytemuck::cast_slice(&map[range.clone()])
            }
        };
        Some((&t.shape, data))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }
}

/// A trained client model with what is needed to place it.
pub struct ClientUpdate {
    pub client: String,
    pub weights: UpdateWeights,
    pub index_map: IndexMap,
    /// sha256 of the global weights the sub-model was extracted from.
    pub global_sha256: Option<String>,
    pub num_examples: u64,
    /// The update's files: weights and config with the hashes its producer recorded, and
    /// the manifest itself.
    pub files: Vec<FileRecord>,
}

impl ClientUpdate {
    /// Reads a client's trained folder (checkpoint + local-train manifest). An update
    /// without an index map is a full model (every index).
    pub fn load(dir: &Path) -> Result<Self> {
        let (config, _, _) = read_config(dir)?;
        // Not re-hashed: the producing stage's manifest records the hashes of its outputs.
        let weights = UpdateWeights::read(&dir.join(WEIGHTS_FILE), config.family)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let (manifest, manifest_record) = Manifest::load_recorded(&manifest_path)?;
        let files = manifest
            .outputs
            .iter()
            .filter(|f| !f.path.ends_with(MANIFEST_FILE))
            .cloned()
            .chain([manifest_record])
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
            None => full_index_map(&weights),
        };
        Ok(Self {
            client,
            global_sha256: detail("global_sha256")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            num_examples: detail("num_examples").and_then(|v| v.as_u64()).unwrap_or(0),
            weights,
            index_map,
            files,
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
        if self.index_map.len() != self.weights.len() {
            return Err(format!(
                "index map has {} tensors, the checkpoint {}",
                self.index_map.len(),
                self.weights.len()
            ));
        }
        for (name, index) in &self.index_map {
            let g = global
                .tensors
                .get(name)
                .ok_or_else(|| format!("tensor `{name}` is not in the global model"))?;
            let (shape, data) = self
                .weights
                .get(name)
                .ok_or_else(|| format!("index map names `{name}`, which the update lacks"))?;
            if index.cols.is_some() && g.shape.len() < 2 {
                return Err(format!(
                    "index map of `{name}` selects columns of a tensor of shape {:?}",
                    g.shape
                ));
            }
            let want = index.sub_shape(&g.shape);
            if shape != want {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?} but its index map places {want:?} into {:?}",
                    g.shape
                ));
            }
            // Each global element once at most: a repeated index would count a client twice.
            let distinct_in = |idx: &Option<Indices>, n: usize| {
                idx.as_ref().is_none_or(|i| {
                    let mut seen = vec![false; n];
                    i.0.iter()
                        .all(|&k| k < n && !std::mem::replace(&mut seen[k], true))
                })
            };
            if !distinct_in(&index.rows, g.shape[0])
                || !distinct_in(&index.cols, *g.shape.get(1).unwrap_or(&1))
            {
                return Err(format!(
                    "index map of `{name}` repeats an index or points outside the global tensor {:?}",
                    g.shape
                ));
            }
            if let Some(i) = first_non_finite(data) {
                return Err(format!(
                    "tensor `{name}` has a non-finite value ({}) at element {i}",
                    data[i]
                ));
            }
        }
        Ok(())
    }
}

/// Every tensor whole: the index map of a full-model update.
fn full_index_map(weights: &UpdateWeights) -> IndexMap {
    weights
        .tensors
        .keys()
        .map(|k| {
            let all = TensorIndex {
                rows: None,
                cols: None,
            };
            (k.clone(), all)
        })
        .collect()
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
    tensors: Vec<TensorSums>,
}

/// The sums of one global tensor, seen as rows (a 1-D tensor has rows of one element).
///
/// An element's total weight is the sum of the weights of the clients that hold it. A
/// client holds a set of rows and, in each, the same columns, so the total weight of a
/// row depends only on which clients hold some of that row. Rows keep an id of that set
/// and the weights are worked out once per distinct set at the end, instead of being
/// summed element by element with every update.
struct TensorSums {
    name: String,
    row_len: usize,
    /// Weighted sums of client values; f64, so identical updates average to themselves.
    sums: Vec<f64>,
    /// Per row, an id into `sets`.
    row_set: Vec<u32>,
    /// Sets of holders (positions in `holders`), in the order they arose; 0 is empty.
    sets: Vec<Vec<u32>>,
    /// (set, holder) -> the set with that holder added.
    grown: HashMap<(u32, u32), u32>,
    /// The clients that hold part of this tensor: weight and columns (`None`: all).
    holders: Vec<(f64, Option<Indices>)>,
}

impl TensorSums {
    fn new(name: &str, t: &HostTensor) -> Self {
        let rows = t.shape.first().copied().unwrap_or(1);
        Self {
            name: name.to_string(),
            row_len: t.numel() / rows.max(1),
            sums: vec![0.0; t.numel()],
            row_set: vec![0; rows],
            sets: vec![Vec::new()],
            grown: HashMap::new(),
            holders: Vec::new(),
        }
    }

    /// Adds a client's sub-tensor `sub`, placed by `index`, with weight `w`.
    fn add(&mut self, sub: &[f32], index: &TensorIndex, w: f64) {
        let holder = self.holders.len() as u32;
        self.holders.push((w, index.cols.clone()));
        let sub_row_len = index.cols.as_ref().map_or(self.row_len, |c| c.0.len());
        let rows = index.rows.as_ref().map(|r| r.0.as_slice());
        let row_count = rows.map_or(self.row_set.len(), <[usize]>::len);
        for i in 0..row_count {
            let r = rows.map_or(i, |rows| rows[i]);
            let src = &sub[i * sub_row_len..(i + 1) * sub_row_len];
            let sum = &mut self.sums[r * self.row_len..(r + 1) * self.row_len];
            match &index.cols {
                None => sum
                    .iter_mut()
                    .zip(src)
                    .for_each(|(s, &v)| *s += w * v as f64),
                Some(cols) => {
                    for (&c, &v) in cols.0.iter().zip(src) {
                        sum[c] += w * v as f64;
                    }
                }
            }
            let set = self.row_set[r];
            self.row_set[r] = match self.grown.get(&(set, holder)) {
                Some(&grown) => grown,
                None => {
                    let mut members = self.sets[set as usize].clone();
                    members.push(holder);
                    let grown = self.sets.len() as u32;
                    self.sets.push(members);
                    self.grown.insert((set, holder), grown);
                    grown
                }
            };
        }
    }

    /// The new values: the weighted mean where a client contributed, `old` elsewhere.
    fn finish(self, old: &HostTensor, server_lr: f64) -> (HostTensor, u64) {
        let mut weights_of_set: Vec<Option<Vec<f64>>> = vec![None; self.sets.len()];
        let mut data = old.data.clone();
        let mut updated = 0u64;
        for (r, &set) in self.row_set.iter().enumerate() {
            if set == 0 {
                continue;
            }
            let weights = weights_of_set[set as usize].get_or_insert_with(|| {
                let mut weights = vec![0.0; self.row_len];
                for &h in &self.sets[set as usize] {
                    let (w, cols) = &self.holders[h as usize];
                    match cols {
                        None => weights.iter_mut().for_each(|x| *x += w),
                        Some(cols) => cols.0.iter().for_each(|&c| weights[c] += w),
                    }
                }
                weights
            });
            let span = r * self.row_len..(r + 1) * self.row_len;
            for ((value, s), &w) in data[span.clone()]
                .iter_mut()
                .zip(&self.sums[span])
                .zip(weights.iter())
            {
                if w > 0.0 {
                    let mean = s / w;
                    *value = if server_lr == 1.0 {
                        mean as f32
                    } else {
                        (*value as f64 + server_lr * (mean - *value as f64)) as f32
                    };
                    updated += 1;
                }
            }
        }
        (HostTensor::new(old.shape.clone(), data), updated)
    }
}

impl Accumulator {
    pub fn new(global: &Checkpoint) -> Self {
        let tensors = global
            .tensors
            .par_iter()
            .map(|(name, t)| TensorSums::new(name, t))
            .collect();
        Self { tensors }
    }

    /// Adds a checked update with weight `w` (tensors in parallel). A client contributes to
    /// the tensors it holds; a partial update leaves the others alone.
    pub fn add(&mut self, update: &ClientUpdate, w: f64) {
        self.tensors.par_iter_mut().for_each(|sums| {
            if let (Some((_, sub)), Some(index)) = (
                update.weights.get(&sums.name),
                update.index_map.get(&sums.name),
            ) {
                sums.add(sub, index, w);
            }
        });
    }

    /// The new global model: the weighted mean where any client contributed, the old value
    /// elsewhere (bit for bit).
    pub fn finish(self, global: &Checkpoint, server_lr: f64) -> (Checkpoint, Coverage) {
        let results: Vec<(String, HostTensor, u64)> = self
            .tensors
            .into_par_iter()
            .map(|sums| {
                let name = sums.name.clone();
                let (tensor, updated) = sums.finish(&global.tensors[&name], server_lr);
                (name, tensor, updated)
            })
            .collect();
        let mut out = Checkpoint {
            config: global.config.clone(),
            tensors: BTreeMap::new(),
            prefixed: global.prefixed,
            source: global.source.clone(),
            files: Vec::new(),
            ignored: global.ignored.clone(),
        };
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
            accumulator.add(&update, weight);
            inputs.extend(update.files.iter().cloned());
            clients.push(Contribution {
                client: update.client.clone(),
                weight,
                parameters: update.weights.parameter_count(),
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
        acc.add(u, *w);
    }
    acc.finish(global, server_lr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;
    use crate::extract::{extract, index_map, select, Strategy};

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

    /// A "trained" sub-model: its own random values in the selected places, then `edit`.
    fn update_with(
        global: &Checkpoint,
        sub: Checkpoint,
        map: IndexMap,
        seed: u64,
        edit: impl FnOnce(&mut Checkpoint),
    ) -> ClientUpdate {
        let noise = Checkpoint::random(&sub.config, seed, true, true);
        let mut trained = sub;
        for (name, t) in trained.tensors.iter_mut() {
            t.data.clone_from(&noise.tensors[name].data);
        }
        edit(&mut trained);
        ClientUpdate {
            client: format!("c{seed}"),
            weights: UpdateWeights::from_checkpoint(trained),
            index_map: map,
            global_sha256: global.weights_sha256().map(str::to_string),
            num_examples: 10,
            files: Vec::new(),
        }
    }

    fn update(global: &Checkpoint, sub: Checkpoint, map: IndexMap, seed: u64) -> ClientUpdate {
        update_with(global, sub, map, seed, |_| {})
    }

    fn full_update_with(
        global: &Checkpoint,
        seed: u64,
        edit: impl FnOnce(&mut Checkpoint),
    ) -> ClientUpdate {
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
        update_with(global, global.clone(), map, seed, edit)
    }

    fn full_update(global: &Checkpoint, seed: u64) -> ClientUpdate {
        full_update_with(global, seed, |_| {})
    }

    fn values<'a>(u: &'a ClientUpdate, name: &str) -> &'a [f32] {
        u.weights.get(name).unwrap().1
    }

    #[test]
    fn identical_full_updates_return_that_model() {
        let g = global();
        let u = full_update(&g, 5);
        let (out, coverage) = aggregate(&g, &[(&u, 3.0), (&u, 7.0), (&u, 1.0)], 1.0);
        for (name, t) in &out.tensors {
            assert_eq!(
                bytemuck::cast_slice::<f32, u32>(values(&u, name)),
                bytemuck::cast_slice::<f32, u32>(&t.data),
                "{name}"
            );
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
        let fill = |value: f32| move |c: &mut Checkpoint| c.tensor_mut(name).data.fill(value);
        let a = update_with(&g, a_sub, a_map, 0, fill(1.0));
        let b = update_with(&g, b_sub, b_map, 0, fill(2.0));
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
        let (ta, tb, to) = (values(&a, name), values(&b, name), &out.tensors[name].data);
        for r in 0..24 {
            for c in 0..16 {
                let want = if r < 10 {
                    ((wa * ta[r * 16 + c] as f64 + wb * tb[r * 16 + c] as f64) / (wa + wb)) as f32
                } else {
                    tb[r * 16 + c]
                };
                assert_eq!(to[r * 16 + c], want, "({r}, {c})");
            }
        }
        // Output projection: a holds columns of kept heads/channels only.
        let o = "encoder.layer.1.attention.output.dense.weight"; // [16, 16]
        let cols = &a.index_map[o].cols.as_ref().unwrap().0;
        let (ta, tb, to) = (values(&a, o), values(&b, o), &out.tensors[o].data);
        for (j, &c) in cols.iter().enumerate() {
            let want = ((wa * ta[3 * cols.len() + j] as f64 + wb * tb[3 * 16 + c] as f64)
                / (wa + wb)) as f32;
            assert_eq!(to[3 * 16 + c], want);
        }
        // Server learning rate: halfway from the old value to the mean.
        let (half, _) = aggregate(&g, &[(&b, 1.0)], 0.5);
        let (old, new) = (g.tensors[name].data[0] as f64, values(&b, name)[0] as f64);
        let v = (old + 0.5 * (new - old)) as f32;
        assert_eq!(half.tensors[name].data[0], v);
    }

    #[test]
    fn bad_updates_are_rejected_with_the_reason() {
        let g = global();
        let mut other_round = full_update(&g, 1);
        other_round.global_sha256 = Some("ab".repeat(32));
        assert!(other_round.check(&g).unwrap_err().contains("another round"));
        let nan = full_update_with(&g, 2, |c| {
            c.tensor_mut("pooler.dense.bias").data[3] = f32::NAN
        });
        let e = nan.check(&g).unwrap_err();
        assert!(
            e.contains("pooler.dense.bias") && e.contains("non-finite") && e.contains("element 3"),
            "{e}"
        );
        let shape = full_update_with(&g, 3, |c| {
            *c.tensor_mut("classifier.weight") = HostTensor::zeros(vec![3, 16]);
        });
        let e = shape.check(&g).unwrap_err();
        assert!(
            e.contains("classifier.weight") && e.contains("[3, 16]"),
            "{e}"
        );
        let mut repeated = full_update(&g, 5);
        repeated
            .index_map
            .get_mut("pooler.dense.bias")
            .unwrap()
            .rows = Some(Indices((0..16).map(|i| i / 2).collect()));
        let e = repeated.check(&g).unwrap_err();
        assert!(
            e.contains("pooler.dense.bias") && e.contains("repeats"),
            "{e}"
        );
        let mut columns_of_a_vector = full_update(&g, 6);
        columns_of_a_vector
            .index_map
            .get_mut("pooler.dense.bias")
            .unwrap()
            .cols = Some(Indices(vec![0]));
        let e = columns_of_a_vector.check(&g).unwrap_err();
        assert!(
            e.contains("pooler.dense.bias") && e.contains("columns"),
            "{e}"
        );
        assert!(full_update(&g, 4).check(&g).is_ok());
    }
}
