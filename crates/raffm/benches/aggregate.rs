//! Aggregation of 10 client sub-models of a BERT-base-sized model (random weights) into
//! the next global model, against the I/O floor: reading the same files (global + 10
//! sub-models) and hashing them, as the stage verifies every input against its manifest,
//! then writing one global-sized file, hashed and synced as stages write. Then each server
//! rule against FedAvg: clipped FedAvg, the median, the trimmed mean and DP-FedAvg. All
//! timed from a warm page cache, interleaved, best of three. Run with `make bench`.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use raffm::core::io::{sha256_bytes, StagingDir};
use raffm::core::sys::peak_rss_bytes;
use raffm::fl::aggregate::{aggregate_dirs, DpRound, Rule, ServerRule, Weighting};
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::extract::{write_client, ClientRequest, Strategy};
use raffm::fl::privacy::DpFedAvg;
use raffm::fl::search::{Budget, Policy, SearchSpace};
use raffm::{Checkpoint, ModelConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let json = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2
    });
    let config = ModelConfig::from_json(json, Path::new("bert-base")).unwrap();
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let labels = vec!["a".to_string(), "b".to_string()];
    Checkpoint::random(&config, 0)
        .with_classification_head(&labels, 0)
        .save(dir.path().join("global"))
        .unwrap();
    let global = Checkpoint::load(dir.path().join("global")).unwrap();
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    let clients: Vec<String> = (0..10).map(|i| format!("c{i:03}")).collect();
    clients.par_iter().enumerate().for_each(|(i, client)| {
        let budget = Budget {
            max_parameters: Some(global.parameter_count() * (50 + 5 * i as u64) / 100),
            max_train_memory_bytes: None,
        };
        let request = ClientRequest {
            client,
            budget,
            round: 1,
            seed: 0,
            strategy: Strategy::Random,
            policy: Policy::Sample,
            depth_policy: Default::default(),
            space: &space,
            cost_model: &cost_model,
            vocabulary: None,
        };
        write_client(
            &global,
            &request,
            &dir.path().join("clients").join(client),
            serde_json::json!({}),
            &[],
        )
        .unwrap();
    });
    drop(global);
    let files: Vec<std::path::PathBuf> =
        std::iter::once(dir.path().join("global/model.safetensors"))
            .chain(
                clients
                    .iter()
                    .map(|c| dir.path().join("clients").join(c).join("model.safetensors")),
            )
            .collect();
    let bytes_in: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();

    // Best of three for both, alternating, so that neither gets a warmer page cache.
    let floor_once = || {
        let start = Instant::now();
        let mut global_bytes = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            std::hint::black_box(sha256_bytes(&bytes));
            if global_bytes.is_empty() {
                global_bytes = bytes;
            }
        }
        let mut staging = StagingDir::new(dir.path().join("floor")).unwrap();
        staging
            .write_with("model.safetensors", |w| w.write_all(&global_bytes))
            .unwrap();
        staging.commit().unwrap();
        start.elapsed().as_secs_f64()
    };
    let dirs: Vec<std::path::PathBuf> = clients
        .iter()
        .map(|c| dir.path().join("clients").join(c))
        .collect();
    let fedavg = ServerRule::fedavg(Weighting::Uniform, 1.0);
    let rules: Vec<(&str, ServerRule)> = vec![
        ("fedavg", fedavg.clone()),
        (
            "fedavg, clipped",
            ServerRule {
                clip_norm: Some(1.0),
                ..fedavg.clone()
            },
        ),
        (
            "median",
            ServerRule {
                rule: Rule::Median,
                ..fedavg.clone()
            },
        ),
        (
            "trimmed mean 0.2",
            ServerRule {
                rule: Rule::TrimmedMean { trim_fraction: 0.2 },
                ..fedavg.clone()
            },
        ),
        (
            "dp-fedavg",
            ServerRule {
                dp: Some(DpRound {
                    settings: DpFedAvg {
                        noise_multiplier: 1.0,
                        clip_norm: 1.0,
                        sample_rate: 0.1,
                        expected_clients: 10.0,
                        delta: 1e-5,
                        target_epsilon: None,
                    },
                    seed: 1,
                    round: 1,
                }),
                ..fedavg.clone()
            },
        ),
    ];
    let aggregate_once = |rule: &ServerRule| {
        let start = Instant::now();
        let global = Checkpoint::load(dir.path().join("global")).unwrap();
        let outcome = aggregate_dirs(&global, &dirs, rule, false).unwrap();
        outcome.model.save(dir.path().join("next")).unwrap();
        (start.elapsed().as_secs_f64(), outcome)
    };
    let mut floor = f64::INFINITY;
    let mut seconds = vec![f64::INFINITY; rules.len()];
    let mut last = None;
    for _ in 0..3 {
        floor = floor.min(floor_once());
        for (i, (_, rule)) in rules.iter().enumerate() {
            let (s, outcome) = aggregate_once(rule);
            seconds[i] = seconds[i].min(s);
            if i == 0 {
                last = Some(outcome);
            }
        }
    }
    let outcome = last.expect("ran");
    let (next, coverage) = (outcome.model, outcome.coverage);
    println!(
        "aggregate 10 clients into BERT-base ({:.0} MB read, {:.0} MB written, {:.1}% of elements updated): {:.2} s; I/O floor {floor:.2} s; ratio {:.2}x; peak RSS {:.0} MiB",
        bytes_in as f64 / 1e6,
        next.bytes_on_wire() as f64 / 1e6,
        100.0 * coverage.updated_elements as f64 / coverage.total_elements as f64,
        seconds[0],
        seconds[0] / floor,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    for ((name, _), s) in rules.iter().zip(&seconds).skip(1) {
        println!(
            "  {name:<17} {s:.2} s, {:.2}x fedavg, {:.2}x the I/O floor",
            s / seconds[0],
            s / floor
        );
    }
}
