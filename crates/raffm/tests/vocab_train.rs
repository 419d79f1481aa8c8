//! Training with a client vocabulary and aggregating equals training the full vocabulary
//! and aggregating, when weight decay is 0: the rows a client's data never uses get no
//! gradient, and AdamW leaves a parameter with no gradient and no decay where it is.

use std::path::Path;

use raffm::burn::backend::Autodiff;
use raffm::core::elastic::index::IndexMap;
use raffm::core::fixtures::{tiny_reviews, tiny_text_model};
use raffm::data::tokenizer::TextTokenizer;
use raffm::data::{tokenize, DataSource, Dataset, Format};
use raffm::fl::aggregate::{aggregate, ClientUpdate};
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::extract::{extract_widths, ClientRequest, DepthPolicy, Strategy};
use raffm::fl::search::{Budget, Policy, SearchSpace};
use raffm::fl::vocab::{data_tokens, with_decoys};
use raffm::models::train::{train_encoder, TrainData, TrainOptions};
use raffm::{Axis, Checkpoint, CpuBackend};

type B = Autodiff<CpuBackend>;

/// Trains `model` (read from `dir`, whose tokenizer it uses) on `ids` and aggregates the
/// result, alone, into `global`.
fn train_and_aggregate(
    global: &Checkpoint,
    model: &Checkpoint,
    map: &IndexMap,
    dir: &Path,
    dataset: &Dataset,
    ids: &[usize],
    weight_decay: f64,
) -> Checkpoint {
    let tokenizer = TextTokenizer::from_dir(dir).unwrap();
    let (rows, labels) = tokenize(dataset, ids, &tokenizer, 16).unwrap();
    let data = TrainData {
        rows: &rows,
        labels: &labels,
        pad_id: model.config.pad_token_id() as i64,
        regression: false,
    };
    let options = TrainOptions {
        epochs: 3,
        batch_size: 8,
        learning_rate: 1e-2,
        weight_decay,
        seed: 7,
        ..Default::default()
    };
    let (trained, _) =
        train_encoder::<B>(model, &data, &options, &Default::default(), |_| {}).unwrap();
    let update = ClientUpdate::in_memory("c0", trained, map.clone(), global, ids.len() as u64);
    update.check(global).unwrap();
    aggregate(global, &[(&update, ids.len() as f64)], 1.0).0
}

#[test]
fn a_client_vocabulary_trains_and_aggregates_to_what_the_full_vocabulary_does() {
    let dir = tempfile::tempdir().unwrap();
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let global_dir = dir.path().join("global");
    Checkpoint::load(tiny_text_model(&dir.path().join("model")))
        .unwrap()
        .with_classification_head(&labels, 2)
        .save(&global_dir)
        .unwrap();
    let global = Checkpoint::load(&global_dir).unwrap();
    tiny_reviews(&dir.path().join("reviews.jsonl"), 40);
    let dataset = Dataset::load(&DataSource {
        format: Format::Jsonl,
        path: dir.path().join("reviews.jsonl"),
        labels_path: None,
        validation: None,
    })
    .unwrap();
    // The client's shard uses some of the words only.
    let ids: Vec<usize> = (0..40).filter(|i| i % 4 != 3).collect();
    let tokenizer = TextTokenizer::from_dir(&global_dir).unwrap();
    let vocab_size = global.config.vocab_size();
    let tokens = data_tokens(&tokenizer, &dataset, &ids, vocab_size).unwrap();
    let vocabulary = with_decoys(
        &tokens,
        vocab_size,
        0,
        &mut raffm::core::rng::SplitMix64::new(0),
    );
    assert!(vocabulary.kept.len() < vocab_size / 2, "{vocabulary:?}");

    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    let request = |vocabulary| ClientRequest {
        client: "c0",
        budget: Budget::default(),
        round: 1,
        seed: 0,
        strategy: Strategy::Static,
        policy: Policy::Largest,
        depth_policy: DepthPolicy::Even,
        space: &space,
        cost_model: &cost_model,
        vocabulary,
    };
    let full_widths = global.config.widths();
    let mut widths = full_widths.clone();
    widths.global.set(Axis::Vocab, vocabulary.kept.len());
    let full = extract_widths(&global, &request(None), &full_widths).unwrap();
    let reduced = extract_widths(&global, &request(Some(&vocabulary)), &widths).unwrap();
    reduced.checkpoint.save(dir.path().join("reduced")).unwrap();
    let reduced_model = Checkpoint::load(dir.path().join("reduced")).unwrap();

    let embedding = global
        .config
        .tensors()
        .into_iter()
        .find(|t| t.has_axis(Axis::Vocab))
        .unwrap()
        .name;
    let row = global.tensors[&embedding].shape[1];
    let run = |decay| {
        let a = train_and_aggregate(
            &global,
            &full.checkpoint,
            &full.index_map,
            &global_dir,
            &dataset,
            &ids,
            decay,
        );
        let b = train_and_aggregate(
            &global,
            &reduced_model,
            &reduced.index_map,
            &dir.path().join("reduced"),
            &dataset,
            &ids,
            decay,
        );
        (a, b)
    };

    // No weight decay: the same model, to float rounding (the gradient norm for clipping
    // sums a tensor with more zeros in it).
    let (a, b) = run(0.0);
    let mut worst = 0.0f32;
    for (name, t) in &a.tensors {
        worst = worst.max(t.max_abs_diff(&b.tensors[name]));
    }
    eprintln!("weight decay 0: largest difference {worst:.2e}");
    assert!(worst <= 1e-6, "{worst}");
    let moved = a.tensors[&embedding].max_abs_diff(&global.tensors[&embedding]);
    assert!(moved > 1e-4, "training did not move the embeddings");

    // With decay, the full-vocabulary client also shrinks the rows its data never uses;
    // the reduced one never held them, so they keep their global values.
    let (a, b) = run(0.1);
    let (ea, eb, eg) = (
        &a.tensors[&embedding],
        &b.tensors[&embedding],
        &global.tensors[&embedding],
    );
    for token in 0..vocab_size {
        let span = token * row..(token + 1) * row;
        let kept = vocabulary.kept.binary_search(&token).is_ok();
        let diff = ea.data[span.clone()]
            .iter()
            .zip(&eb.data[span.clone()])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        if kept {
            assert!(diff <= 1e-6, "kept token {token}: {diff}");
        } else {
            assert_eq!(
                &eb.data[span.clone()],
                &eg.data[span.clone()],
                "token {token}"
            );
            assert!(
                diff > 0.0,
                "token {token} was not decayed by the full client"
            );
        }
    }
}
