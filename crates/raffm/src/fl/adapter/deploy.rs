//! Deployment after a LoRA round (paper 4.5.3 on a frozen base): each client gets a plain
//! decoder, the largest base sub-model its device can run for inference (never smaller
//! than the one it trained on) with the global adapter merged into its weights.
//!
//! The merged adapter is the global one at its full rank, whatever rank the client
//! trained: once merged, the rank costs nothing at inference.

use super::extract::{cost_model, salient_submodel, widths_of, AdapterRequest};
use super::{place, AdapterFolder};
use crate::core::checkpoint::Checkpoint;
use crate::core::contract::Placement;
use crate::core::elastic::index::{IndexMap, Selection};
use crate::core::elastic::Widths;
use crate::core::error::{Error, Result};
use crate::core::manifest::{Deployed, ExtractMetrics, Extracted, Manifest, StageRecord};
use crate::fl::cost::{Cost, CostModel};
use crate::fl::extract::{extract, DepthPolicy, Strategy};
use crate::fl::search::{choose_for_inference, Budget, Policy, SearchSpace};
use crate::models::families::llama::lora::LoraAdapter;

/// One base sub-model of a client's deployment.
#[derive(Debug, Clone)]
pub struct BaseSlice {
    pub widths: Widths,
    /// Its costs, training the client's adapter on it included.
    pub cost: Cost,
    /// The base's rows and columns it keeps, with their index map (`None`: the whole
    /// base).
    pub kept: Option<(Selection, IndexMap)>,
}

/// A client's trained and deployed base sub-models.
#[derive(Debug, Clone)]
pub struct DecoderDeployment {
    /// What the client trained its adapter on.
    pub train: BaseSlice,
    /// What it runs: `train`, or larger where its device's memory allows.
    pub deployed: BaseSlice,
    /// The device memory the deployed model fits (`None`: unlimited).
    pub device_memory_bytes: Option<u64>,
}

/// Plans the deployment of `request`'s client on `base`, the frozen base of `adapter`.
/// With no device memory the client runs the whole base; with some, the largest
/// sub-model of `space` whose inference cost fits it.
pub fn plan_decoder(
    base: &Checkpoint,
    adapter: &LoraAdapter,
    request: &AdapterRequest,
    space: &SearchSpace,
    device_memory_bytes: Option<u64>,
) -> Result<DecoderDeployment> {
    let model = cost_model(&base.config, &adapter.config, request);
    let full = base.config.widths();
    let train = widths_of(&model, request)?.unwrap_or_else(|| full.clone());
    let train = BaseSlice::of(&model, train);
    let for_inference = match device_memory_bytes {
        Some(bytes) => {
            let plan = DepthPolicy::Even.plan(full.layers.len(), &[]);
            choose_for_inference(&model, space, &Budget::default(), bytes, &plan).map(|c| c.widths)
        }
        None => Ok(full),
    };
    // A client can always run what it trained, whatever the inference budget says.
    let deployed = match for_inference {
        Ok(widths) if model.cost(&widths).parameters > train.cost.parameters => {
            BaseSlice::of(&model, widths)
        }
        Ok(_) | Err(Error::Infeasible { .. }) => train.clone(),
        Err(e) => return Err(e.for_client(request.client)),
    };
    Ok(DecoderDeployment {
        train,
        deployed,
        device_memory_bytes,
    })
}

impl BaseSlice {
    fn of(model: &CostModel, widths: Widths) -> Self {
        let config = model.config();
        let kept = (widths != config.widths()).then(|| salient_submodel(config, &widths));
        Self {
            cost: model.cost(&widths),
            widths,
            kept,
        }
    }

    /// The same for the same widths: clients whose slices share it share their files and
    /// evaluation.
    pub fn key(&self) -> String {
        serde_json::to_string(&self.widths).expect("widths serialize")
    }

    fn map(&self) -> Option<&IndexMap> {
        self.kept.as_ref().map(|(_, map)| map)
    }

    /// The sub-model's weights, cut from `base`.
    pub fn checkpoint(&self, base: &Checkpoint) -> Result<Checkpoint> {
        match self.map() {
            Some(map) => extract(base, &self.widths, map),
            None => Ok(base.clone()),
        }
    }

    /// The adapter a client of rank `rank` holds on this slice of `global`'s base.
    pub fn adapter(&self, global: &LoraAdapter, rank: usize) -> Result<LoraAdapter> {
        place::client_adapter(global, rank, self.map())
    }

    /// The plain decoder: the sub-model with `global` merged in at its full rank.
    pub fn merged(&self, base: &Checkpoint, global: &LoraAdapter) -> Result<Checkpoint> {
        let sub = self.checkpoint(base)?;
        let adapter = self.adapter(global, global.config.r)?;
        let mut tensors = sub.tensors.clone();
        adapter.merge_into(&mut tensors);
        Ok(sub.with_tensors(tensors))
    }
}

/// The manifest of a client's deployed decoder: what it was cut from (the base and the
/// global adapter), its costs and its placement in the base.
pub fn deployed_manifest(
    global: &AdapterFolder,
    base: &Checkpoint,
    request: &AdapterRequest,
    plan: &DecoderDeployment,
    tier: &str,
    parameters: serde_json::Value,
) -> Result<Manifest> {
    let deployed = &plan.deployed;
    let cost = &deployed.cost;
    let sub_model = Extracted {
        metrics: ExtractMetrics {
            train_memory_bytes: cost.train_memory_bytes,
            inference_memory_bytes: Some(cost.inference_memory_bytes),
            feasible_configurations: None,
            base_parameters: Some(cost.parameters),
            adapter_parameters: None,
        },
        policy: Some(Policy::Largest),
        depth_policy: Some(DepthPolicy::Even),
        budget: None,
        training_shape: None,
        selection: deployed.kept.as_ref().map(|(s, _)| s.clone()),
        vocabulary: None,
    };
    let record = StageRecord::Deploy(Deployed {
        device_memory_bytes: plan.device_memory_bytes,
        tier: tier.to_string(),
        sub_model,
    });
    let mut manifest = Manifest::new(record, "raffm-deploy-scale", parameters);
    manifest.inputs = global.files.clone();
    manifest.inputs.extend(base.files.iter().cloned());
    manifest.architecture = Some(deployed.widths.clone());
    manifest.parameter_count = Some(cost.parameters);
    manifest.bytes_on_wire = Some(cost.bytes_on_wire);
    if let Some((_, map)) = &deployed.kept {
        manifest.placement = Some(Placement {
            client: request.client.to_string(),
            round: request.round,
            global_sha256: global.base.sha256.clone(),
            strategy: Strategy::Salient,
            index_map: map.clone(),
            adapter_scaling: None,
        });
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::pipeline::{BaseSubmodel, ClientLora};
    use crate::models::families::llama::tiny_config;
    use crate::models::families::ModelConfig;

    /// A tiny decoder with a rank-4 adapter on q and v, B drawn too (init leaves it 0).
    fn setup() -> (Checkpoint, LoraAdapter) {
        let config = tiny_config(2, 16, 4, 2, 24);
        let base = Checkpoint::random(&ModelConfig::Llama(config.clone()), 5);
        let targets = ["q_proj", "v_proj"].map(String::from);
        let lora =
            crate::models::families::llama::lora::LoraConfig::new(4, 8.0, 0.0, &targets).unwrap();
        let mut adapter = LoraAdapter::init(&lora, &config, 7);
        let mut rng = crate::core::rng::SplitMix64::new(2);
        for pair in adapter.modules.values_mut() {
            pair.b
                .data
                .iter_mut()
                .for_each(|v| *v = rng.next_f64() as f32 - 0.5);
        }
        (base, adapter)
    }

    fn request(lora: &ClientLora) -> AdapterRequest<'_> {
        AdapterRequest {
            client: "c1",
            round: 3,
            lora,
            batch_size: 2,
            seq_len: 8,
        }
    }

    /// Unlimited memory deploys the whole base; a device that runs more than the client
    /// trained on gets the largest sub-model whose inference fits; one too small for
    /// anything larger keeps what it trained.
    #[test]
    fn a_client_deploys_the_largest_base_its_device_runs_never_less_than_it_trained() {
        let (base, adapter) = setup();
        let space = SearchSpace::default().restricted_to(base.config.axes());
        let half = ClientLora {
            rank: 2,
            submodel: BaseSubmodel {
                width: Some(0.5),
                hidden: Some(1.0),
                ..Default::default()
            },
        };
        let plan = |memory| plan_decoder(&base, &adapter, &request(&half), &space, memory).unwrap();
        let full = base.config.widths();

        let unlimited = plan(None);
        assert_ne!(unlimited.train.widths, full);
        assert_eq!(unlimited.deployed.widths, full);
        assert!(unlimited.deployed.kept.is_none());

        let whole_inference = unlimited.deployed.cost.inference_memory_bytes;
        let trained_inference = unlimited.train.cost.inference_memory_bytes;
        let between = (whole_inference + trained_inference) / 2;
        let some = plan(Some(between));
        let deployed = &some.deployed.cost;
        assert!(deployed.inference_memory_bytes <= between);
        assert!(deployed.parameters > some.train.cost.parameters);
        assert!(deployed.parameters < unlimited.deployed.cost.parameters);

        let tiny = plan(Some(trained_inference / 2));
        assert_eq!(tiny.deployed.widths, tiny.train.widths);
    }

    /// The deployed decoder is the sub-model of the base with the adapter merged: its
    /// adapted projections are the base's rows and columns plus s·B·A of the same rows
    /// and columns, every other tensor is the base's slice as it is.
    #[test]
    fn the_merged_decoder_is_the_base_slice_plus_the_adapter_on_the_same_rows() {
        let (base, adapter) = setup();
        let space = SearchSpace::default().restricted_to(base.config.axes());
        let half = ClientLora {
            rank: 4,
            submodel: BaseSubmodel {
                width: Some(0.5),
                hidden: Some(1.0),
                ..Default::default()
            },
        };
        let plan = plan_decoder(&base, &adapter, &request(&half), &space, Some(1)).unwrap();
        let slice = &plan.deployed;
        let sub = slice.checkpoint(&base).unwrap();
        let merged = slice.merged(&base, &adapter).unwrap();
        let on_slice = slice.adapter(&adapter, 4).unwrap();
        let scaling = adapter.config.scaling() as f32;
        assert!(
            slice.kept.is_some(),
            "a device of 1 byte keeps the half-width slice"
        );
        let mut adapted = 0;
        for (name, t) in &sub.tensors {
            let module = name.trim_end_matches(".weight");
            let Some(factors) = on_slice.modules.get(module) else {
                assert!(merged.tensors[name].bit_eq(t), "{name}");
                continue;
            };
            let (a, b) = (&factors.a, &factors.b); // [r, in], [out, r]
            let (out, inp, r) = (t.shape[0], t.shape[1], a.shape[0]);
            assert_eq!((b.shape[0], a.shape[1]), (out, inp), "{name}");
            adapted += 1;
            for o in 0..out {
                for i in 0..inp {
                    let delta: f32 = (0..r)
                        .map(|k| b.data[o * r + k] * a.data[k * inp + i])
                        .sum();
                    let want = t.data[o * inp + i] + scaling * delta;
                    let got = merged.tensors[name].data[o * inp + i];
                    assert!((got - want).abs() < 1e-5, "{name}[{o},{i}]");
                }
            }
        }
        assert_eq!(adapted, 2 * 2, "q and v of both layers");
    }
}
