//! FlexLoRA as a server rule for adapter rounds: the weighted mean of the clients' full
//! updates `s B A`, split back into factors of the global rank by a truncated SVD (see
//! [`super::hetero`]). It combines products, not elements, so it is the
//! one rule that is not a per-element combination of placed tensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::block::Block;
use super::hetero::{self, ClientAdapter};
use super::{factors, AdapterFolder};
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::index::IndexMap;
use crate::core::error::{Error, Result};
use crate::fl::aggregate::{clip, ClientUpdate, Contribution, Coverage, Outcome, Weighting};

/// Where each projection of a client's adapter sits in the global one, by global module:
/// the rows of B and the columns of A its index map places.
fn blocks(map: &IndexMap) -> Result<BTreeMap<String, Block>> {
    let mut out = BTreeMap::new();
    for (name, a) in map {
        let Some(module) = name.strip_suffix(".lora_A") else {
            continue;
        };
        let b_name = super::factor_name(module, 'B');
        let b = map.get(&b_name).ok_or_else(|| {
            Error::Invalid(format!("the index map places `{name}` but not `{b_name}`"))
        })?;
        let global = a.source(name).trim_end_matches(".lora_A").to_string();
        let dim = |index: &crate::core::elastic::index::TensorIndex, d: usize| {
            index.dims.get(d).cloned().flatten().map(|i| i.0)
        };
        let block = Block {
            module: module.to_string(),
            rows: dim(b, 0),
            cols: dim(a, 1),
        };
        out.insert(global, block);
    }
    Ok(out)
}

/// Aggregates the trained adapter folders `dirs` into `global` by FlexLoRA, weighted by
/// `weighting`. `global_factors` is the global adapter as a checkpoint of factors
/// ([`AdapterFolder::as_checkpoint`]); the outcome's model is the new one, likewise.
pub fn aggregate_dirs(
    global: &AdapterFolder,
    global_factors: &Checkpoint,
    dirs: &[PathBuf],
    weighting: Weighting,
) -> Result<Outcome> {
    let mut loaded = Vec::new();
    for dir in dirs {
        let update = ClientUpdate::load(dir)?;
        let folder = AdapterFolder::load(dir)?;
        let invalid = |reason: String| {
            Error::Invalid(format!(
                "client {} ({}): {reason}",
                update.client,
                dir.display()
            ))
        };
        update.check(global_factors).map_err(invalid)?;
        if loaded
            .iter()
            .any(|(u, _, _, _): &(ClientUpdate, _, _, _)| u.client == update.client)
        {
            return Err(invalid(
                "given twice; each client counts once per round".into(),
            ));
        }
        let weight = weighting.weight_of(&update).map_err(invalid)?;
        let blocks = blocks(&update.index_map)?;
        loaded.push((update, folder.adapter, blocks, weight));
    }
    if loaded.is_empty() {
        return Err(Error::Invalid("no update to aggregate".into()));
    }
    let clients: Vec<ClientAdapter> = loaded
        .iter()
        .map(|(_, adapter, blocks, weight)| ClientAdapter {
            adapter,
            blocks: Some(blocks),
            weight: *weight,
        })
        .collect();
    let next = hetero::flexlora(&clients, Some(&global.adapter))?;
    let tensors = factors(&next);
    let total: u64 = tensors.values().map(|t| t.numel() as u64).sum();
    let updated = tensors
        .iter()
        .map(|(name, t)| {
            let old = &global_factors.tensors[name].data;
            t.data.iter().zip(old).filter(|(a, b)| a != b).count() as u64
        })
        .sum();
    let contributions = loaded
        .iter()
        .map(|(update, adapter, _, weight)| Contribution {
            client: update.client.clone(),
            weight: *weight,
            parameters: adapter.parameter_count(),
            update_norm: clip::delta_norm(update, global_factors),
            clip_scale: None,
            attack: None,
        })
        .collect();
    Ok(Outcome {
        model: global_factors.with_tensors(tensors),
        coverage: Coverage {
            updated_elements: updated,
            total_elements: total,
        },
        clients: contributions,
        skipped: Vec::new(),
        tensors: Vec::new(),
        inputs: loaded.iter().flat_map(|(u, ..)| u.files.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::adapter::place::{client_adapter, client_index_map};
    use crate::fl::adapter::shape::{submodel_widths, SubmodelShape};
    use crate::fl::extract::{select, selection_map, Strategy};
    use crate::models::families::llama::lora::{LoraAdapter, LoraConfig};
    use crate::models::families::llama::tiny_config;
    use crate::models::families::ModelConfig;

    /// `s B A` of `module`, `[out, in]`.
    fn update(adapter: &LoraAdapter, module: &str) -> Vec<f64> {
        let pair = &adapter.modules[module];
        let (out, inp, r) = (pair.b.shape[0], pair.a.shape[1], adapter.config.r);
        let s = adapter.config.scaling();
        (0..out * inp)
            .map(|x| {
                let (o, i) = (x / inp, x % inp);
                (0..r)
                    .map(|k| s * pair.b.data[o * r + k] as f64 * pair.a.data[k * inp + i] as f64)
                    .sum()
            })
            .collect()
    }

    /// The blocks read back from a sub-model client's adapter index map place its
    /// untouched slice exactly where it came from: FlexLoRA gives back the global update.
    #[test]
    fn an_untouched_client_on_a_sub_model_gives_back_the_global_update() {
        let config = ModelConfig::Llama(tiny_config(2, 16, 4, 2, 24));
        let shape = SubmodelShape {
            width: 0.5,
            hidden: 1.0,
            depth: None,
        };
        let widths = submodel_widths(&config, shape).unwrap();
        let selection = select(
            &config,
            Strategy::Static,
            &config.widths(),
            &widths,
            0,
            0,
            "c",
        );
        let base_map = selection_map(&config, &widths, &selection);
        let lora = LoraConfig::new(4, 8.0, 0.0, &["q_proj".into(), "o_proj".into()]).unwrap();
        let mut global = LoraAdapter::init(&lora, config.llama().unwrap(), 1);
        for pair in global.modules.values_mut() {
            pair.b
                .data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 5) as f32 * 0.1 - 0.2);
        }
        let client = client_adapter(&global, 4, Some(&base_map)).unwrap();
        let map = client_index_map(&global, 4, Some(&base_map)).unwrap();
        let blocks = blocks(&map).unwrap();
        assert_eq!(blocks.len(), global.modules.len());
        let o_proj = &blocks["model.layers.0.self_attn.o_proj"];
        assert_eq!(
            o_proj.cols.as_ref().map(Vec::len),
            Some(8),
            "half the query heads' channels"
        );
        assert_eq!(o_proj.rows, None, "the hidden size is whole");
        let clients = [ClientAdapter {
            adapter: &client,
            blocks: Some(&blocks),
            weight: 1.0,
        }];
        let back = hetero::flexlora(&clients, Some(&global)).unwrap();
        for module in global.modules.keys() {
            let (x, y) = (update(&back, module), update(&global, module));
            let diff = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-5, "{module}: {diff}");
        }
    }
}
