//! Checkpoints on disk: round trips, HF layouts, and Python's `safetensors` reading ours.

mod common;

use std::process::Command;

use common::minilm_dir;
use raffm::core::checkpoint::Checkpoint;
use raffm::models::families::bert::{tiny_model, Variant};

#[test]
fn real_minilm_load_save_load_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = Checkpoint::load(minilm_dir()).unwrap();
    a.save(dir.path().join("a")).unwrap();
    let b = Checkpoint::load(dir.path().join("a")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        assert!(t.bit_eq(&b.tensors[name]), "{name} changed");
    }
    assert_eq!(a.config, b.config);
    // Tokenizer files travel with the checkpoint.
    assert!(
        dir.path().join("a/tokenizer.json").is_file() && dir.path().join("a/vocab.txt").is_file()
    );
}

#[test]
fn hf_layouts_of_every_variant_load_by_their_own_names() {
    // Write a checkpoint by hand in each variant's HF names (prefixed task-model layout) and
    // check we read the same tensors back.
    for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_model(variant, 2, 16, 4, 24, true);
        let ckpt = Checkpoint::random(&config, 9);
        ckpt.save(dir.path()).unwrap();
        let header = safetensors_names(&dir.path().join("model.safetensors"));
        for spec in config.tensors() {
            let hf = config.hf_name(&spec.name, true);
            assert!(header.contains(&hf), "{variant:?}: `{hf}` not written");
        }
        match variant {
            Variant::Bert => {
                assert!(header
                    .contains(&"bert.encoder.layer.1.attention.self.query.weight".to_string()))
            }
            Variant::Roberta => assert!(header.contains(&"classifier.out_proj.weight".to_string())),
            Variant::DistilBert => assert!(
                header.contains(&"distilbert.transformer.layer.1.ffn.lin2.weight".to_string())
            ),
        }
        let back = Checkpoint::load(dir.path()).unwrap();
        for (name, t) in &ckpt.tensors {
            assert!(t.bit_eq(&back.tensors[name]), "{variant:?} {name}");
        }
    }
}

fn safetensors_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

#[test]
fn python_safetensors_reads_our_checkpoint_with_hf_names_and_shapes() {
    let python = std::env::var("RAFFM_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let ckpt = Checkpoint::load(minilm_dir())
        .unwrap()
        .with_classification_head(&labels, 1);
    ckpt.save(dir.path()).unwrap();

    // What HF's BertForSequenceClassification expects: names, shapes and a checksum each.
    let expected: serde_json::Map<String, serde_json::Value> = ckpt
        .tensors
        .iter()
        .map(|(name, t)| {
            let hf = ckpt.config.hf_name(name, true);
            let sum: f64 = t.data.iter().map(|&v| v as f64).sum();
            (hf, serde_json::json!({"shape": t.shape, "sum": sum}))
        })
        .collect();
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_string(&expected).unwrap()).unwrap();

    let script = r#"
import json, sys
from safetensors.numpy import load_file
tensors = load_file(sys.argv[1])
expected = json.load(open(sys.argv[2]))
assert set(tensors) == set(expected), sorted(set(tensors) ^ set(expected))
for name, want in expected.items():
    t = tensors[name]
    assert t.dtype.name == "float32", (name, t.dtype)
    assert list(t.shape) == want["shape"], (name, t.shape, want["shape"])
    s = float(t.astype("float64").sum())
    assert abs(s - want["sum"]) <= 1e-6 * max(1.0, abs(want["sum"])), (name, s, want["sum"])
assert "bert.encoder.layer.5.output.dense.weight" in tensors and "classifier.weight" in tensors
print(len(tensors), "tensors ok")
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(dir.path().join("model.safetensors"))
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (make test installs it in .venv)"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python check failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} tensors ok", ckpt.tensors.len())),
        "{stdout}"
    );
}
