//! What a deployment reports, whatever it deployed (sub-models of a model, or decoders
//! with an adapter merged): summary.json, summary.csv, the folder's manifest and the
//! table on the terminal.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, FileRecord, StagingDir};
use crate::core::manifest::{DeployMetrics, DeploySummary, Manifest, StageRecord, TierSummary};
use crate::fl::cost::Cost;
use crate::fl::pipeline::round_of;
use crate::fl::search::SearchSpace;
use crate::models::evaluate::Metrics;
use crate::Widths;

use super::Args;

/// One model in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    parameters: u64,
    bytes: u64,
    train_memory_bytes: u64,
    inference_memory_bytes: u64,
    architecture: Widths,
    /// The rank of the adapter on a decoder: trained, or merged into the deployed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter_rank: Option<usize>,
    accuracy: Option<f64>,
    macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
}

impl ModelSummary {
    /// A model of `widths` and `cost`, scored `metrics`; `path` where it was written.
    pub fn new(cost: &Cost, widths: &Widths, metrics: &Metrics, path: Option<PathBuf>) -> Self {
        Self {
            parameters: cost.parameters,
            bytes: cost.bytes_on_wire,
            train_memory_bytes: cost.train_memory_bytes,
            inference_memory_bytes: cost.inference_memory_bytes,
            architecture: widths.clone(),
            adapter_rank: None,
            accuracy: metrics.accuracy,
            macro_f1: metrics.macro_f1,
            path,
        }
    }

    pub fn with_adapter_rank(self, rank: usize) -> Self {
        Self {
            adapter_rank: Some(rank),
            ..self
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClientSummary {
    pub client: String,
    pub tier: String,
    pub device_memory_bytes: Option<u64>,
    pub train: ModelSummary,
    pub deployed: ModelSummary,
}

/// A finished deployment, to report: what it was deployed from and what each client got.
pub struct Report<'a> {
    pub args: &'a Args,
    pub global_sha256: String,
    /// How sub-models were indexed (`salient` for decoders: their base is prioritized).
    pub strategy: crate::fl::extract::Strategy,
    /// Whether the global model had to be prioritized here.
    pub prioritized_here: bool,
    pub space: &'a SearchSpace,
    /// The files deployed from (the global model's; an adapter's and its base's).
    pub inputs: Vec<FileRecord>,
    /// Validation examples every model was scored on.
    pub examples: usize,
    pub clients: Vec<ClientSummary>,
    pub distinct_models: usize,
}

impl Report<'_> {
    /// Writes summary.json, summary.csv and manifest.json into `staging`, commits it and
    /// prints the tiers (unless --quiet).
    pub fn write(self, mut staging: StagingDir) -> Result<StageRecord> {
        let args = self.args;
        let tiers = tier_summaries(&self.clients);
        let summary = json!({
            "global": args.global,
            "global_sha256": self.global_sha256,
            "round": round_of(&args.global),
            "strategy": self.strategy,
            "prioritized_here": self.prioritized_here,
            "memory_scale": args.memory_scale,
            "evaluation": {"split": "validation", "examples": self.examples},
            "clients": self.clients,
            "tiers": tiers,
        });
        staging.write(
            "summary.json",
            format!("{}\n", json_text(&summary)?).as_bytes(),
        )?;
        staging.write("summary.csv", summary_csv(&self.clients).as_bytes())?;

        let record = DeploySummary {
            metrics: DeployMetrics {
                clients: self.clients.len(),
                distinct_models: self.distinct_models,
            },
            tiers: tiers.clone(),
        };
        let record = StageRecord::DeployScale(record);
        let mut manifest = Manifest::new(
            record.clone(),
            "raffm-deploy-scale",
            json!({
                "global": args.global, "budgets": args.budgets, "partition": args.partition, "output": args.output,
                "memory_scale": args.memory_scale, "strategy": self.strategy, "norm": args.norm,
                "round": args.round, "seed": args.seed, "search_space": self.space, "eval_max_examples": args.eval.eval_max_examples,
            }),
        );
        manifest.seeds.insert("seed".into(), json!(args.seed));
        manifest.inputs = self.inputs;
        manifest.inputs.push(sha256_file(&args.budgets)?);
        manifest.inputs.push(sha256_file(&args.partition)?);
        manifest.write_into(&mut staging)?;
        staging.commit()?;
        if !args.quiet {
            print_tiers(&tiers);
        }
        Ok(record)
    }
}

/// `value` as pretty JSON.
fn json_text(value: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("the summary does not serialize: {e}")))
}

/// Per tier: the first client's sizes (every client of a tier has the same budget) and
/// the mean accuracies.
fn tier_summaries(clients: &[ClientSummary]) -> Vec<TierSummary> {
    let mut order: Vec<&str> = Vec::new();
    for c in clients {
        if !order.contains(&c.tier.as_str()) {
            order.push(&c.tier);
        }
    }
    let mean = |values: Vec<Option<f64>>| -> Option<f64> {
        let v: Vec<f64> = values.into_iter().collect::<Option<_>>()?;
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut tiers: Vec<TierSummary> = order
        .into_iter()
        .map(|tier| {
            let of_tier: Vec<&ClientSummary> = clients.iter().filter(|c| c.tier == tier).collect();
            let first = &of_tier[0];
            TierSummary {
                tier: tier.to_string(),
                clients: of_tier.len(),
                device_memory_bytes: first.device_memory_bytes,
                train_parameters: first.train.parameters,
                train_accuracy: mean(of_tier.iter().map(|c| c.train.accuracy).collect()),
                train_to_inference_memory: first.train.train_memory_bytes as f64
                    / first.train.inference_memory_bytes as f64,
                deployed_parameters: first.deployed.parameters,
                deployed_accuracy: mean(of_tier.iter().map(|c| c.deployed.accuracy).collect()),
            }
        })
        .collect();
    tiers.sort_by_key(|t| t.train_parameters);
    tiers
}

fn summary_csv(clients: &[ClientSummary]) -> String {
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let mut csv = String::from(
        "client,tier,device_memory_bytes,train_parameters,train_bytes,train_memory_bytes,train_inference_memory_bytes,train_accuracy,deployed_parameters,deployed_bytes,deployed_inference_memory_bytes,deployed_accuracy\n",
    );
    for c in clients {
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.client,
            c.tier,
            c.device_memory_bytes
                .map_or(String::new(), |m| m.to_string()),
            c.train.parameters,
            c.train.bytes,
            c.train.train_memory_bytes,
            c.train.inference_memory_bytes,
            f(c.train.accuracy),
            c.deployed.parameters,
            c.deployed.bytes,
            c.deployed.inference_memory_bytes,
            f(c.deployed.accuracy)
        );
    }
    csv
}

fn print_tiers(tiers: &[TierSummary]) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mib = |m: Option<u64>| {
        m.map_or("unlimited".into(), |m| {
            format!("{:.0} MiB", m as f64 / (1 << 20) as f64)
        })
    };
    let width = tiers.iter().map(|t| t.tier.len()).max().unwrap_or(0).max(4);
    println!(
        "{:<width$}  clients     device  trained params  train/infer  accuracy  deployed params  accuracy",
        "tier"
    );
    for t in tiers {
        println!(
            "{:<width$}  {:>7}  {:>9}  {:>13.2}M  {:>10.1}x  {:>8}  {:>14.2}M  {:>8}",
            t.tier,
            t.clients,
            mib(t.device_memory_bytes),
            t.train_parameters as f64 / 1e6,
            t.train_to_inference_memory,
            f(t.train_accuracy),
            t.deployed_parameters as f64 / 1e6,
            f(t.deployed_accuracy)
        );
    }
}
