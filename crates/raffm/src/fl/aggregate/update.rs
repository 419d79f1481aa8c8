//! Reading a client's update: its weights, memory-mapped, and where they belong.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use safetensors::Dtype;

use crate::core::checkpoint::{
    decode_f32, map_file, read_config, verify_outputs, Checkpoint, WEIGHTS_FILE,
};
use crate::core::elastic::index::{IndexMap, TensorIndex};
use crate::core::elastic::Axis;
use crate::core::error::{Error, Result};
use crate::core::io::FileRecord;
use crate::core::manifest::{Manifest, StageRecord, MANIFEST_FILE};
use crate::fl::attack::Attack;
use crate::models::families::ModelConfig;

/// A client's trained tensors by canonical name. Little-endian F32 data, which is what
/// our stages write, is used in place from the mapped file: aggregation reads each update
/// once, straight from the page cache. Other dtypes are decoded.
pub struct UpdateWeights {
    map: Option<memmap2::Mmap>,
    tensors: BTreeMap<String, UpdateTensor>,
}

struct UpdateTensor {
    shape: Vec<usize>,
    data: UpdateData,
}

enum UpdateData {
    /// Byte range in the mapped file, 4-byte aligned.
    Mapped(Range<usize>),
    Owned(Vec<f32>),
}

impl UpdateWeights {
    /// Reads the safetensors file `path` of a checkpoint of `config`'s family.
    pub fn read(path: &Path, config: &ModelConfig) -> Result<Self> {
        let map = map_file(path)?;
        let mut tensors = BTreeMap::new();
        {
            let st = crate::core::safetensors_header::deserialize(path, &map)?;
            let base = map.as_ptr() as usize;
            for (hf_name, view) in st.tensors() {
                let Some((canonical, _)) = config.canonical_name(&hf_name) else {
                    continue;
                };
                let raw = view.data();
                let in_place = view.dtype() == Dtype::F32
                    && cfg!(target_endian = "little")
                    && bytemuck::try_cast_slice::<u8, f32>(raw).is_ok();
                let data = if in_place {
                    let start = raw.as_ptr() as usize - base;
                    UpdateData::Mapped(start..start + raw.len())
                } else {
                    UpdateData::Owned(decode_f32(path, &hf_name, &view)?)
                };
                let tensor = UpdateTensor {
                    shape: view.shape().to_vec(),
                    data,
                };
                if tensors.insert(canonical.clone(), tensor).is_some() {
                    return Err(Error::format(
                        path,
                        format!("two tensors map to `{canonical}` (the second is `{hf_name}`)"),
                    ));
                }
            }
        }
        let weights = Self {
            map: Some(map),
            tensors,
        };
        weights.check_config(config, path)?;
        Ok(weights)
    }

    /// The tensors must be exactly those `config` implies, with its shapes: an update
    /// whose `config.json` disagrees with its weights was not written by a stage, whatever
    /// its manifest's hashes say.
    fn check_config(&self, config: &ModelConfig, path: &Path) -> Result<()> {
        let shapes = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.shape.as_slice()))
            .collect();
        crate::core::checkpoint::check_shapes(config, &shapes, path)
    }

    /// The tensors of an in-memory checkpoint (tests, library users).
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Self {
        Self::from_tensors(checkpoint.tensors)
    }

    /// In-memory tensors by canonical name.
    pub fn from_tensors(tensors: BTreeMap<String, crate::core::tensor::HostTensor>) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                let tensor = UpdateTensor {
                    shape: t.shape,
                    data: UpdateData::Owned(t.data),
                };
                (name, tensor)
            })
            .collect();
        Self { map: None, tensors }
    }

    /// Shape and values of tensor `name`.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        let t = self.tensors.get(name)?;
        let data = match &t.data {
            UpdateData::Owned(v) => v.as_slice(),
            UpdateData::Mapped(range) => {
                let map = self.map.as_ref().expect("mapped data has a map");
                bytemuck::cast_slice(&map[range.clone()])
            }
        };
        Some((&t.shape, data))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// sha256 and size of the file the weights were read from (`None` in memory).
    fn file_hash(&self) -> Option<(String, u64)> {
        let map = self.map.as_ref()?;
        Some((crate::core::io::sha256_bytes(map), map.len() as u64))
    }
}

/// A trained client model with what is needed to place it.
pub struct ClientUpdate {
    pub client: String,
    pub weights: UpdateWeights,
    pub index_map: IndexMap,
    /// sha256 of the global weights the sub-model was extracted from.
    pub global_sha256: Option<String>,
    /// Examples it was trained on, as its manifest records them.
    pub num_examples: Option<u64>,
    /// The update's files: weights and config with the hashes its producer recorded, and
    /// the manifest itself.
    pub files: Vec<FileRecord>,
    /// Rows of its vocabulary (word embeddings), where the family has the axis.
    pub vocab_size: Option<usize>,
    /// The attack it was made with (experiments), as its manifest records it.
    pub attack: Option<Attack>,
}

impl ClientUpdate {
    /// Reads a client's trained folder (checkpoint + local-train manifest). An update
    /// whose manifest has no placement is a full model (every index of every tensor).
    pub fn load(dir: &Path) -> Result<Self> {
        if crate::fl::adapter::is_adapter(dir) {
            return Self::load_adapter(dir);
        }
        let (config, config_path, config_bytes) = read_config(dir)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = UpdateWeights::read(&weights_path, &config)?;
        // The files must be what the producing stage wrote: its manifest records them.
        let (sha256, bytes) = weights.file_hash().expect("read from a file");
        let read = [
            FileRecord {
                path: config_path.display().to_string(),
                sha256: crate::core::io::sha256_bytes(&config_bytes),
                bytes: config_bytes.len() as u64,
            },
            FileRecord {
                path: weights_path.display().to_string(),
                sha256,
                bytes,
            },
        ];
        let manifest_path = dir.join(MANIFEST_FILE);
        let (manifest, manifest_record) = Manifest::load_recorded(&manifest_path)?;
        let recorded = manifest
            .outputs
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()));
        verify_outputs(dir, recorded, &read)?;
        let files = manifest
            .outputs
            .iter()
            .filter(|f| !f.path.ends_with(MANIFEST_FILE))
            .cloned()
            .chain([manifest_record])
            .collect();
        let folder_name = || {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let attack = match &manifest.record {
            StageRecord::LocalTrain(trained) => trained.attack,
            _ => None,
        };
        let vocab_size = config.widths().global.0.get(&Axis::Vocab).copied();
        let (client, global_sha256, index_map) = match manifest.placement {
            Some(p) => (p.client, Some(p.global_sha256), p.index_map),
            None => (folder_name(), None, full_index_map(&weights)),
        };
        Ok(Self {
            client,
            global_sha256,
            num_examples: manifest.num_examples,
            weights,
            index_map,
            files,
            vocab_size,
            attack,
        })
    }
}

impl ClientUpdate {
    /// Reads a client's trained adapter (see [`crate::fl::adapter`]): its factors, rescaled
    /// to the global adapter's scaling, placed by the index map its manifest carries.
    fn load_adapter(dir: &Path) -> Result<Self> {
        let folder = crate::fl::adapter::AdapterFolder::load(dir)?;
        let placement = folder.manifest.placement.clone().ok_or_else(|| {
            Error::format(
                dir.join(MANIFEST_FILE),
                "no `placement`: an update is an adapter raffm-local-train trained from raffm-extract's",
            )
        })?;
        let mut tensors = crate::fl::adapter::factors(&folder.adapter);
        if let Some(global) = placement.adapter_scaling {
            let k =
                crate::fl::adapter::place::rescale_factor(folder.adapter.config.scaling(), global);
            if k != 1.0 {
                for t in tensors.values_mut() {
                    t.data.iter_mut().for_each(|v| *v *= k);
                }
            }
        }
        Ok(Self {
            client: placement.client,
            weights: UpdateWeights::from_tensors(tensors),
            index_map: placement.index_map,
            global_sha256: Some(placement.global_sha256),
            num_examples: folder.manifest.num_examples,
            files: folder.files,
            // An adapter holds no token rows.
            vocab_size: None,
            attack: None,
        })
    }

    /// An update held in memory (tests, library users): client `client`'s trained model
    /// `trained`, placed by `index_map` into `global`, trained on `num_examples` examples.
    pub fn in_memory(
        client: &str,
        trained: Checkpoint,
        index_map: IndexMap,
        global: &Checkpoint,
        num_examples: u64,
    ) -> Self {
        Self {
            client: client.to_string(),
            vocab_size: trained.config.widths().global.0.get(&Axis::Vocab).copied(),
            weights: UpdateWeights::from_checkpoint(trained),
            index_map,
            global_sha256: global.weights_sha256().map(str::to_string),
            num_examples: Some(num_examples),
            files: Vec::new(),
            attack: None,
        }
    }
}

/// Every tensor whole: the index map of a full-model update.
pub fn full_index_map(weights: &UpdateWeights) -> IndexMap {
    weights
        .tensors
        .iter()
        .map(|(k, t)| {
            let all = TensorIndex {
                from: None,
                dims: vec![None; t.shape.len()],
            };
            (k.clone(), all)
        })
        .collect()
}
