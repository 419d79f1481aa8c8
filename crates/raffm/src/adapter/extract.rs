//! A client's share of a LoRA round: its base sub-model, written once and reused every
//! round (the base is frozen), and its slice of the global adapter, written every round.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{place, write_adapter, AdapterFolder, BaseModel};
use crate::checkpoint::{Checkpoint, WEIGHTS_FILE};
use crate::contract::Placement;
use crate::elastic::index::IndexMap;
use crate::error::{Error, Result};
use crate::extract::{extract, select, selection_map, Strategy};
use crate::io::StagingDir;
use crate::llm::budget::{lora_train_memory, submodel_widths, widest_within, SubmodelShape};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::pipeline::ClientLora;

/// What one client gets.
pub struct AdapterRequest<'a> {
    pub client: &'a str,
    pub round: u64,
    pub lora: &'a ClientLora,
    /// Sequences per step and tokens per sequence the memory estimate plans for.
    pub batch_size: usize,
    pub seq_len: usize,
}

/// The base sub-model's shape for `lora` (`None`: the whole base). A memory budget takes
/// the widest shape whose LoRA training estimate fits it.
fn shape_of(
    base: &Checkpoint,
    global: &AdapterFolder,
    request: &AdapterRequest,
) -> Result<Option<SubmodelShape>> {
    let tier = &request.lora.submodel;
    let depth = tier.depth.map(|d| d as usize);
    if let Some(mib) = tier.memory_mib {
        let mut lora = global.adapter.config.clone();
        lora.r = request.lora.rank;
        let bytes = (mib * (1 << 20) as f64) as u64;
        let (shape, _) = widest_within(
            &base.config,
            &lora,
            tier.hidden,
            depth,
            request.batch_size,
            request.seq_len,
            bytes,
        )?;
        return Ok(Some(shape));
    }
    let width = tier.width.unwrap_or(1.0);
    let shape = SubmodelShape {
        width,
        hidden: tier.hidden.unwrap_or(width),
        depth,
    };
    let whole = shape.width == 1.0 && shape.hidden == 1.0 && depth.is_none();
    Ok((!whole).then_some(shape))
}

/// The base sub-model of `shape` under `bases` (one folder per shape of this base), written
/// the first time it is asked for; with its index map into the base.
fn base_submodel(
    base: &Checkpoint,
    base_ref: &BaseModel,
    shape: SubmodelShape,
    bases: &Path,
) -> Result<(BaseModel, crate::families::ModelConfig, IndexMap)> {
    let config = &base.config;
    let widths = submodel_widths(config, shape)?;
    let selection = select(
        config,
        Strategy::Salient,
        &config.widths(),
        &widths,
        0,
        0,
        "client",
    );
    let map = selection_map(config, &widths, &selection);
    let key = crate::io::sha256_bytes(
        format!(
            "{}:{}",
            base_ref.sha256,
            serde_json::to_string(&widths).expect("widths serialize")
        )
        .as_bytes(),
    );
    let dir: PathBuf = bases.join(&key[..16]);
    if !dir.join(MANIFEST_FILE).is_file() {
        let sub = extract(base, &widths, &map)?;
        let mut staging = StagingDir::new(&dir)?;
        sub.write_into(&mut staging)?;
        let mut manifest = Manifest::new(
            "extract-base",
            "raffm-extract",
            json!({"shape": shape, "base": base_ref}),
        );
        manifest.inputs = base.files.clone();
        manifest.architecture = Some(widths.clone());
        manifest.parameter_count = Some(sub.parameter_count());
        manifest.base = Some(base_ref.clone());
        manifest.write_into(&mut staging)?;
        staging.commit()?;
    }
    let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
    let sha256 = manifest
        .outputs
        .iter()
        .find(|f| f.path.ends_with(WEIGHTS_FILE))
        .map(|f| f.sha256.clone())
        .ok_or_else(|| Error::format(dir.join(MANIFEST_FILE), "records no weights file"))?;
    if manifest.base.as_ref() != Some(base_ref) || manifest.architecture.as_ref() != Some(&widths) {
        return Err(Error::format(
            dir.join(MANIFEST_FILE),
            "a base sub-model of another base or shape is in its place; remove the folder",
        ));
    }
    let sub_ref = BaseModel { path: dir, sha256 };
    Ok((sub_ref, config.with_widths(&widths)?, map))
}

/// Writes client `request.client`'s folder `out`: its slice of `global` (rank and base
/// block), a manifest with the base (sub-)model it trains on, its placement and its
/// training-memory estimate. Returns the estimate in bytes.
pub fn extract_client(
    global: &AdapterFolder,
    base: &Checkpoint,
    request: &AdapterRequest,
    bases: &Path,
    out: &Path,
) -> Result<u64> {
    let (base_ref, config, map) = match shape_of(base, global, request)? {
        None => (global.base.clone(), base.config.clone(), None),
        Some(shape) => {
            let (sub_ref, sub_config, map) = base_submodel(base, &global.base, shape, bases)?;
            (sub_ref, sub_config, Some(map))
        }
    };
    let rank = request.lora.rank;
    let adapter = place::client_adapter(&global.adapter, rank, map.as_ref())?;
    adapter.check_against(config.llama().expect("a llama base"), &global.dir)?;
    let index_map = place::client_index_map(&global.adapter, rank, map.as_ref())?;
    let memory = lora_train_memory(
        &config,
        &adapter.config,
        request.batch_size,
        request.seq_len,
    )?;

    let mut manifest = Manifest::new(
        "extract",
        "raffm-extract",
        json!({"client": request.client, "round": request.round, "lora": request.lora}),
    );
    manifest.inputs = global.files.clone();
    manifest.architecture = Some(config.widths());
    manifest
        .metrics
        .insert("train_memory_bytes".into(), json!(memory.total_bytes));
    manifest
        .metrics
        .insert("base_parameters".into(), json!(memory.base_parameters));
    manifest.details.insert("lora_memory".into(), json!(memory));
    manifest.placement = Some(Placement {
        client: request.client.to_string(),
        round: request.round,
        global_sha256: global.weights_sha256().to_string(),
        strategy: Strategy::Salient,
        index_map,
        adapter_scaling: Some(global.adapter.config.scaling()),
    });
    let mut staging = StagingDir::new(out)?;
    write_adapter(&mut staging, &adapter, &base_ref, &mut manifest)?;
    staging.commit()?;
    Ok(memory.total_bytes)
}
