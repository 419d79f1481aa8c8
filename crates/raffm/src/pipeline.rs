//! Experiment definitions (`pipelines/*.json`) and the client budgets drawn from them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cost::{Cost, TrainingShape};
use crate::error::{Error, Result};
use crate::extract::{DepthPolicy, Strategy};
use crate::rng::SplitMix64;
use crate::search::{Budget, Policy, SearchSpace};
use crate::vocab::VocabularyMode;

/// A class of client hardware: how much of the model it may train, and the memory of its
/// device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    /// Relative weight of the tier in the client population.
    pub share: f64,
    /// Training budget: at most this fraction of the full model's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_fraction: Option<f64>,
    /// The device's memory. The training sub-model must fit it under the training cost,
    /// and the deployed model under the inference cost (see [`crate::cost`]).
    #[serde(
        default,
        alias = "train_memory_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_bytes: Option<u64>,
}

fn default_strategy() -> Strategy {
    Strategy::Salient
}

fn default_policy() -> Policy {
    Policy::Largest
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Checkpoint folder of the pre-trained model.
    pub model: PathBuf,
    /// Number of clients in the population.
    pub clients: usize,
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub training: TrainingShape,
    #[serde(default)]
    pub search_space: SearchSpace,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    #[serde(default = "default_policy")]
    pub policy: Policy,
    #[serde(default)]
    pub depth_policy: DepthPolicy,
    /// `client`: each client's sub-model keeps the token rows of its own data only.
    #[serde(default)]
    pub vocabulary: VocabularyMode,
    /// Random token ids added to each client's vocabulary, so the set does not tell which
    /// tokens its data uses.
    #[serde(default)]
    pub vocabulary_decoys: usize,
    /// Anything else (data, rounds, optimiser...) for the stages that read it.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: Pipeline = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid pipeline: {e}")))?;
        p.validate().map_err(|m| Error::format(path, m))?;
        Ok(p)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.clients == 0 {
            return Err("`clients` must be at least 1".into());
        }
        if self.tiers.is_empty() {
            return Err("`tiers` is empty".into());
        }
        let dp = self.rest.get("server").and_then(|s| s.get("dp"));
        if dp.is_some() && self.vocabulary == VocabularyMode::Client {
            return Err("`vocabulary: client` with `server.dp`: which token rows a client holds depends on its data, so DP-FedAvg's guarantee does not cover it; use the full vocabulary".into());
        }
        if self.rest.contains_key("inference_multiplier") {
            return Err("`inference_multiplier` is gone: a tier's `memory_bytes` is its device memory, for training and deployment alike".into());
        }
        for t in &self.tiers {
            if t.share.is_nan() || t.share <= 0.0 {
                return Err(format!("tier `{}`: share must be positive", t.name));
            }
            if t.parameter_fraction.is_none() && t.memory_bytes.is_none() {
                return Err(format!(
                    "tier `{}`: give parameter_fraction, memory_bytes or both",
                    t.name
                ));
            }
            if t.parameter_fraction.is_some_and(|f| !(f > 0.0 && f <= 1.0)) {
                return Err(format!(
                    "tier `{}`: parameter_fraction must be in (0, 1]",
                    t.name
                ));
            }
            if t.memory_bytes == Some(0) {
                return Err(format!("tier `{}`: memory_bytes must be positive", t.name));
            }
        }
        self.search_space
            .check_fractions()
            .map_err(|e| e.to_string())
    }
}

/// One client's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientBudget {
    pub client: String,
    pub tier: String,
    /// What its training sub-model must fit: parameters and training memory.
    pub train: Budget,
    /// Its device's memory, which the deployed model must fit under the inference cost
    /// (`None`: unlimited).
    pub device_memory_bytes: Option<u64>,
}

/// `budgets.json`: every client's budget, and what the search for their sub-models uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    pub pipeline: String,
    pub seed: u64,
    pub training: TrainingShape,
    pub search_space: SearchSpace,
    pub strategy: Strategy,
    pub policy: Policy,
    pub depth_policy: DepthPolicy,
    #[serde(default)]
    pub vocabulary: VocabularyMode,
    #[serde(default)]
    pub vocabulary_decoys: usize,
    /// Costs of the full model the fractions refer to.
    pub full_model: Cost,
    pub clients: Vec<ClientBudget>,
}

impl Budgets {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let budgets: Budgets = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid budgets file: {e}")))?;
        budgets.validate().map_err(|m| Error::format(path, m))?;
        Ok(budgets)
    }

    /// Every limit is positive (a zero would be met by no model, or, as a device's memory,
    /// silently overruled by what the client trained), every client id appears once, and
    /// clients of one tier share their limits: a tier is a label for a budget, which the
    /// per-tier summaries read from its first client.
    fn validate(&self) -> std::result::Result<(), String> {
        let mut tiers: std::collections::HashMap<&str, &ClientBudget> = Default::default();
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if !seen.insert(c.client.as_str()) {
                return Err(format!("client `{}` appears twice", c.client));
            }
            let zero = [
                ("train.max_parameters", c.train.max_parameters),
                (
                    "train.max_train_memory_bytes",
                    c.train.max_train_memory_bytes,
                ),
                ("device_memory_bytes", c.device_memory_bytes),
            ]
            .into_iter()
            .find(|(_, v)| *v == Some(0));
            if let Some((field, _)) = zero {
                return Err(format!(
                    "client `{}`: {field} is 0; give a positive limit, or leave it out for none",
                    c.client
                ));
            }
            if c.tier.trim().is_empty() {
                return Err(format!("client `{}` has no tier name", c.client));
            }
            let first = *tiers.entry(c.tier.as_str()).or_insert(c);
            if (&first.train, first.device_memory_bytes) != (&c.train, c.device_memory_bytes) {
                return Err(format!(
                    "clients `{}` and `{}` are both of tier `{}` but have different limits",
                    first.client, c.client, c.tier
                ));
            }
        }
        if self.clients.is_empty() {
            return Err("no clients".into());
        }
        Ok(())
    }

    pub fn client(&self, id: &str) -> Option<&ClientBudget> {
        self.clients.iter().find(|c| c.client == id)
    }
}

/// Zero-padded client ids, `c000`..`c099` for 100 clients.
pub fn client_ids(n: usize) -> Vec<String> {
    let width = (n.max(2) - 1).to_string().len().max(3);
    (0..n).map(|i| format!("c{i:0width$}")).collect()
}

/// The round a stage folder belongs to: R for `.../round-R/<stage>`.
pub fn round_of(stage_dir: &Path) -> Option<u64> {
    stage_dir
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("round-")?
        .parse()
        .ok()
}

/// Assigns tiers to clients in proportion to their shares (largest remainder, so the mix
/// is exact), in a seeded random order.
pub fn make_budgets(pipeline: &Pipeline, full_model: Cost, seed: u64) -> Budgets {
    let n = pipeline.clients;
    let total: f64 = pipeline.tiers.iter().map(|t| t.share).sum();
    let quotas: Vec<f64> = pipeline
        .tiers
        .iter()
        .map(|t| t.share / total * n as f64)
        .collect();
    let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        (quotas[b] - quotas[b].floor()).total_cmp(&(quotas[a] - quotas[a].floor()))
    });
    for &i in by_remainder.iter().take(n - counts.iter().sum::<usize>()) {
        counts[i] += 1;
    }
    let mut assignment: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
        .collect();
    SplitMix64::derive(seed, "budgets").shuffle(&mut assignment);

    let clients = client_ids(n)
        .into_iter()
        .zip(assignment)
        .map(|(client, t)| {
            let tier = &pipeline.tiers[t];
            let max_parameters = tier
                .parameter_fraction
                .map(|f| (f * full_model.parameters as f64).floor() as u64);
            ClientBudget {
                client,
                tier: tier.name.clone(),
                train: Budget {
                    max_parameters,
                    max_train_memory_bytes: tier.memory_bytes,
                },
                device_memory_bytes: tier.memory_bytes,
            }
        })
        .collect();
    Budgets {
        pipeline: pipeline.name.clone(),
        seed,
        training: pipeline.training,
        search_space: pipeline.search_space.clone(),
        strategy: pipeline.strategy,
        policy: pipeline.policy,
        depth_policy: pipeline.depth_policy,
        vocabulary: pipeline.vocabulary,
        vocabulary_decoys: pipeline.vocabulary_decoys,
        full_model,
        clients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        serde_json::from_value(serde_json::json!({
            "name": "t", "model": "m", "clients": 10,
            "tiers": [
                {"name": "small", "share": 1, "parameter_fraction": 0.5},
                {"name": "large", "share": 3, "parameter_fraction": 0.9, "memory_bytes": 1000}
            ]
        }))
        .unwrap()
    }

    fn full() -> Cost {
        Cost {
            parameters: 1000,
            layer_parameters: 500,
            bytes_on_wire: 4000,
            train_memory_bytes: 10_000,
            inference_memory_bytes: 5000,
        }
    }

    #[test]
    fn same_seed_same_budgets_and_the_mix_is_exact() {
        let p = pipeline();
        let a = make_budgets(&p, full(), 1);
        assert_eq!(a, make_budgets(&p, full(), 1));
        assert_ne!(a.clients, make_budgets(&p, full(), 2).clients);
        let small = a.clients.iter().filter(|c| c.tier == "small").count();
        assert_eq!((small, a.clients.len() - small), (3, 7)); // 2.5 and 7.5, remainders tie
        let c = a.clients.iter().find(|c| c.tier == "small").unwrap();
        assert_eq!(c.train.max_parameters, Some(500));
        assert_eq!(
            (c.train.max_train_memory_bytes, c.device_memory_bytes),
            (None, None)
        );
        let c = a.clients.iter().find(|c| c.tier == "large").unwrap();
        assert_eq!(
            (c.train.max_train_memory_bytes, c.device_memory_bytes),
            (Some(1000), Some(1000))
        );
        assert_eq!(a.clients[0].client, "c000");
    }
}
