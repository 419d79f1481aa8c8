//! Sub-model extraction on the real MiniLM: a sub-model computes what the full model
//! computes with the dropped heads, channels and neurons zeroed, for every strategy; a
//! sub-model without a layer computes the full model with that layer skipped; what is
//! extracted and aggregated unchanged comes back bit for bit.

mod common;

use common::{max_abs_diff, minilm_dir, sentences};
use raffm::core::elastic::{Axis, AxisSizes, Widths};
use raffm::core::tensor::Norm;
use raffm::data::tokenizer::{EncodedBatch, TextTokenizer};
use raffm::fl::aggregate::{aggregate, ClientUpdate};
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::extract::{
    extract, extract_for_client, mask, padded, padding_obstacle, select, selection_map,
    ClientRequest, DepthPolicy, Strategy,
};
use raffm::fl::prioritize::prioritize;
use raffm::fl::search::{Budget, Policy, SearchSpace};
use raffm::models::families::bert::model::{
    BatchTensors, BertForSequenceClassification, BertModel,
};
use raffm::{Checkpoint, CpuBackend};

fn global() -> Checkpoint {
    let labels = vec!["negative".to_string(), "positive".to_string()];
    Checkpoint::load(minilm_dir())
        .unwrap()
        .with_classification_head(&labels, 7)
}

fn batch() -> EncodedBatch {
    let texts = sentences();
    TextTokenizer::from_dir(&minilm_dir())
        .unwrap()
        .encode_batch(texts.iter().map(String::as_str).collect(), 64, 0)
        .unwrap()
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

fn request<'a>(
    strategy: Strategy,
    budget: Budget,
    policy: Policy,
    space: &'a SearchSpace,
    cost_model: &'a CostModel,
) -> ClientRequest<'a> {
    ClientRequest {
        client: "c007",
        budget,
        round: 3,
        seed: 11,
        strategy,
        policy,
        depth_policy: DepthPolicy::Even,
        space,
        cost_model,
        vocabulary: None,
    }
}

/// The search space of every axis.
fn full_space() -> SearchSpace {
    let mut space = SearchSpace::per_layer();
    space.0.insert(Axis::Hidden, vec![0.25, 0.5, 0.75, 1.0]);
    space.0.insert(Axis::Layers, vec![0.5, 0.67, 0.83, 1.0]);
    space
}

#[test]
fn every_strategy_gives_a_sub_model_equal_to_the_masked_full_model() {
    let raw = global();
    let (prioritized, _) = prioritize(&raw, Norm::L1, |_| {});
    let batch = batch();
    let space = SearchSpace::per_layer();
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
        let request = request(strategy, budget, Policy::Sample, &space, &cost_model);
        let sub = extract_for_client(global, &request).unwrap();
        assert!(sub.checkpoint.parameter_count() < global.parameter_count());
        let masked = mask(global, &sub.choice.widths, &sub.index_map).unwrap();
        let (a, b) = (logits(&sub.checkpoint, &batch), logits(&masked, &batch));
        let diff = max_abs_diff(&a, &b);
        eprintln!(
            "{strategy:?}: {} -> logits diff {diff:.2e}",
            sub.choice.widths.summary()
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
fn the_padded_export_has_the_full_models_names_and_shapes_and_its_function() {
    let (global, _) = prioritize(&global(), Norm::L1, |_| {});
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    let budget = Budget {
        max_parameters: Some(global.parameter_count() * 75 / 100),
        max_train_memory_bytes: None,
    };
    let request = request(
        Strategy::Salient,
        budget,
        Policy::Largest,
        &space,
        &cost_model,
    );
    let sub = extract_for_client(&global, &request).unwrap();
    let export = padded(&global.config, &sub.checkpoint, &sub.index_map).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export.save(dir.path()).unwrap();
    let written = Checkpoint::load(dir.path()).unwrap();
    // The same tensors under the same names, at the full shapes, and the config HF reads.
    assert_eq!(written.config.widths(), global.config.widths());
    assert!(written.tensors.keys().eq(global.tensors.keys()));
    for (name, t) in &global.tensors {
        assert_eq!(written.tensors[name].shape, t.shape, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert!(config.get("raffm").is_none(), "HF reads the full widths");
    let batch = batch();
    let diff = max_abs_diff(&logits(&sub.checkpoint, &batch), &logits(&written, &batch));
    assert!(
        diff < 1e-4,
        "the padded export differs from the sub-model by {diff}"
    );
    // Where no zero-padded form exists, the export says why.
    let mut shallow = global.config.widths();
    shallow.layers.pop();
    shallow.global_layers.pop();
    let reason = padding_obstacle(&global.config, &shallow).unwrap();
    assert!(reason.contains("layers"), "{reason}");
}

/// The encoder's pooled output on the real sentences.
fn pooled(
    model: &BertModel<CpuBackend>,
    batch: &BatchTensors<CpuBackend>,
    layers: &[usize],
) -> Vec<f32> {
    model
        .forward_layers(batch, layers)
        .pooler_output
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

#[test]
fn a_sub_model_without_layer_k_equals_the_full_model_with_layer_k_skipped() {
    let global = Checkpoint::load(minilm_dir()).unwrap();
    let device = Default::default();
    let batch = batch().to_tensors::<CpuBackend>(&device);
    let full = BertModel::<CpuBackend>::from_checkpoint(&global, &device);
    let depth = global.config.widths().layers.len();
    let everything = pooled(&full, &batch, &(0..depth).collect::<Vec<_>>());
    for k in [0, 2, depth - 1] {
        let mut widths = global.config.widths();
        widths.layers.remove(k);
        widths.global_layers.remove(k);
        let selection = select(
            &global.config,
            Strategy::Static,
            &global.config.widths(),
            &widths,
            0,
            0,
            "k",
        );
        let map = selection_map(&global.config, &widths, &selection);
        let sub = extract(&global, &widths, &map).unwrap();
        assert_eq!(sub.config.widths().layers.len(), depth - 1);
        let kept: Vec<usize> = (0..depth).filter(|&l| l != k).collect();
        let skipped = pooled(&full, &batch, &kept);
        let sub_model = BertModel::<CpuBackend>::from_checkpoint(&sub, &device);
        let got = pooled(&sub_model, &batch, &(0..depth - 1).collect::<Vec<_>>());
        let diff = max_abs_diff(&got, &skipped);
        eprintln!("without layer {k}: {diff:.2e} from the full model skipping it");
        assert!(diff < 1e-5, "layer {k}: {diff}");
        assert!(
            max_abs_diff(&got, &everything) > 1e-3,
            "skipping layer {k} changed nothing"
        );
    }
}

#[test]
fn a_narrower_shallower_sub_model_aggregated_unchanged_gives_back_the_real_model() {
    let mut global = global();
    // As read from disk: the hash the update is checked against.
    global.files.push(raffm::core::io::FileRecord {
        path: "global/model.safetensors".into(),
        sha256: "ab".repeat(32),
        bytes: 0,
    });
    let full = global.config.widths();
    let widths = Widths {
        global: AxisSizes::of(&[(Axis::Hidden, 192), (Axis::Vocab, 30522)]),
        layers: full.layers[..3]
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.set(Axis::Heads, 6);
                l.set(Axis::Ffn, 768);
                l
            })
            .collect(),
        global_layers: vec![0, 2, 4],
    };
    for strategy in [Strategy::Static, Strategy::Random] {
        let selection = select(&global.config, strategy, &full, &widths, 1, 3, "c");
        let map = selection_map(&global.config, &widths, &selection);
        let sub = extract(&global, &widths, &map).unwrap();
        assert!(padding_obstacle(&global.config, &widths).is_some());
        let update = ClientUpdate::in_memory("c", sub, map, &global, 576);
        update.check(&global).unwrap();
        let (out, coverage) = aggregate(&global, &[(&update, 576.0)], 1.0);
        assert!(coverage.updated_elements < coverage.total_elements / 2);
        for (name, t) in &global.tensors {
            assert!(t.bit_eq(&out.tensors[name]), "{strategy:?}: {name} changed");
        }
    }
}

#[test]
fn written_checkpoints_fit_the_budget_and_have_the_descriptions_parameter_count() {
    let global = global();
    let (global, _) = prioritize(&global, Norm::L1, |_| {});
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let full = global.parameter_count();
    let dir = tempfile::tempdir().unwrap();
    for (space, smallest_feasible) in [(SearchSpace::per_layer(), 70), (full_space(), 20)] {
        let mut feasible = 0;
        for percent in (10..=100).step_by(10) {
            let max = full * percent / 100;
            let budget = Budget {
                max_parameters: Some(max),
                max_train_memory_bytes: None,
            };
            let request = request(
                Strategy::Salient,
                budget,
                Policy::Largest,
                &space,
                &cost_model,
            );
            match extract_for_client(&global, &request) {
                Ok(sub) => {
                    let path = dir.path().join(percent.to_string());
                    sub.checkpoint.save(&path).unwrap();
                    let written = Checkpoint::load(&path).unwrap();
                    let counted = written.parameter_count();
                    assert_eq!(
                        counted, sub.choice.cost.parameters,
                        "cost model disagrees with the file"
                    );
                    assert_eq!(
                        counted,
                        written.config.parameter_count(),
                        "description disagrees with the file"
                    );
                    assert_eq!(written.config.widths(), sub.choice.widths);
                    assert!(counted <= max, "{percent}%: {counted} > {max}");
                    feasible += 1;
                }
                Err(e) => {
                    assert!(matches!(e, raffm::Error::Infeasible { .. }), "{e}");
                    assert!(
                        percent < smallest_feasible,
                        "{percent}% should be feasible: {e}"
                    );
                }
            }
        }
        assert!(feasible >= 4);
    }
}
