//! Tensor-by-tensor differences between two checkpoints; between a sub-model and a global
//! model, through the sub-model's index map.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::stats::model_order;
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::index::{IndexMap, TensorIndex};
use crate::core::error::{Error, Result};
use crate::core::manifest::{Manifest, MANIFEST_FILE};
use crate::core::tensor::HostTensor;

/// A side of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// Where `diff` gets an index map: the sub-model's manifest when shapes differ, a given
/// manifest, or nowhere.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexMapChoice {
    Auto,
    None,
    Manifest(PathBuf),
}

impl std::str::FromStr for IndexMapChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => IndexMapChoice::Auto,
            "none" => IndexMapChoice::None,
            path => IndexMapChoice::Manifest(path.into()),
        })
    }
}

/// An index map, the manifest it came from, and the side whose tensors it describes as
/// slices of the other side's.
#[derive(Debug, Clone, Serialize)]
pub struct IndexMapping {
    #[serde(skip)]
    pub map: IndexMap,
    pub manifest: String,
    pub sub_model: Side,
}

/// The index map a manifest (given as the file or its folder) records, if it has one.
pub fn load_index_map(path: &Path) -> Result<Option<IndexMap>> {
    let path = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    if !path.is_file() {
        return Err(Error::format(&path, "no such manifest"));
    }
    Ok(Manifest::load(&path)?.placement.map(|p| p.index_map))
}

/// The shape `index` cuts out of `global`, or `None` where it does not apply (a dimension
/// count that differs, an index out of range), where `TensorIndex::gather` would panic.
fn gathered_shape(index: &TensorIndex, global: &HostTensor) -> Option<Vec<usize>> {
    index
        .check_against(&global.shape)
        .ok()
        .map(|()| index.sub_shape(&global.shape))
}

/// True when every tensor of `sub` has the shape of the slice that `map` names of the
/// global tensor it came from (or that tensor's shape, where the map says nothing).
pub fn map_fits(map: &IndexMap, global: &Checkpoint, sub: &Checkpoint) -> bool {
    sub.tensors.iter().all(|(name, s)| match map.get(name) {
        Some(index) => global
            .tensors
            .get(index.source(name))
            .is_some_and(|g| gathered_shape(index, g).as_ref() == Some(&s.shape)),
        None => global.tensors.get(name).is_none_or(|g| g.shape == s.shape),
    })
}

/// The index map for `diff(a, b)`. `Auto` reads the manifests of b, then a, when some
/// shapes differ; an explicit manifest must fit one side (b preferred when both fit).
pub fn choose_index_map(
    a: &Checkpoint,
    b: &Checkpoint,
    choice: &IndexMapChoice,
) -> Result<Option<IndexMapping>> {
    let shapes_differ = a.tensors.len() != b.tensors.len()
        || a.tensors
            .iter()
            .any(|(name, t)| b.tensors.get(name).is_none_or(|u| u.shape != t.shape));
    let candidates: Vec<PathBuf> = match choice {
        IndexMapChoice::None => return Ok(None),
        IndexMapChoice::Auto if !shapes_differ => return Ok(None),
        IndexMapChoice::Auto => [b, a]
            .iter()
            .filter_map(|c| Some(c.source.as_ref()?.join(MANIFEST_FILE)))
            .filter(|p| p.is_file())
            .collect(),
        IndexMapChoice::Manifest(path) => vec![path.clone()],
    };
    for path in candidates {
        let Some(map) = load_index_map(&path)? else {
            continue;
        };
        let sub_model = match (map_fits(&map, a, b), map_fits(&map, b, a)) {
            (true, _) => Side::B,
            (false, true) => Side::A,
            (false, false) => continue,
        };
        let manifest = path.display().to_string();
        return Ok(Some(IndexMapping {
            map,
            manifest,
            sub_model,
        }));
    }
    match choice {
        IndexMapChoice::Manifest(path) => Err(Error::format(
            path,
            "has no index_map (written by raffm-extract) that fits either checkpoint",
        )),
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorDiff {
    pub name: String,
    /// The shape compared: the sub-model's, when sliced through an index map.
    pub shape: Vec<usize>,
    /// The global tensor's shape, where a slice of it was compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliced_from: Option<Vec<usize>>,
    /// The global tensor's name, where the sub-model's layer came from another position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_name: Option<String>,
    pub max_abs_diff: f64,
    /// ‖a−b‖₂/‖a‖₂; infinite (null in JSON) when a is zero and b is not.
    pub relative_change: f64,
    pub bit_identical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeMismatch {
    pub name: String,
    pub shape_a: Vec<usize>,
    pub shape_b: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LargestChange {
    pub tensor: String,
    pub relative_change: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffSummary {
    pub compared: usize,
    pub identical: usize,
    pub largest_change: Option<LargestChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    pub index_map: Option<IndexMapping>,
    pub tensors: Vec<TensorDiff>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub summary: DiffSummary,
}

fn compare(name: &str, a: &HostTensor, b: &HostTensor) -> TensorDiff {
    let (mut max_abs, mut diff_sq, mut a_sq) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let d = x as f64 - y as f64;
        max_abs = max_abs.max(d.abs());
        diff_sq += d * d;
        a_sq += x as f64 * x as f64;
    }
    let relative_change = if diff_sq == 0.0 {
        0.0
    } else if a_sq == 0.0 {
        f64::INFINITY
    } else {
        (diff_sq / a_sq).sqrt()
    };
    TensorDiff {
        name: name.to_string(),
        shape: b.shape.clone(),
        sliced_from: None,
        global_name: None,
        max_abs_diff: max_abs,
        relative_change,
        bit_identical: a.bit_eq(b),
    }
}

/// Tensor-by-tensor comparison of `a` and `b`. With a mapping, the sub-model's tensors
/// are compared with the slices of the other side's that they came from.
pub fn diff(a: &Checkpoint, b: &Checkpoint, mapping: Option<&IndexMapping>) -> Diff {
    // (name in a, name in b) of the tensors to compare, in the sub-model's order.
    let pairs: Vec<(&String, &String)> = match mapping {
        Some(m) if m.sub_model == Side::B => model_order(b)
            .into_iter()
            .filter_map(|(name, _)| {
                let source = m.map.get(name).map_or(name.as_str(), |i| i.source(name));
                a.tensors.get_key_value(source).map(|(k, _)| (k, name))
            })
            .collect(),
        Some(m) => model_order(a)
            .into_iter()
            .filter_map(|(name, _)| {
                let source = m.map.get(name).map_or(name.as_str(), |i| i.source(name));
                b.tensors.get_key_value(source).map(|(k, _)| (name, k))
            })
            .collect(),
        None => model_order(a)
            .into_iter()
            .filter_map(|(name, _)| b.tensors.get_key_value(name).map(|(k, _)| (name, k)))
            .collect(),
    };
    let mut tensors = Vec::new();
    let mut shape_mismatches = Vec::new();
    for &(name_a, name_b) in &pairs {
        let (ta, tb) = (&a.tensors[name_a], &b.tensors[name_b]);
        let (sub_name, global_name) = match mapping.map(|m| m.sub_model) {
            Some(Side::A) => (name_a, name_b),
            _ => (name_b, name_a),
        };
        let index = mapping.and_then(|m| Some((m.map.get(sub_name)?, m.sub_model)));
        // (a's values, b's values, the global shape) of a slice that fits.
        let sliced = match index {
            Some((i, Side::B)) if gathered_shape(i, ta).as_ref() == Some(&tb.shape) => {
                Some((i.gather(ta), tb.clone(), &ta.shape))
            }
            Some((i, Side::A)) if gathered_shape(i, tb).as_ref() == Some(&ta.shape) => {
                Some((ta.clone(), i.gather(tb), &tb.shape))
            }
            _ => None,
        };
        let moved_from = (sub_name != global_name).then(|| global_name.clone());
        tensors.push(match sliced {
            Some((x, y, global)) => TensorDiff {
                sliced_from: (*global != x.shape).then(|| global.clone()),
                global_name: moved_from,
                ..compare(sub_name, &x, &y)
            },
            None if ta.shape == tb.shape => compare(sub_name, ta, tb),
            None => {
                let (shape_a, shape_b) = (ta.shape.clone(), tb.shape.clone());
                shape_mismatches.push(ShapeMismatch {
                    name: sub_name.clone(),
                    shape_a,
                    shape_b,
                });
                continue;
            }
        });
    }
    let largest_change = tensors
        .iter()
        .filter(|t| t.max_abs_diff > 0.0)
        .max_by(|x, y| x.relative_change.total_cmp(&y.relative_change))
        .map(|t| LargestChange {
            tensor: t.name.clone(),
            relative_change: t.relative_change,
        });
    let summary = DiffSummary {
        compared: tensors.len(),
        identical: tensors.iter().filter(|t| t.bit_identical).count(),
        largest_change,
    };
    let only = |x: &Checkpoint, paired: Vec<&String>| -> Vec<String> {
        x.tensors
            .keys()
            .filter(|n| !paired.contains(n))
            .cloned()
            .collect()
    };
    let label = |c: &Checkpoint| c.source.as_ref().map(|p| p.display().to_string());
    Diff {
        a: label(a).unwrap_or_else(|| "a".into()),
        b: label(b).unwrap_or_else(|| "b".into()),
        index_map: mapping.cloned(),
        tensors,
        shape_mismatches,
        only_in_a: only(a, pairs.iter().map(|p| p.0).collect()),
        only_in_b: only(b, pairs.iter().map(|p| p.1).collect()),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::core::elastic::{Axis, AxisSizes, Factor, Widths};
    use crate::core::tensor::Norm;
    use crate::fl::extract::{extract, select, selection_map, Strategy};
    use crate::fl::prioritize::prioritize;
    use crate::models::families::bert::config::full_layer;
    use crate::models::families::bert::{tiny_model, Variant};

    fn model(seed: u64) -> Checkpoint {
        Checkpoint::random(&tiny_model(Variant::Bert, 2, 16, 4, 24, true), seed)
    }

    /// A global model (head_dim 4) and a sub-model of it with `widths`.
    fn sub_model(strategy: Strategy, widths: &Widths) -> (Checkpoint, Checkpoint, IndexMap) {
        let global = model(5);
        let selection = select(
            &global.config,
            strategy,
            &global.config.widths(),
            widths,
            1,
            9,
            "c",
        );
        let map = selection_map(&global.config, widths, &selection);
        let sub = extract(&global, widths, &map).unwrap();
        (global, sub, map)
    }

    fn narrow(
        hidden: usize,
        heads: usize,
        head_dim: usize,
        ffn: usize,
        layers: Vec<usize>,
    ) -> Widths {
        Widths {
            global: AxisSizes::of(&[(Axis::Hidden, hidden), (Axis::Vocab, VOCAB)]),
            layers: vec![full_layer(heads, head_dim, ffn); layers.len()],
            global_layers: layers,
        }
    }

    #[test]
    fn a_checkpoint_equals_itself() {
        let c = model(3);
        let d = diff(&c, &c, None);
        let n = c.tensors.len();
        assert_eq!((d.summary.compared, d.summary.identical), (n, n));
        assert!(d.summary.largest_change.is_none());
        assert!(d
            .tensors
            .iter()
            .all(|t| t.max_abs_diff == 0.0 && t.relative_change == 0.0));
        assert!(d.only_in_a.is_empty() && d.only_in_b.is_empty() && d.shape_mismatches.is_empty());
    }

    #[test]
    fn prioritizing_changes_exactly_the_tensors_a_moved_axis_indexes() {
        let c = model(4);
        let (p, permutations) = prioritize(&c, Norm::L1, |_| {});
        let moved = |axis: Axis, layer: Option<usize>| {
            permutations.iter().any(|q| {
                q.axis == axis && (q.layer.is_none() || q.layer == layer) && !q.is_identity()
            })
        };
        assert!(
            moved(Axis::Heads, Some(0)),
            "no head moved: pick another seed"
        );
        let d = diff(&c, &p, None);
        assert_eq!(d.summary.compared, c.tensors.len());
        let specs = c.config.tensors();
        for t in &d.tensors {
            let spec = specs.iter().find(|s| s.name == t.name).unwrap();
            let permuted = spec.dims.iter().flatten().any(|f| match f {
                Factor::Axis(a) => moved(*a, spec.layer),
                Factor::Fixed(_) => false,
            });
            assert_eq!(!t.bit_identical, permuted, "{}", t.name);
            assert_eq!(t.relative_change > 0.0, permuted, "{}", t.name);
        }
    }

    #[test]
    fn a_sub_model_equals_its_slice_of_the_global_model() {
        for widths in [
            narrow(16, 2, 3, 12, vec![0, 1]),
            narrow(10, 3, 4, 24, vec![1]),
        ] {
            let (global, sub, map) = sub_model(Strategy::Random, &widths);
            assert!(map_fits(&map, &global, &sub) && !map_fits(&map, &sub, &global));
            let n = sub.tensors.len();
            for sub_model in [Side::A, Side::B] {
                let mapping = IndexMapping {
                    map: map.clone(),
                    manifest: "m".into(),
                    sub_model,
                };
                let d = match sub_model {
                    Side::A => diff(&sub, &global, Some(&mapping)),
                    Side::B => diff(&global, &sub, Some(&mapping)),
                };
                assert!(d.shape_mismatches.is_empty());
                assert_eq!((d.summary.compared, d.summary.identical), (n, n));
                assert!(d.tensors.iter().any(|t| t.sliced_from.is_some()));
                let dropped = global.tensors.len() - n;
                let global_only = if sub_model == Side::A {
                    &d.only_in_b
                } else {
                    &d.only_in_a
                };
                assert_eq!(global_only.len(), dropped);
            }
        }
    }

    #[test]
    fn the_index_map_is_found_in_the_sub_models_manifest() {
        let (global, sub, map) = sub_model(Strategy::Static, &narrow(16, 3, 4, 8, vec![0, 1]));
        let dir = tempfile::tempdir().unwrap();
        let (global_dir, sub_dir) = (dir.path().join("global"), dir.path().join("sub"));
        global.save(&global_dir).unwrap();
        sub.save(&sub_dir).unwrap();
        let record = crate::core::manifest::StageRecord::ExtractBase {};
        let mut manifest = Manifest::new(record, "test", serde_json::Value::Null);
        manifest.placement = Some(crate::core::contract::Placement {
            client: "c".into(),
            round: 1,
            global_sha256: "ab".repeat(32),
            strategy: Strategy::Static,
            index_map: map,
            adapter_scaling: None,
        });
        let text = serde_json::to_string(&manifest).unwrap();
        std::fs::write(sub_dir.join(MANIFEST_FILE), text).unwrap();

        let (g, s) = (
            super::super::load_checkpoint(&global_dir).unwrap(),
            super::super::load_checkpoint(&sub_dir).unwrap(),
        );
        let auto = |a, b| choose_index_map(a, b, &IndexMapChoice::Auto).unwrap();
        assert_eq!(auto(&g, &s).unwrap().sub_model, Side::B);
        assert_eq!(auto(&s, &g).unwrap().sub_model, Side::A);
        assert!(auto(&g, &g).is_none());
        let explicit = IndexMapChoice::Manifest(sub_dir.clone());
        let mapping = choose_index_map(&g, &s, &explicit).unwrap().unwrap();
        assert_eq!(
            diff(&g, &s, Some(&mapping)).summary.identical,
            s.tensors.len()
        );
        assert!(choose_index_map(&g, &s, &IndexMapChoice::Manifest(global_dir)).is_err());
    }
}
