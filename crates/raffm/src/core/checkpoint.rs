//! Checkpoint folders as a HuggingFace user knows them: `config.json`, `model.safetensors`
//! (HF names, PyTorch layouts), tokenizer and image-processor files, and our `manifest.json`.
//!
//! A [`Checkpoint`] holds every tensor on the host under its family's canonical name,
//! checked against the shapes that `config.json` implies through the family's elastic
//! description, so later code never meets a tensor of the wrong shape.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use crate::core::elastic::{Init, TensorKind};
use crate::core::error::{Error, Result};
use crate::core::io::{sha256_bytes, FileRecord, StagingDir};
use crate::core::rng::SplitMix64;
use crate::core::tensor::HostTensor;
use crate::models::families::ModelConfig;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Tokenizer and image-processor files copied along with a checkpoint when present.
pub const PROCESSOR_FILES: [&str; 7] = [
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// How a new task head's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// N(0, 0.02²), as HF initialises a classifier.
    #[default]
    Normal,
    /// Zeros: the head starts with no opinion. In federated runs over sub-models of a
    /// narrower hidden size, the head's columns that no client has trained yet then add
    /// nothing to the full model's logits, instead of noise.
    Zeros,
}

impl std::str::FromStr for HeadInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "normal" => Ok(HeadInit::Normal),
            "zeros" => Ok(HeadInit::Zeros),
            _ => Err(format!(
                "unknown head init `{s}` (expected normal or zeros)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: ModelConfig,
    /// Canonical name to tensor.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Whether the HF names carry the family's base prefix (`bert.` ...). Checkpoints with
    /// a classification head are always written with it, as HF's task models are.
    pub prefixed: bool,
    /// The folder it was read from; tokenizer and image-processor files are copied from
    /// there on save.
    pub source: Option<PathBuf>,
    /// Hashes of the files it was read from (config.json, model.safetensors).
    pub files: Vec<FileRecord>,
    /// Tensors of the file that are not part of the model (an MLM head, buffers): left out.
    pub ignored: Vec<String>,
    /// Processor files to write in place of the source's, by file name: a client's
    /// reduced vocabulary, or an image processor at the pipeline's input size.
    pub processor_files: Option<std::sync::Arc<BTreeMap<String, Vec<u8>>>>,
}

impl Checkpoint {
    /// The same model with new values: config, naming, source and processor files kept, no file
    /// records (it was not read from a file).
    pub fn with_tensors(&self, tensors: BTreeMap<String, HostTensor>) -> Checkpoint {
        Checkpoint {
            config: self.config.clone(),
            tensors,
            prefixed: self.prefixed,
            source: self.source.clone(),
            files: Vec::new(),
            ignored: self.ignored.clone(),
            processor_files: self.processor_files.clone(),
        }
    }

    /// Checks that a text model's folder has its tokenizer (`tokenizer.json` or
    /// `vocab.txt`): every stage after this one tokenizes with it.
    pub fn check_tokenizer(&self) -> Result<()> {
        let replaced = self
            .processor_files
            .as_ref()
            .is_some_and(|f| f.contains_key("tokenizer.json") || f.contains_key("vocab.txt"));
        if !self.config.needs_tokenizer() || replaced {
            return Ok(());
        }
        let has =
            |dir: &Path| dir.join("tokenizer.json").is_file() || dir.join("vocab.txt").is_file();
        match &self.source {
            // Loaded, not only found: a damaged tokenizer is refused here, before any
            // stage copies it on.
            Some(dir) if has(dir) => {
                crate::data::tokenizer::TextTokenizer::from_dir(dir).map(|_| ())
            }
            Some(dir) => Err(Error::format(
                dir,
                "has no tokenizer (tokenizer.json or vocab.txt), which the later stages need",
            )),
            None => Err(Error::Invalid("the model has no tokenizer files".into())),
        }
    }

    /// Checks a folder an importer has staged, before it is committed: it must load as
    /// the model it claims to be (config and tensors agree, every weight is finite, the
    /// tokenizer loads). Errors are said of `input`, the file imported, which is what a
    /// user can act on; the staging folder is gone once this returns.
    pub fn check_import(staged: &Path, input: &Path) -> Result<Checkpoint> {
        let checked = Checkpoint::load(staged).and_then(|c| c.check_tokenizer().map(|()| c));
        checked.map_err(|e| {
            let message = match e {
                Error::Format { message, .. } => message,
                other => other.to_string(),
            };
            Error::format(input, format!("the imported model is not valid: {message}"))
        })
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }

    /// Bytes of the weights as float32, what a client downloads.
    pub fn bytes_on_wire(&self) -> u64 {
        4 * self.parameter_count()
    }

    /// The sha256 of `model.safetensors` this checkpoint was read from (for an adapter's
    /// checkpoint of factors, of its `adapter_model.safetensors`, whose name ends alike).
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

    /// Reads and validates a checkpoint folder, hashing its files. Where the folder's
    /// `manifest.json` records the hashes its producer wrote, every recorded file must still
    /// have its hash; every weight must be finite.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if crate::fl::adapter::is_adapter(dir) && !dir.join(CONFIG_FILE).exists() {
            return Err(Error::format(
                dir,
                "is a LoRA adapter, not a model: this command takes a model (the adapter's base is named in its manifest.json)",
            ));
        }
        let (mut config, config_path, config_bytes) = read_config(dir)?;

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
            let hasher = scope.spawn(|| sha256_bytes(&bytes));
            let decoded = read_safetensors(&weights_path, &bytes, &config);
            (hasher.join().expect("hashing does not panic"), decoded)
        });
        let files = vec![
            FileRecord {
                path: config_path.display().to_string(),
                sha256: sha256_bytes(&config_bytes),
                bytes: config_bytes.len() as u64,
            },
            FileRecord {
                path: weights_path.display().to_string(),
                sha256: weights_sha256,
                bytes: bytes.len() as u64,
            },
        ];
        // A changed file is reported before what its changed bytes may have broken.
        verify_recorded(dir, &files)?;
        let (tensors, prefixed, ignored) = decoded?;
        config.adopt_parts(&tensors.keys().map(String::as_str).collect());
        let checkpoint = Checkpoint {
            config,
            tensors,
            prefixed,
            source: Some(dir.to_path_buf()),
            files,
            ignored,
            processor_files: None,
        };
        checkpoint.validate(&weights_path)?;
        Ok(checkpoint)
    }

    /// Checks that the tensors are exactly those the config implies, with the right shapes.
    fn validate(&self, path: &Path) -> Result<()> {
        let shapes = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.shape.as_slice()))
            .collect();
        check_shapes(&self.config, &shapes, path)
    }

    /// Writes `config.json`, `model.safetensors` and the source's processor files into an
    /// output folder under construction. Refused before anything is written: tensors that
    /// are not exactly what the config implies, or a non-finite weight. Every stage that
    /// writes a model comes through here, so none commits a folder the next would refuse.
    pub fn write_into(&self, staging: &mut StagingDir) -> Result<()> {
        self.validate(staging.target())?;
        for (name, t) in &self.tensors {
            if let Some(i) = crate::core::tensor::first_non_finite(&t.data) {
                return Err(Error::format(
                    staging.target(),
                    format!(
                        "not written: tensor `{name}` has a non-finite value ({}) at element {i}",
                        t.data[i]
                    ),
                ));
            }
        }
        let config = self.config.to_json();
        let text = serde_json::to_string_pretty(&config).expect("config serializes");
        staging.write(CONFIG_FILE, format!("{text}\n").as_bytes())?;
        let prefixed = self.prefixed || self.config.has_classifier();
        let named: Vec<(String, &HostTensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| (self.config.hf_name(name, prefixed), t))
            .collect();
        staging.write_with(WEIGHTS_FILE, |w| write_safetensors(w, &named))?;
        if let Some(files) = &self.processor_files {
            for (name, bytes) in files.iter() {
                staging.write(name, bytes)?;
            }
        }
        if let Some(source) = &self.source {
            for name in PROCESSOR_FILES {
                if self
                    .processor_files
                    .as_ref()
                    .is_some_and(|f| f.contains_key(name))
                {
                    continue;
                }
                let path = source.join(name);
                if path.is_file() {
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    check_processor_file(&path, &bytes)?;
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
    /// and biases are N(0, 0.02²) as HF initialises weights; norm parameters are jittered
    /// around (1, 0) so that tests exercise them.
    pub fn random(config: &ModelConfig, seed: u64) -> Self {
        let mut rng = SplitMix64::derive(seed, "random-checkpoint");
        let tensors = config
            .shapes()
            .into_iter()
            .map(|(spec, shape)| {
                let n: usize = shape.iter().product();
                let (mean, sd) = match spec.init {
                    Init::NormScale => (1.0, 0.1),
                    Init::NormShift => (0.0, 0.1),
                    Init::Weight | Init::Bias => (0.0, 0.02),
                };
                let data = (0..n).map(|_| (mean + sd * rng.normal()) as f32).collect();
                (spec.name, HostTensor::new(shape, data))
            })
            .collect();
        Checkpoint {
            config: config.clone(),
            tensors,
            prefixed: false,
            source: None,
            files: Vec::new(),
            ignored: Vec::new(),
            processor_files: None,
        }
    }

    /// Adds a freshly initialised classification head for `labels`, seeded, and whatever
    /// the family's head reads that the checkpoint lacks (a pooler). An existing task head
    /// is replaced. Weights are N(0, 0.02²), as HF initialises them.
    pub fn with_classification_head(self, labels: &[String], seed: u64) -> Self {
        self.with_classification_head_init(labels, seed, HeadInit::Normal)
    }

    /// [`Checkpoint::with_classification_head`] with a choice of how the task head's
    /// weights start.
    pub fn with_classification_head_init(
        mut self,
        labels: &[String],
        seed: u64,
        init: HeadInit,
    ) -> Self {
        let mut rng = SplitMix64::derive(seed, "classification-head");
        self.config.set_classification_head(labels);
        for (spec, shape) in self.config.shapes() {
            let fresh = spec.kind == TensorKind::Task
                || (spec.kind == TensorKind::Head && !self.tensors.contains_key(&spec.name));
            if !fresh {
                continue;
            }
            let n: usize = shape.iter().product();
            let zero_task = init == HeadInit::Zeros && spec.kind == TensorKind::Task;
            let data = match spec.init {
                Init::Weight if zero_task => vec![0.0; n],
                Init::Weight => (0..n).map(|_| (0.02 * rng.normal()) as f32).collect(),
                Init::NormScale => vec![1.0; n],
                Init::Bias | Init::NormShift => vec![0.0; n],
            };
            self.tensors.insert(spec.name, HostTensor::new(shape, data));
        }
        self
    }
}

/// Tensors by canonical name and shape (`shapes`) must be exactly those `config` implies,
/// with its shapes; `path` names the weights in errors. Shared by checkpoints and client
/// updates, which hold their tensors differently.
pub(crate) fn check_shapes(
    config: &ModelConfig,
    shapes: &BTreeMap<&str, &[usize]>,
    path: &Path,
) -> Result<()> {
    let expected = config.shapes();
    for (spec, shape) in &expected {
        match shapes.get(spec.name.as_str()) {
            None => {
                return Err(Error::format(
                    path,
                    format!("missing tensor `{}`", spec.name),
                ))
            }
            Some(got) if got != shape => {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor `{}` has shape {got:?} but config.json implies {shape:?}",
                        spec.name
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if shapes.len() != expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(t, _)| t.name.as_str()).collect();
        let extra: Vec<&&str> = shapes.keys().filter(|n| !known.contains(**n)).collect();
        return Err(Error::format(
            path,
            format!("tensors not described by config.json: {extra:?}"),
        ));
    }
    Ok(())
}

/// A processor file is copied only once it reads: JSON files parse, and `tokenizer.json`
/// loads as a tokenizer. A truncated copy stops the stage that would pass it on.
fn check_processor_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.file_name().is_some_and(|n| n == "tokenizer.json") {
        tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::format(path, format!("cannot load tokenizer: {e}")))?;
    } else if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    }
    Ok(())
}

/// Checks the files of a checkpoint folder against the hashes its `manifest.json` records
/// (where it has one): `hashed` are records of files already hashed; other recorded files
/// in the folder (the tokenizer's) are hashed here.
pub(crate) fn verify_recorded(dir: &Path, hashed: &[FileRecord]) -> Result<()> {
    let manifest_path = dir.join(crate::core::manifest::MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Ok(());
    }
    let text = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let manifest: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::format(&manifest_path, format!("invalid manifest: {e}")))?;
    let Some(outputs) = manifest.get("outputs").and_then(|o| o.as_array()) else {
        return Ok(());
    };
    let recorded = outputs.iter().filter_map(|output| {
        Some((
            output.get("path")?.as_str()?,
            output.get("sha256")?.as_str()?,
        ))
    });
    verify_outputs(dir, recorded, hashed)
}

/// [`verify_recorded`] for a manifest already read: `recorded` are its outputs as
/// `(path, sha256)`.
pub(crate) fn verify_outputs<'a>(
    dir: &Path,
    recorded: impl IntoIterator<Item = (&'a str, &'a str)>,
    hashed: &[FileRecord],
) -> Result<()> {
    for (path, want) in recorded {
        let Some(name) = Path::new(path).file_name() else {
            continue;
        };
        if name == crate::core::manifest::MANIFEST_FILE {
            continue;
        }
        let file = dir.join(name);
        let got = match hashed
            .iter()
            .find(|r| Path::new(&r.path).file_name() == Some(name))
        {
            Some(r) => r.sha256.clone(),
            None if file.is_file() => crate::core::io::sha256_file(&file)?.sha256,
            None => {
                return Err(Error::format(
                    &file,
                    "is missing, but manifest.json records it",
                ))
            }
        };
        if got != want {
            return Err(Error::format(
                &file,
                format!(
                    "changed after it was written: its sha256 is {}..., manifest.json records {}...",
                    crate::core::io::short_hash(&got),
                    crate::core::io::short_hash(want)
                ),
            ));
        }
    }
    Ok(())
}

type ReadTensors = (BTreeMap<String, HostTensor>, bool, Vec<String>);

/// Decodes a safetensors file into canonical names; float dtypes are widened to f32.
fn read_safetensors(path: &Path, bytes: &[u8], config: &ModelConfig) -> Result<ReadTensors> {
    let st = crate::core::safetensors_header::deserialize(path, bytes)?;
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut prefixed = false;
    for (hf_name, view) in st.tensors() {
        let Some((canonical, has_prefix)) = config.canonical_name(&hf_name) else {
            ignored.push(hf_name);
            continue;
        };
        prefixed |= has_prefix;
        let data = decode_f32(path, &hf_name, &view)?;
        if let Some(i) = crate::core::tensor::first_non_finite(&data) {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{hf_name}` has a non-finite value ({}) at element {i}",
                    data[i]
                ),
            ));
        }
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
        Dtype::F32 if cfg!(target_endian = "little") => bytemuck::pod_collect_to_vec(raw),
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
pub(crate) fn read_config(dir: &Path) -> Result<(ModelConfig, PathBuf, Vec<u8>)> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "no such checkpoint folder"));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config_json = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
    let config = ModelConfig::from_json(config_json, &config_path)?;
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
    while !header.len().is_multiple_of(8) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::bert::{tiny_model, Variant};

    #[test]
    fn parameter_count_matches_materialised_tensors() {
        let config = tiny_model(Variant::Bert, 2, 16, 4, 24, true);
        let ckpt = Checkpoint::random(&config, 1);
        assert_eq!(ckpt.parameter_count(), config.parameter_count());
    }

    #[test]
    fn save_load_round_trip_is_bit_identical_in_every_variant() {
        for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
            for head in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let ckpt = Checkpoint::random(&tiny_model(variant, 2, 16, 4, 24, head), 3);
                ckpt.save(dir.path().join("a")).unwrap();
                let a = Checkpoint::load(dir.path().join("a")).unwrap();
                a.save(dir.path().join("b")).unwrap();
                let b = Checkpoint::load(dir.path().join("b")).unwrap();
                for (name, t) in &ckpt.tensors {
                    assert!(
                        t.bit_eq(&a.tensors[name]) && t.bit_eq(&b.tensors[name]),
                        "{variant:?} {name}"
                    );
                }
                assert_eq!(a.tensors.len(), ckpt.tensors.len());
                assert_eq!(
                    a.weights_sha256(),
                    b.weights_sha256(),
                    "{variant:?}: bytes differ"
                );
                assert_eq!(a.config, b.config);
            }
        }
    }
}
