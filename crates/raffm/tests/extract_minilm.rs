//! Sub-model extraction on the real MiniLM: a sub-model computes what the full model
//! computes with the dropped heads, channels and neurons zeroed, for every strategy.

mod common;

use common::{max_abs_diff, minilm_dir, sentences};
use raffm::cost::{CostModel, TrainingShape};
use raffm::extract::{extract_for_client, mask, ClientRequest, Strategy};
use raffm::model::BertForSequenceClassification;
use raffm::prioritize::prioritize;
use raffm::search::{Budget, Policy, SearchSpace};
use raffm::tensor::Norm;
use raffm::tokenizer::{EncodedBatch, TextTokenizer};
use raffm::{Checkpoint, CpuBackend};

fn global() -> Checkpoint {
    let labels = vec!["negative".to_string(), "positive".to_string()];
    Checkpoint::load(minilm_dir())
        .unwrap()
        .with_classification_head(&labels, 7)
}

fn logits(c: &Checkpoint, batch: &EncodedBatch) -> Vec<f32> {
    let device = Default::default();
    let model = BertForSequenceClassification::<CpuBackend>::from_checkpoint(c, &device).unwrap();
    model
        .forward(&batch.to_tensors(&device))
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

#[test]
fn every_strategy_gives_a_sub_model_equal_to_the_masked_full_model() {
    let raw = global();
    let (prioritized, _) = prioritize(&raw, Norm::L1, |_| {});
    let texts = sentences();
    let batch = TextTokenizer::from_dir(&minilm_dir())
        .unwrap()
        .encode_batch(texts.iter().map(String::as_str).collect(), 64, 0)
        .unwrap();
    let space = SearchSpace::default();
    for strategy in [
        Strategy::Salient,
        Strategy::Static,
        Strategy::Rolling,
        Strategy::Random,
    ] {
        let global = if strategy == Strategy::Salient {
            &prioritized
        } else {
            &raw
        };
        let cost_model = CostModel::for_checkpoint(global, TrainingShape::default());
        let budget = Budget {
            max_parameters: Some(global.parameter_count() * 8 / 10),
            max_train_memory_bytes: None,
        };
        // `sample` gives uneven layers, which exercises per-layer widths.
        let request = ClientRequest {
            client: "c007",
            budget,
            round: 3,
            seed: 11,
            strategy,
            policy: Policy::Sample,
            space: &space,
            cost_model: &cost_model,
        };
        let sub = extract_for_client(global, &request).unwrap();
        assert!(sub.checkpoint.parameter_count() < global.parameter_count());
        let masked = mask(global, &sub.index_map);
        let (a, b) = (logits(&sub.checkpoint, &batch), logits(&masked, &batch));
        let diff = max_abs_diff(&a, &b);
        eprintln!(
            "{strategy:?}: {:?} -> logits diff {diff:.2e}",
            sub.choice.layers
        );
        assert!(
            diff < 1e-4,
            "{strategy:?}: sub-model and masked model differ by {diff}"
        );
        // Masking must matter, or the check above proves nothing.
        assert!(
            max_abs_diff(&a, &logits(global, &batch)) > 1e-3,
            "{strategy:?}: sub-model equals the full model"
        );
    }
}

#[test]
fn written_parameter_counts_never_exceed_the_budget() {
    let global = global();
    let (global, _) = prioritize(&global, Norm::L1, |_| {});
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::default();
    let full = global.parameter_count();
    let dir = tempfile::tempdir().unwrap();
    let mut feasible = 0;
    for percent in (10..=100).step_by(10) {
        let max = full * percent / 100;
        let request = ClientRequest {
            client: "c000",
            budget: Budget {
                max_parameters: Some(max),
                max_train_memory_bytes: None,
            },
            round: 0,
            seed: 0,
            strategy: Strategy::Salient,
            policy: Policy::Largest,
            space: &space,
            cost_model: &cost_model,
        };
        match extract_for_client(&global, &request) {
            Ok(sub) => {
                let path = dir.path().join(percent.to_string());
                sub.checkpoint.save(&path).unwrap();
                let written = Checkpoint::load(&path).unwrap().parameter_count();
                assert_eq!(
                    written, sub.choice.cost.parameters,
                    "cost model disagrees with the file"
                );
                assert!(written <= max, "{percent}%: {written} > {max}");
                feasible += 1;
            }
            Err(e) => {
                // MiniLM's embeddings are over half its parameters: small budgets cannot fit.
                assert!(e.to_string().contains("infeasible budget"), "{e}");
                assert!(percent < 70, "{percent}% should be feasible: {e}");
            }
        }
    }
    assert!(feasible >= 4);
}
