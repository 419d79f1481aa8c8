//! Shared helpers of the integration tests: where the real assets are, and the reference.
#![allow(dead_code)]

use std::path::PathBuf;

/// Folder of the fetched assets (`make assets`); `RAFFM_ASSETS` overrides.
pub fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("RAFFM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets"));
    assert!(
        dir.join("minilm/model.safetensors").is_file(),
        "the real MiniLM is not at {}: run `make assets` (or `make test`, which does)",
        dir.display()
    );
    dir
}

pub fn minilm_dir() -> PathBuf {
    assets_dir().join("minilm")
}

pub struct Reference {
    pub sentences: Vec<String>,
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Vec<Vec<i64>>,
    pub token_type_ids: Vec<Vec<i64>>,
    /// [batch][seq][hidden]
    pub last_hidden_state: Vec<Vec<Vec<f32>>>,
    /// [batch][hidden]
    pub pooler_output: Vec<Vec<f32>>,
}

/// HuggingFace transformers' outputs for the real MiniLM (see tests/data/README.md).
pub fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm-hf-reference.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> T {
        serde_json::from_value(v[k].clone()).unwrap_or_else(|e| panic!("{k}: {e}"))
    }
    Reference {
        sentences: field(&v, "sentences"),
        input_ids: field(&v, "input_ids"),
        attention_mask: field(&v, "attention_mask"),
        token_type_ids: field(&v, "token_type_ids"),
        last_hidden_state: field(&v, "last_hidden_state"),
        pooler_output: field(&v, "pooler_output"),
    }
}

/// Real sentences for invariance checks: the reference's and a few movie reviews.
pub fn sentences() -> Vec<String> {
    let mut s = reference().sentences;
    s.extend(
        [
            "an utterly charming and hilarious film that reminded me of why i love the movies .",
            "the plot is paper-thin and the characters are even thinner .",
            "a moving , beautifully acted portrait of grief , anchored by a stunning lead performance .",
            "two hours of my life i will never get back",
        ]
        .map(String::from),
    );
    s
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
