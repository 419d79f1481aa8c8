//! Checkpoint folders as a HuggingFace user knows them: `config.json`, `model.safetensors`
//! (HF names, PyTorch layouts), tokenizer files, and our `manifest.json`.
//!
//! A [`Checkpoint`] holds every tensor on the host under its canonical name (see
//! [`crate::layout`]), checked against the shapes that `config.json` implies, so later code
//! never meets a tensor of the wrong shape.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;

use crate::config::{BertConfig, Family, LayerArch};
use crate::error::{Error, Result};
use crate::io::{sha256_bytes, FileRecord, StagingDir};
use crate::layout::{self, layer_tensor};
use crate::rng::SplitMix64;
use crate::tensor::HostTensor;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Tokenizer files copied along with a checkpoint when present.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// The tensors of one encoder layer, by canonical suffix, with their shapes.
pub fn layer_shapes(hidden: usize, arch: &LayerArch) -> [(&'static str, Vec<usize>); 16] {
    let (a, f) = (arch.attention_width(), arch.intermediate_size);
    [
        ("attention.self.query.weight", vec![a, hidden]),
        ("attention.self.query.bias", vec![a]),
        ("attention.self.key.weight", vec![a, hidden]),
        ("attention.self.key.bias", vec![a]),
        ("attention.self.value.weight", vec![a, hidden]),
        ("attention.self.value.bias", vec![a]),
        ("attention.output.dense.weight", vec![hidden, a]),
        ("attention.output.dense.bias", vec![hidden]),
        ("attention.output.LayerNorm.weight", vec![hidden]),
        ("attention.output.LayerNorm.bias", vec![hidden]),
        ("intermediate.dense.weight", vec![f, hidden]),
        ("intermediate.dense.bias", vec![f]),
        ("output.dense.weight", vec![hidden, f]),
        ("output.dense.bias", vec![hidden]),
        ("output.LayerNorm.weight", vec![hidden]),
        ("output.LayerNorm.bias", vec![hidden]),
    ]
}

/// Every tensor a checkpoint of this config holds, in a fixed order, with its shape.
pub fn expected_shapes(
    config: &BertConfig,
    pooler: bool,
    classifier: bool,
) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let mut out = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![config.max_position_embeddings, h],
        ),
    ];
    if config.type_vocab_size > 0 {
        out.push((
            "embeddings.token_type_embeddings.weight".into(),
            vec![config.type_vocab_size, h],
        ));
    }
    out.push(("embeddings.LayerNorm.weight".into(), vec![h]));
    out.push(("embeddings.LayerNorm.bias".into(), vec![h]));
    for (i, arch) in config.layers.iter().enumerate() {
        for (suffix, shape) in layer_shapes(h, arch) {
            out.push((layer_tensor(i, suffix), shape));
        }
    }
    if pooler {
        out.push(("pooler.dense.weight".into(), vec![h, h]));
        out.push(("pooler.dense.bias".into(), vec![h]));
    }
    if classifier {
        out.push(("classifier.weight".into(), vec![config.num_labels, h]));
        out.push(("classifier.bias".into(), vec![config.num_labels]));
    }
    out
}

/// Parameter count of a config, without materialising it.
pub fn parameter_count(config: &BertConfig, pooler: bool, classifier: bool) -> u64 {
    expected_shapes(config, pooler, classifier)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: BertConfig,
    /// Canonical name to tensor.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Whether the HF names carry the family's base prefix (`bert.` ...). Checkpoints with
    /// a classification head are always written with it, as HF's task models are.
    pub prefixed: bool,
    /// The folder it was read from; tokenizer files are copied from there on save.
    pub source: Option<PathBuf>,
    /// Hashes of the files it was read from (config.json, model.safetensors).
    pub files: Vec<FileRecord>,
    /// Tensors of the file that are not part of the model (an MLM head, buffers): left out.
    pub ignored: Vec<String>,
}

impl Checkpoint {
    pub fn has_pooler(&self) -> bool {
        self.tensors.contains_key("pooler.dense.weight")
    }

    pub fn has_classifier(&self) -> bool {
        self.tensors.contains_key("classifier.weight")
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }

    /// Bytes of the weights as float32, what a client downloads.
    pub fn bytes_on_wire(&self) -> u64 {
        4 * self.parameter_count()
    }

    /// The sha256 of `model.safetensors` this checkpoint was read from.
    pub fn weights_sha256(&self) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path.ends_with(WEIGHTS_FILE))
            .map(|f| f.sha256.as_str())
    }

    pub fn tensor(&self, name: &str) -> &HostTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("checkpoint was validated but has no `{name}`"))
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut HostTensor {
        self.tensors
            .get_mut(name)
            .unwrap_or_else(|| panic!("checkpoint was validated but has no `{name}`"))
    }

    /// Reads and validates a checkpoint folder, hashing its files.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, true)
    }

    /// Reads and validates a checkpoint folder; `hash: false` skips the sha256 of its files
    /// (for inputs whose hashes their producer's manifest already records).
    pub fn load_with(dir: impl AsRef<Path>, hash: bool) -> Result<Self> {
        let dir = dir.as_ref();
        let (config, config_path, config_bytes) = read_config(dir)?;

        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() && dir.join("pytorch_model.bin").exists() {
            return Err(Error::format(
                &weights_path,
                "missing; the folder has only pytorch_model.bin (convert it to safetensors first)",
            ));
        }
        let bytes = map_file(&weights_path)?;
        // Hashing (one core) runs beside decoding (the other): together they take as long
        // as the slower of the two instead of their sum.
        let (weights_sha256, decoded) = std::thread::scope(|scope| {
            let hasher = hash.then(|| scope.spawn(|| sha256_bytes(&bytes)));
            let decoded = read_safetensors(&weights_path, &bytes, config.family);
            (
                hasher.map(|h| h.join().expect("hashing does not panic")),
                decoded,
            )
        });
        let (tensors, prefixed, ignored) = decoded?;
        let files = match weights_sha256 {
            Some(sha256) => vec![
                FileRecord {
                    path: config_path.display().to_string(),
                    sha256: sha256_bytes(&config_bytes),
                    bytes: config_bytes.len() as u64,
                },
                FileRecord {
                    path: weights_path.display().to_string(),
                    sha256,
                    bytes: bytes.len() as u64,
                },
            ],
            None => Vec::new(),
        };
        let checkpoint = Checkpoint {
            config,
            tensors,
            prefixed,
            source: Some(dir.to_path_buf()),
            files,
            ignored,
        };
        checkpoint.validate(&weights_path)?;
        Ok(checkpoint)
    }

    /// Checks that the tensors are exactly those the config implies, with the right shapes.
    fn validate(&self, path: &Path) -> Result<()> {
        let classifier = self.has_classifier();
        if classifier && !self.has_pooler() {
            return Err(Error::format(path, "has a classifier but no pooler"));
        }
        let expected = expected_shapes(&self.config, self.has_pooler(), classifier);
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                None => return Err(Error::format(path, format!("missing tensor `{name}`"))),
                Some(t) if &t.shape != shape => {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor `{name}` has shape {:?} but config.json implies {:?}",
                            t.shape, shape
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.tensors.len() != expected.len() {
            let known: std::collections::HashSet<&String> =
                expected.iter().map(|(n, _)| n).collect();
            let extra: Vec<&String> = self.tensors.keys().filter(|n| !known.contains(n)).collect();
            return Err(Error::format(
                path,
                format!("tensors not described by config.json: {extra:?}"),
            ));
        }
        Ok(())
    }

    /// Writes `config.json`, `model.safetensors` and the source's tokenizer files into an
    /// output folder under construction.
    pub fn write_into(&self, staging: &mut StagingDir) -> Result<()> {
        let with_head = self.has_classifier();
        let config = self.config.to_json(with_head);
        let text = serde_json::to_string_pretty(&config).expect("config serializes");
        staging.write(CONFIG_FILE, format!("{text}\n").as_bytes())?;
        let prefixed = self.prefixed || with_head;
        let named: Vec<(String, &HostTensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                (
                    layout::from_canonical(self.config.family, name, prefixed, with_head),
                    t,
                )
            })
            .collect();
        staging.write_with(WEIGHTS_FILE, |w| write_safetensors(w, &named))?;
        if let Some(source) = &self.source {
            for name in TOKENIZER_FILES {
                let path = source.join(name);
                if path.is_file() {
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    staging.write(name, &bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the checkpoint to `dir` atomically (no manifest).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<Vec<FileRecord>> {
        let mut staging = StagingDir::new(dir)?;
        self.write_into(&mut staging)?;
        staging.commit()
    }

    /// A checkpoint of `config` with random weights, for fixtures and benchmarks. Weights
    /// and biases are N(0, 0.02²) as HF initialises them; LayerNorm parameters are jittered
    /// around (1, 0) so that tests exercise them.
    pub fn random(config: &BertConfig, seed: u64, pooler: bool, classifier: bool) -> Self {
        let mut rng = SplitMix64::derive(seed, "random-checkpoint");
        let tensors = expected_shapes(config, pooler, classifier)
            .into_iter()
            .map(|(name, shape)| {
                let t = random_tensor(&name, shape, &mut rng);
                (name, t)
            })
            .collect();
        Checkpoint {
            config: config.clone(),
            tensors,
            prefixed: false,
            source: None,
            files: Vec::new(),
            ignored: Vec::new(),
        }
    }

    /// Adds a freshly initialised classification head (and a pooler, if the checkpoint
    /// has none) for `labels`, seeded. An existing head is replaced.
    pub fn with_classification_head(mut self, labels: &[String], seed: u64) -> Self {
        let mut rng = SplitMix64::derive(seed, "classification-head");
        self.config.set_labels(labels);
        let pooler = !self.has_pooler();
        for (name, shape) in expected_shapes(&self.config, true, true) {
            let fresh = name.starts_with("classifier.") || (pooler && name.starts_with("pooler."));
            if fresh {
                let t = if name.ends_with(".bias") {
                    HostTensor::zeros(shape)
                } else {
                    random_tensor(&name, shape, &mut rng)
                };
                self.tensors.insert(name, t);
            }
        }
        self
    }
}

fn random_tensor(name: &str, shape: Vec<usize>, rng: &mut SplitMix64) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = if name.contains("LayerNorm.weight") {
        (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
    } else if name.contains("LayerNorm.bias") {
        (0..n).map(|_| (0.1 * rng.normal()) as f32).collect()
    } else {
        (0..n).map(|_| (0.02 * rng.normal()) as f32).collect()
    };
    HostTensor::new(shape, data)
}

type ReadTensors = (BTreeMap<String, HostTensor>, bool, Vec<String>);

/// Decodes a safetensors file into canonical names; float dtypes are widened to f32.
fn read_safetensors(path: &Path, bytes: &[u8], family: Family) -> Result<ReadTensors> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file ({e}); is it truncated?"),
        )
    })?;
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut prefixed = false;
    for (hf_name, view) in st.tensors() {
        let Some((canonical, has_prefix)) = layout::to_canonical(family, &hf_name) else {
            ignored.push(hf_name);
            continue;
        };
        prefixed |= has_prefix;
        let data = decode_f32(path, &hf_name, &view)?;
        let tensor = HostTensor::new(view.shape().to_vec(), data);
        if tensors.insert(canonical.clone(), tensor).is_some() {
            return Err(Error::format(
                path,
                format!("two tensors map to `{canonical}` (the second is `{hf_name}`)"),
            ));
        }
    }
    ignored.sort();
    Ok((tensors, prefixed, ignored))
}

/// A tensor's values as f32, widened from F16, BF16 or F64 where needed.
pub(crate) fn decode_f32(path: &Path, hf_name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let raw = view.data();
    Ok(match view.dtype() {
        Dtype::F32 if cfg!(target_endian = "little") => bytemuck::pod_collect_to_vec(&raw),
        Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(Error::format(
                path,
                format!("tensor `{hf_name}` has dtype {other:?}; model weights must be F32, F16, BF16 or F64"),
            ))
        }
    })
}

/// A checkpoint folder's `config.json`: the config, its path and its bytes (to hash).
pub(crate) fn read_config(dir: &Path) -> Result<(BertConfig, PathBuf, Vec<u8>)> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "no such checkpoint folder"));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config_json = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
    let config = BertConfig::from_json(config_json, &config_path)?;
    Ok((config, config_path, config_bytes))
}

/// Maps a file read-only. Reading a checkpoint through the page cache this way saves a
/// copy of every byte and the page faults of a fresh buffer.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is only read. Stages never modify a written file in place: they
    // write a staging folder and rename it over the old one, which leaves a mapped old
    // file intact until it is unmapped.
    // Every byte is read, so the pages are mapped up front rather than one fault at a time.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))
}

/// Streams a safetensors file: 8-byte header length, JSON header, then the F32 data of
/// every tensor in the given order. Writing it ourselves avoids holding a second copy of
/// the model in memory and keeps the byte layout deterministic.
pub fn write_safetensors(
    out: &mut dyn Write,
    tensors: &[(String, &HostTensor)],
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + 4 * t.numel();
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).expect("header serializes");
    // The data must start 8-byte aligned; the format pads the header with spaces.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (_, t) in tensors {
        write_f32_le(out, &t.data)?;
    }
    Ok(())
}

/// Writes floats as little-endian bytes: straight from memory where that is the native
/// order, converted otherwise.
fn write_f32_le(out: &mut dyn Write, data: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        out.write_all(bytemuck::cast_slice(data))
    } else {
        for chunk in data.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// Config of a small model in a family, for tests and fixtures.
pub fn tiny_config(
    family: Family,
    layers: usize,
    hidden: usize,
    heads: usize,
    ffn: usize,
) -> BertConfig {
    let value = match family {
        Family::DistilBert => json!({
            "model_type": "distilbert", "vocab_size": 64, "dim": hidden, "n_layers": layers,
            "n_heads": heads, "hidden_dim": ffn, "activation": "gelu",
            "max_position_embeddings": 32, "pad_token_id": 0
        }),
        Family::Roberta => json!({
            "model_type": "roberta", "vocab_size": 64, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "hidden_act": "gelu", "max_position_embeddings": 40, "type_vocab_size": 1,
            "layer_norm_eps": 1e-5, "pad_token_id": 1
        }),
        Family::Bert => json!({
            "model_type": "bert", "vocab_size": 64, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "hidden_act": "gelu", "max_position_embeddings": 32, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        }),
    };
    BertConfig::from_json(value, Path::new("<tiny config>")).expect("tiny config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_materialised_tensors() {
        let config = tiny_config(Family::Bert, 2, 16, 4, 24);
        let ckpt = Checkpoint::random(&config, 1, true, true);
        assert_eq!(ckpt.parameter_count(), parameter_count(&config, true, true));
    }

    #[test]
    fn save_load_round_trip_is_bit_identical_in_every_family() {
        for family in [Family::Bert, Family::Roberta, Family::DistilBert] {
            for head in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let config = tiny_config(family, 2, 16, 4, 24);
                let ckpt = Checkpoint::random(&config, 3, true, head);
                ckpt.save(dir.path().join("a")).unwrap();
                let a = Checkpoint::load(dir.path().join("a")).unwrap();
                a.save(dir.path().join("b")).unwrap();
                let b = Checkpoint::load(dir.path().join("b")).unwrap();
                for (name, t) in &ckpt.tensors {
                    assert!(
                        t.bit_eq(&a.tensors[name]) && t.bit_eq(&b.tensors[name]),
                        "{family:?} {name}"
                    );
                }
                assert_eq!(a.tensors.len(), ckpt.tensors.len());
                assert_eq!(
                    a.weights_sha256(),
                    b.weights_sha256(),
                    "{family:?}: bytes differ"
                );
                assert_eq!(a.config, b.config);
            }
        }
    }
}
