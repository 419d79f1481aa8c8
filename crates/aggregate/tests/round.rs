//! The whole round through the Makefile, on a fixture-sized pipeline: a tiny random BERT
//! with its own vocabulary and a JSONL dataset.

use std::path::{Path, PathBuf};
use std::process::Command;

use raffm::fixtures::{tiny_reviews, tiny_text_model};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_raffm-aggregate"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Model, data and pipeline file of the tiny pipeline.
fn fixture(dir: &Path) -> PathBuf {
    let model = tiny_text_model(&dir.join("model"));
    tiny_reviews(&dir.join("reviews.jsonl"), 120);
    let pipeline = serde_json::json!({
        "name": "tiny", "model": model, "clients": 6,
        "data": {"path": dir.join("reviews.jsonl"), "format": "jsonl", "validation_fraction": 0.2},
        "partition": {"scheme": "iid"},
        "tiers": [{"name": "small", "share": 1, "parameter_fraction": 0.8}, {"name": "full", "share": 1, "parameter_fraction": 1.0}],
        "strategy": "salient", "policy": "largest",
        "rounds": {"clients_per_round": 3},
        "local": {"epochs": 1, "batch_size": 8, "max_seq_len": 16, "lr": 1e-3},
        "seed": 3
    });
    let path = dir.join("tiny.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    path
}

fn make_round(pipeline: &Path, artifacts: &Path, n: usize) -> String {
    let out = Command::new("make")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .arg("round")
        .arg(format!("N={n}"))
        .arg("PIPELINE=tiny")
        .arg(format!("PIPELINE_FILE={}", pipeline.display()))
        .arg(format!("ARTIFACTS={}", artifacts.display()))
        .arg(format!("BIN={}", bin_dir().display()))
        .arg("NO_BUILD=1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make round failed:\n{text}");
    text
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn two_rounds_are_deterministic_resumable_and_a_rerun_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_round(&pipeline, &a, 2);
    make_round(&pipeline, &b, 2);
    let global =
        |root: &Path, r: usize| root.join(format!("tiny/round-{r}/global/model.safetensors"));
    assert_eq!(
        read(global(&a, 2)),
        read(global(&b, 2)),
        "two fresh runs differ"
    );
    assert_ne!(
        read(global(&a, 1)),
        read(global(&a, 2)),
        "round 2 changed nothing"
    );

    // The global model's manifest carries the round's evaluation and client sizes.
    let m: serde_json::Value =
        serde_json::from_slice(&read(a.join("tiny/round-2/global/manifest.json"))).unwrap();
    assert!(m["metrics"]["validation"]["accuracy"].is_number(), "{m}");
    assert_eq!(m["metrics"]["clients"], 3);
    assert!(a.join("tiny/report.json").is_file() && a.join("tiny/accuracy.svg").is_file());

    // A second call does nothing.
    let stamp = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(global(&a, 2));
    let again = make_round(&pipeline, &a, 2);
    assert!(
        !again.contains("raffm-local-train") && !again.contains("raffm-aggregate"),
        "{again}"
    );
    assert_eq!(stamp(global(&a, 2)), before);

    // Lose one client's training and the round's result (as after `kill -9`): the re-run
    // trains only that client and reproduces the same global model.
    let participants = String::from_utf8(read(a.join("tiny/round-2/participants.txt"))).unwrap();
    let clients: Vec<&str> = participants.trim().split(',').collect();
    let kept = a.join(format!("tiny/round-2/trained/{}/manifest.json", clients[1]));
    let kept_time = stamp(kept.clone());
    std::fs::remove_dir_all(a.join(format!("tiny/round-2/trained/{}", clients[0]))).unwrap();
    std::fs::remove_dir_all(a.join("tiny/round-2/global")).unwrap();
    let resumed = make_round(&pipeline, &a, 2);
    assert_eq!(resumed.matches("raffm-local-train").count(), 1, "{resumed}");
    assert_eq!(stamp(kept), kept_time);
    assert_eq!(read(global(&a, 2)), read(global(&b, 2)));
}
