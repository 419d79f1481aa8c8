//! What each stage records beyond the common manifest fields: one variant per stage,
//! tagged by `stage` and flattened into `manifest.json`, so writers and readers (launch,
//! aggregate, report, inspect) share one type instead of string keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::elastic::index::Selection;
use crate::fl::aggregate::{Contribution, Coverage, Skipped, TensorHoldings};
use crate::fl::attack::Attack;
use crate::fl::cost::TrainingShape;
use crate::fl::extract::DepthPolicy;
use crate::fl::prioritize::AxisPermutation;
use crate::fl::privacy::PrivacyRecord;
use crate::fl::search::{Budget, Policy};
use crate::models::evaluate::Metrics;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum StageRecord {
    /// A model imported from GGUF or ONNX (`raffm-import-gguf`, `raffm-import-onnx`).
    Import(Imported),
    Prioritize(Prioritized),
    /// A classification head, or a fresh LoRA adapter, on a pre-trained model.
    InitHead {},
    /// A client's sub-model, or its slice of a global adapter.
    Extract(Extracted),
    /// A base sub-model of a LoRA round, written once per shape.
    ExtractBase {},
    LocalTrain(Trained),
    Aggregate(Aggregated),
    /// A client's model for inference (`raffm-deploy-scale`, one folder per client).
    Deploy(Deployed),
    /// The summary of `raffm-deploy-scale`'s output folder.
    DeployScale(DeploySummary),
    /// A client sub-model zero-padded to its global model's shapes (`raffm-export`).
    Export(Exported),
}

impl StageRecord {
    /// The stage's name, as `manifest.json` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            StageRecord::Import(_) => "import",
            StageRecord::Prioritize(_) => "prioritize",
            StageRecord::InitHead {} => "init-head",
            StageRecord::Extract(_) => "extract",
            StageRecord::ExtractBase {} => "extract-base",
            StageRecord::LocalTrain(_) => "local-train",
            StageRecord::Aggregate(_) => "aggregate",
            StageRecord::Deploy(_) => "deploy",
            StageRecord::DeployScale(_) => "deploy-scale",
            StageRecord::Export(_) => "export",
        }
    }

    /// The record as JSON fields (`stage`, `metrics` and the rest), for display.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => unreachable!("a stage record serializes to an object"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Imported {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufSource>,
    /// ONNX: the tensors recovered from the graph's constants, and from which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<(String, String)>,
}

/// What a GGUF file said of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GgufSource {
    pub version: u32,
    pub name: Option<String>,
    pub pre_tokenizer: String,
    /// Tensors per storage type.
    pub tensor_types: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prioritized {
    pub metrics: PrioritizeMetrics,
    pub permutations: Vec<AxisPermutation>,
    /// Tensors of the input that no family description names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_tensors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrioritizeMetrics {
    pub axes_reordered: usize,
}

/// A client's sub-model (its search: policy, budget, selection) or adapter slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extracted {
    pub metrics: ExtractMetrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_policy: Option<DepthPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_shape: Option<TrainingShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<VocabularyRecord>,
}

impl Extracted {
    /// A record of these metrics, the search's fields left out (an adapter slice).
    pub fn new(metrics: ExtractMetrics) -> Self {
        Self {
            metrics,
            policy: None,
            depth_policy: None,
            budget: None,
            training_shape: None,
            selection: None,
            vocabulary: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractMetrics {
    /// The estimate a launcher requests memory by (see [`crate::fl::cost`]).
    pub train_memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_memory_bytes: Option<u64>,
    /// How many configurations of the search space fit the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feasible_configurations: Option<f64>,
    /// An adapter slice: the base (sub-)model's parameters and the adapter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_parameters: Option<u64>,
}

/// A client vocabulary: its size, how many tokens came from its data and how many are
/// decoys (the kept ids are in the index map; decoys are not told apart from them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocabularyRecord {
    pub tokens: usize,
    pub from_data: usize,
    pub decoys: usize,
}

/// A client's update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trained {
    pub client: String,
    pub metrics: TrainMetrics,
    /// The attack the update was made with (experiments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<Attack>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub examples_seen: u64,
    pub steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    pub final_loss: Option<f32>,
    pub wall_seconds: f64,
    pub examples_per_second: f64,
    /// A decoder's: the answer tokens the loss was taken on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub step_losses: Vec<f32>,
}

/// A round's new global model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregated {
    pub metrics: AggregateMetrics,
    pub clients: Vec<Contribution>,
    pub skipped: Vec<Skipped>,
    pub coverage: Coverage,
    pub tensors: Vec<TensorHoldings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AggregateMetrics {
    pub clients: usize,
    pub mean_client_parameters: f64,
    pub mean_client_bytes: f64,
    /// Share of the global model's elements that changed.
    pub updated_fraction: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_round: Option<f64>,
    /// The new model on the validation split, where it was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Metrics>,
}

/// A client's deployed model: the sub-model chosen for its inference budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    /// The client's device memory, where its budget gives one.
    pub device_memory_bytes: Option<u64>,
    pub tier: String,
    #[serde(flatten)]
    pub sub_model: Extracted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploySummary {
    pub metrics: DeployMetrics,
    pub tiers: Vec<TierSummary>,
}

/// One tier's training and deployed sub-models, and their scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierSummary {
    pub tier: String,
    pub clients: usize,
    pub device_memory_bytes: Option<u64>,
    pub train_parameters: u64,
    pub train_accuracy: Option<f64>,
    /// Training memory over inference memory of the training sub-model (the paper's
    /// "about 7x").
    pub train_to_inference_memory: f64,
    pub deployed_parameters: u64,
    pub deployed_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployMetrics {
    pub clients: usize,
    pub distinct_models: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported {
    pub sub_model_parameters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::Manifest;
    use serde_json::json;

    fn extracted() -> Extracted {
        Extracted::new(ExtractMetrics {
            train_memory_bytes: 123,
            inference_memory_bytes: Some(45),
            feasible_configurations: None,
            base_parameters: None,
            adapter_parameters: None,
        })
    }

    /// The record sits flat in manifest.json, under its `stage` name, and reads back as
    /// the same variant; a manifest of another stage, or one with a wrong field, does not
    /// pass for it.
    #[test]
    fn records_round_trip_flat_under_their_stage_name() {
        let records = [
            StageRecord::InitHead {},
            StageRecord::Extract(extracted()),
            StageRecord::Deploy(Deployed {
                device_memory_bytes: Some(1 << 30),
                tier: "small".into(),
                sub_model: extracted(),
            }),
            StageRecord::LocalTrain(Trained {
                client: "c1".into(),
                metrics: TrainMetrics::default(),
                attack: Some(Attack::Flip),
            }),
        ];
        for (record, name) in
            records
                .into_iter()
                .zip(["init-head", "extract", "deploy", "local-train"])
        {
            assert_eq!(record.fields()["stage"], record.name());
            let manifest = Manifest::new(record, "test", json!({"x": 1}));
            let value = serde_json::to_value(&manifest).unwrap();
            assert_eq!(value["stage"], name);
            let back: Manifest = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(back.stage(), name);
            assert_eq!(serde_json::to_value(&back).unwrap(), value);
        }
        let deployed = serde_json::to_value(Manifest::new(
            StageRecord::Deploy(Deployed {
                device_memory_bytes: None,
                tier: "t".into(),
                sub_model: extracted(),
            }),
            "test",
            json!(null),
        ))
        .unwrap();
        assert_eq!(deployed["metrics"]["train_memory_bytes"], 123);
        assert_eq!(deployed["tier"], "t");

        let mut unknown = deployed.clone();
        unknown["stage"] = json!("fine-tune");
        let err = serde_json::from_value::<Manifest>(unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fine-tune"), "{err}");
        let mut wrong = deployed;
        wrong["metrics"]["train_memory_bytes"] = json!("lots");
        assert!(serde_json::from_value::<Manifest>(wrong).is_err());
    }
}
