//! The small finished run the reliability tests start from, and helpers to drive the
//! stage binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use raffm::core::fixtures::{tiny_reviews, tiny_text_model};

use crate::{assets, bin};

/// Runs binary `name`; without a DP noise seed from the caller's environment, so that the
/// cases that need one say so.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env_remove("RAFFM_DP_SEED")
        .output()
        .unwrap()
}

pub fn ok(name: &str, args: &[&str]) {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A small finished run: data, partition, budgets, a global model, its prioritized copy, a
/// client's sub-model and its trained update, each written by the real stage binaries.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Fixture {
    pub fn build() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        tiny_text_model(&root.join("model"));
        tiny_reviews(&root.join("reviews.jsonl"), 60);
        let p = |s: &str| root.join(s).to_str().unwrap().to_string();
        ok(
            "raffm-partition",
            &[
                "--data",
                &p("reviews.jsonl"),
                "--clients",
                "3",
                "--output",
                &p("run/partition.json"),
            ],
        );
        ok(
            "raffm-init-head",
            &[
                "--model",
                &p("model"),
                "--partition",
                &p("run/partition.json"),
                "--output",
                &p("run/global"),
            ],
        );
        let pipeline = serde_json::json!({
            "name": "t", "model": p("model"), "clients": 3,
            "tiers": [{"name": "s", "share": 1, "parameter_fraction": 0.7}]
        });
        std::fs::write(root.join("pipeline.json"), pipeline.to_string()).unwrap();
        ok(
            "raffm-budgets",
            &[
                "--pipeline",
                &p("pipeline.json"),
                "--output",
                &p("run/budgets.json"),
            ],
        );
        ok(
            "raffm-prioritize",
            &["-i", &p("run/global"), "-o", &p("run/prioritized"), "-q"],
        );
        ok(
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "--budgets",
                &p("run/budgets.json"),
                "--clients",
                "c000",
                "-o",
                &p("run/extracted"),
                "-q",
            ],
        );
        ok(
            "raffm-local-train",
            &[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &p("run/partition.json"),
                "-c",
                "c000",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "-o",
                &p("run/trained/c000"),
                "-q",
            ],
        );
        Fixture { _dir: dir, root }
    }

    pub fn p(&self, s: &str) -> String {
        self.root.join(s).to_str().unwrap().to_string()
    }

    /// A copy of folder or file `from` at `to`.
    pub fn copy(&self, from: &str, to: &str) -> String {
        let (src, dst) = (self.root.join(from), self.root.join(to));
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            for e in std::fs::read_dir(&src).unwrap().flatten() {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        } else {
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dst).unwrap();
        }
        self.p(to)
    }
}

/// An asset file the tests need, with what fetches it when it is missing.
pub fn asset(relative: &str, goal: &str) -> PathBuf {
    let path = assets().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run `make {goal}` (or `make test`, which fetches it)",
        path.display()
    );
    path
}

/// SmolLM2-135M-Instruct's GGUF file (`make assets-llm`).
pub fn gguf_path() -> PathBuf {
    asset("gguf/SmolLM2-135M-Instruct.Q4_1.gguf", "assets-llm")
}

/// Runs importer `binary` from `input` into `output` and checks that it refused: exit
/// status 1 and one line on stderr that names the input. Returns that line.
pub fn import_refused(binary: &str, input: &Path, output: &Path) -> String {
    let result = run(
        binary,
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&result.stderr)
        .trim_end()
        .to_string();
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(input.to_str().unwrap()), "{err}");
    err
}
