//! Aggregation over heterogeneous sub-models: every element of the global model is combined
//! over the clients that hold it, placed by each client's index map; elements that no
//! client holds keep their value, bit for bit.
//!
//! The rules ([`rule`]): heterogeneous FedAvg (paper eq. 7), the weighted mean, kept in f64
//! so identical updates average back to exactly themselves; the coordinate-wise median and
//! trimmed mean ([`robust`]); each optionally after clipping every client's update to an L2
//! bound ([`clip`]); and DP-FedAvg (clipping, Gaussian noise on every element, a fixed
//! denominator; see [`crate::fl::privacy`]). With a server learning rate `eta` the new value is
//! `old + eta * (combined - old)`.
//!
//! [`update`] reads an update, [`check`] validates it, [`sums`] accumulates FedAvg one
//! update at a time, [`report`] records per tensor how many clients held it, and
//! [`aggregate_dirs`] drives them over a round's folders.

pub mod check;
pub mod clip;
mod placement;
pub mod report;
pub mod robust;
pub mod rule;
pub mod sums;
pub mod update;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::Axis;
use crate::core::error::{Error, Result};
use crate::fl::attack::Attack;
pub use report::TensorHoldings;
pub use rule::{DpRound, Rule, ServerRule};
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Coverage {
    /// Elements of the global model that changed: those at least one client updated (with
    /// DP, all of them).
    pub updated_elements: u64,
    pub total_elements: u64,
}

/// A client that took part in an aggregation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contribution {
    pub client: String,
    pub weight: f64,
    pub parameters: u64,
    /// L2 norm of its update w_c − w_global over the elements it holds.
    pub update_norm: f64,
    /// The factor clipping scaled its update by (1: within the bound), where it was clipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_scale: Option<f64>,
    /// The attack its update was made with (experiments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<Attack>,
}

/// An update that was left out, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Per global tensor: holders, and what the rule could do with them.
    pub tensors: Vec<TensorHoldings>,
    /// Every update file read, with the hash its producer recorded.
    pub inputs: Vec<crate::core::io::FileRecord>,
}

/// Where the updates go as they arrive: into running sums (FedAvg), or kept, mapped, until
/// all are in (median, trimmed mean).
enum Combiner<'g> {
    Sums(Accumulator<'g>),
    Kept(Vec<(ClientUpdate, f64)>),
}

impl<'g> Combiner<'g> {
    fn new(global: &'g Checkpoint, rule: &ServerRule) -> Self {
        match rule.rule.is_order_statistic() {
            true => Combiner::Kept(Vec::new()),
            false => Combiner::Sums(Accumulator::new(global, rule.clip().is_some())),
        }
    }

    fn add(&mut self, update: ClientUpdate, weight: f64, scale: f64) {
        match self {
            Combiner::Sums(sums) => sums.add(&update, weight, scale),
            Combiner::Kept(kept) => kept.push((update, scale)),
        }
    }

    fn finish(
        self,
        global: &Checkpoint,
        rule: &ServerRule,
    ) -> (Checkpoint, Coverage, Vec<TensorHoldings>) {
        let (model, coverage, mut tensors) = match self {
            Combiner::Sums(sums) => sums.finish(rule),
            Combiner::Kept(kept) => {
                let refs: Vec<(&ClientUpdate, f64)> = kept.iter().map(|(u, s)| (u, *s)).collect();
                robust::combine(global, &refs, rule)
            }
        };
        if let Some(dp) = &rule.dp {
            let std = rule.server_lr * dp.settings.noise_multiplier * dp.settings.clip_norm
                / dp.settings.expected_clients;
            for t in &mut tensors {
                t.noise_std = Some(std);
                t.noise_per_holder =
                    (t.held > 0).then(|| dp.settings.noise_multiplier / t.holders_mean);
            }
        }
        (model, coverage, tensors)
    }
}

/// Why `update` cannot take part under `rule`, beyond its own checks: DP-FedAvg does not
/// cover a client vocabulary, whose rows say which tokens the client's data holds.
fn rule_admits(
    rule: &ServerRule,
    update: &ClientUpdate,
    global: &Checkpoint,
) -> std::result::Result<(), String> {
    let global_vocab = global.config.widths().global.0.get(&Axis::Vocab).copied();
    if rule.dp.is_some() && update.vocab_size.is_some() && update.vocab_size != global_vocab {
        return Err(format!(
            "holds a client vocabulary ({} of {} token rows), which depends on its data: DP-FedAvg does not cover it (extract with the full vocabulary)",
            update.vocab_size.unwrap_or(0),
            global_vocab.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Reads, checks and aggregates the update folders `dirs` into the next global model by
/// `rule`. One thread reads and checks the next update (and measures its norm) while the
/// other adds the current one, so reading overlaps the arithmetic; FedAvg holds one update
/// at a time, the median and trimmed mean keep them all mapped. A bad update is an error
/// naming the client, or with `skip_bad` is left out and recorded.
pub fn aggregate_dirs(
    global: &Checkpoint,
    dirs: &[PathBuf],
    rule: &ServerRule,
    skip_bad: bool,
) -> Result<Outcome> {
    rule.validate()?;
    let clip = rule.clip();
    let mut combiner = Combiner::new(global, rule);
    let mut clients: Vec<Contribution> = Vec::new();
    let mut skipped = Vec::new();
    let mut inputs = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for dir in dirs {
                let loaded = ClientUpdate::load(dir).map(|u| {
                    let verdict = u
                        .check(global)
                        .and_then(|()| rule_admits(rule, &u, global))
                        .map(|()| clip::delta_norm(&u, global));
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
                    |norm| match clients.iter().any(|c| c.client == update.client) {
                        true => Err("given twice; each client counts once per round".to_string()),
                        false => Ok(norm),
                    },
                )
                .and_then(|norm| Ok((norm, rule.weighting.weight_of(&update)?)));
            let (norm, weight) = match verdict {
                Ok(x) => x,
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
            let scale = clip.map_or(1.0, |bound| clip::clip_scale(norm, bound));
            inputs.extend(update.files.iter().cloned());
            clients.push(Contribution {
                client: update.client.clone(),
                weight,
                parameters: update.weights.parameter_count(),
                update_norm: norm,
                clip_scale: clip.map(|_| scale),
                attack: update.attack,
            });
            combiner.add(update, weight, scale);
        }
        Ok(())
    })?;
    // With DP a round may draw no one; the noise still goes in.
    if clients.is_empty() && rule.dp.is_none() {
        return Err(Error::Invalid("no update to aggregate".into()));
    }
    let (model, coverage, tensors) = combiner.finish(global, rule);
    Ok(Outcome {
        model,
        coverage,
        clients,
        skipped,
        tensors,
        inputs,
    })
}

/// Combines checked in-memory `updates` (with their weights) by `rule`.
pub fn aggregate_with(
    global: &Checkpoint,
    updates: &[(&ClientUpdate, f64)],
    rule: &ServerRule,
) -> (Checkpoint, Coverage, Vec<TensorHoldings>) {
    let clip = rule.clip();
    let scale =
        |u: &ClientUpdate| clip.map_or(1.0, |b| clip::clip_scale(clip::delta_norm(u, global), b));
    if rule.rule.is_order_statistic() {
        let scaled: Vec<(&ClientUpdate, f64)> =
            updates.iter().map(|(u, _)| (*u, scale(u))).collect();
        let (model, coverage, tensors) = robust::combine(global, &scaled, rule);
        return (model, coverage, tensors);
    }
    let mut sums = Accumulator::new(global, clip.is_some());
    for (u, w) in updates {
        sums.add(u, *w, scale(u));
    }
    Combiner::Sums(sums).finish(global, rule)
}

/// Heterogeneous FedAvg of checked in-memory `updates` (with their weights).
pub fn aggregate(
    global: &Checkpoint,
    updates: &[(&ClientUpdate, f64)],
    server_lr: f64,
) -> (Checkpoint, Coverage) {
    let (model, coverage, _) = aggregate_with(
        global,
        updates,
        &ServerRule::fedavg(Weighting::Examples, server_lr),
    );
    (model, coverage)
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::core::elastic::index::{IndexMap, Indices, TensorIndex};
    use crate::core::elastic::{Axis, AxisSizes, Widths};
    use crate::core::tensor::HostTensor;
    use crate::fl::extract::Strategy;
    use crate::models::families::bert::config::full_layer;

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
