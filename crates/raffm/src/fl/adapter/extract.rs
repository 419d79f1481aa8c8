//! A client's share of a LoRA round: its base sub-model, written once and reused every
//! round (the base is frozen), and its slice of the global adapter, written every round.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::shape::{submodel_widths, SubmodelShape};
use super::{place, write_adapter, AdapterFolder, BaseModel};
use crate::core::checkpoint::{Checkpoint, WEIGHTS_FILE};
use crate::core::contract::Placement;
use crate::core::elastic::index::{IndexMap, Selection};
use crate::core::elastic::{Axis, Widths};
use crate::core::error::{Error, Result};
use crate::core::io::StagingDir;
use crate::core::manifest::{ExtractMetrics, Extracted, Manifest, StageRecord, MANIFEST_FILE};
use crate::core::rng::SplitMix64;
use crate::fl::cost::{AdapterShape, CostModel, TrainingShape};
use crate::fl::extract::{extract, select, selection_map, DepthPolicy, Strategy};
use crate::fl::pipeline::ClientLora;
use crate::fl::search::{self, Budget, Policy, SearchSpace};
use crate::models::families::llama::lora::LoraConfig;
use crate::models::families::ModelConfig;

/// What one client gets.
pub struct AdapterRequest<'a> {
    pub client: &'a str,
    pub round: u64,
    pub lora: &'a ClientLora,
    /// Sequences per step and tokens per sequence the memory estimate plans for.
    pub batch_size: usize,
    pub seq_len: usize,
}

/// The cost model of training `request`'s adapter on sub-models of `base`.
pub(super) fn cost_model(
    base: &ModelConfig,
    lora: &LoraConfig,
    request: &AdapterRequest,
) -> CostModel {
    let shape = TrainingShape {
        batch_size: request.batch_size,
        max_seq_len: request.seq_len,
        freeze_embeddings: true,
        image_size: None,
    };
    let modules = lora.target_keys();
    CostModel::new(base, shape).with_adapter(AdapterShape {
        rank: request.lora.rank,
        modules: modules.into_iter().map(String::from).collect(),
    })
}

/// The widths of the client's base sub-model (`None`: the whole base). A memory budget
/// takes the largest sub-model of the default search space whose training estimate fits
/// it, as any client's budget does; the tier's `hidden` and `depth`, where given, fix
/// those axes.
pub(super) fn widths_of(model: &CostModel, request: &AdapterRequest) -> Result<Option<Widths>> {
    let config = model.config();
    let tier = &request.lora.submodel;
    let depth = tier.depth.map(|d| d as usize);
    if let Some(mib) = tier.memory_mib {
        let total = config.widths().layers.len();
        let fixed = SubmodelShape {
            width: 1.0,
            hidden: tier.hidden.unwrap_or(1.0),
            depth,
        };
        fixed.checked_depth(total)?;
        let mut space = SearchSpace::default().restricted_to(config.axes());
        if let Some(hidden) = tier.hidden {
            space.0.insert(Axis::Hidden, vec![hidden]);
        }
        if let Some(depth) = depth {
            space
                .0
                .insert(Axis::Layers, vec![depth as f64 / total as f64]);
        }
        let budget = Budget {
            max_parameters: None,
            max_train_memory_bytes: Some((mib * (1 << 20) as f64) as u64),
        };
        let plan = DepthPolicy::Even.plan(total, &[]);
        let mut rng = SplitMix64::new(0);
        let choice = search::choose(model, &space, &budget, Policy::Largest, &plan, &mut rng)
            .map_err(|e| match e {
                Error::Infeasible { reason, .. } => Error::Infeasible {
                    client: Some(request.client.to_string()),
                    budget: format!("memory_mib {mib}"),
                    reason,
                },
                e => e,
            })?;
        let whole = choice.widths == config.widths();
        return Ok((!whole).then_some(choice.widths));
    }
    let width = tier.width.unwrap_or(1.0);
    let shape = SubmodelShape {
        width,
        hidden: tier.hidden.unwrap_or(width),
        depth,
    };
    let whole = shape.width == 1.0 && shape.hidden == 1.0 && depth.is_none();
    (!whole).then(|| submodel_widths(config, shape)).transpose()
}

/// Which rows and columns of the (prioritized) base a sub-model of `widths` keeps: the
/// leading ones, as every round of a LoRA pipeline takes them; with its index map.
pub(super) fn salient_submodel(config: &ModelConfig, widths: &Widths) -> (Selection, IndexMap) {
    let selection = select(
        config,
        Strategy::Salient,
        &config.widths(),
        widths,
        0,
        0,
        "client",
    );
    let map = selection_map(config, widths, &selection);
    (selection, map)
}

/// The base sub-model of `widths` under `bases` (one folder per shape of this base),
/// written the first time it is asked for; with its index map into the base.
fn base_submodel(
    base: &Checkpoint,
    base_ref: &BaseModel,
    widths: Widths,
    bases: &Path,
) -> Result<(BaseModel, crate::models::families::ModelConfig, IndexMap)> {
    let config = &base.config;
    let (_, map) = salient_submodel(config, &widths);
    let key = crate::core::io::sha256_bytes(
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
            StageRecord::ExtractBase {},
            "raffm-extract",
            json!({"base": base_ref}),
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
    let model = cost_model(&base.config, &global.adapter.config, request);
    let (base_ref, config, map) = match widths_of(&model, request)? {
        None => (global.base.clone(), base.config.clone(), None),
        Some(widths) => {
            let (sub_ref, sub_config, map) = base_submodel(base, &global.base, widths, bases)?;
            (sub_ref, sub_config, Some(map))
        }
    };
    let rank = request.lora.rank;
    let adapter = place::client_adapter(&global.adapter, rank, map.as_ref())?;
    adapter.check_against(config.llama().expect("a llama base"), &global.dir)?;
    let index_map = place::client_index_map(&global.adapter, rank, map.as_ref())?;
    let cost = model.cost(&config.widths());
    let mut record = Extracted::new(ExtractMetrics {
        train_memory_bytes: cost.train_memory_bytes,
        inference_memory_bytes: None,
        feasible_configurations: None,
        base_parameters: Some(cost.parameters),
        adapter_parameters: Some(cost.adapter_parameters),
    });
    record.training_shape = Some(model.shape);

    let mut manifest = Manifest::new(
        StageRecord::Extract(record),
        "raffm-extract",
        json!({"client": request.client, "round": request.round, "lora": request.lora}),
    );
    manifest.inputs = global.files.clone();
    manifest.architecture = Some(config.widths());
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
    Ok(cost.train_memory_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::pipeline::BaseSubmodel;
    use crate::models::families::llama::tiny_config;

    fn request(lora: &ClientLora) -> AdapterRequest<'_> {
        AdapterRequest {
            client: "c1",
            round: 1,
            lora,
            batch_size: 2,
            seq_len: 8,
        }
    }

    /// A memory tier is one more budget for the one search: the largest sub-model whose
    /// estimate, adapter included, fits; an error naming the client when none does.
    #[test]
    fn a_memory_tier_takes_the_largest_sub_model_that_fits() {
        let config = ModelConfig::Llama(tiny_config(2, 16, 4, 2, 24));
        let targets = ["q_proj", "v_proj"].map(String::from);
        let lora = LoraConfig::new(4, 16.0, 0.0, &targets).unwrap();
        let tier = |memory_mib: f64, hidden| ClientLora {
            rank: 4,
            submodel: BaseSubmodel {
                memory_mib: Some(memory_mib),
                hidden,
                ..Default::default()
            },
        };
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let whole = tier(1e6, None);
        let model = cost_model(&config, &lora, &request(&whole));
        let full = model.cost(&config.widths()).train_memory_bytes;
        assert_eq!(
            widths_of(&model, &request(&tier(mib(full), None))).unwrap(),
            None
        );

        let budget = full * 3 / 4;
        let tight = tier(mib(budget), None);
        let widths = widths_of(&model, &request(&tight)).unwrap().unwrap();
        let cost = model.cost(&widths);
        assert!(cost.train_memory_bytes <= budget && cost.adapter_parameters > 0);
        // The largest that fits: larger than a uniform quarter width that fits too, and a
        // looser budget never takes a smaller one.
        let quarter = submodel_widths(&config, SubmodelShape::uniform(0.25)).unwrap();
        let quarter = model.cost(&quarter);
        assert!(quarter.train_memory_bytes <= budget && quarter.parameters < cost.parameters);
        let looser = tier(mib(full * 7 / 8), None);
        let looser = widths_of(&model, &request(&looser)).unwrap().unwrap();
        assert!(model.cost(&looser).parameters >= cost.parameters);

        let keep_hidden = tier(mib(budget), Some(1.0));
        let widths = widths_of(&model, &request(&keep_hidden)).unwrap().unwrap();
        assert_eq!(widths.global.get(Axis::Hidden), 16);

        let too_wide = tier(mib(budget), Some(1.5));
        assert!(widths_of(&model, &request(&too_wide)).is_err());
        let too_deep = ClientLora {
            submodel: BaseSubmodel {
                depth: Some(3.0),
                ..tight.submodel.clone()
            },
            ..tight.clone()
        };
        let err = widths_of(&model, &request(&too_deep))
            .unwrap_err()
            .to_string();
        assert!(err.contains("depth") && err.contains("2 layers"), "{err}");

        let err = widths_of(&model, &request(&tier(0.001, None)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c1") && err.contains("memory_mib"), "{err}");
    }
}
