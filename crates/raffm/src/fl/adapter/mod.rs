//! A LoRA adapter as a federated model, so that LoRA rounds go through the five stages.
//!
//! The global model of a LoRA round is an adapter on a frozen base: a folder with PEFT's
//! `adapter_config.json` and `adapter_model.safetensors`, and a `manifest.json` whose
//! `base` names the base model and its weights' sha256. Only adapters travel between
//! rounds; the base (or a client's base sub-model, [`extract`]) is written once.
//!
//! To the stages an adapter is a [`Checkpoint`] whose tensors are its factors, by the
//! names [`factor_name`] gives (`<module>.lora_A`, `[rank, in]`; `<module>.lora_B`,
//! `[out, rank]`), and whose config is its base's. Rank is then one more indexed
//! dimension: a client of rank r holding a block of the base holds rows `0..r` and the
//! block's columns of A, the block's rows and columns `0..r` of B, and its index map
//! ([`place`]) says so. Aggregation combines these tensors like any other, with every
//! rule it has; only FlexLoRA, which combines products `B A`, is adapter-specific.

pub mod block;
pub mod deploy;
pub mod evaluate;
pub mod extract;
pub mod flexlora;
pub mod hetero;
pub mod place;
pub mod shape;
pub mod svd;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::checkpoint::{verify_outputs, Checkpoint};
use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, FileRecord, StagingDir};
use crate::core::manifest::{Manifest, MANIFEST_FILE};
use crate::core::tensor::HostTensor;
use crate::models::families::llama::lora::{
    LoraAdapter, LoraConfig, LoraPair, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};

/// Tokens per sequence of a decoder task where none is given (a longer prompt loses its
/// beginning).
pub const LORA_SEQ_LEN: usize = 256;

/// The frozen model an adapter belongs to, as manifests record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    pub path: PathBuf,
    /// sha256 of its `model.safetensors`: a base that changed is refused.
    pub sha256: String,
}

impl BaseModel {
    /// The base of `checkpoint`, read from `path`.
    pub fn of(checkpoint: &Checkpoint, path: &Path) -> Result<Self> {
        let sha256 = checkpoint
            .weights_sha256()
            .ok_or_else(|| Error::format(path, "has no weights file"))?;
        Ok(Self {
            path: path.to_path_buf(),
            sha256: sha256.to_string(),
        })
    }

    /// The base model, checked against the recorded hash.
    pub fn load(&self) -> Result<Checkpoint> {
        let checkpoint = Checkpoint::load(&self.path)?;
        if checkpoint.weights_sha256() != Some(self.sha256.as_str()) {
            return Err(Error::format(
                &self.path,
                format!(
                    "its weights changed since the adapter was made on it (sha256 {}, recorded {})",
                    crate::core::io::short_hash(checkpoint.weights_sha256().unwrap_or("none")),
                    crate::core::io::short_hash(&self.sha256)
                ),
            ));
        }
        if checkpoint.config.llama().is_none() {
            return Err(Error::format(
                &self.path,
                format!(
                    "LoRA adapters need a llama base, not `{}`",
                    checkpoint.config.model_type()
                ),
            ));
        }
        Ok(checkpoint)
    }
}

/// Whether `dir` holds an adapter (rather than a whole model).
pub fn is_adapter(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file()
}

/// The stage tensor name of one factor of `module`'s adapter.
pub fn factor_name(module: &str, factor: char) -> String {
    format!("{module}.lora_{factor}")
}

/// An adapter folder written by a stage: the adapter, the base it belongs to, and the
/// manifest that records both.
pub struct AdapterFolder {
    pub dir: PathBuf,
    pub adapter: LoraAdapter,
    pub base: BaseModel,
    pub manifest: Manifest,
    /// The adapter's files with their hashes, and the manifest's.
    pub files: Vec<FileRecord>,
}

impl AdapterFolder {
    /// Reads `dir`, checking its files against the hashes its manifest recorded.
    pub fn load(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let (manifest, manifest_record) = Manifest::load_recorded(&manifest_path)?;
        let base = manifest.base.clone().ok_or_else(|| {
            Error::format(
                &manifest_path,
                "no `base`: an adapter folder needs the base model it belongs to",
            )
        })?;
        let adapter = LoraAdapter::read(dir)?;
        let read = [
            sha256_file(&dir.join(ADAPTER_CONFIG_FILE))?,
            sha256_file(&dir.join(ADAPTER_WEIGHTS_FILE))?,
        ];
        let recorded = manifest
            .outputs
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()));
        verify_outputs(dir, recorded, &read)?;
        let mut files = read.to_vec();
        files.push(manifest_record);
        Ok(Self {
            dir: dir.to_path_buf(),
            adapter,
            base,
            manifest,
            files,
        })
    }

    /// sha256 of the adapter's weights: what updates of this round must name.
    pub fn weights_sha256(&self) -> &str {
        &self.files[1].sha256
    }

    /// The adapter as a checkpoint of factors on its base's config (see the module doc).
    pub fn as_checkpoint(&self, base: &Checkpoint) -> Checkpoint {
        Checkpoint {
            config: base.config.clone(),
            tensors: factors(&self.adapter),
            prefixed: false,
            source: Some(self.dir.clone()),
            files: self.files.clone(),
            ignored: Vec::new(),
            processor_files: None,
        }
    }
}

/// The factors of `adapter` by stage tensor name.
pub fn factors(adapter: &LoraAdapter) -> BTreeMap<String, HostTensor> {
    adapter
        .modules
        .iter()
        .flat_map(|(module, pair)| {
            [
                (factor_name(module, 'A'), pair.a.clone()),
                (factor_name(module, 'B'), pair.b.clone()),
            ]
        })
        .collect()
}

/// The adapter of `config` whose factors are `tensors` (as [`factors`] names them).
pub fn from_factors(
    config: &LoraConfig,
    mut tensors: BTreeMap<String, HostTensor>,
) -> Result<LoraAdapter> {
    let modules: Vec<String> = tensors
        .keys()
        .filter_map(|n| n.strip_suffix(".lora_A").map(str::to_string))
        .collect();
    let mut out = BTreeMap::new();
    for module in modules {
        let a = tensors.remove(&factor_name(&module, 'A'));
        let b = tensors.remove(&factor_name(&module, 'B'));
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::Invalid(format!(
                "`{module}` has lora_A but no lora_B"
            )));
        };
        out.insert(module, LoraPair { a, b });
    }
    if let Some(name) = tensors.keys().next() {
        return Err(Error::Invalid(format!("`{name}` is not an adapter factor")));
    }
    Ok(LoraAdapter {
        config: config.clone(),
        modules: out,
    })
}

/// Writes `adapter` and its manifest (which records `base`) into `staging`.
pub fn write_adapter(
    staging: &mut StagingDir,
    adapter: &LoraAdapter,
    base: &BaseModel,
    manifest: &mut Manifest,
) -> Result<()> {
    adapter.write_into(staging)?;
    manifest.base = Some(base.clone());
    manifest.parameter_count = Some(adapter.parameter_count());
    manifest.bytes_on_wire = Some(4 * adapter.parameter_count());
    manifest.write_into(staging)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::aggregate::{
        aggregate_with, ClientUpdate, DpRound, Rule, ServerRule, Weighting,
    };
    use crate::fl::privacy::DpFedAvg;
    use crate::models::families::llama::tiny_config;
    use crate::models::families::ModelConfig;

    /// A tiny decoder, its global adapter of rank 4 (B nonzero), and three clients'
    /// trained adapters: two of rank 4, one of rank 2, each the global plus an offset.
    fn round() -> (Checkpoint, LoraAdapter, Vec<(ClientUpdate, LoraAdapter)>) {
        let config = tiny_config(2, 16, 2, 1, 24);
        let base = Checkpoint::random(&ModelConfig::Llama(config.clone()), 1);
        let lora = LoraConfig::new(4, 8.0, 0.0, &["q_proj".into(), "v_proj".into()]).unwrap();
        let mut global = LoraAdapter::init(&lora, &config, 2);
        for pair in global.modules.values_mut() {
            pair.b
                .data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 7) as f32 * 0.1);
        }
        let g = Checkpoint {
            tensors: factors(&global),
            ..base.clone()
        };
        let clients = [(4, 0.5), (4, -0.25), (2, 1.0)]
            .iter()
            .enumerate()
            .map(|(i, &(rank, offset))| {
                let map = place::client_index_map(&global, rank, None).unwrap();
                let mut trained = place::client_adapter(&global, rank, None).unwrap();
                for pair in trained.modules.values_mut() {
                    pair.a.data.iter_mut().for_each(|v| *v += offset);
                    pair.b.data.iter_mut().for_each(|v| *v += offset);
                }
                let k = place::rescale_factor(trained.config.scaling(), global.config.scaling());
                let mut tensors = factors(&trained);
                tensors
                    .values_mut()
                    .for_each(|t| t.data.iter_mut().for_each(|v| *v *= k));
                let placed = Checkpoint {
                    tensors,
                    ..base.clone()
                };
                let update = ClientUpdate::in_memory(&format!("c{i}"), placed, map, &g, 10);
                (update, trained)
            })
            .collect();
        (g, global, clients)
    }

    fn rule(rule: Rule, dp: Option<DpRound>) -> ServerRule {
        ServerRule {
            rule,
            weighting: Weighting::Uniform,
            server_lr: 1.0,
            clip_norm: None,
            dp,
        }
    }

    /// Element (row, col) of `module`'s factor in the aggregate.
    fn at(c: &Checkpoint, module: &str, factor: char, i: usize) -> f32 {
        c.tensors[&factor_name(module, factor)].data[i]
    }

    #[test]
    fn every_rule_combines_adapters_over_the_clients_that_hold_each_element() {
        let (g, global, clients) = round();
        let updates: Vec<(&ClientUpdate, f64)> = clients.iter().map(|(u, _)| (u, 1.0)).collect();
        let module = global.modules.keys().next().unwrap().clone();
        let old = |f: char, i: usize| at(&g, &module, f, i);
        let inp = global.modules[&module].a.shape[1];
        // Row 0 of A is held by all three; row 3 by the two rank-4 clients only. The
        // rank-2 client's offset went through its rescaling: s B A keeps its value, so
        // placed back it is offset * sqrt(s_2 / s_4) = offset * sqrt(2).
        let third = 1.0 * 2f32.sqrt();
        let (fedavg, _, _) = aggregate_with(&g, &updates, &rule(Rule::Fedavg, None));
        let mean3 = (0.5 - 0.25 + third) / 3.0;
        assert!((at(&fedavg, &module, 'A', 0) - (old('A', 0) + mean3)).abs() < 1e-5);
        let row3 = 3 * inp;
        assert!((at(&fedavg, &module, 'A', row3) - (old('A', row3) + 0.125)).abs() < 1e-5);

        let (median, _, _) = aggregate_with(&g, &updates, &rule(Rule::Median, None));
        assert!((at(&median, &module, 'A', 0) - (old('A', 0) + 0.5)).abs() < 1e-5);
        let trimmed = Rule::TrimmedMean {
            trim_fraction: 0.34,
        };
        let (trimmed, _, _) = aggregate_with(&g, &updates, &rule(trimmed, None));
        assert!((at(&trimmed, &module, 'A', 0) - (old('A', 0) + 0.5)).abs() < 1e-5);

        let dp = |seed| DpRound {
            settings: DpFedAvg {
                noise_multiplier: 0.5,
                clip_norm: 1.0,
                sample_rate: 1.0,
                expected_clients: 3.0,
                delta: 1e-5,
                target_epsilon: None,
            },
            seed,
            round: 1,
        };
        let (a, _, _) = aggregate_with(&g, &updates, &rule(Rule::Fedavg, Some(dp(7))));
        let (b, _, _) = aggregate_with(&g, &updates, &rule(Rule::Fedavg, Some(dp(7))));
        let (c, _, _) = aggregate_with(&g, &updates, &rule(Rule::Fedavg, Some(dp(8))));
        assert_eq!(a.tensors, b.tensors, "DP noise is seeded");
        assert_ne!(a.tensors, c.tensors);
        assert_ne!(a.tensors, fedavg.tensors, "DP adds noise");
        // The result is an adapter of the global's config again.
        let next = from_factors(&global.config, a.tensors.clone()).unwrap();
        assert_eq!(next.config.r, 4);
        assert_eq!(next.parameter_count(), global.parameter_count());
    }
}
