//! The tiny pipeline and make, for the tests that drive rounds through the Makefile.

use std::path::{Path, PathBuf};
use std::process::Command;

use raffm::core::fixtures::{tiny_reviews, tiny_text_model};

use crate::bin_dir;

/// Model, data and pipeline file of the tiny pipeline.
pub fn fixture(dir: &Path) -> PathBuf {
    fixture_with(dir, |_| {})
}

/// The tiny pipeline with `edit` applied to its settings.
pub fn fixture_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let model = tiny_text_model(&dir.join("model"));
    tiny_reviews(&dir.join("reviews.jsonl"), 120);
    let pipeline = serde_json::json!({
        "name": "tiny", "model": model, "clients": 6,
        "data": {"path": dir.join("reviews.jsonl"), "format": "jsonl", "validation_fraction": 0.2},
        "partition": {"scheme": "iid"},
        "tiers": [{"name": "small", "share": 1, "parameter_fraction": 0.25, "memory_bytes": 6_000_000},
                  {"name": "full", "share": 1, "parameter_fraction": 1.0}],
        "search_space": {"heads": [0.5, 1.0], "head_dim": [0.5, 1.0], "ffn": [0.5, 1.0],
                         "hidden": [0.5, 0.75, 1.0], "layers": [0.5, 1.0]},
        "strategy": "salient", "policy": "largest",
        "vocabulary": "client", "vocabulary_decoys": 3,
        "rounds": {"clients_per_round": 3},
        "local": {"epochs": 1, "batch_size": 8, "max_seq_len": 16, "lr": 1e-3},
        "seed": 3
    });
    let mut pipeline = pipeline;
    edit(&mut pipeline);
    let path = dir.join("tiny.json");
    std::fs::write(&path, pipeline.to_string()).unwrap();
    path
}

/// The global model file of round `r` of the tiny pipeline under `artifacts`.
pub fn global_weights(artifacts: &Path, r: usize) -> PathBuf {
    artifacts.join(format!("tiny/round-{r}/global/model.safetensors"))
}

/// Runs two rounds of `pipeline` twice from scratch, into `dir/a` and `dir/b`; asserts
/// that the two round-2 global models are bit-identical and that round 2 changed the
/// model. Returns the two run folders.
pub fn two_deterministic_rounds(pipeline: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    make_round(pipeline, &a, 2);
    make_round(pipeline, &b, 2);
    assert_eq!(
        read(global_weights(&a, 2)),
        read(global_weights(&b, 2)),
        "two fresh runs differ"
    );
    assert_ne!(
        read(global_weights(&a, 1)),
        read(global_weights(&a, 2)),
        "round 2 changed nothing"
    );
    (a, b)
}

pub fn make_round(pipeline: &Path, artifacts: &Path, n: usize) -> String {
    make("round", pipeline, artifacts, n)
}

pub fn make(goal: &str, pipeline: &Path, artifacts: &Path, n: usize) -> String {
    let (ok, text) = make_with(&[goal, "NO_BUILD=1"], pipeline, artifacts, n);
    assert!(ok, "make {goal} failed:\n{text}");
    text
}

/// Runs make with `args` (goal and flags); whether it succeeded, and what it printed.
pub fn make_with(args: &[&str], pipeline: &Path, artifacts: &Path, n: usize) -> (bool, String) {
    make_env(args, &[], pipeline, artifacts, n)
}

/// [`make_with`] with environment variables `env` set.
pub fn make_env(
    args: &[&str],
    env: &[(&str, &Path)],
    pipeline: &Path,
    artifacts: &Path,
    n: usize,
) -> (bool, String) {
    let out = make_command(args, artifacts)
        .envs(env.iter().copied())
        .arg(format!("N={n}"))
        .arg("PIPELINE=tiny")
        .arg(format!("PIPELINE_FILE={}", pipeline.display()))
        .output()
        .unwrap();
    (out.status.success(), output_text(&out))
}

/// make in the repository with `args`, writing into `artifacts`, with the test's binaries.
pub fn make_command(args: &[&str], artifacts: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(crate::workspace())
        .args(args)
        .arg(format!("ARTIFACTS={}", artifacts.display()))
        .arg(format!("BIN={}", bin_dir().display()));
    c
}

/// What a process printed, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every folder under `root`, recursively.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

pub fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON file.
pub fn json(p: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&read(p)).unwrap()
}
