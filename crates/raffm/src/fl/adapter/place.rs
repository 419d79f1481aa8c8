//! Where a client's adapter sits in the global one: its index map, and the adapter it
//! starts from.

use crate::core::elastic::index::{IndexMap, Indices, TensorIndex};
use crate::core::error::{Error, Result};
use crate::models::families::llama::lora::LoraAdapter;

use super::factor_name;

/// One adapted projection of a client: its module name, the global module's, and which
/// of the global projection's output rows and input columns its base holds (`None`: all).
struct Block<'a> {
    module: &'a str,
    global: &'a str,
    rows: Option<Indices>,
    cols: Option<Indices>,
}

/// The client's projections that `global` adapts: every one of the global base
/// (`base_map` `None`), or those the base sub-model's index map places.
fn blocks<'a>(global: &'a LoraAdapter, base_map: Option<&'a IndexMap>) -> Result<Vec<Block<'a>>> {
    let Some(map) = base_map else {
        return Ok(global
            .modules
            .keys()
            .map(|m| Block {
                module: m,
                global: m,
                rows: None,
                cols: None,
            })
            .collect());
    };
    let mut out = Vec::new();
    for (weight, index) in map {
        let Some(module) = weight.strip_suffix(".weight") else {
            continue;
        };
        let source = index.source(weight).trim_end_matches(".weight");
        let Some((global_module, _)) = global.modules.get_key_value(source) else {
            continue;
        };
        if index.dims.len() != 2 {
            return Err(Error::Invalid(format!(
                "the base index map gives `{weight}` {} dimensions, a projection has 2",
                index.dims.len()
            )));
        }
        out.push(Block {
            module,
            global: global_module,
            rows: index.dims[0].clone(),
            cols: index.dims[1].clone(),
        });
    }
    Ok(out)
}

/// The index map of the adapter a client of rank `rank` trains on the base sub-model
/// with index map `base_map` (`None`: the whole base): `A[0..rank, cols]` and
/// `B[rows, 0..rank]` of each projection it holds.
pub fn client_index_map(
    global: &LoraAdapter,
    rank: usize,
    base_map: Option<&IndexMap>,
) -> Result<IndexMap> {
    if rank == 0 || rank > global.config.r {
        return Err(Error::Invalid(format!(
            "rank {rank} is not within the global adapter's rank {}",
            global.config.r
        )));
    }
    let ranks = (rank < global.config.r).then(|| Indices((0..rank).collect()));
    let mut map = IndexMap::new();
    for block in blocks(global, base_map)? {
        for (factor, dims) in [
            ('A', vec![ranks.clone(), block.cols.clone()]),
            ('B', vec![block.rows.clone(), ranks.clone()]),
        ] {
            let (name, source) = (
                factor_name(block.module, factor),
                factor_name(block.global, factor),
            );
            let from = (name != source).then_some(source);
            map.insert(name, TensorIndex { from, dims });
        }
    }
    if map.is_empty() {
        return Err(Error::Invalid(
            "the base sub-model holds none of the projections the adapter adapts".into(),
        ));
    }
    Ok(map)
}

/// The adapter a client of rank `rank` starts from: the first `rank` components of
/// `global` (rescaled to its own scaling, see [`LoraAdapter::truncated`]), restricted to
/// its base sub-model's projections.
pub fn client_adapter(
    global: &LoraAdapter,
    rank: usize,
    base_map: Option<&IndexMap>,
) -> Result<LoraAdapter> {
    let truncated = match rank == global.config.r {
        true => global.clone(),
        false => global.truncated(rank)?,
    };
    match base_map {
        Some(map) => truncated.restricted(map),
        None => Ok(truncated),
    }
}

/// The factor by which a client's factors, trained at `client_scaling`, are multiplied to
/// be placed into an adapter of `global_scaling`: `s B A` keeps its value.
pub fn rescale_factor(client_scaling: f64, global_scaling: f64) -> f32 {
    (client_scaling / global_scaling).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::adapter::factors;
    use crate::models::families::llama::lora::LoraConfig;
    use crate::models::families::llama::tiny_config;

    fn global(r: usize) -> (crate::models::families::llama::LlamaConfig, LoraAdapter) {
        let config = tiny_config(2, 16, 2, 1, 24);
        let lora = LoraConfig::new(r, 16.0, 0.0, &["q_proj".into(), "down_proj".into()]).unwrap();
        let mut adapter = LoraAdapter::init(&lora, &config, 3);
        for pair in adapter.modules.values_mut() {
            pair.b
                .data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = i as f32 * 0.01);
        }
        (config, adapter)
    }

    /// Gathering the global factors by a client's index map gives the adapter it starts
    /// from, once rescaled back: the map and the restriction agree element by element.
    #[test]
    fn a_lower_rank_clients_map_gathers_the_adapter_it_starts_from() {
        let (_, g) = global(8);
        let client = client_adapter(&g, 4, None).unwrap();
        let map = client_index_map(&g, 4, None).unwrap();
        let back = rescale_factor(client.config.scaling(), g.config.scaling());
        let global_factors = factors(&g);
        for (name, t) in factors(&client) {
            let index = &map[&name];
            let source = &global_factors[index.source(&name)];
            let gathered = index.gather(source);
            assert_eq!(gathered.shape, t.shape, "{name}");
            for (x, y) in gathered.data.iter().zip(&t.data) {
                assert!((x - y * back).abs() < 1e-6, "{name}: {x} vs {}", y * back);
            }
        }
    }

    #[test]
    fn a_full_rank_client_on_the_whole_base_holds_everything_in_place() {
        let (_, g) = global(8);
        let map = client_index_map(&g, 8, None).unwrap();
        assert_eq!(map.len(), 2 * g.modules.len());
        assert!(map
            .values()
            .all(|i| i.from.is_none() && i.dims.iter().all(Option::is_none)));
        assert!(client_index_map(&g, 9, None).is_err());
        assert!(client_index_map(&g, 0, None).is_err());
    }
}
