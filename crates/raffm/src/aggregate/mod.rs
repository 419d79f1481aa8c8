//! Heterogeneous FedAvg (paper eq. 7): every element of the global model becomes the
//! weighted mean of the values that the participating clients hold for it, placed by each
//! client's index map; elements that no client holds keep their value, bit for bit.
//!
//! With a server learning rate `eta` the new value is `old + eta * (mean - old)`; `eta = 1`
//! is plain FedAvg and assigns the mean itself. Sums are kept in f64, so identical
//! updates average back to exactly themselves.
//!
//! [`update`] reads an update, [`check`] validates it, [`sums`] accumulates it, and
//! [`aggregate_dirs`] drives them over a round's folders.

pub mod check;
pub mod sums;
pub mod update;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
pub use sums::Accumulator;
pub use update::{ClientUpdate, UpdateWeights};

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

impl Weighting {
    /// The weight of an update, or why it has none.
    pub fn weight_of(self, update: &ClientUpdate) -> std::result::Result<f64, String> {
        match (self, update.num_examples) {
            (Weighting::Uniform, _) => Ok(1.0),
            (Weighting::Examples, Some(n)) if n > 0 => Ok(n as f64),
            (Weighting::Examples, Some(_)) => {
                Err("its manifest says it trained on 0 examples".into())
            }
            (Weighting::Examples, None) => {
                Err("its manifest does not say how many examples it trained on".into())
            }
        }
    }
}

/// Per-tensor statistics of an aggregation.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Elements of the global model that at least one client updated.
    pub updated_elements: u64,
    pub total_elements: u64,
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
            let verdict = verdict
                .and_then(
                    |()| match clients.iter().any(|c| c.client == update.client) {
                        true => Err("given twice; each client counts once per round".to_string()),
                        false => Ok(()),
                    },
                )
                .and_then(|()| weighting.weight_of(&update));
            let weight = match verdict {
                Ok(weight) => weight,
                Err(reason) if skip_bad => {
                    skipped.push(Skipped {
                        dir: dir.clone(),
                        client: Some(update.client.clone()),
                        reason,
                    });
                    continue;
                }
                Err(reason) => {
                    return Err(Error::Invalid(format!(
                        "client {} ({}): {reason}",
                        update.client,
                        dir.display()
                    )))
                }
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

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::elastic::index::{IndexMap, Indices, TensorIndex};
    use crate::elastic::{Axis, AxisSizes, Factor, Widths};
    use crate::extract::{extract, select, selection_map, Strategy};
    use crate::families::bert::config::full_layer;
    use crate::families::bert::{tiny_model, Variant};
    use crate::tensor::HostTensor;

    fn global() -> Checkpoint {
        let mut g = Checkpoint::random(&tiny_model(Variant::Bert, 2, 16, 4, 24, true), 1);
        // As if read from disk: the hash updates are checked against.
        g.files.push(crate::io::FileRecord {
            path: "g/model.safetensors".into(),
            sha256: "cd".repeat(32),
            bytes: 0,
        });
        g
    }

    /// The name of the matrix of layer `layer` whose first dimension is `first` (and, with
    /// `second`, whose second is), from the description.
    fn matrix(g: &Checkpoint, layer: usize, first: Axis, second: Option<Axis>) -> String {
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
    fn outer_vector(g: &Checkpoint) -> String {
        let (_, after) = g.config.outer_tensors();
        after
            .into_iter()
            .find(|t| !t.is_matrix() && t.has_axis(Axis::Hidden))
            .unwrap()
            .name
    }

    /// A "trained" sub-model: its own random values in the selected places, then `edit`.
    fn update_with(
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
        ClientUpdate {
            client: format!("c{seed}"),
            weights: UpdateWeights::from_checkpoint(trained),
            index_map: map,
            global_sha256: global.weights_sha256().map(str::to_string),
            num_examples: Some(10),
            files: Vec::new(),
        }
    }

    fn sub_model(g: &Checkpoint, widths: &Widths, strategy: Strategy) -> (Checkpoint, IndexMap) {
        let sel = select(&g.config, strategy, &g.config.widths(), widths, 0, 0, "x");
        let map = selection_map(&g.config, widths, &sel);
        (extract(g, widths, &map).unwrap(), map)
    }

    fn full_update_with(
        global: &Checkpoint,
        seed: u64,
        edit: impl FnOnce(&mut Checkpoint),
    ) -> ClientUpdate {
        let (sub, map) = sub_model(global, &global.config.widths(), Strategy::Static);
        update_with(global, sub, map, seed, edit)
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
        // Negative zeros too: a sum that starts at +0.0 would turn them positive.
        let vector = outer_vector(&g);
        let u = full_update_with(&g, 5, |c| c.tensor_mut(&vector).data[0] = -0.0);
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
    fn a_narrower_shallower_sub_model_aggregated_unchanged_gives_back_the_global_model() {
        let g = global();
        let widths = Widths {
            global: AxisSizes::of(&[(Axis::Hidden, 11), (Axis::Vocab, VOCAB)]),
            layers: vec![full_layer(3, 2, 9)],
            global_layers: vec![1],
        };
        for strategy in [Strategy::Static, Strategy::Random] {
            let (sub, map) = sub_model(&g, &widths, strategy);
            assert!(map.values().any(|i| i.from.is_some()));
            let u = update_with(&g, sub.clone(), map, 0, |c| *c = sub.clone());
            u.check(&g).unwrap();
            let (out, coverage) = aggregate(&g, &[(&u, 2.0)], 1.0);
            for (name, t) in &g.tensors {
                assert!(t.bit_eq(&out.tensors[name]), "{strategy:?}: {name} changed");
            }
            assert!(coverage.updated_elements < coverage.total_elements);
            assert_eq!(coverage.updated_elements, u.weights.parameter_count());
        }
    }

    #[test]
    fn disjoint_halves_take_their_own_clients_values_and_the_rest_is_untouched() {
        let g = global();
        let name = matrix(&g, 0, Axis::Ffn, None); // [24, 16]
        let half = |rows: std::ops::Range<usize>| -> (Checkpoint, IndexMap) {
            let mut map = IndexMap::new();
            map.insert(
                name.clone(),
                TensorIndex {
                    from: None,
                    dims: vec![Some(Indices(rows.collect())), None],
                },
            );
            let mut sub = g.clone();
            sub.tensors.retain(|n, _| *n == name);
            let t = map[&name].gather(&g.tensors[&name]);
            sub.tensors.insert(name.clone(), t);
            (sub, map)
        };
        let (a_sub, a_map) = half(0..12);
        let (b_sub, b_map) = half(12..24);
        let fill = |value: f32| {
            let name = name.clone();
            move |c: &mut Checkpoint| c.tensor_mut(&name).data.fill(value)
        };
        let a = update_with(&g, a_sub, a_map, 0, fill(1.0));
        let b = update_with(&g, b_sub, b_map, 0, fill(2.0));
        let (out, coverage) = aggregate(&g, &[(&a, 1.0), (&b, 5.0)], 1.0);
        let t = &out.tensors[&name];
        assert!(
            t.data[..12 * 16].iter().all(|&v| v == 1.0)
                && t.data[12 * 16..].iter().all(|&v| v == 2.0)
        );
        assert_eq!(coverage.updated_elements, 24 * 16);
        for (n, t) in &g.tensors {
            if *n != name {
                assert!(t.bit_eq(&out.tensors[n]), "{n} changed");
            }
        }
    }

    #[test]
    fn overlapping_holdings_give_the_closed_form_weighted_mean() {
        let g = global();
        let small = Widths {
            global: AxisSizes::of(&[(Axis::Hidden, 16), (Axis::Vocab, VOCAB)]),
            layers: vec![full_layer(2, 2, 10); 2],
            global_layers: vec![0, 1],
        };
        let (sub_small, map_small) = sub_model(&g, &small, Strategy::Static);
        let a = update_with(&g, sub_small, map_small, 11, |_| {});
        let b = full_update(&g, 12);
        let (wa, wb) = (30.0, 10.0);
        let (out, _) = aggregate(&g, &[(&a, wa), (&b, wb)], 1.0);
        let name = matrix(&g, 1, Axis::Ffn, None); // [24, 16], a holds rows 0..10
        let (ta, tb, to) = (
            values(&a, &name),
            values(&b, &name),
            &out.tensors[&name].data,
        );
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
        let o = matrix(&g, 1, Axis::Hidden, Some(Axis::ValueDim)); // [16, 16]
        let cols = &a.index_map[&o].dims[1].as_ref().unwrap().0;
        let (ta, tb, to) = (values(&a, &o), values(&b, &o), &out.tensors[&o].data);
        for (j, &c) in cols.iter().enumerate() {
            let want = ((wa * ta[3 * cols.len() + j] as f64 + wb * tb[3 * 16 + c] as f64)
                / (wa + wb)) as f32;
            assert_eq!(to[3 * 16 + c], want);
        }
        // Server learning rate: halfway from the old value to the mean.
        let (half, _) = aggregate(&g, &[(&b, 1.0)], 0.5);
        let (old, new) = (g.tensors[&name].data[0] as f64, values(&b, &name)[0] as f64);
        let v = (old + 0.5 * (new - old)) as f32;
        assert_eq!(half.tensors[&name].data[0], v);
    }

    #[test]
    fn bad_updates_are_rejected_with_the_reason() {
        let g = global();
        let vector = outer_vector(&g);
        let mut other_round = full_update(&g, 1);
        other_round.global_sha256 = Some("ab".repeat(32));
        assert!(other_round.check(&g).unwrap_err().contains("another round"));
        let nan = full_update_with(&g, 2, |c| c.tensor_mut(&vector).data[3] = f32::NAN);
        let e = nan.check(&g).unwrap_err();
        assert!(
            e.contains(&vector) && e.contains("non-finite") && e.contains("element 3"),
            "{e}"
        );
        let ffn = matrix(&g, 0, Axis::Ffn, None);
        let shape = full_update_with(&g, 3, |c| {
            *c.tensor_mut(&ffn) = HostTensor::zeros(vec![3, 16]);
        });
        let e = shape.check(&g).unwrap_err();
        assert!(e.contains(&ffn) && e.contains("[3, 16]"), "{e}");
        let mut repeated = full_update(&g, 5);
        repeated.index_map.get_mut(&vector).unwrap().dims[0] =
            Some(Indices((0..16).map(|i| i / 2).collect()));
        let e = repeated.check(&g).unwrap_err();
        assert!(e.contains(&vector) && e.contains("repeats"), "{e}");
        let mut two_dims_of_a_vector = full_update(&g, 6);
        two_dims_of_a_vector
            .index_map
            .get_mut(&vector)
            .unwrap()
            .dims
            .push(None);
        let e = two_dims_of_a_vector.check(&g).unwrap_err();
        assert!(e.contains(&vector) && e.contains("dimensions"), "{e}");
        let mut twice = full_update(&g, 7);
        let other = matrix(&g, 1, Axis::Ffn, None);
        twice.index_map.get_mut(&ffn).unwrap().from = Some(other);
        assert!(twice.check(&g).unwrap_err().contains("two of its tensors"));
        let mut no_examples = full_update(&g, 8);
        no_examples.num_examples = Some(0);
        assert!(Weighting::Examples.weight_of(&no_examples).is_err());
        assert_eq!(Weighting::Uniform.weight_of(&no_examples), Ok(1.0));
        assert!(full_update(&g, 4).check(&g).is_ok());
    }
}
