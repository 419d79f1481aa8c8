//! Extraction of 10 client sub-models from a BERT-base-sized checkpoint (12 layers, hidden
//! 768, 12 heads, FFN 3072, random weights), against the I/O floor: reading the global
//! weights once and writing the same number of bytes as the 10 sub-models, through the
//! same buffered, fsynced writes. Run with `make bench`.

use std::path::Path;
use std::time::Instant;

use raffm::core::io::StagingDir;
use raffm::core::rng::SplitMix64;
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::extract::{depth_plan, write_client, ClientRequest, Strategy};
use raffm::fl::search::{choose, Budget, Policy, SearchSpace};
use raffm::{Checkpoint, ModelConfig};
use rayon::prelude::*;

fn bert_base() -> ModelConfig {
    let json = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12
    });
    ModelConfig::from_json(json, Path::new("bert-base")).unwrap()
}

fn peak_rss_mib() -> f64 {
    raffm::core::sys::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64)
}

/// A client whose budget is `fraction` of the global model's parameters.
fn request<'a>(
    client: &'a str,
    fraction: f64,
    global: &Checkpoint,
    space: &'a SearchSpace,
    cost_model: &'a CostModel,
) -> ClientRequest<'a> {
    let max_parameters = Some((global.parameter_count() as f64 * fraction) as u64);
    ClientRequest {
        client,
        budget: Budget {
            max_parameters,
            max_train_memory_bytes: None,
        },
        round: 0,
        seed: 0,
        strategy: Strategy::Salient,
        policy: Policy::Largest,
        depth_policy: Default::default(),
        space,
        cost_model,
        vocabulary: None,
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let global_dir = dir.path().join("global");
    let labels = vec!["a".to_string(), "b".to_string()];
    Checkpoint::random(&bert_base(), 0)
        .with_classification_head(&labels, 0)
        .save(&global_dir)
        .unwrap();
    let fractions = [0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0];

    // The floor: read the global weights, write as many bytes as the sub-models will hold
    // (the cost model's exact count, so nothing is extracted twice).
    let out_bytes: Vec<u64> = {
        let global = Checkpoint::load(&global_dir).unwrap();
        let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
        let space = SearchSpace::per_layer();
        fractions
            .iter()
            .map(|&f| {
                let r = request("x", f, &global, &space, &cost_model);
                let plan = depth_plan(&global, r.depth_policy);
                choose(
                    &cost_model,
                    &space,
                    &r.budget,
                    r.policy,
                    &plan,
                    &mut SplitMix64::new(0),
                )
                .unwrap()
                .cost
                .bytes_on_wire
            })
            .collect()
    };
    let start = Instant::now();
    let bytes = std::fs::read(global_dir.join("model.safetensors")).unwrap();
    for (i, n) in out_bytes.iter().enumerate() {
        let mut staging = StagingDir::new(dir.path().join(format!("floor/{i}"))).unwrap();
        let chunk = &bytes[..(*n as usize).min(bytes.len())];
        staging
            .write_with("model.safetensors", |w| w.write_all(chunk))
            .unwrap();
        staging.commit().unwrap();
    }
    let floor = start.elapsed().as_secs_f64();
    drop(bytes);

    let start = Instant::now();
    let global = Checkpoint::load(&global_dir).unwrap();
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let space = SearchSpace::per_layer();
    fractions.par_iter().enumerate().for_each(|(i, &f)| {
        let client = format!("c{i:03}");
        let r = request(&client, f, &global, &space, &cost_model);
        write_client(
            &global,
            &r,
            &dir.path().join("clients").join(&client),
            serde_json::json!({}),
            &[],
        )
        .unwrap();
    });
    let extraction = start.elapsed().as_secs_f64();
    let total: u64 = out_bytes.iter().sum();
    println!(
        "extract  10 clients from BERT-base ({:.0} MB in, {:.0} MB out): {extraction:.2} s; I/O floor {floor:.2} s; ratio {:.2}x; peak RSS {:.0} MiB",
        global.bytes_on_wire() as f64 / 1e6,
        total as f64 / 1e6,
        extraction / floor,
        peak_rss_mib()
    );
}
