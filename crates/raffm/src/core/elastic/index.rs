//! Index selection (paper eq. 6) and its record, the index map.
//!
//! A [`Selection`] says which indices of every axis a sub-model keeps, and which global
//! layer each of its layers is. The [`IndexMap`] derived from it says, for every tensor
//! of the sub-model, which global tensor it comes from and which indices of each of that
//! tensor's dimensions. Extraction gathers by the map; aggregation scatters back by it.
//! Prioritization is the same gather with every index kept, in a new order.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{axis_spec, Axis, AxisSpec, Factor, TensorSpec, Widths};
use crate::core::tensor::HostTensor;

/// A list of indices, written as `[start, length]` runs so leading ranges stay tiny.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Indices(pub Vec<usize>);

impl Indices {
    /// True for `0, 1, ..., n - 1`.
    pub fn is_leading(&self, n: usize) -> bool {
        self.0.len() == n && self.0.iter().enumerate().all(|(i, &j)| i == j)
    }
}

impl Serialize for Indices {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<[usize; 2]> = Vec::new();
        for &i in &self.0 {
            match runs.last_mut() {
                Some([start, len]) if *start + *len == i => *len += 1,
                _ => runs.push([i, 1]),
            }
        }
        runs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Indices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // No tensor dimension comes near this; a manifest claiming more is corrupt, and
        // expanding it would exhaust memory before the shape checks could refuse it.
        const MAX_INDICES: usize = 1 << 32;
        let runs = Vec::<[usize; 2]>::deserialize(d)?;
        let mut out = Vec::new();
        for [start, len] in runs {
            let end = start
                .checked_add(len)
                .filter(|_| out.len().saturating_add(len) <= MAX_INDICES)
                .ok_or_else(|| serde::de::Error::custom("index runs longer than any tensor"))?;
            out.extend(start..end);
        }
        Ok(Indices(out))
    }
}

/// The indices kept of one axis instance, in the order the new model holds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    /// The same indices under every parent (a sub-model keeps the same Q/K channels in
    /// every head it keeps).
    Shared(Indices),
    /// For a nested axis, each parent's own, by the parent's new position (prioritization
    /// orders the channels of each head by that head's scores).
    PerParent(Vec<Indices>),
}

impl Kept {
    pub fn shared(indices: Vec<usize>) -> Self {
        Kept::Shared(Indices(indices))
    }

    /// The indices kept under the parent at new position `parent`.
    pub fn under(&self, parent: usize) -> &[usize] {
        match self {
            Kept::Shared(i) => &i.0,
            Kept::PerParent(per) => &per[parent].0,
        }
    }

    /// How many indices are kept (per parent).
    pub fn len(&self) -> usize {
        self.under(0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every index of `0..n` stays where it is.
    pub fn is_identity(&self, n: usize) -> bool {
        match self {
            Kept::Shared(i) => i.is_leading(n),
            Kept::PerParent(per) => per.iter().all(|i| i.is_leading(n)),
        }
    }
}

/// What a new model keeps of a global one: per axis instance, the kept indices (an axis
/// absent from a map is kept whole, in order), and the global layer of each of its layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selection {
    pub global: BTreeMap<Axis, Kept>,
    /// Global layer of each layer of the new model.
    pub layers: Vec<usize>,
    /// Per layer of the new model.
    pub per_layer: Vec<BTreeMap<Axis, Kept>>,
}

impl Selection {
    /// The kept indices of `axis` in layer `layer` (of the new model), or of the global axis.
    pub fn kept(&self, axes: &[AxisSpec], axis: Axis, layer: Option<usize>) -> Option<&Kept> {
        match axis_spec(axes, axis).scope {
            super::Scope::Global => self.global.get(&axis),
            super::Scope::Layer => self.per_layer[layer?].get(&axis),
        }
    }
}

/// Which global tensor a tensor of a new model comes from, and which indices of each of its
/// dimensions (`None`: all, in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorIndex {
    /// The global tensor's name, where it differs (a layer that moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub dims: Vec<Option<Indices>>,
}

/// A new model's tensor name -> where it sits in the global model.
pub type IndexMap = BTreeMap<String, TensorIndex>;

impl TensorIndex {
    /// The name of the global tensor, given the new model's name for it.
    pub fn source<'a>(&'a self, name: &'a str) -> &'a str {
        self.from.as_deref().unwrap_or(name)
    }

    /// The shape the index cuts out of a global tensor of shape `global`.
    pub fn sub_shape(&self, global: &[usize]) -> Vec<usize> {
        global
            .iter()
            .zip(&self.dims)
            .map(|(&n, kept)| kept.as_ref().map_or(n, |k| k.0.len()))
            .collect()
    }

    /// Why the index cannot apply to a global tensor of shape `global`, if it cannot: a
    /// dimension count that differs, an index out of range, or an index given twice (which
    /// would count a client twice in aggregation).
    pub fn check_against(&self, global: &[usize]) -> Result<(), String> {
        if self.dims.len() != global.len() {
            return Err(format!(
                "index map has {} dimensions, the global tensor {:?}",
                self.dims.len(),
                global
            ));
        }
        for (d, (kept, &n)) in self.dims.iter().zip(global).enumerate() {
            let Some(kept) = kept else { continue };
            let mut seen = vec![false; n];
            for &i in &kept.0 {
                if i >= n || std::mem::replace(&mut seen[i], true) {
                    return Err(format!(
                        "index map repeats an index or points outside the global tensor {global:?} (dimension {d})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kept rows (first dimension), `None` for all.
    pub fn rows(&self) -> Option<&[usize]> {
        self.dims.first()?.as_ref().map(|i| i.0.as_slice())
    }

    /// The element offsets inside one row of a global tensor of shape `global` that the
    /// index keeps, in order (`None`: the whole row). A row is everything after the first
    /// dimension, so an element of a kept row is kept when its offset is listed.
    pub fn row_offsets(&self, global: &[usize]) -> Option<Vec<usize>> {
        if self.dims.iter().skip(1).all(Option::is_none) {
            return None;
        }
        let mut offsets = vec![0usize];
        for (kept, &n) in self.dims.iter().zip(global).skip(1) {
            offsets = match kept {
                None => offsets
                    .iter()
                    .flat_map(|&o| (0..n).map(move |i| o * n + i))
                    .collect(),
                Some(k) => offsets
                    .iter()
                    .flat_map(|&o| k.0.iter().map(move |&i| o * n + i))
                    .collect(),
            };
        }
        Some(offsets)
    }

    /// The sub-tensor of `global` this index selects. The index must have been checked
    /// against the global shape.
    pub fn gather(&self, global: &HostTensor) -> HostTensor {
        let row_len: usize = global.shape[1..].iter().product();
        let offsets = self.row_offsets(&global.shape);
        let rows: Vec<usize> = match self.rows() {
            Some(r) => r.to_vec(),
            None => (0..global.shape.first().copied().unwrap_or(1)).collect(),
        };
        let mut data = Vec::with_capacity(rows.len() * offsets.as_ref().map_or(row_len, Vec::len));
        for r in rows {
            let row = &global.data[r * row_len..(r + 1) * row_len];
            match &offsets {
                None => data.extend_from_slice(row),
                Some(o) => data.extend(o.iter().map(|&j| row[j])),
            }
        }
        HostTensor::new(self.sub_shape(&global.shape), data)
    }

    /// Writes `sub` into `global` where this index places it.
    pub fn scatter(&self, sub: &HostTensor, global: &mut HostTensor) {
        let row_len: usize = global.shape[1..].iter().product();
        let offsets = self.row_offsets(&global.shape);
        let sub_row = offsets.as_ref().map_or(row_len, Vec::len);
        let rows: Vec<usize> = match self.rows() {
            Some(r) => r.to_vec(),
            None => (0..global.shape.first().copied().unwrap_or(1)).collect(),
        };
        for (i, r) in rows.into_iter().enumerate() {
            let src = &sub.data[i * sub_row..(i + 1) * sub_row];
            let dst = &mut global.data[r * row_len..(r + 1) * row_len];
            match &offsets {
                None => dst.copy_from_slice(src),
                Some(o) => o.iter().zip(src).for_each(|(&j, &v)| dst[j] = v),
            }
        }
    }
}

/// The global flat indices one dimension keeps, in the new model's order: the product of
/// its factors' kept indices, outer factor first. `None` when it keeps all, in order.
fn dim_indices(
    axes: &[AxisSpec],
    dim: &[Factor],
    global: &Widths,
    global_layer: Option<usize>,
    selection: &Selection,
    layer: Option<usize>,
) -> Option<Indices> {
    // (flat global index so far, position of the last factor's index in the new model)
    let mut out: Vec<(usize, usize)> = vec![(0, 0)];
    let mut identity = true;
    for &factor in dim {
        let n = global.factor_size(axes, factor, global_layer);
        let kept = match factor {
            Factor::Axis(axis) => selection.kept(axes, axis, layer),
            Factor::Fixed(_) => None,
        };
        identity &= kept.is_none_or(|k| k.is_identity(n));
        out = out
            .into_iter()
            .flat_map(|(base, position)| {
                let list: Vec<usize> = match kept {
                    None => (0..n).collect(),
                    Some(k) => k.under(position).to_vec(),
                };
                list.into_iter()
                    .enumerate()
                    .map(move |(p, i)| (base * n + i, p))
            })
            .collect();
    }
    (!identity).then(|| Indices(out.into_iter().map(|(i, _)| i).collect()))
}

/// The index map of a selection: for every tensor of the new model (`new_tensors`, the
/// family's specs for its depth), the global tensor of the same part in the global layer
/// the selection names, and the kept indices of each dimension.
pub fn index_map(
    axes: &[AxisSpec],
    global_tensors: &[TensorSpec],
    global: &Widths,
    new_tensors: &[TensorSpec],
    selection: &Selection,
) -> IndexMap {
    let by_part: BTreeMap<(Option<usize>, &str), &TensorSpec> = global_tensors
        .iter()
        .map(|t| ((t.layer, t.key.as_str()), t))
        .collect();
    new_tensors
        .iter()
        .map(|t| {
            let global_layer = t.layer.map(|l| selection.layers[l]);
            let source = by_part[&(global_layer, t.key.as_str())];
            let dims = t
                .dims
                .iter()
                .map(|dim| dim_indices(axes, dim, global, global_layer, selection, t.layer))
                .collect();
            let from = (source.name != t.name).then(|| source.name.clone());
            (t.name.clone(), TensorIndex { from, dims })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_serialize_as_runs_and_back() {
        let i = Indices(vec![0, 1, 2, 7, 9, 10]);
        let text = serde_json::to_string(&i).unwrap();
        assert_eq!(text, "[[0,3],[7,1],[9,2]]");
        assert_eq!(serde_json::from_str::<Indices>(&text).unwrap(), i);
        assert!(serde_json::from_str::<Indices>(&format!("[[1,{}]]", usize::MAX)).is_err());
        // A run no tensor could have is refused before it is expanded into memory.
        let huge = serde_json::from_str::<Indices>("[[0,4611686018427387903]]").unwrap_err();
        assert!(
            huge.to_string().contains("longer than any tensor"),
            "{huge}"
        );
    }

    #[test]
    fn gather_and_scatter_are_inverse_on_three_dimensions() {
        let global = HostTensor::new(vec![3, 4, 2], (0..24).map(|v| v as f32).collect());
        let index = TensorIndex {
            from: None,
            dims: vec![Some(Indices(vec![2, 0])), None, Some(Indices(vec![1]))],
        };
        index.check_against(&global.shape).unwrap();
        let sub = index.gather(&global);
        assert_eq!(sub.shape, vec![2, 4, 1]);
        assert_eq!(sub.data, vec![17., 19., 21., 23., 1., 3., 5., 7.]);
        let mut back = HostTensor::zeros(global.shape.clone());
        index.scatter(&sub, &mut back);
        for (k, v) in back.data.iter().enumerate() {
            let kept = (k / 8 == 0 || k / 8 == 2) && k % 2 == 1;
            assert_eq!(*v, if kept { global.data[k] } else { 0.0 }, "element {k}");
        }
        let repeated = TensorIndex {
            from: None,
            dims: vec![Some(Indices(vec![1, 1])), None, None],
        };
        assert!(repeated.check_against(&global.shape).is_err());
    }
}
