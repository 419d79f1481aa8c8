//! Experiment definitions (`pipelines/*.json`) and the client budgets drawn from them.
//!
//! The schema lives here alone: [`PipelineFile::load`] parses and checks a pipeline, and
//! [`make_vars`] turns it into the Make variables the Makefile's rounds run on
//! (`raffm-pipeline make-vars`).

mod settings;
mod vars;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use settings::{
    AttackSettings, BaseSubmodel, DataSettings, DpSettings, EvaluationSettings, LocalSettings,
    LoraPipeline, LoraSettings, PartitionSettings, RoundSettings, ServerSettings,
    DEFAULT_LORA_RANK,
};
pub use vars::make_vars;

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::fl::cost::{Cost, TrainingShape};
use crate::fl::extract::{DepthPolicy, Strategy};
use crate::fl::search::{Budget, Policy, SearchSpace};
use crate::fl::vocab::VocabularyMode;

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
    /// and the deployed model under the inference cost (see [`crate::fl::cost`]).
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
    /// None: [`SearchSpace::default`] on the model's axes (see [`Pipeline::space_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_space: Option<SearchSpace>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The run's seed (`SEED=S` on make's command line replaces it).
    #[serde(default)]
    pub seed: u64,
    /// The examples; only `budgets.json` can be made without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSettings>,
    #[serde(default)]
    pub partition: PartitionSettings,
    #[serde(default)]
    pub rounds: RoundSettings,
    /// The classification head's initialisation (`raffm-init-head --head-init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_init: Option<String>,
    #[serde(default)]
    pub local: LocalSettings,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<AttackSettings>,
    #[serde(default)]
    pub evaluation: EvaluationSettings,
}

/// A pipeline file of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineFile {
    /// Fine-tuning through the stages (no `kind`, or `"kind": "finetune"`).
    Finetune(Box<Pipeline>),
    /// The decoder's federated LoRA rounds (`"kind": "llm-lora"`).
    LlmLora(Box<LoraPipeline>),
}

impl PipelineFile {
    /// Reads and checks `path`; every problem is one message naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::format(path, m);
        let mut raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Some(object) = raw.as_object_mut() else {
            return Err(bad("a pipeline is a JSON object".into()));
        };
        if object.contains_key("inference_multiplier") {
            return Err(bad("`inference_multiplier` is gone: a tier's `memory_bytes` is its device memory, for training and deployment alike".into()));
        }
        let invalid = |e: serde_json::Error| bad(format!("invalid pipeline: {e}"));
        match object.get("kind").map(|k| k.as_str()) {
            None | Some(Some("finetune")) => {
                object.remove("kind");
                let p: Pipeline = serde_json::from_value(raw).map_err(invalid)?;
                p.validate().map_err(bad)?;
                Ok(PipelineFile::Finetune(Box::new(p)))
            }
            Some(Some("llm-lora")) => {
                let p: LoraPipeline = serde_json::from_value(raw).map_err(invalid)?;
                p.validate().map_err(bad)?;
                Ok(PipelineFile::LlmLora(Box::new(p)))
            }
            Some(kind) => Err(bad(format!(
                "unknown kind {} (expected finetune or llm-lora)",
                kind.map_or("(not a string)".to_string(), |k| format!("`{k}`"))
            ))),
        }
    }
}

impl Pipeline {
    /// The space the clients' sub-models are searched in, for a model of `axes`: the
    /// pipeline's, or the built-in one on the axes the model has.
    pub fn space_for(&self, axes: &[crate::core::elastic::AxisSpec]) -> SearchSpace {
        self.search_space
            .clone()
            .unwrap_or_else(|| SearchSpace::default().restricted_to(axes))
    }

    /// A fine-tuning pipeline: what `raffm-budgets` reads.
    pub fn load(path: &Path) -> Result<Self> {
        match PipelineFile::load(path)? {
            PipelineFile::Finetune(p) => Ok(*p),
            PipelineFile::LlmLora(_) => Err(Error::format(
                path,
                "an llm-lora pipeline has no tiers or budgets",
            )),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.clients == 0 {
            return Err("`clients` must be at least 1".into());
        }
        if self.tiers.is_empty() {
            return Err("`tiers` is empty".into());
        }
        if self.server.dp.is_some() && self.vocabulary == VocabularyMode::Client {
            return Err("`vocabulary: client` with `server.dp`: which token rows a client holds depends on its data, so DP-FedAvg's guarantee does not cover it; use the full vocabulary".into());
        }
        if let Some(format) = self.data.as_ref().and_then(|d| d.format.as_ref()) {
            format.parse::<crate::data::Format>()?;
        }
        if let Some(weighting) = &self.server.weighting {
            weighting.parse::<crate::fl::aggregate::Weighting>()?;
        }
        if let Some(init) = &self.head_init {
            init.parse::<crate::core::checkpoint::HeadInit>()?;
        }
        if let Some(rule) = &self.server.rule {
            crate::fl::aggregate::Rule::parse(rule, self.server.trim_fraction)
                .map_err(|e| format!("server.rule: {e}"))?;
        }
        if let Some(attack) = &self.attack {
            attack.option()?;
        }
        if self.rounds.clients_per_round == Some(0) {
            return Err("rounds.clients_per_round must be at least 1".into());
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
        match &self.search_space {
            Some(space) => space.check_fractions().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// What a client of a LoRA pipeline trains: an adapter of `rank` on the base sub-model
/// `submodel` (none given: the whole base).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLora {
    pub rank: usize,
    #[serde(default)]
    pub submodel: BaseSubmodel,
}

/// One client's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientBudget {
    pub client: String,
    pub tier: String,
    /// LoRA pipelines: the client's adapter rank and base sub-model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<ClientLora>,
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
                lora: None,
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
        search_space: pipeline.search_space.clone().unwrap_or_default(),
        strategy: pipeline.strategy,
        policy: pipeline.policy,
        depth_policy: pipeline.depth_policy,
        vocabulary: pipeline.vocabulary,
        vocabulary_decoys: pipeline.vocabulary_decoys,
        full_model,
        clients,
    }
}

/// `budgets.json` of a LoRA pipeline: client i trains rank `ranks[i % len]` (or `r`) on
/// the base sub-model `submodels[i % len]`, in client order; a tier is one such pair.
/// `full_model` is the base's cost under `training`; `axes` its elastic axes, which the
/// recorded search space (memory tiers and deployment search it) keeps to.
pub fn make_lora_budgets(
    pipeline: &LoraPipeline,
    axes: &[crate::core::elastic::AxisSpec],
    full_model: Cost,
    training: TrainingShape,
    seed: u64,
) -> Budgets {
    let ranks = pipeline.client_ranks();
    let submodels = pipeline.submodels.clone().unwrap_or_default();
    let clients = client_ids(pipeline.clients)
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let rank = ranks[i % ranks.len()];
            let submodel = match submodels.is_empty() {
                true => BaseSubmodel::default(),
                false => submodels[i % submodels.len()].clone(),
            };
            let tier = match submodel.options().as_str() {
                "-" => format!("rank {rank}, whole base"),
                shape => format!("rank {rank}, {}", shape.replace("--", "")),
            };
            // A memory tier is the client's device: what it deploys on after the rounds.
            let device_memory_bytes = submodel.memory_mib.map(|m| (m * (1 << 20) as f64) as u64);
            ClientBudget {
                client,
                tier,
                lora: Some(ClientLora { rank, submodel }),
                train: Budget::default(),
                device_memory_bytes,
            }
        })
        .collect();
    Budgets {
        pipeline: pipeline.name.clone(),
        seed,
        training,
        search_space: SearchSpace::default().restricted_to(axes),
        strategy: Strategy::Salient,
        policy: Policy::Largest,
        depth_policy: DepthPolicy::default(),
        vocabulary: VocabularyMode::default(),
        vocabulary_decoys: 0,
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
            adapter_parameters: 0,
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

    #[test]
    fn the_built_in_space_is_the_default_pipelines() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/default.json");
        let default = Pipeline::load(&path).unwrap();
        assert_eq!(default.search_space, Some(SearchSpace::default()));
    }

    #[test]
    fn every_shipped_pipeline_loads_and_gives_its_make_variables() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let pipeline = PipelineFile::load(&path).unwrap();
                let vars = make_vars(&pipeline).unwrap();
                let value = |name| vars.iter().find(|(n, _)| *n == name).unwrap().1.clone();
                assert!(!value("PL_MODEL").is_empty() && !value("PL_DATA").is_empty());
                seen += 1;
            }
        }
        assert!(seen >= 20, "{seen} pipelines");
    }

    fn vars_of(
        json: serde_json::Value,
    ) -> std::result::Result<Vec<(&'static str, String)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let pipeline = PipelineFile::load(&path).map_err(|e| e.to_string())?;
        make_vars(&pipeline)
    }

    #[test]
    fn settings_become_options_and_mistakes_are_refused() {
        let base = serde_json::json!({
            "name": "t", "model": "m", "clients": 20, "data": {"path": "d.csv"},
            "tiers": [{"name": "s", "share": 1, "parameter_fraction": 0.5}],
            "server": {"dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "sample_rate": 0.2}},
            "attack": {"kind": "scale", "factor": 100},
            "strategy": "static"
        });
        let vars = vars_of(base.clone()).unwrap();
        let value = |name| vars.iter().find(|(n, _)| *n == name).unwrap().1.as_str();
        assert_eq!(value("PL_PER_ROUND"), "2"); // a tenth of the clients
        assert_eq!(value("PL_DP_EXPECTED"), "4"); // q * N
        assert_eq!(value("PL_ATTACK"), "scale:100");
        assert_eq!(value("PL_ATTACK_PER_ROUND"), "1");
        assert_eq!(value("PL_PRIORITIZE"), ""); // only the salient strategy prioritizes
        assert_eq!(value("PL_LR"), ""); // left to raffm-local-train
        assert_eq!(value("PL_PRECISION"), ""); // auto, the stage's default
        let mut bf16 = base.clone();
        bf16["local"] = serde_json::json!({"precision": "bf16"});
        let vars = vars_of(bf16).unwrap();
        assert!(vars.contains(&("PL_PRECISION", "bf16".to_string())));

        for (edit, needle) in [
            (
                serde_json::json!({"local": {"precision": "fp16"}}),
                "unknown variant `fp16`",
            ),
            (
                serde_json::json!({"local": {"epoch": 3}}),
                "unknown field `epoch`",
            ),
            (
                serde_json::json!({"attack": {"kind": "scale"}}),
                "needs a `factor`",
            ),
            (
                serde_json::json!({"server": {"rule": "mean"}}),
                "server.rule",
            ),
            (serde_json::json!({"kind": "lora"}), "unknown kind `lora`"),
            (serde_json::json!({"inference_multiplier": 2}), "is gone"),
        ] {
            let mut p = base.clone();
            for (k, v) in edit.as_object().unwrap() {
                p[k] = v.clone();
            }
            let err = vars_of(p).unwrap_err();
            assert!(err.contains(needle) && err.contains("p.json"), "{err}");
        }
        let mut p = base;
        p.as_object_mut().unwrap().remove("data");
        assert!(vars_of(p).unwrap_err().contains("no `data`"));
    }

    #[test]
    fn a_lora_pipeline_gives_the_largest_rank_to_the_global_adapter() {
        let vars = vars_of(serde_json::json!({
            "kind": "llm-lora", "name": "t", "model": "m", "clients": 4,
            "data": {"path": "d.csv", "format": "rotten-tomatoes"},
            "lora": {"ranks": [4, 32, 8]}, "aggregation": "flexlora",
            "submodels": [{}, {"width": 0.5, "hidden": 1}, {"memory_mib": 300}]
        }))
        .unwrap();
        let value = |name| vars.iter().find(|(n, _)| *n == name).unwrap().1.as_str();
        assert_eq!(value("PL_LORA_FLAGS"), "--lora-r 32");
        assert_eq!(value("PL_RULE"), "flexlora");
        assert_eq!(value("PL_LORA_BASE"), "1");
        assert_eq!(value("PL_DATA_FORMAT"), "llm:rotten-tomatoes");
        // Every client in every round unless the pipeline samples.
        assert_eq!(value("PL_PER_ROUND"), "4");
        let err = vars_of(serde_json::json!({
            "kind": "llm-lora", "name": "t", "model": "m", "clients": 4,
            "data": {"path": "d.csv"}, "lora": {"ranks": [4, 8]}
        }))
        .unwrap_err();
        assert!(err.contains("no `data.format`"), "{err}");
        let err = vars_of(serde_json::json!({
            "kind": "llm-lora", "name": "t", "model": "m", "clients": 4,
            "data": {"path": "d.csv", "format": "rotten-tomatoes"},
            "aggregation": "padded", "server": {"rule": "median"}
        }))
        .unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }
}
