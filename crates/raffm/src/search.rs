//! Choosing a sub-model for a budget (paper 3.1.3): a per-layer configuration from a
//! search space whose costs satisfy the client's budget.
//!
//! Parameters and training memory are linear in three totals over the layers (heads,
//! attention width, FFN width; see [`crate::cost`]), so a dynamic program over those totals
//! is exact and small: it counts, for every reachable triple of totals, how many per-layer
//! configurations reach it. From that table `largest` takes the feasible configuration with
//! the most parameters, and `sample` draws uniformly among all feasible configurations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::LayerArch;
use crate::cost::{Cost, CostModel, LayerTotals};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Per-layer choices, as fractions of the global model's widths (rounded, at least 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    pub heads: Vec<f64>,
    pub head_dim: Vec<f64>,
    pub ffn: Vec<f64>,
}

impl Default for SearchSpace {
    fn default() -> Self {
        Self {
            heads: vec![0.25, 0.5, 0.75, 1.0],
            head_dim: vec![0.5, 0.75, 1.0],
            ffn: vec![0.25, 0.5, 0.75, 1.0],
        }
    }
}

impl SearchSpace {
    /// Checks the fractions: each in (0, 1], at least one per axis.
    pub fn validate(&self) -> Result<()> {
        for (axis, fractions) in [
            ("heads", &self.heads),
            ("head_dim", &self.head_dim),
            ("ffn", &self.ffn),
        ] {
            if fractions.is_empty() || fractions.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
                return Err(Error::Invalid(format!(
                    "search space `{axis}`: fractions must be in (0, 1], got {fractions:?}"
                )));
            }
        }
        Ok(())
    }

    /// The options for a layer whose global widths are `full`, largest first, deduplicated.
    pub fn layer_options(&self, full: &LayerArch) -> Vec<LayerArch> {
        let scale = |n: usize, f: f64| ((n as f64 * f).round() as usize).clamp(1, n);
        let mut options: Vec<LayerArch> = self
            .heads
            .iter()
            .flat_map(|&h| {
                self.head_dim.iter().flat_map(move |&d| {
                    self.ffn.iter().map(move |&f| LayerArch {
                        num_heads: scale(full.num_heads, h),
                        head_dim: scale(full.head_dim, d),
                        intermediate_size: scale(full.intermediate_size, f),
                    })
                })
            })
            .collect();
        options.sort_by(|a, b| b.cmp(a));
        options.dedup();
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

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.max_parameters, self.max_train_memory_bytes) {
            (None, None) => write!(f, "unlimited"),
            (Some(p), None) => write!(f, "at most {p} parameters"),
            (None, Some(m)) => write!(
                f,
                "at most {:.1} MiB of training memory",
                m as f64 / (1 << 20) as f64
            ),
            (Some(p), Some(m)) => {
                write!(
                    f,
                    "at most {p} parameters and {:.1} MiB of training memory",
                    m as f64 / (1 << 20) as f64
                )
            }
        }
    }
}

impl Budget {
    fn admits(&self, parameters: u64, train_memory: u64) -> bool {
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
    pub layers: Vec<LayerArch>,
    pub cost: Cost,
    /// How many per-layer configurations of the space fit the budget.
    pub feasible_configurations: f64,
}

/// Picks a per-layer configuration for `budget`; see the module docs.
pub fn choose(
    model: &CostModel,
    space: &SearchSpace,
    budget: &Budget,
    policy: Policy,
    rng: &mut SplitMix64,
) -> Result<Choice> {
    let options = layer_options(model, space)?;
    choose_among(model, &options, budget, policy, rng)
}

/// Every layer's options in the space, checked.
fn layer_options(model: &CostModel, space: &SearchSpace) -> Result<Vec<Vec<LayerArch>>> {
    space.validate()?;
    Ok(model
        .config()
        .layers
        .iter()
        .map(|l| space.layer_options(l))
        .collect())
}

/// The largest configuration whose inference memory fits `max_bytes` (and `budget`).
///
/// Inference memory is the weights plus the largest layer's activations, which is not
/// linear in the layer totals. So for every activation level `a` a layer can have, the
/// search keeps the options at or below `a` and asks for at most `max_bytes / 4 - a`
/// parameters; the best over all levels is the exact optimum.
pub fn choose_for_inference(
    model: &CostModel,
    space: &SearchSpace,
    budget: &Budget,
    max_bytes: u64,
) -> Result<Choice> {
    let options = layer_options(model, space)?;
    let mut levels: Vec<u64> = options
        .iter()
        .flatten()
        .map(|o| model.layer_activations(o))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let mut best: Option<Choice> = None;
    for level in levels {
        let Some(max_parameters) = (max_bytes / 4).checked_sub(level) else {
            break;
        };
        let capped: Vec<Vec<LayerArch>> = options
            .iter()
            .map(|o| {
                o.iter()
                    .copied()
                    .filter(|o| model.layer_activations(o) <= level)
                    .collect()
            })
            .collect();
        if capped.iter().any(Vec::is_empty) {
            continue;
        }
        let capped_budget = Budget {
            max_parameters: Some(
                budget
                    .max_parameters
                    .map_or(max_parameters, |m| m.min(max_parameters)),
            ),
            ..*budget
        };
        let mut rng = SplitMix64::new(0); // unused by `largest`
        if let Ok(choice) = choose_among(model, &capped, &capped_budget, Policy::Largest, &mut rng)
        {
            if best
                .as_ref()
                .is_none_or(|b| choice.cost.parameters > b.cost.parameters)
            {
                best = Some(choice);
            }
        }
    }
    best.ok_or_else(|| {
        Error::Invalid(format!(
            "infeasible inference budget ({:.1} MiB{}): no sub-model in the search space fits",
            max_bytes as f64 / (1 << 20) as f64,
            match budget.max_parameters.or(budget.max_train_memory_bytes) {
                Some(_) => format!(", {budget}"),
                None => String::new(),
            }
        ))
    })
}

/// The search of [`choose`] over given per-layer options.
fn choose_among(
    model: &CostModel,
    options: &[Vec<LayerArch>],
    budget: &Budget,
    policy: Policy,
    rng: &mut SplitMix64,
) -> Result<Choice> {
    let smallest: Vec<LayerTotals> = options
        .iter()
        .map(|o| {
            o.iter()
                .map(LayerTotals::of)
                .min()
                .expect("options are never empty")
        })
        .collect();
    // min_rest[k]: totals of layers k.. at their smallest; prunes states that cannot fit.
    let mut min_rest = vec![LayerTotals::default(); options.len() + 1];
    for k in (0..options.len()).rev() {
        min_rest[k] = min_rest[k + 1].plus(smallest[k]);
    }
    let fits = |t: LayerTotals| budget.admits(model.parameters_of(t), model.train_memory_of(t));
    if !fits(min_rest[0]) {
        let (p, m) = (
            model.parameters_of(min_rest[0]),
            model.train_memory_of(min_rest[0]),
        );
        return Err(Error::Invalid(format!(
            "infeasible budget ({budget}): the smallest sub-model in the search space has {p} parameters \
             and needs about {:.1} MiB to train",
            m as f64 / (1 << 20) as f64
        )));
    }

    // counts[k]: totals over the first k layers -> number of configurations reaching them.
    let mut counts: Vec<BTreeMap<LayerTotals, f64>> =
        vec![BTreeMap::from([(LayerTotals::default(), 1.0)])];
    for (k, layer_options) in options.iter().enumerate() {
        let mut next = BTreeMap::new();
        for (&totals, &count) in &counts[k] {
            for option in layer_options {
                let t = totals.plus(LayerTotals::of(option));
                if fits(t.plus(min_rest[k + 1])) {
                    *next.entry(t).or_insert(0.0) += count;
                }
            }
        }
        counts.push(next);
    }
    let finals = counts.last().expect("at least the empty prefix");
    let feasible_configurations: f64 = finals.values().sum();

    let mut target = match policy {
        Policy::Largest => *finals
            .keys()
            .max_by_key(|t| (model.parameters_of(**t), model.train_memory_of(**t), **t))
            .expect("the smallest configuration is feasible"),
        Policy::Sample => pick_weighted(finals.iter().map(|(t, c)| (*t, *c)), rng),
    };
    // Walk back from the last layer, choosing an option that leads to a reachable prefix:
    // the widest such option for `largest`, one in proportion to its count for `sample`.
    let mut layers = vec![
        LayerArch {
            num_heads: 0,
            head_dim: 0,
            intermediate_size: 0
        };
        options.len()
    ];
    for k in (0..options.len()).rev() {
        let candidates = options[k].iter().filter_map(|o| {
            let prefix = target.minus(LayerTotals::of(o))?;
            counts[k].get(&prefix).map(|&c| ((*o, prefix), c))
        });
        let (option, prefix) = match policy {
            // Of the configurations with these totals, prefer the most even one: the
            // option closest to an equal share of what is left (ties: the widest).
            Policy::Largest => candidates
                .map(|(x, _)| x)
                .min_by_key(|(o, _)| imbalance(LayerTotals::of(o), target, k as u64 + 1))
                .expect("a reached state has a predecessor"),
            Policy::Sample => pick_weighted(candidates, rng),
        };
        layers[k] = option;
        target = prefix;
    }
    Ok(Choice {
        cost: model.cost(&layers),
        layers,
        feasible_configurations,
    })
}

/// How far one layer's totals are from a `1/layers` share of `rest`, relative per axis.
fn imbalance(layer: LayerTotals, rest: LayerTotals, layers: u64) -> u64 {
    let axis = |x: u64, total: u64| (x * layers).abs_diff(total) * 1_000_000 / total.max(1);
    axis(layer.heads, rest.heads)
        + axis(layer.attention_width, rest.attention_width)
        + axis(layer.ffn_width, rest.ffn_width)
}

/// Draws one item with probability proportional to its weight.
fn pick_weighted<T: Copy>(items: impl Iterator<Item = (T, f64)>, rng: &mut SplitMix64) -> T {
    let items: Vec<(T, f64)> = items.collect();
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.next_f64() * total;
    for (item, w) in &items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items.last().expect("non-empty").0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;
    use crate::cost::TrainingShape;

    fn all_configs(options: &[LayerArch], layers: usize) -> Vec<Vec<LayerArch>> {
        let mut out = vec![vec![]];
        for _ in 0..layers {
            out = out
                .into_iter()
                .flat_map(|prefix: Vec<LayerArch>| {
                    options.iter().map(move |o| {
                        let mut p = prefix.clone();
                        p.push(*o);
                        p
                    })
                })
                .collect();
        }
        out
    }

    fn small_problem() -> (CostModel, SearchSpace, Vec<Vec<LayerArch>>) {
        let config = tiny_config(Family::Bert, 3, 24, 4, 40);
        let model = CostModel::new(
            &config,
            TrainingShape {
                batch_size: 4,
                max_seq_len: 16,
                freeze_embeddings: false,
            },
            true,
            true,
        );
        let space = SearchSpace {
            heads: vec![0.5, 1.0],
            head_dim: vec![0.5, 1.0],
            ffn: vec![0.25, 0.5, 1.0],
        };
        let configs = all_configs(&space.layer_options(&config.layers[0]), 3);
        (model, space, configs)
    }

    #[test]
    fn largest_is_the_brute_force_optimum_for_budgets_from_10_to_100_percent() {
        let (model, space, configs) = small_problem();
        let full = model.cost(&model.config().layers).parameters;
        for percent in (10..=100).step_by(5) {
            for memory in [
                None,
                Some(model.cost(&model.config().layers).train_memory_bytes * 7 / 10),
            ] {
                let budget = Budget {
                    max_parameters: Some(full * percent / 100),
                    max_train_memory_bytes: memory,
                };
                let feasible: Vec<&Vec<LayerArch>> = configs
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
                    &mut SplitMix64::new(0),
                );
                if feasible.is_empty() {
                    let e = result.unwrap_err().to_string();
                    assert!(
                        e.contains("infeasible budget") && e.contains("smallest sub-model"),
                        "{e}"
                    );
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
                    "{percent}%: a larger feasible configuration was left unused"
                );
                assert!(budget.admits(choice.cost.parameters, choice.cost.train_memory_bytes));
                assert_eq!(
                    choice.cost.parameters,
                    model.counted_parameters(&choice.layers)
                );
                assert_eq!(choice.feasible_configurations as usize, feasible.len());
            }
        }
    }

    #[test]
    fn inference_choice_is_the_brute_force_optimum_and_fits() {
        let (model, space, configs) = small_problem();
        let full = model.cost(&model.config().layers);
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
            let result = choose_for_inference(&model, &space, &Budget::default(), max_bytes);
            match best {
                None => assert!(result
                    .unwrap_err()
                    .to_string()
                    .contains("infeasible inference budget")),
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
    fn sample_is_seeded_feasible_and_uniform() {
        let (model, space, configs) = small_problem();
        let full = model.cost(&model.config().layers).parameters;
        let budget = Budget {
            max_parameters: Some(full * 85 / 100),
            max_train_memory_bytes: None,
        };
        let feasible: Vec<&Vec<LayerArch>> = configs
            .iter()
            .filter(|c| model.cost(c).parameters <= full * 85 / 100)
            .collect();
        let draw = |seed| {
            choose(
                &model,
                &space,
                &budget,
                Policy::Sample,
                &mut SplitMix64::new(seed),
            )
            .unwrap()
        };
        assert_eq!(draw(5), draw(5));
        let mut seen: BTreeMap<Vec<LayerArch>, usize> = BTreeMap::new();
        let mut rng = SplitMix64::new(9);
        let draws = 200 * feasible.len();
        for _ in 0..draws {
            let c = choose(&model, &space, &budget, Policy::Sample, &mut rng).unwrap();
            assert!(c.cost.parameters <= full * 85 / 100);
            *seen.entry(c.layers).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            feasible.len(),
            "some feasible configurations were never drawn"
        );
        // Each count is Binomial(draws, 1/n): mean 200, sd ~14; 5 sd either way.
        assert!(
            seen.values().all(|&n| (130..=270).contains(&n)),
            "not uniform: {seen:?}"
        );
    }

    #[test]
    fn a_full_budget_gives_the_full_model() {
        let (model, space, _) = small_problem();
        let choice = choose(
            &model,
            &space,
            &Budget::default(),
            Policy::Largest,
            &mut SplitMix64::new(0),
        )
        .unwrap();
        assert_eq!(choice.layers, model.config().layers);
    }
}
