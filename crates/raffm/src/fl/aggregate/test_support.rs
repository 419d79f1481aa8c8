//! Hand-built globals and updates for the aggregation tests.

use super::ClientUpdate;
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::index::{IndexMap, Indices, TensorIndex};
use crate::core::elastic::{Axis, Factor, Widths};
use crate::core::tensor::HostTensor;
use crate::fl::extract::{extract, select, selection_map, Strategy};
use crate::models::families::bert::{tiny_model, Variant};

/// The vocabulary of the tiny test models.
pub const VOCAB: usize = 64;

pub fn global() -> Checkpoint {
    let mut g = Checkpoint::random(&tiny_model(Variant::Bert, 2, 16, 4, 24, true), 1);
    // As if read from disk: the hash updates are checked against.
    g.files.push(crate::core::io::FileRecord {
        path: "g/model.safetensors".into(),
        sha256: "cd".repeat(32),
        bytes: 0,
    });
    g
}

/// The name of the matrix of layer `layer` whose first dimension is `first` (and, with
/// `second`, whose second is), from the description.
pub fn matrix(g: &Checkpoint, layer: usize, first: Axis, second: Option<Axis>) -> String {
    g.config
        .tensors()
        .into_iter()
        .find(|t| {
            t.layer == Some(layer)
                && t.is_matrix()
                && t.dims[0] == [Factor::Axis(first)]
                && second.is_none_or(|s| t.dims[1].contains(&Factor::Axis(s)))
        })
        .expect("the description has it")
        .name
}

/// A vector outside the layers (a bias or norm), from the description.
pub fn outer_vector(g: &Checkpoint) -> String {
    let (_, after) = g.config.outer_tensors();
    after
        .into_iter()
        .find(|t| !t.is_matrix() && t.has_axis(Axis::Hidden))
        .unwrap()
        .name
}

/// A "trained" sub-model: its own random values in the selected places, then `edit`.
pub fn update_with(
    global: &Checkpoint,
    sub: Checkpoint,
    map: IndexMap,
    seed: u64,
    edit: impl FnOnce(&mut Checkpoint),
) -> ClientUpdate {
    let noise = Checkpoint::random(&sub.config, seed);
    let mut trained = sub;
    for (name, t) in trained.tensors.iter_mut() {
        if let Some(n) = noise.tensors.get(name) {
            t.data.clone_from(&n.data);
        }
    }
    edit(&mut trained);
    ClientUpdate::in_memory(&format!("c{seed}"), trained, map, global, 10)
}

pub fn sub_model(g: &Checkpoint, widths: &Widths, strategy: Strategy) -> (Checkpoint, IndexMap) {
    let sel = select(&g.config, strategy, &g.config.widths(), widths, 0, 0, "x");
    let map = selection_map(&g.config, widths, &sel);
    (extract(g, widths, &map).unwrap(), map)
}

pub fn full_update_with(
    global: &Checkpoint,
    seed: u64,
    edit: impl FnOnce(&mut Checkpoint),
) -> ClientUpdate {
    let (sub, map) = sub_model(global, &global.config.widths(), Strategy::Static);
    update_with(global, sub, map, seed, edit)
}

pub fn full_update(global: &Checkpoint, seed: u64) -> ClientUpdate {
    full_update_with(global, seed, |_| {})
}

pub fn values<'a>(u: &'a ClientUpdate, name: &str) -> &'a [f32] {
    u.weights.get(name).unwrap().1
}

/// An update that holds `rows` (and, if given, `cols`) of the global matrix `name` and
/// nothing else, with `value(row, col)` at global position (row, col).
pub fn held_update(
    g: &Checkpoint,
    client: &str,
    name: &str,
    rows: &[usize],
    cols: Option<&[usize]>,
    value: impl Fn(usize, usize) -> f32,
) -> ClientUpdate {
    let all_cols: Vec<usize> = (0..g.tensors[name].shape[1]).collect();
    let kept_cols = cols.unwrap_or(&all_cols);
    let data = rows
        .iter()
        .flat_map(|&r| kept_cols.iter().map(move |&c| (r, c)))
        .map(|(r, c)| value(r, c))
        .collect();
    let mut map = IndexMap::new();
    map.insert(
        name.to_string(),
        TensorIndex {
            from: None,
            dims: vec![
                Some(Indices(rows.to_vec())),
                cols.map(|c| Indices(c.to_vec())),
            ],
        },
    );
    let tensor = HostTensor::new(vec![rows.len(), kept_cols.len()], data);
    let trained = g.with_tensors([(name.to_string(), tensor)].into_iter().collect());
    ClientUpdate::in_memory(client, trained, map, g, 10)
}
