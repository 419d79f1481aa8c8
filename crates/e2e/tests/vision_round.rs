//! A vision pipeline through the Makefile: a tiny random DINOv2 on a generated image
//! folder, k-shot clients, every stage (partition, init-head at the pipeline's input size,
//! prioritize, extract, local-train with augmentation, aggregate) and the SPP ablation.

use std::path::{Path, PathBuf};

use raffm::core::fixtures::{tiny_image_folder, tiny_vision_model};
use raffm_e2e::*;

fn vision_fixture(dir: &Path) -> PathBuf {
    let model = tiny_vision_model(&dir.join("model"));
    tiny_image_folder(&dir.join("images"), 10);
    let pipeline = serde_json::json!({
        "name": "tiny", "model": model, "clients": 4,
        "data": {"path": dir.join("images"), "format": "image-folder", "validation_fraction": 0.2},
        "partition": {"scheme": "kshot", "k": 1},
        "tiers": [{"name": "small", "share": 1, "parameter_fraction": 0.5},
                  {"name": "full", "share": 1, "parameter_fraction": 1.0}],
        // 12 px is not the pre-training 16: the position embeddings are interpolated.
        "training": {"batch_size": 4, "image_size": 12},
        "search_space": {"heads": [0.5, 1.0], "ffn": [0.5, 1.0], "hidden": [0.5, 1.0]},
        "strategy": "salient", "policy": "largest",
        "rounds": {"clients_per_round": 2},
        "local": {"epochs": 2, "batch_size": 2, "lr": 3e-3},
        "seed": 5
    });
    let path = dir.join("tiny.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    path
}

#[test]
fn vision_rounds_are_deterministic_keep_the_input_size_and_ablate() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = vision_fixture(dir.path());
    // Data order, augmentation and the head are seeded.
    let (a, _) = two_deterministic_rounds(&pipeline, dir.path());

    // The partition gives each client one image per class.
    let partition = json(a.join("tiny/partition.json"));
    for client in partition["clients"].as_array().unwrap() {
        assert_eq!(client["label_histogram"], serde_json::json!([1, 1, 1]));
    }

    // Every model folder of the run carries the pipeline's input size, and sub-models
    // were cut from the global model.
    let mut folders = 0;
    let mut narrower = false;
    for dir in walk(&a.join("tiny")) {
        if !dir.join("config.json").is_file() {
            continue;
        }
        let processor = json(dir.join("preprocessor_config.json"));
        assert_eq!(processor["size"]["height"], 12, "{}", dir.display());
        let c = raffm::Checkpoint::load(&dir).unwrap();
        assert_eq!(c.parameter_count(), c.config.parameter_count());
        narrower |= c.config.widths().global.get(raffm::Axis::Hidden) < 24;
        folders += 1;
    }
    // Round 0's global model, and per round: prioritized, 2 extracted, 2 trained, global.
    let expected = 1 + 2 * 6;
    assert!(folders >= expected, "{folders}");
    assert!(narrower, "no sub-model cut the hidden size");

    // A client of the full tier (fraction 1) trains the whole model, head included.
    let budgets = json(a.join("tiny/budgets.json"));
    let whole = raffm::Checkpoint::load(a.join("tiny/round-0/global"))
        .unwrap()
        .parameter_count();
    let mut full_clients = 0;
    for r in 1..=2 {
        let participants =
            std::fs::read_to_string(a.join(format!("tiny/round-{r}/participants.txt"))).unwrap();
        for client in participants.trim().split(',') {
            let tier = budgets["clients"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["client"] == client)
                .unwrap()["tier"]
                .clone();
            if tier == "full" {
                let sub =
                    raffm::Checkpoint::load(a.join(format!("tiny/round-{r}/extracted/{client}")))
                        .unwrap();
                assert_eq!(sub.parameter_count(), whole, "round {r} {client}");
                full_clients += 1;
            }
        }
    }
    assert!(full_clients > 0, "no full-tier client took part");

    // The aggregated model is evaluated on the held-out images.
    let m = json(a.join("tiny/round-2/global/manifest.json"));
    let validation = &m["metrics"]["validation"];
    assert_eq!(validation["examples"], 6, "{m}");
    assert!(validation["accuracy"].is_number(), "{m}");

    // The SPP ablation on the vision model: sub-models with and without prioritization.
    make("ablation", &pipeline, &a, 2);
    let spp = json(a.join("tiny/round-2/spp.json"));
    let rows = spp["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{spp}");
    assert!(rows
        .iter()
        .all(|r| r["accuracy_spp"].is_number() && r["accuracy_no_spp"].is_number()));
}
