//! Post-training scaling (paper 4.5.3): inference needs a fraction of the memory that
//! training does, so after the last round every client can run a larger sub-model of the
//! final global model than the one it trained. [`plan_client`] picks both for a client:
//! the sub-model its training budget allows and the largest one its inference budget
//! allows, never smaller than the first.
//!
//! [`spp_budget`] is the budget of the salient-parameter-prioritization ablation (paper
//! A.2): a share of the encoder layers' parameters, embeddings always whole.

use crate::checkpoint::Checkpoint;
use crate::config::LayerArch;
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::extract::{extract_layers, ClientModel, ClientRequest, Strategy};
use crate::search::{choose_for_inference, Budget, Policy, SearchSpace};

/// A client's training-time and deployed sub-models.
pub struct ClientDeployment {
    pub train: ClientModel,
    pub deployed: ClientModel,
    pub inference_budget_bytes: u64,
}

/// Plans one client's deployment. `request.budget` is the training budget; the request's
/// policy must be `largest` (deployment gives each client the best model it can run).
pub fn plan_client(
    global: &Checkpoint,
    request: &ClientRequest,
    inference_budget_bytes: u64,
) -> Result<ClientDeployment> {
    if request.policy != Policy::Largest {
        return Err(Error::Invalid(
            "deployment picks the largest sub-model that fits; policy must be `largest`".into(),
        ));
    }
    let train = crate::extract::extract_for_client(global, request)?;
    let for_inference = choose_for_inference(
        request.cost_model,
        request.space,
        &Budget::default(),
        inference_budget_bytes,
    );
    // A client can always run what it trained, whatever the inference budget says.
    let deployed = match for_inference {
        Ok(choice) if choice.cost.parameters > train.choice.cost.parameters => {
            extract_layers(global, request, &choice.layers)?
        }
        _ => train.clone(),
    };
    Ok(ClientDeployment {
        train,
        deployed,
        inference_budget_bytes,
    })
}

/// The ablation budget: the embeddings and heads whole plus `fraction` of the encoder
/// layers' parameters at full width.
pub fn spp_budget(cost_model: &CostModel, fraction: f64) -> Budget {
    let full = cost_model.cost(&cost_model.config().layers);
    let fixed = full.parameters - full.encoder_parameters;
    Budget {
        max_parameters: Some(fixed + (fraction * full.encoder_parameters as f64).floor() as u64),
        max_train_memory_bytes: None,
    }
}

/// The salient-parameter-prioritization ablation for one architecture: the same layers
/// taken as the leading indices of the prioritized model (`salient`), and as indices drawn
/// at random, seeded (no prioritization). Random rather than the leading indices of the
/// model as stored: a model trained by RaFFM was extracted from a prioritized model every
/// round, so its stored order is already close to the salience order.
pub fn spp_pair(
    global: &Checkpoint,
    prioritized: &Checkpoint,
    cost_model: &CostModel,
    space: &SearchSpace,
    layers: &[LayerArch],
    seed: u64,
) -> Result<(Checkpoint, Checkpoint)> {
    let request = |strategy| ClientRequest {
        client: "spp",
        budget: Budget::default(),
        round: 0,
        seed,
        strategy,
        policy: Policy::Largest,
        space,
        cost_model,
    };
    let with = extract_layers(prioritized, &request(Strategy::Salient), layers)?;
    let without = extract_layers(global, &request(Strategy::Random), layers)?;
    Ok((with.checkpoint, without.checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;
    use crate::cost::TrainingShape;

    #[test]
    fn deployed_models_fit_the_inference_budget_and_are_never_smaller_than_the_trained_one() {
        let global = Checkpoint::random(&tiny_config(Family::Bert, 3, 32, 4, 64), 2, true, true);
        let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
        let space = SearchSpace::default();
        let full = cost_model.cost(&global.config.layers);
        let mut strictly_between = 0;
        for train_fraction in [0.75, 0.85, 1.0] {
            for inference_fraction in [0.1, 0.5, 0.8, 0.9, 0.95, 1.0, 7.0] {
                let request = ClientRequest {
                    client: "c0",
                    budget: Budget {
                        max_parameters: Some((train_fraction * full.parameters as f64) as u64),
                        max_train_memory_bytes: None,
                    },
                    round: 0,
                    seed: 0,
                    strategy: Strategy::Salient,
                    policy: Policy::Largest,
                    space: &space,
                    cost_model: &cost_model,
                };
                let budget = (inference_fraction * full.inference_memory_bytes as f64) as u64;
                let plan = plan_client(&global, &request, budget).unwrap();
                let (t, d) = (&plan.train.choice.cost, &plan.deployed.choice.cost);
                assert!(d.parameters >= t.parameters);
                assert_eq!(d.parameters, plan.deployed.checkpoint.parameter_count());
                if d.parameters > t.parameters {
                    assert!(d.inference_memory_bytes <= budget, "deployed over budget");
                    strictly_between += (d.parameters < full.parameters) as usize;
                } else {
                    assert!(plan.train.checkpoint.tensors.keys().eq(plan
                        .deployed
                        .checkpoint
                        .tensors
                        .keys()));
                }
                if inference_fraction >= 1.0 {
                    assert_eq!(d.parameters, full.parameters, "the full model fits");
                }
            }
        }
        assert!(
            strictly_between > 0,
            "no budget gave a deployed model between the two"
        );
    }

    #[test]
    fn spp_budget_keeps_the_embeddings_and_a_share_of_the_encoder() {
        let global = Checkpoint::random(&tiny_config(Family::Bert, 2, 32, 4, 64), 2, true, true);
        let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
        let full = cost_model.cost(&global.config.layers);
        let half = spp_budget(&cost_model, 0.5).max_parameters.unwrap();
        assert_eq!(
            half,
            full.parameters - full.encoder_parameters / 2 - full.encoder_parameters % 2
        );
        assert_eq!(
            spp_budget(&cost_model, 1.0).max_parameters,
            Some(full.parameters)
        );
    }
}
