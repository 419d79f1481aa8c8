//! Choosing a sub-model for a budget (paper 3.1.3): widths for every elastic axis of the
//! family, from a search space, whose costs satisfy the client's budget.
//!
//! Global axes (hidden size, depth) are enumerated outside a dynamic program over the
//! layers. For each global choice, a layer's options (its per-layer widths) each carry a
//! cost vector, parameters and kept activations, and every cost is linear in the sums of
//! those vectors over the layers (see [`crate::fl::cost`]). The program counts, for every
//! reachable sum, how many per-layer configurations reach it, so it is exact and small.
//! From the tables `largest` takes the feasible configuration with the most parameters,
//! and `sample` draws uniformly among all feasible configurations of all global choices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::elastic::{Axis, AxisSizes, AxisSpec, Scope, Widths};
use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::fl::cost::{Cost, CostModel, LayerCost, OuterCost};

/// Per axis, the widths to choose from, as fractions of the global model's (rounded, at
/// least 1). An axis that is not listed keeps its full width. This is the one place the
/// default search space is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SearchSpace(pub BTreeMap<Axis, Vec<f64>>);

/// Every axis, as the default pipeline (`pipelines/default.json`) searches it: what a
/// pipeline that gives no `search_space`, and `raffm-extract` without budgets.json,
/// search (restricted to the model's axes, [`SearchSpace::restricted_to`]).
impl Default for SearchSpace {
    fn default() -> Self {
        let mut space = Self::per_layer();
        space.0.insert(Axis::Hidden, vec![0.5, 0.75, 1.0]);
        space.0.insert(Axis::Layers, vec![0.5, 0.67, 0.83, 1.0]);
        space
    }
}

const FULL: [f64; 1] = [1.0];

impl SearchSpace {
    /// The per-layer widths only (heads, head dimension, FFN), hidden size and depth kept.
    pub fn per_layer() -> Self {
        Self(BTreeMap::from([
            (Axis::Heads, vec![0.25, 0.5, 0.75, 1.0]),
            (Axis::HeadDim, vec![0.5, 0.75, 1.0]),
            (Axis::Ffn, vec![0.25, 0.5, 0.75, 1.0]),
            (Axis::Hidden, vec![1.0]),
            (Axis::Layers, vec![1.0]),
        ]))
    }

    /// Only the axes a model of `axes` can search: a built-in space for any family.
    pub fn restricted_to(mut self, axes: &[AxisSpec]) -> Self {
        self.0
            .retain(|axis, _| axes.iter().any(|a| a.axis == *axis && a.searchable));
        self
    }

    /// The fractions of `axis` (the full width where the space does not list it).
    pub fn fractions(&self, axis: Axis) -> &[f64] {
        self.0.get(&axis).map_or(&FULL, Vec::as_slice)
    }

    /// Checks the fractions: each in (0, 1], at least one per listed axis.
    pub fn check_fractions(&self) -> Result<()> {
        for (axis, fractions) in &self.0 {
            if fractions.is_empty() || fractions.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
                return Err(Error::Invalid(format!(
                    "search space `{axis}`: fractions must be in (0, 1], got {fractions:?}"
                )));
            }
        }
        Ok(())
    }

    /// Checks the fractions and that every listed axis is an elastic axis of the family
    /// with a width of its own.
    pub fn validate(&self, axes: &[AxisSpec]) -> Result<()> {
        self.check_fractions()?;
        for axis in self.0.keys() {
            if !axes.iter().any(|a| a.axis == *axis && a.searchable) {
                let known: Vec<String> = axes
                    .iter()
                    .filter(|a| a.searchable)
                    .map(|a| a.axis.to_string())
                    .collect();
                return Err(Error::Invalid(format!(
                    "search space `{axis}`: not a width of this model family (its axes: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The widths of `axis` for a full width of `n`, largest first, without repeats.
    pub fn sizes(&self, axis: Axis, n: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = self
            .fractions(axis)
            .iter()
            .map(|f| ((n as f64 * f).round() as usize).clamp(1, n))
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        sizes
    }

    /// Every combination of the listed widths of the searchable `scope` axes (other than
    /// depth), for a model whose widths in that scope are `full`; the largest first. Axes
    /// the search does not choose keep their size in `full`.
    pub fn options(&self, axes: &[AxisSpec], scope: Scope, full: &AxisSizes) -> Vec<AxisSizes> {
        let own = axes
            .iter()
            .filter(|a| a.scope == scope && a.searchable && a.axis != Axis::Layers);
        let mut options = vec![full.clone()];
        for spec in own {
            let sizes = self.sizes(spec.axis, full.get(spec.axis));
            options = options
                .into_iter()
                .flat_map(|o| {
                    sizes.iter().map(move |&n| {
                        let mut o = o.clone();
                        o.set(spec.axis, n);
                        o
                    })
                })
                .collect();
        }
        options
    }
}

/// A client's limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_memory_bytes: Option<u64>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.max_parameters, self.max_train_memory_bytes) {
            (None, None) => write!(f, "unlimited"),
            (Some(p), None) => write!(f, "at most {p} parameters"),
            (None, Some(m)) => write!(f, "at most {:.1} MiB of training memory", mib(m)),
            (Some(p), Some(m)) => write!(
                f,
                "at most {p} parameters and {:.1} MiB of training memory",
                mib(m)
            ),
        }
    }
}

impl Budget {
    pub fn admits(&self, parameters: u64, train_memory: u64) -> bool {
        self.max_parameters.is_none_or(|m| parameters <= m)
            && self
                .max_train_memory_bytes
                .is_none_or(|m| train_memory <= m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The feasible configuration with the most parameters.
    Largest,
    /// Uniform among the feasible configurations, seeded.
    Sample,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "largest" => Ok(Policy::Largest),
            "sample" => Ok(Policy::Sample),
            _ => Err(format!("unknown policy `{s}` (expected largest or sample)")),
        }
    }
}

/// The configuration picked for a budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub widths: Widths,
    pub cost: Cost,
    /// How many configurations of the space fit the budget.
    pub feasible_configurations: f64,
}

/// The sum of the layer costs the program tracks: parameters, and the training state
/// ([`LayerCost::train_state`]) when the budget limits training memory (otherwise 0, so
/// that states merge).
type State = (u64, u64);

/// The options of one global choice (widths of the global axes and a depth).
struct Group {
    global: AxisSizes,
    layers: Vec<usize>,
    outer: OuterCost,
    /// Per layer of the sub-model: its options with their costs.
    options: Vec<Vec<(AxisSizes, LayerCost)>>,
}

/// The dynamic program of one group.
struct Table {
    /// counts[k]: sums over the first k layers -> configurations reaching them.
    counts: Vec<BTreeMap<State, f64>>,
}

/// A search over one space for one budget.
struct Search<'a> {
    model: &'a CostModel,
    budget: Budget,
    /// Whether states track the training state (only a training-memory limit needs it).
    track_state: bool,
}

impl Search<'_> {
    fn state(&self, c: &LayerCost) -> State {
        let state = if self.track_state { c.train_state } else { 0 };
        (c.parameters, state)
    }

    fn fits(&self, group: &Group, state: State) -> bool {
        let parameters = group.outer.parameters + state.0;
        let memory = self.model.train_memory(&group.outer, state.0, state.1);
        self.budget.admits(parameters, memory)
    }

    /// The smallest sums the layers `k..` can reach, per layer count.
    fn min_rest(&self, group: &Group) -> Vec<State> {
        let mut rest = vec![(0, 0); group.options.len() + 1];
        for k in (0..group.options.len()).rev() {
            let smallest = group.options[k]
                .iter()
                .map(|(_, c)| self.state(c))
                .fold((u64::MAX, u64::MAX), |a, b| (a.0.min(b.0), a.1.min(b.1)));
            rest[k] = (rest[k + 1].0 + smallest.0, rest[k + 1].1 + smallest.1);
        }
        rest
    }

    fn table(&self, group: &Group) -> Table {
        let rest = self.min_rest(group);
        let mut counts: Vec<BTreeMap<State, f64>> = vec![BTreeMap::from([((0, 0), 1.0)])];
        for (k, options) in group.options.iter().enumerate() {
            let mut next = BTreeMap::new();
            for (&(p, a), &count) in &counts[k] {
                for (_, cost) in options {
                    let (op, oa) = self.state(cost);
                    let reached = (p + op, a + oa);
                    let lower_bound = (reached.0 + rest[k + 1].0, reached.1 + rest[k + 1].1);
                    if self.fits(group, lower_bound) {
                        *next.entry(reached).or_insert(0.0) += count;
                    }
                }
            }
            counts.push(next);
        }
        Table { counts }
    }

    /// Walks back from `target`, choosing for each layer an option that leads to a
    /// reachable prefix: the most even one for `largest`, one in proportion to its count
    /// for `sample`.
    fn walk_back(
        &self,
        group: &Group,
        table: &Table,
        mut target: State,
        policy: Policy,
        rng: &mut SplitMix64,
    ) -> Vec<AxisSizes> {
        let depth = group.options.len();
        let mut layers = vec![AxisSizes::default(); depth];
        for k in (0..depth).rev() {
            let candidates = group.options[k].iter().filter_map(|(o, c)| {
                let (op, oa) = self.state(c);
                let prefix = (target.0.checked_sub(op)?, target.1.checked_sub(oa)?);
                table.counts[k]
                    .get(&prefix)
                    .map(|&n| ((o, (op, oa), prefix), n))
            });
            let (option, _, prefix) = match policy {
                // Of the configurations with these sums, prefer the most even: the option
                // closest to an equal share of what is left (ties: the widest).
                Policy::Largest => candidates
                    .map(|(x, _)| x)
                    .min_by_key(|(_, cost, _)| imbalance(*cost, target, k as u64 + 1))
                    .expect("a reached state has a predecessor"),
                Policy::Sample => pick_weighted(candidates, rng),
            };
            layers[k] = option.clone();
            target = prefix;
        }
        layers
    }
}

/// How far one layer's costs are from a `1/layers` share of `rest`, relative per cost.
fn imbalance(layer: State, rest: State, layers: u64) -> u64 {
    let axis = |x: u64, total: u64| {
        ((x as u128 * layers as u128).abs_diff(total as u128) * 1_000_000 / (total as u128).max(1))
            as u64
    };
    axis(layer.0, rest.0) + axis(layer.1, rest.1)
}

/// Draws one item with probability proportional to its weight.
fn pick_weighted<T>(items: impl Iterator<Item = (T, f64)>, rng: &mut SplitMix64) -> T {
    let mut items: Vec<(T, f64)> = items.collect();
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.next_f64() * total;
    let last = items.len() - 1;
    for (i, (_, w)) in items.iter().enumerate() {
        if x < *w || i == last {
            return items.swap_remove(i).0;
        }
        x -= w;
    }
    unreachable!("items are never empty")
}

/// Every global choice of the space: widths of the global axes, and a depth with the
/// layers `plan` keeps at it (`plan[d]`: the global layers of a `d`-layer sub-model). The
/// largest global widths and depths first.
fn groups(model: &CostModel, space: &SearchSpace, plan: &[Vec<usize>]) -> Result<Vec<Group>> {
    let config = model.config();
    let axes = config.axes();
    space.validate(axes)?;
    let full = config.widths();
    let depths = space.sizes(Axis::Layers, full.layers.len());
    let mut out = Vec::new();
    for global in space.options(axes, Scope::Global, &full.global) {
        let outer = model.outer(&global);
        for &depth in &depths {
            let layers = plan[depth].clone();
            let options = layers
                .iter()
                .map(|&g| {
                    space
                        .options(axes, Scope::Layer, &full.layers[g])
                        .into_iter()
                        .map(|o| {
                            let cost = model.layer(&global, &o);
                            (o, cost)
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>();
            out.push(Group {
                global: global.clone(),
                layers,
                outer,
                options,
            });
        }
    }
    Ok(out)
}

/// Picks widths for `budget`; see the module docs. `plan[d]` lists the global layers a
/// sub-model of `d` layers keeps (see [`crate::fl::extract::DepthPolicy::plan`]).
pub fn choose(
    model: &CostModel,
    space: &SearchSpace,
    budget: &Budget,
    policy: Policy,
    plan: &[Vec<usize>],
    rng: &mut SplitMix64,
) -> Result<Choice> {
    let groups = groups(model, space, plan)?;
    let search = Search {
        model,
        budget: *budget,
        track_state: budget.max_train_memory_bytes.is_some(),
    };
    let tables: Vec<Table> = groups.iter().map(|g| search.table(g)).collect();
    let feasible_configurations: f64 = tables
        .iter()
        .map(|t| t.counts.last().map_or(0.0, |f| f.values().sum()))
        .sum();
    if feasible_configurations == 0.0 {
        return Err(infeasible(&search, &groups, budget));
    }
    let (group, target) = match policy {
        Policy::Largest => {
            let mut best: Option<((u64, u64), usize, State)> = None;
            for (i, (g, t)) in groups.iter().zip(&tables).enumerate() {
                for &state in t.counts.last().expect("a final table").keys() {
                    let parameters = g.outer.parameters + state.0;
                    let memory = model.train_memory(&g.outer, state.0, state.1);
                    if best.is_none_or(|(key, _, _)| (parameters, memory) > key) {
                        best = Some(((parameters, memory), i, state));
                    }
                }
            }
            let (_, i, state) = best.expect("something is feasible");
            (i, state)
        }
        Policy::Sample => {
            let per_group = tables
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t.counts.last().map_or(0.0, |f| f.values().sum())));
            let i = pick_weighted(per_group, rng);
            let finals = tables[i].counts.last().expect("a final table");
            (i, pick_weighted(finals.iter().map(|(s, c)| (*s, *c)), rng))
        }
    };
    let g = &groups[group];
    let layers = search.walk_back(g, &tables[group], target, policy, rng);
    let widths = Widths {
        global: g.global.clone(),
        layers,
        global_layers: g.layers.clone(),
    };
    Ok(Choice {
        cost: model.cost(&widths),
        widths,
        feasible_configurations,
    })
}

/// The error for a budget nothing fits, with what the smallest candidate needs.
fn infeasible(search: &Search, groups: &[Group], budget: &Budget) -> Error {
    let smallest = groups
        .iter()
        .map(|g| {
            let rest = search.min_rest(g)[0];
            // Without a memory limit the training state was not tracked: count it now.
            let state: u64 = g
                .options
                .iter()
                .map(|o| o.iter().map(|(_, c)| c.train_state).min().unwrap_or(0))
                .sum();
            let memory = search
                .model
                .train_memory(&g.outer, rest.0, state.max(rest.1));
            (g.outer.parameters + rest.0, memory)
        })
        .min();
    let reason = match smallest {
        Some((p, m)) => format!(
            "the smallest sub-model in the search space has {p} parameters and needs about {:.1} MiB to train",
            mib(m)
        ),
        None => "the search space is empty".into(),
    };
    Error::Infeasible {
        client: None,
        budget: format!("budget ({budget})"),
        reason,
    }
}

/// The largest configuration whose inference memory fits `max_bytes` (and `budget`).
///
/// Inference memory is the weights plus the largest layer's activations, which is not a
/// sum over layers. So for every activation level `a` a layer can have, the search keeps
/// the options at or below `a` and asks for at most `max_bytes / 4 - a` parameters; the
/// best over all levels is the exact optimum.
pub fn choose_for_inference(
    model: &CostModel,
    space: &SearchSpace,
    budget: &Budget,
    max_bytes: u64,
    plan: &[Vec<usize>],
) -> Result<Choice> {
    let all = groups(model, space, plan)?;
    let mut levels: Vec<u64> = all
        .iter()
        .flat_map(|g| {
            g.options
                .iter()
                .flatten()
                .map(|(_, c)| c.inference_activations)
        })
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let mut best: Option<Choice> = None;
    let mut rng = SplitMix64::new(0); // unused by `largest`
    for level in levels {
        let Some(max_parameters) = (max_bytes / 4).checked_sub(level) else {
            break;
        };
        let capped = Budget {
            max_parameters: Some(
                budget
                    .max_parameters
                    .map_or(max_parameters, |m| m.min(max_parameters)),
            ),
            ..*budget
        };
        let search = Search {
            model,
            budget: capped,
            track_state: capped.max_train_memory_bytes.is_some(),
        };
        for g in &all {
            let options: Vec<Vec<(AxisSizes, LayerCost)>> = g
                .options
                .iter()
                .map(|o| {
                    o.iter()
                        .filter(|(_, c)| c.inference_activations <= level)
                        .cloned()
                        .collect()
                })
                .collect();
            if options.iter().any(Vec::is_empty) {
                continue;
            }
            let g = Group {
                global: g.global.clone(),
                layers: g.layers.clone(),
                outer: g.outer,
                options,
            };
            let table = search.table(&g);
            let Some(target) = table.counts.last().and_then(|f| {
                f.keys()
                    .max_by_key(|s| (s.0, std::cmp::Reverse(s.1)))
                    .copied()
            }) else {
                continue;
            };
            let parameters = g.outer.parameters + target.0;
            if best
                .as_ref()
                .is_some_and(|b| b.cost.parameters >= parameters)
            {
                continue;
            }
            let layers = search.walk_back(&g, &table, target, Policy::Largest, &mut rng);
            let widths = Widths {
                global: g.global.clone(),
                layers,
                global_layers: g.layers.clone(),
            };
            best = Some(Choice {
                cost: model.cost(&widths),
                widths,
                feasible_configurations: f64::NAN,
            });
        }
    }
    best.ok_or_else(|| Error::Infeasible {
        client: None,
        budget: format!(
            "inference budget ({:.1} MiB{})",
            mib(max_bytes),
            match budget.max_parameters.or(budget.max_train_memory_bytes) {
                Some(_) => format!(", {budget}"),
                None => String::new(),
            }
        ),
        reason: "no sub-model in the search space fits".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::cost::TrainingShape;
    use crate::fl::extract::DepthPolicy;
    use crate::models::families::bert::{tiny_model, Variant};

    /// Every configuration of the space: each global choice, each depth, every per-layer
    /// combination.
    fn all_configs(model: &CostModel, space: &SearchSpace, plan: &[Vec<usize>]) -> Vec<Widths> {
        let config = model.config();
        let full = config.widths();
        let mut out = Vec::new();
        for global in space.options(config.axes(), Scope::Global, &full.global) {
            for depth in space.sizes(Axis::Layers, full.layers.len()) {
                let options = space.options(config.axes(), Scope::Layer, &full.layers[0]);
                let mut layer_sets: Vec<Vec<AxisSizes>> = vec![vec![]];
                for _ in 0..depth {
                    layer_sets = layer_sets
                        .into_iter()
                        .flat_map(|prefix| {
                            options.iter().map(move |o| {
                                let mut p = prefix.clone();
                                p.push(o.clone());
                                p
                            })
                        })
                        .collect();
                }
                for layers in layer_sets {
                    out.push(Widths {
                        global: global.clone(),
                        layers,
                        global_layers: plan[depth].clone(),
                    });
                }
            }
        }
        out
    }

    fn space(all_axes: bool) -> SearchSpace {
        let mut space = SearchSpace(BTreeMap::from([
            (Axis::Heads, vec![0.5, 1.0]),
            (Axis::HeadDim, vec![0.5, 1.0]),
            (Axis::Ffn, vec![0.25, 1.0]),
        ]));
        if all_axes {
            space.0.insert(Axis::Hidden, vec![0.5, 0.75, 1.0]);
            space.0.insert(Axis::Layers, vec![0.34, 0.67, 1.0]);
        }
        space
    }

    fn small_problem() -> (CostModel, Vec<Vec<usize>>) {
        let config = tiny_model(Variant::Bert, 3, 24, 4, 40, true);
        let model = CostModel::new(
            &config,
            TrainingShape {
                batch_size: 4,
                max_seq_len: 16,
                ..Default::default()
            },
        );
        let plan = DepthPolicy::Even.plan(3, &[]);
        (model, plan)
    }

    #[test]
    fn largest_is_the_brute_force_optimum_over_every_axis() {
        let (model, plan) = small_problem();
        for all_axes in [false, true] {
            let space = space(all_axes);
            let configs = all_configs(&model, &space, &plan);
            let full = model.cost(&model.config().widths());
            for percent in (10..=100).step_by(5) {
                for memory in [None, Some(full.train_memory_bytes * 6 / 10)] {
                    let budget = Budget {
                        max_parameters: Some(full.parameters * percent / 100),
                        max_train_memory_bytes: memory,
                    };
                    let feasible: Vec<&Widths> = configs
                        .iter()
                        .filter(|c| {
                            let k = model.cost(c);
                            budget.admits(k.parameters, k.train_memory_bytes)
                        })
                        .collect();
                    let result = choose(
                        &model,
                        &space,
                        &budget,
                        Policy::Largest,
                        &plan,
                        &mut SplitMix64::new(0),
                    );
                    if feasible.is_empty() {
                        let e = result.unwrap_err();
                        assert!(matches!(e, Error::Infeasible { .. }), "{e}");
                        assert!(e.to_string().contains("smallest sub-model"), "{e}");
                        continue;
                    }
                    let choice = result.unwrap();
                    let best = feasible
                        .iter()
                        .map(|c| model.cost(c).parameters)
                        .max()
                        .unwrap();
                    assert_eq!(
                        choice.cost.parameters, best,
                        "{percent}%, all axes {all_axes}: a larger feasible configuration was left unused"
                    );
                    assert!(budget.admits(choice.cost.parameters, choice.cost.train_memory_bytes));
                    let counted = model
                        .config()
                        .with_widths(&choice.widths)
                        .unwrap()
                        .parameter_count();
                    assert_eq!(choice.cost.parameters, counted);
                    assert_eq!(choice.feasible_configurations as usize, feasible.len());
                }
            }
        }
    }

    #[test]
    fn inference_choice_is_the_brute_force_optimum_and_fits() {
        let (model, plan) = small_problem();
        let space = space(true);
        let configs = all_configs(&model, &space, &plan);
        let full = model.cost(&model.config().widths());
        let smallest = configs
            .iter()
            .map(|c| model.cost(c).inference_memory_bytes)
            .min()
            .unwrap();
        let mut distinct_answers = std::collections::BTreeSet::new();
        for step in 0..=20 {
            // From below the smallest sub-model to above the full model.
            let max_bytes = smallest - 1 + (full.inference_memory_bytes + 2 - smallest) * step / 20;
            let best = configs
                .iter()
                .map(|c| model.cost(c))
                .filter(|k| k.inference_memory_bytes <= max_bytes)
                .map(|k| k.parameters)
                .max();
            let result = choose_for_inference(&model, &space, &Budget::default(), max_bytes, &plan);
            match best {
                None => assert!(matches!(result.unwrap_err(), Error::Infeasible { .. })),
                Some(best) => {
                    let choice = result.unwrap();
                    assert_eq!(choice.cost.parameters, best, "budget {max_bytes} bytes");
                    assert!(choice.cost.inference_memory_bytes <= max_bytes);
                    distinct_answers.insert(best);
                }
            }
        }
        assert!(
            distinct_answers.len() >= 5,
            "the sweep is too coarse to test much"
        );
        assert!(distinct_answers.contains(&full.parameters));
    }

    #[test]
    fn sample_is_seeded_feasible_and_uniform_over_every_axis() {
        let (model, plan) = small_problem();
        let space = space(true);
        let configs = all_configs(&model, &space, &plan);
        let full = model.cost(&model.config().widths());
        let budget = Budget {
            max_parameters: Some(full.parameters * 70 / 100),
            max_train_memory_bytes: Some(full.train_memory_bytes * 8 / 10),
        };
        let feasible = configs
            .iter()
            .filter(|c| {
                let k = model.cost(c);
                budget.admits(k.parameters, k.train_memory_bytes)
            })
            .count();
        assert!(
            feasible > 20,
            "too few feasible configurations to test: {feasible}"
        );
        let draw = |rng: &mut SplitMix64| {
            choose(&model, &space, &budget, Policy::Sample, &plan, rng).unwrap()
        };
        assert_eq!(draw(&mut SplitMix64::new(5)), draw(&mut SplitMix64::new(5)));
        let mut seen: BTreeMap<Widths, usize> = BTreeMap::new();
        let mut rng = SplitMix64::new(9);
        let draws = 100 * feasible;
        for _ in 0..draws {
            let c = draw(&mut rng);
            assert!(budget.admits(c.cost.parameters, c.cost.train_memory_bytes));
            *seen.entry(c.widths).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            feasible,
            "some feasible configurations were never drawn"
        );
        // Each count is Binomial(draws, 1/n): mean 100, sd ~10; 5 sd either way.
        assert!(
            seen.values().all(|&n| (50..=150).contains(&n)),
            "not uniform: {seen:?}"
        );
    }

    #[test]
    fn a_full_budget_gives_the_full_model() {
        let (model, plan) = small_problem();
        let choice = choose(
            &model,
            &space(true),
            &Budget::default(),
            Policy::Largest,
            &plan,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        assert_eq!(choice.widths, model.config().widths());
    }

    #[test]
    fn unknown_axes_and_bad_fractions_are_errors() {
        let (model, plan) = small_problem();
        let mut bad = space(false);
        bad.0.insert(Axis::ValueDim, vec![0.5]);
        let e = choose(
            &model,
            &bad,
            &Budget::default(),
            Policy::Largest,
            &plan,
            &mut SplitMix64::new(0),
        );
        assert!(e.unwrap_err().to_string().contains("value_dim"));
        let mut bad = space(false);
        bad.0.insert(Axis::Ffn, vec![1.5]);
        assert!(bad.validate(model.config().axes()).is_err());
    }
}
