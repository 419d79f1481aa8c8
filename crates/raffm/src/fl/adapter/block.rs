//! LoRA on a RaFFM base sub-model: the client's adapter is cut out of the global adapter
//! through the base index map ([`LoraAdapter::restricted`]); a [`Block`] says which part
//! of a global projection a client's projection holds.
//!
//! An adapted projection `W [out, in]` of the sub-model keeps rows `R` and columns `C` of
//! the global one (the index map of its weight; a moved layer also names its global
//! layer). The client's factors are then `B[R, :]` and `A[:, C]` of the global ones, and
//! its update `s·B_R·A_C` is the `R × C` block of the global update: that block is all it
//! can change.

use std::collections::BTreeMap;

use crate::core::elastic::index::IndexMap;
use crate::core::error::{Error, Result};
use crate::models::families::llama::lora::{LoraAdapter, LoraPair};

/// The rows and columns of one global projection that a client's projection holds
/// (`None`: all, in order), and the client's name for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub module: String,
    pub rows: Option<Vec<usize>>,
    pub cols: Option<Vec<usize>>,
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
                a: crate::core::tensor::HostTensor::new(vec![r, cols.len()], a),
                b: crate::core::tensor::HostTensor::new(vec![rows.len(), r], b),
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
    use crate::core::elastic::Axis;
    use crate::core::rng::SplitMix64;
    use crate::core::tensor::HostTensor;
    use crate::fl::extract::{select, selection_map, Strategy};
    use crate::models::families::llama::lora::LoraConfig;
    use crate::models::families::llama::tiny_config;
    use crate::models::families::ModelConfig;

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
}
