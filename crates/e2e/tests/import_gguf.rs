//! `raffm-import-gguf` on the real SmolLM2-135M-Instruct GGUF (`make assets-llm` fetches
//! it; `make test` does too) against what HF transformers makes of the same file
//! (`tests/data/smollm2-gguf-reference.json`, from `scripts/reference/gguf_import.py`):
//! every tensor bit for bit, the config, and the tokenizer's ids.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use raffm_e2e::{gguf_path, import_refused, run};

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2-gguf-reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Per tensor of a safetensors file: its shape and the sha256 of its bytes.
fn safetensors_digests(path: &Path) -> BTreeMap<String, (Vec<u64>, String)> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data = &bytes[8 + len..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, info)| {
            assert_eq!(info["dtype"], "F32", "{name}");
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let offsets = info["data_offsets"].as_array().unwrap();
            let (a, b) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            (name, (shape, raffm::core::io::sha256_bytes(&data[a..b])))
        })
        .collect()
}

#[test]
fn the_imported_folder_equals_hf_transformers_reading_of_the_gguf() {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let gguf = gguf_path();
    let result = run(
        "raffm-import-gguf",
        &[
            "--input",
            gguf.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    // Every tensor, bit for bit; a tied LM head is the embedding and is not written.
    let ours = safetensors_digests(&out.join("model.safetensors"));
    let tied = reference["tied_word_embeddings"].as_bool().unwrap();
    assert!(tied, "SmolLM2-135M ties its embeddings");
    let mut compared = 0;
    for (name, want) in reference["tensors"].as_object().unwrap() {
        let want_shape: Vec<u64> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let want_sha = want["sha256"].as_str().unwrap();
        let looked_up = if name == "lm_head.weight" {
            "model.embed_tokens.weight"
        } else {
            name
        };
        let (shape, sha) = ours
            .get(looked_up)
            .unwrap_or_else(|| panic!("{name} is missing from the import"));
        assert_eq!(shape, &want_shape, "{name}");
        assert_eq!(sha, want_sha, "{name} differs from HF's dequantization");
        compared += 1;
    }
    assert_eq!(
        ours.len() + 1,
        compared,
        "tensors the reference does not have"
    );
    assert_eq!(ours.len(), 272, "30 layers x 9 + embedding + final norm");

    // The config says what HF's says.
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    for (key, want) in reference["config"].as_object().unwrap() {
        let got = &config[key];
        match (got.as_f64(), want.as_f64()) {
            (Some(g), Some(w)) => assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{key}: {g} vs {w}"
            ),
            _ => assert_eq!(got, want, "{key}"),
        }
    }
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");

    // Token ids: the reference splits digits as llama.cpp's `smollm` pre-tokenizer does;
    // where a text has none, HF's GGUF tokenizer as it comes agrees too.
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    for case in reference["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u64> = tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&i| i as u64)
            .collect();
        let want: Vec<u64> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "{text:?}");
        if !text.chars().any(|c| c.is_numeric()) {
            let hf: Vec<u64> = serde_json::from_value(case["hf_gguf_ids"].clone()).unwrap();
            assert_eq!(ids, hf, "{text:?}");
        }
        let decoded = tokenizer
            .decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), false)
            .unwrap();
        assert_eq!(decoded, text, "decoding gives the text back");
    }

    // The manifest records the input by its sha256, as assets-llm.lock pins it.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["inputs"][0]["sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(manifest["gguf"]["tensor_types"]["Q4_1"], 210);
}

#[test]
fn a_truncated_gguf_and_a_non_llama_file_are_one_line_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf_path()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let not_gguf = dir.path().join("config.gguf");
    std::fs::write(&not_gguf, b"{\"model_type\": \"llama\"}").unwrap();
    for (input, want) in [
        (&truncated, "run past the end of the file"),
        (&not_gguf, "not a GGUF file"),
    ] {
        let out = dir.path().join("out");
        let err = import_refused("raffm-import-gguf", input, &out);
        assert!(err.contains(want), "{err}");
        assert!(!out.exists(), "an output was written");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
