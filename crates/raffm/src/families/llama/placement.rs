//! LoRA on a RaFFM base sub-model: the client's adapter is cut out of the global adapter
//! through the base index map, and placed back through it for aggregation.
//!
//! An adapted projection `W [out, in]` of the sub-model keeps rows `R` and columns `C` of
//! the global one (the index map of its weight; a moved layer also names its global
//! layer). The client's factors are then `B[R, :]` and `A[:, C]` of the global ones, and
//! its update `s·B_R·A_C` is the `R × C` block of the global update: that block is all it
//! can change.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lora::{LoraAdapter, LoraPair};
use crate::elastic::index::IndexMap;
use crate::elastic::Widths;
use crate::error::{Error, Result};
use crate::io::StagingDir;

/// The file beside a client's adapter that says where its base sub-model sits.
pub const PLACEMENT_FILE: &str = "placement.json";

/// Where a client's base sub-model sits in the global base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// sha256 of the global base's weights, so an adapter is never placed into another
    /// model.
    pub global_sha256: String,
    pub widths: Widths,
    pub index_map: IndexMap,
}

/// The rows and columns of one global projection that a client's projection holds
/// (`None`: all, in order), and the client's name for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub module: String,
    pub rows: Option<Vec<usize>>,
    pub cols: Option<Vec<usize>>,
}

impl Placement {
    /// Reads `dir/placement.json`; `None` when the adapter has none (it adapts the global
    /// base itself). Refuses a placement made for another global model.
    pub fn load(dir: &Path, global_sha256: Option<&str>) -> Result<Option<Self>> {
        let path = dir.join(PLACEMENT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let placement: Placement = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&path, format!("not a placement: {e}")))?;
        if let Some(want) = global_sha256 {
            if placement.global_sha256 != want {
                return Err(Error::format(
                    &path,
                    format!(
                        "made for the global model with weights {}, not this one ({want})",
                        placement.global_sha256
                    ),
                ));
            }
        }
        Ok(Some(placement))
    }

    pub fn write_into(&self, staging: &mut StagingDir) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a placement serializes");
        staging.write(PLACEMENT_FILE, format!("{text}\n").as_bytes())?;
        Ok(())
    }

    /// Every adapted projection of the sub-model, by its global module name: its block.
    /// `modules` are the client adapter's (sub-model) module names.
    pub fn blocks<'a>(
        &self,
        modules: impl IntoIterator<Item = &'a String>,
    ) -> Result<BTreeMap<String, Block>> {
        blocks(&self.index_map, modules)
    }
}

/// See [`Placement::blocks`].
pub fn blocks<'a>(
    map: &IndexMap,
    modules: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, Block>> {
    let mut out = BTreeMap::new();
    for module in modules {
        let weight = format!("{module}.weight");
        let index = map.get(&weight).ok_or_else(|| {
            Error::Invalid(format!(
                "the base index map does not place `{weight}`, which the adapter adapts"
            ))
        })?;
        let global = index.source(&weight);
        let global = global.strip_suffix(".weight").ok_or_else(|| {
            Error::Invalid(format!(
                "the index map places `{weight}` at `{global}`, not a weight"
            ))
        })?;
        let dim = |d: usize| index.dims.get(d).cloned().flatten().map(|i| i.0);
        if index.dims.len() != 2 {
            return Err(Error::Invalid(format!(
                "the index map of `{weight}` has {} dimensions, a projection 2",
                index.dims.len()
            )));
        }
        let block = Block {
            module: module.clone(),
            rows: dim(0),
            cols: dim(1),
        };
        if out.insert(global.to_string(), block).is_some() {
            return Err(Error::Invalid(format!(
                "two projections of the sub-model are placed at `{global}`"
            )));
        }
    }
    Ok(out)
}

impl LoraAdapter {
    /// The part of this global adapter that a sub-model with base index map `map` holds:
    /// for each adapted projection of the sub-model, `A[:, C]` and `B[R, :]`, under the
    /// sub-model's module name.
    pub fn restricted(&self, map: &IndexMap) -> Result<LoraAdapter> {
        let mut modules = BTreeMap::new();
        for (weight, index) in map {
            let Some(module) = weight.strip_suffix(".weight") else {
                continue;
            };
            let global = index.source(weight).trim_end_matches(".weight");
            let Some(pair) = self.modules.get(global) else {
                continue;
            };
            let (out, inp, r) = (pair.b.shape[0], pair.a.shape[1], self.config.r);
            index
                .check_against(&[out, inp])
                .map_err(|e| Error::Invalid(format!("`{weight}`: {e}")))?;
            let cols: Vec<usize> = index.dims[1]
                .as_ref()
                .map_or_else(|| (0..inp).collect(), |i| i.0.clone());
            let rows: Vec<usize> = index.dims[0]
                .as_ref()
                .map_or_else(|| (0..out).collect(), |i| i.0.clone());
            let a = (0..r)
                .flat_map(|k| cols.iter().map(move |&i| pair.a.data[k * inp + i]))
                .collect();
            let b = rows
                .iter()
                .flat_map(|&o| pair.b.data[o * r..(o + 1) * r].iter().copied())
                .collect();
            let sub = LoraPair {
                a: crate::tensor::HostTensor::new(vec![r, cols.len()], a),
                b: crate::tensor::HostTensor::new(vec![rows.len(), r], b),
            };
            modules.insert(module.to_string(), sub);
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            modules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elastic::Axis;
    use crate::extract::{select, selection_map, Strategy};
    use crate::families::llama::hetero::{aggregate, ClientAdapter, HeteroRule};
    use crate::families::llama::lora::LoraConfig;
    use crate::families::llama::tiny_config;
    use crate::families::ModelConfig;
    use crate::rng::SplitMix64;
    use crate::tensor::HostTensor;

    /// `s B A` of one module, `[out, in]`.
    fn update(adapter: &LoraAdapter, module: &str) -> HostTensor {
        let (p, r, s) = (
            &adapter.modules[module],
            adapter.config.r,
            adapter.config.scaling(),
        );
        let (out, inp) = (p.b.shape[0], p.a.shape[1]);
        let data = (0..out * inp)
            .map(|x| {
                let (o, i) = (x / inp, x % inp);
                let dot: f64 = (0..r)
                    .map(|k| p.b.data[o * r + k] as f64 * p.a.data[k * inp + i] as f64)
                    .sum();
                (s * dot) as f32
            })
            .collect();
        HostTensor::new(vec![out, inp], data)
    }

    /// A global adapter with every factor drawn (B too), and a sub-model's index map that
    /// keeps random channels, heads and neurons of global layer 2 as its layer 1.
    fn global_and_submodel() -> (LoraAdapter, IndexMap) {
        let llama = tiny_config(3, 24, 6, 2, 20);
        let targets: Vec<String> = ["q_proj", "k_proj", "o_proj"].map(String::from).to_vec();
        let lora = LoraConfig::new(4, 8.0, 0.0, &targets).unwrap();
        let mut adapter = LoraAdapter::init(&lora, &llama, 1);
        let mut rng = SplitMix64::new(2);
        for pair in adapter.modules.values_mut() {
            pair.b
                .data
                .iter_mut()
                .for_each(|v| *v = rng.next_f64() as f32 - 0.5);
        }
        let config = ModelConfig::Llama(llama);
        let global = config.widths();
        let mut widths = global.clone();
        widths.global.set(Axis::Hidden, 9);
        widths.global_layers = vec![0, 2];
        widths.layers = vec![global.layers[0].clone(), global.layers[2].clone()];
        for layer in &mut widths.layers {
            layer.set(Axis::Heads, 2);
        }
        let selection = select(&config, Strategy::Random, &global, &widths, 0, 7, "c");
        (adapter, selection_map(&config, &widths, &selection))
    }

    #[test]
    fn a_sub_model_adapter_is_the_block_of_the_global_update_its_map_names() {
        let (global, map) = global_and_submodel();
        let sub = global.restricted(&map).unwrap();
        // Two layers of three modules; layer 1 of the sub-model is global layer 2.
        assert_eq!(sub.modules.len(), 6);
        let weight = "model.layers.1.self_attn.q_proj.weight";
        assert_eq!(
            map[weight].source(weight),
            "model.layers.2.self_attn.q_proj.weight"
        );
        for module in sub.modules.keys() {
            let index = &map[&format!("{module}.weight")];
            let global_module = index
                .source(&format!("{module}.weight"))
                .trim_end_matches(".weight")
                .to_string();
            let block = index.gather(&update(&global, &global_module));
            let got = update(&sub, module);
            assert_eq!(got.shape, block.shape, "{module}");
            for (x, y) in got.data.iter().zip(&block.data) {
                assert!((x - y).abs() < 1e-6, "{module}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn a_placed_adapter_changes_its_block_of_the_global_adapter_and_nothing_else() {
        let (global, map) = global_and_submodel();
        let mut sub = global.restricted(&map).unwrap();
        let blocks = blocks(&map, sub.modules.keys()).unwrap();
        assert_eq!(
            blocks["model.layers.2.self_attn.q_proj"].module,
            "model.layers.1.self_attn.q_proj"
        );
        // The untouched sub-adapter comes back as the global one under both rules.
        for rule in [HeteroRule::Padded, HeteroRule::FlexLora] {
            let c = [ClientAdapter {
                adapter: &sub,
                blocks: Some(&blocks),
                weight: 1.0,
            }];
            let back = aggregate(&c, rule, Some(&global)).unwrap();
            for m in global.modules.keys() {
                let (x, y) = (update(&back, m), update(&global, m));
                let diff = x
                    .data
                    .iter()
                    .zip(&y.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-5, "{rule:?} {m}: {diff}");
            }
        }
        // A client that doubles its B: its block of the update doubles (padded rule: the
        // held rows of B are the client's), the rest is the global's.
        for pair in sub.modules.values_mut() {
            pair.b.data.iter_mut().for_each(|v| *v *= 2.0);
        }
        let c = [ClientAdapter {
            adapter: &sub,
            blocks: Some(&blocks),
            weight: 1.0,
        }];
        let back = aggregate(&c, HeteroRule::Padded, Some(&global)).unwrap();
        for (g, block) in &blocks {
            let rows = block
                .rows
                .clone()
                .unwrap_or_else(|| (0..global.modules[g].b.shape[0]).collect());
            let (got, was) = (&back.modules[g].b, &global.modules[g].b);
            for o in 0..was.shape[0] {
                let factor = if rows.contains(&o) { 2.0 } else { 1.0 };
                for k in 0..4 {
                    let x = o * 4 + k;
                    assert!(
                        (got.data[x] - factor * was.data[x]).abs() < 1e-6,
                        "{g} B[{o},{k}]"
                    );
                }
            }
        }
        // Layer 1 is nobody's: it keeps the global adapter's factors exactly.
        let kept = "model.layers.1.self_attn.q_proj";
        assert_eq!(back.modules[kept], global.modules[kept]);
    }
}
