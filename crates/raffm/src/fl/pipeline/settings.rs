//! The sections of a pipeline file beyond the budgets: the data, the partition, the
//! rounds, local training, the server's rule, an attack for experiments, the evaluation;
//! and the decoder's LoRA pipelines (`"kind": "llm-lora"`). Every section refuses keys it
//! does not know, so a misspelt setting is an error rather than a silent default. A
//! setting left out is left to the binary that reads it: its default lives there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::fused::Precision;

/// The rank of an adapter whose pipeline gives none (PEFT examples' usual 16).
pub const DEFAULT_LORA_RANK: usize = 16;

/// Where the examples come from (`raffm-partition`'s options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_file: Option<PathBuf>,
    /// A dataset's own test split (Fashion-MNIST's t10k files) as the validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_labels_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
}

/// How the training examples are dealt to the clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Dirichlet concentration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Examples per class and client (k-shot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSettings {
    /// Participants drawn per round (default: a tenth of the clients, at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_per_round: Option<usize>,
}

/// A client's local training (`raffm-local-train`'s options).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// FedProx's proximal coefficient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// The linear layers' products in local training: `fp32`, `bf16`, or `auto` (the
    /// default: bf16 where the CPU has AMX, fp32 elsewhere). The rounds' evaluations stay
    /// fp32, so runs of every precision are scored alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// The server's rule (`raffm-aggregate`'s options).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighting: Option<String>,
    /// Server learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpSettings>,
}

/// Client-level DP-FedAvg: clipping, Poisson sampling at `sample_rate`, Gaussian noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSettings {
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    pub sample_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// The noise seed, for experiments; a deployment keeps it secret (RAFFM_DP_SEED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Malicious clients, for experiments: the first `per_round` participants of every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackSettings {
    /// `scale` (the update times `factor`) or `flip` (labels flipped).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default = "one")]
    pub per_round: usize,
}

fn one() -> usize {
    1
}

impl AttackSettings {
    /// `raffm-local-train --attack`'s value.
    pub fn option(&self) -> Result<String, String> {
        let value = match (self.kind.as_str(), self.factor) {
            ("scale", Some(factor)) => format!("scale:{factor}"),
            ("scale", None) => return Err("attack: kind `scale` needs a `factor`".into()),
            ("flip", None) => "flip".into(),
            ("flip", Some(_)) => return Err("attack: kind `flip` takes no `factor`".into()),
            (kind, _) => {
                return Err(format!(
                    "attack: unknown kind `{kind}` (expected scale or flip)"
                ))
            }
        };
        value
            .parse::<crate::fl::attack::Attack>()
            .map_err(|e| format!("attack: {e}"))?;
        Ok(value)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSettings {
    /// Evaluate on at most this many validation examples, spread over the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<usize>,
}

/// Federated LoRA of the decoder (`"kind": "llm-lora"`): every client trains an adapter on
/// the frozen base, or on a base sub-model of its tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraPipeline {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub model: PathBuf,
    pub data: DataSettings,
    pub clients: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub lora: LoraSettings,
    /// fedavg, padded (the same: each element averaged over the clients that hold it) or
    /// flexlora; or leave it out and give `server.rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    #[serde(default)]
    pub partition: PartitionSettings,
    /// Clients per round (default: every client).
    #[serde(default)]
    pub rounds: RoundSettings,
    /// The server's rule, clipping, DP and learning rate, as for fine-tuning.
    #[serde(default)]
    pub server: ServerSettings,
    /// RaFFM + LoRA: client i trains on the base sub-model of `submodels[i % len]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submodels: Option<Vec<BaseSubmodel>>,
    #[serde(default)]
    pub local: LocalSettings,
    #[serde(default)]
    pub evaluation: EvaluationSettings,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<usize>,
    /// Heterogeneous ranks: client i has `ranks[i % len]`; the global adapter the largest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<Vec<String>>,
}

/// One tier's base sub-model in a LoRA pipeline (see `adapter::extract`); none given is
/// the whole base.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSubmodel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<f64>,
}

impl LoraPipeline {
    /// The rank of client i is `client_ranks()[i % len]`.
    pub fn client_ranks(&self) -> Vec<usize> {
        match self.lora.ranks.as_deref() {
            Some(r) if !r.is_empty() => r.to_vec(),
            _ => vec![self.lora.r.unwrap_or(DEFAULT_LORA_RANK)],
        }
    }

    /// The global adapter's rank: the largest client rank.
    pub fn global_rank(&self) -> usize {
        self.client_ranks()
            .into_iter()
            .max()
            .expect("at least one rank")
    }

    /// The server's rule: `aggregation` (padded is FedAvg over the holders of each element)
    /// or `server.rule`.
    pub fn rule(&self) -> Option<String> {
        match self.aggregation.as_deref() {
            Some("padded") => Some("fedavg".into()),
            Some(other) => Some(other.into()),
            None => self.server.rule.clone(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.aggregation.is_some() && self.server.rule.is_some() {
            return Err("give `aggregation` or `server.rule`, not both".into());
        }
        if self.clients == 0 {
            return Err("`clients` must be at least 1".into());
        }
        if let Some(format) = &self.data.format {
            format.parse::<crate::models::llm::task::TaskFormat>()?;
        }
        let ranks = self.lora.ranks.as_deref();
        if ranks.is_some_and(|r| r.is_empty() || r.contains(&0)) {
            return Err("lora.ranks must be a list of positive integers".into());
        }
        if let Some(rule) = self.aggregation.as_deref() {
            if !["fedavg", "padded", "flexlora"].contains(&rule) {
                return Err(format!(
                    "aggregation: unknown rule `{rule}` (expected fedavg, padded or flexlora)"
                ));
            }
        }
        for (n, tier) in self.submodels.iter().flatten().enumerate() {
            let values = [tier.width, tier.hidden, tier.depth, tier.memory_mib];
            if values
                .iter()
                .flatten()
                .any(|v| !(v.is_finite() && *v > 0.0))
            {
                return Err(format!(
                    "submodels[{n}]: every value must be a positive number"
                ));
            }
            if tier.width.is_some() && tier.memory_mib.is_some() {
                return Err(format!(
                    "submodels[{n}]: give width or memory_mib, not both"
                ));
            }
        }
        if self.submodels.as_ref().is_some_and(Vec::is_empty) {
            return Err("submodels must list at least one tier, e.g. [{\"width\": 0.5}]".into());
        }
        Ok(())
    }
}

impl BaseSubmodel {
    /// The tier in one line, as options (`--width 0.5 --hidden 1`); `-` for the whole base.
    pub fn options(&self) -> String {
        let whole = self.width.unwrap_or(1.0) == 1.0
            && self.hidden.unwrap_or(1.0) == 1.0
            && self.depth.is_none()
            && self.memory_mib.is_none();
        if whole {
            return "-".into();
        }
        [
            ("--width", self.width),
            ("--hidden", self.hidden),
            ("--depth", self.depth),
            ("--memory-budget", self.memory_mib),
        ]
        .iter()
        .filter_map(|(flag, v)| v.map(|v| format!("{flag} {v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}
