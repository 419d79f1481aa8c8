//! Post-training scaling (paper 4.5.3): inference needs a fraction of the memory that
//! training does (no gradients, no optimizer state, one layer's activations at a time), so
//! after the last round a client's device can run a larger sub-model of the final global
//! model than the one it trained. [`plan_client`] picks both for a client: the sub-model
//! its training budget allows, and the largest one whose inference cost fits the same
//! device memory, never smaller than the first.
//!
//! [`spp_budget`] is the budget of the salient-parameter-prioritization ablation (paper
//! A.2): a share of the layers' parameters, everything outside the layers whole.

use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::Widths;
use crate::core::error::{Error, Result};
use crate::fl::cost::CostModel;
use crate::fl::extract::{depth_plan, extract_widths, ClientModel, ClientRequest, Strategy};
use crate::fl::search::{choose, choose_for_inference, Budget, Policy, SearchSpace};

/// A client's training-time and deployed sub-models.
pub struct ClientDeployment {
    pub train: ClientModel,
    pub deployed: ClientModel,
    /// The device memory the deployed model fits (`None`: unlimited).
    pub device_memory_bytes: Option<u64>,
}

/// Plans one client's deployment. `request.budget` is the training budget; the request's
/// policy must be `largest` (deployment gives each client the best model it can run).
pub fn plan_client(
    global: &Checkpoint,
    request: &ClientRequest,
    device_memory_bytes: Option<u64>,
) -> Result<ClientDeployment> {
    if request.policy != Policy::Largest {
        return Err(Error::Invalid(
            "deployment picks the largest sub-model that fits; policy must be `largest`".into(),
        ));
    }
    let train = crate::fl::extract::extract_for_client(global, request)?;
    let plan = depth_plan(global, request.depth_policy);
    let for_inference = match device_memory_bytes {
        Some(bytes) => choose_for_inference(
            request.cost_model,
            request.space,
            &Budget::default(),
            bytes,
            &plan,
        ),
        None => {
            let mut rng = crate::core::rng::SplitMix64::new(0); // unused by `largest`
            let unlimited = Budget::default();
            choose(
                request.cost_model,
                request.space,
                &unlimited,
                Policy::Largest,
                &plan,
                &mut rng,
            )
        }
    };
    // A client can always run what it trained, whatever the inference budget says.
    let deployed = match for_inference {
        Ok(choice) if choice.cost.parameters > train.choice.cost.parameters => {
            extract_widths(global, request, &choice.widths)?
        }
        Ok(_) | Err(Error::Infeasible { .. }) => train.clone(),
        Err(e) => return Err(e),
    };
    Ok(ClientDeployment {
        train,
        deployed,
        device_memory_bytes,
    })
}

/// The ablation budget: everything outside the layers whole plus `fraction` of the
/// layers' parameters at full width.
pub fn spp_budget(cost_model: &CostModel, fraction: f64) -> Budget {
    let full = cost_model.cost(&cost_model.config().widths());
    let fixed = full.parameters - full.layer_parameters;
    Budget {
        max_parameters: Some(fixed + (fraction * full.layer_parameters as f64).floor() as u64),
        max_train_memory_bytes: None,
    }
}

/// The salient-parameter-prioritization ablation for one configuration: the same widths
/// taken as the leading indices of the prioritized model (`salient`), and as indices drawn
/// at random, seeded (no prioritization). Random rather than the leading indices of the
/// model as stored: a model trained by RaFFM was extracted from a prioritized model every
/// round, so its stored order is already close to the salience order.
pub fn spp_pair(
    global: &Checkpoint,
    prioritized: &Checkpoint,
    cost_model: &CostModel,
    space: &SearchSpace,
    widths: &Widths,
    seed: u64,
) -> Result<(Checkpoint, Checkpoint)> {
    let request = |strategy| ClientRequest {
        client: "spp",
        budget: Budget::default(),
        round: 0,
        seed,
        strategy,
        policy: Policy::Largest,
        depth_policy: Default::default(),
        space,
        cost_model,
        vocabulary: None,
    };
    let with = extract_widths(prioritized, &request(Strategy::Salient), widths)?;
    let without = extract_widths(global, &request(Strategy::Random), widths)?;
    Ok((with.checkpoint, without.checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::elastic::Axis;
    use crate::fl::cost::TrainingShape;
    use crate::models::families::bert::{tiny_model, Variant};

    fn space() -> SearchSpace {
        let mut space = SearchSpace::per_layer();
        space.0.insert(Axis::Hidden, vec![0.5, 0.75, 1.0]);
        space.0.insert(Axis::Layers, vec![0.34, 0.67, 1.0]);
        space
    }

    #[test]
    fn deployed_models_fit_the_device_and_are_never_smaller_than_the_trained_one() {
        let global = Checkpoint::random(&tiny_model(Variant::Bert, 3, 32, 4, 64, true), 2);
        let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
        let space = space();
        let full = cost_model.cost(&global.config.widths());
        let mut strictly_between = 0;
        let fractions = (1..=20).map(|i| i as f64 / 20.0).chain([7.0]);
        for memory_fraction in fractions {
            let memory = (memory_fraction * full.train_memory_bytes as f64) as u64;
            let request = ClientRequest {
                client: "c0",
                budget: Budget {
                    max_parameters: None,
                    max_train_memory_bytes: Some(memory),
                },
                round: 0,
                seed: 0,
                strategy: Strategy::Salient,
                policy: Policy::Largest,
                depth_policy: Default::default(),
                space: &space,
                cost_model: &cost_model,
                vocabulary: None,
            };
            let plan = match plan_client(&global, &request, Some(memory)) {
                Ok(plan) => plan,
                Err(Error::Infeasible { .. }) => continue,
                Err(e) => panic!("{e}"),
            };
            let (t, d) = (&plan.train.choice.cost, &plan.deployed.choice.cost);
            assert!(t.train_memory_bytes <= memory);
            assert!(d.parameters >= t.parameters);
            assert_eq!(d.parameters, plan.deployed.checkpoint.parameter_count());
            if d.parameters > t.parameters {
                assert!(
                    d.inference_memory_bytes <= memory,
                    "deployed over the device memory"
                );
                strictly_between += (d.parameters < full.parameters) as usize;
            }
            if memory >= full.inference_memory_bytes {
                assert_eq!(d.parameters, full.parameters, "the full model fits");
            }
        }
        assert!(
            strictly_between > 0,
            "no budget gave a deployed model between the two"
        );
    }

    #[test]
    fn spp_budget_keeps_the_outer_tensors_and_a_share_of_the_layers() {
        let global = Checkpoint::random(&tiny_model(Variant::Bert, 2, 32, 4, 64, true), 2);
        let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
        let full = cost_model.cost(&global.config.widths());
        let half = spp_budget(&cost_model, 0.5).max_parameters.unwrap();
        assert_eq!(
            half,
            full.parameters - full.layer_parameters / 2 - full.layer_parameters % 2
        );
        assert_eq!(
            spp_budget(&cost_model, 1.0).max_parameters,
            Some(full.parameters)
        );
    }
}
