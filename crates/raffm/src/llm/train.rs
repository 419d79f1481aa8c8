//! Local LoRA training of the decoder: the base is frozen (no gradient, no optimizer
//! state), the loss is the mean negative log-likelihood of the answer tokens only, and the
//! optimizer is the encoders' AdamW with the same warmup and decay
//! ([`crate::train::TrainOptions`]).

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::{target_log_probs, EncodedExample, PaddedBatch, ScoredSequence};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::families::llama::lora::LoraAdapter;
use crate::families::llama::model::LlamaForCausalLM;
use crate::fused::{FusedAdamW, FusedOps};
use crate::rng::SplitMix64;
use crate::train::{learning_rate_at, Step, TrainOptions};

/// What a LoRA training run did.
#[derive(Debug, Clone, Serialize)]
pub struct LoraTrainReport {
    pub steps: usize,
    pub examples_seen: usize,
    /// Answer tokens the loss covered, and every token the model ran on.
    pub answer_tokens: usize,
    pub tokens: usize,
    pub step_losses: Vec<f32>,
    pub wall_seconds: f64,
    pub trainable_parameters: u64,
}

/// Trains `adapter` on `examples` (each on its right option) over the frozen `checkpoint`;
/// `on_step` sees every step. Returns the trained adapter.
pub fn train_lora<B: AutodiffBackend + FusedOps>(
    checkpoint: &Checkpoint,
    adapter: &LoraAdapter,
    examples: &[EncodedExample],
    options: &TrainOptions,
    pad_id: u32,
    device: &B::Device,
    mut on_step: impl FnMut(Step),
) -> Result<(LoraAdapter, LoraTrainReport)>
where
    B::InnerBackend: FusedOps,
{
    if examples.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    let Some(config) = checkpoint.config.llama() else {
        return Err(Error::Invalid(format!(
            "LoRA training needs a llama model, not `{}`",
            checkpoint.config.model_type()
        )));
    };
    let source = checkpoint.source.clone().unwrap_or_default();
    adapter.check_against(config, &source)?;
    options.validate()?;
    if options.prox_mu > 0.0 || options.freeze_embeddings || options.max_grad_norm.is_some() {
        return Err(Error::Invalid(
            "--prox-mu, --freeze-embeddings and --max-grad-norm do not apply to LoRA training"
                .into(),
        ));
    }
    let max_positions = checkpoint.config.max_positions();
    let sequences: Vec<ScoredSequence> = examples
        .iter()
        .map(|e| ScoredSequence::completion(&e.prompt, &e.options[e.answer]))
        .collect();
    if let Some(s) = sequences.iter().find(|s| s.ids.len() > max_positions) {
        return Err(Error::Invalid(format!(
            "a sequence of {} tokens exceeds the model's {max_positions} positions",
            s.ids.len()
        )));
    }
    B::seed(device, options.seed);
    let mut model = LlamaForCausalLM::<B>::from_checkpoint(checkpoint, Some(adapter), device);
    let mut optimizer = OptimizerAdaptor::from(FusedAdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: options.weight_decay,
    });
    let n = sequences.len();
    let total = options
        .max_steps
        .unwrap_or(usize::MAX)
        .min(n.div_ceil(options.batch_size) * options.epochs);
    let clock = Instant::now();
    let mut losses = Vec::with_capacity(total);
    let (mut seen, mut answer_tokens, mut tokens) = (0, 0, 0);
    let mut rng = SplitMix64::derive(options.seed, "train-order");
    'epochs: for _ in 0..options.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for chunk in order.chunks(options.batch_size) {
            let step = losses.len();
            if step == total {
                break 'epochs;
            }
            let batch: Vec<&ScoredSequence> = chunk.iter().map(|&i| &sequences[i]).collect();
            let padded = PaddedBatch::<B>::new(&batch, pad_id, device);
            let loss = target_log_probs(&model, &padded).mean().neg();
            let loss_value = loss.clone().into_scalar().elem::<f64>() as f32;
            if !loss_value.is_finite() {
                return Err(Error::Invalid(format!(
                    "the loss became {loss_value} at step {step}; lower the learning rate"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(learning_rate_at(options, step, total), model, grads);
            losses.push(loss_value);
            seen += chunk.len();
            answer_tokens += batch.iter().map(|s| s.targets.len()).sum::<usize>();
            tokens += batch.iter().map(|s| s.ids.len()).sum::<usize>();
            on_step(Step {
                index: step,
                total,
                loss: loss_value,
                examples_seen: seen,
            });
        }
    }
    let trained = LoraAdapter {
        config: adapter.config.clone(),
        modules: model.valid().adapter_factors(),
    };
    let report = LoraTrainReport {
        steps: losses.len(),
        examples_seen: seen,
        answer_tokens,
        tokens,
        step_losses: losses,
        wall_seconds: clock.elapsed().as_secs_f64(),
        trainable_parameters: trained.parameter_count(),
    };
    Ok((trained, report))
}
