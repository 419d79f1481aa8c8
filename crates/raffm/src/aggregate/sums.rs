//! Running weighted sums over the global model, one update at a time: memory stays at the
//! global model plus the sums, however many clients there are.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use super::update::ClientUpdate;
use super::Coverage;
use crate::checkpoint::Checkpoint;
use crate::elastic::index::TensorIndex;
use crate::tensor::HostTensor;

/// The sums of every global tensor.
pub struct Accumulator {
    tensors: Vec<TensorSums>,
}

/// The sums of one global tensor, seen as rows (everything after the first dimension; a
/// 1-D tensor has rows of one element).
///
/// An element's total weight is the sum of the weights of the clients that hold it. A
/// client holds a set of rows and, in each, the same elements, so the total weight of a
/// row depends only on which clients hold some of that row. Rows keep an id of that set
/// and the weights are worked out once per distinct set at the end, instead of being
/// summed element by element with every update.
struct TensorSums {
    name: String,
    row_len: usize,
    shape: Vec<usize>,
    /// Weighted sums of client values; f64, so identical updates average to themselves.
    sums: Vec<f64>,
    /// Per row, an id into `sets`.
    row_set: Vec<u32>,
    /// Sets of holders (positions in `holders`), in the order they arose; 0 is empty.
    sets: Vec<Vec<u32>>,
    /// (set, holder) -> the set with that holder added.
    grown: HashMap<(u32, u32), u32>,
    /// The clients that hold part of this tensor: weight and element offsets in a row
    /// (`None`: the whole row).
    holders: Vec<(f64, Option<Vec<usize>>)>,
}

impl TensorSums {
    fn new(name: &str, t: &HostTensor) -> Self {
        let rows = t.shape.first().copied().unwrap_or(1);
        Self {
            name: name.to_string(),
            row_len: t.numel() / rows.max(1),
            shape: t.shape.clone(),
            // -0.0 is the identity of addition (+0.0 would turn a client's -0.0 into +0.0).
            sums: vec![-0.0; t.numel()],
            row_set: vec![0; rows],
            sets: vec![Vec::new()],
            grown: HashMap::new(),
            holders: Vec::new(),
        }
    }

    /// Adds a client's sub-tensor `sub`, placed by `index`, with weight `w`.
    fn add(&mut self, sub: &[f32], index: &TensorIndex, w: f64) {
        let holder = self.holders.len() as u32;
        let offsets = index.row_offsets(&self.shape);
        let sub_row_len = offsets.as_ref().map_or(self.row_len, Vec::len);
        let rows = index.rows();
        let row_count = rows.map_or(self.row_set.len(), <[usize]>::len);
        for i in 0..row_count {
            let r = rows.map_or(i, |rows| rows[i]);
            let src = &sub[i * sub_row_len..(i + 1) * sub_row_len];
            let sum = &mut self.sums[r * self.row_len..(r + 1) * self.row_len];
            match &offsets {
                None => sum
                    .iter_mut()
                    .zip(src)
                    .for_each(|(s, &v)| *s += w * v as f64),
                Some(offsets) => {
                    for (&c, &v) in offsets.iter().zip(src) {
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
        self.holders.push((w, offsets));
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
                    let (w, offsets) = &self.holders[h as usize];
                    match offsets {
                        None => weights.iter_mut().for_each(|x| *x += w),
                        Some(offsets) => offsets.iter().for_each(|&c| weights[c] += w),
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
    /// the global tensors its index map places its tensors onto; the others it leaves alone.
    pub fn add(&mut self, update: &ClientUpdate, w: f64) {
        let by_global: BTreeMap<&str, (&str, &TensorIndex)> = update
            .index_map
            .iter()
            .map(|(name, index)| (index.source(name), (name.as_str(), index)))
            .collect();
        self.tensors.par_iter_mut().for_each(|sums| {
            if let Some(&(name, index)) = by_global.get(sums.name.as_str()) {
                if let Some((_, sub)) = update.weights.get(name) {
                    sums.add(sub, index, w);
                }
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
            tokenizer: global.tokenizer.clone(),
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
