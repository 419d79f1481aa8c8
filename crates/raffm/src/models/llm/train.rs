//! Local LoRA training of the decoder: the base is frozen (no gradient, no optimizer
//! state), the loss is the mean negative log-likelihood of the answer tokens only, and the
//! optimizer is the encoders' AdamW with the same warmup and decay
//! ([`crate::models::train::TrainOptions`]).

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::Serialize;

use super::{target_log_probs, EncodedExample, PaddedBatch, ScoredSequence};
use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::models::families::llama::lora::LoraAdapter;
use crate::models::families::llama::model::LlamaForCausalLM;
use crate::models::fit::{fit, TrainTask};
use crate::models::fused::FusedOps;
use crate::models::train::{Step, TrainOptions};

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
    on_step: impl FnMut(Step),
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
    let model = LlamaForCausalLM::<B>::from_checkpoint(checkpoint, Some(adapter), device);
    let mut task = CompletionTask {
        sequences: &sequences,
        pad_id,
        answer_tokens: 0,
        tokens: 0,
        device: device.clone(),
    };
    let (model, fitted) = fit(model, &mut task, options, device, on_step)?;
    let trained = LoraAdapter {
        config: adapter.config.clone(),
        modules: model.valid().adapter_factors(),
    };
    let report = LoraTrainReport {
        steps: fitted.steps,
        examples_seen: fitted.examples_seen,
        answer_tokens: task.answer_tokens,
        tokens: task.tokens,
        step_losses: fitted.step_losses,
        wall_seconds: fitted.wall_seconds,
        trainable_parameters: trained.parameter_count(),
    };
    Ok((trained, report))
}

/// Completions scored on their answer tokens only, over a frozen base; counts the tokens
/// it trains on.
struct CompletionTask<'a, B: Backend> {
    sequences: &'a [ScoredSequence],
    pad_id: u32,
    answer_tokens: usize,
    tokens: usize,
    device: B::Device,
}

impl<B: AutodiffBackend + FusedOps> TrainTask<B> for CompletionTask<'_, B>
where
    B::InnerBackend: FusedOps,
{
    type Model = LlamaForCausalLM<B>;
    const STREAM: &'static str = "train-order";

    fn examples(&self) -> usize {
        self.sequences.len()
    }

    fn loss(&mut self, model: &Self::Model, batch: &[usize], _: &mut SplitMix64) -> Tensor<B, 1> {
        let batch: Vec<&ScoredSequence> = batch.iter().map(|&i| &self.sequences[i]).collect();
        self.answer_tokens += batch.iter().map(|s| s.targets.len()).sum::<usize>();
        self.tokens += batch.iter().map(|s| s.ids.len()).sum::<usize>();
        let padded = PaddedBatch::<B>::new(&batch, self.pad_id, &self.device);
        target_log_probs(model, &padded).mean().neg() // [1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::llama::{lora::LoraConfig, tiny_config};
    use crate::models::families::ModelConfig;
    use crate::CpuBackend;
    use burn::backend::Autodiff;

    /// One example in batches of one for one step: the data order cannot depend on the
    /// seed, so any difference between two seeds comes from the dropout masks.
    fn trained(seed: u64, lora_dropout: f64) -> LoraAdapter {
        let config = tiny_config(2, 16, 4, 2, 32);
        let checkpoint = Checkpoint::random(&ModelConfig::Llama(config.clone()), 1);
        let lora =
            LoraConfig::new(4, 8.0, lora_dropout, &["q_proj".into(), "v_proj".into()]).unwrap();
        let mut adapter = LoraAdapter::init(&lora, &config, 2);
        // B drawn too, so that A's gradient (through B) depends on the mask as well.
        let mut rng = SplitMix64::new(3);
        for pair in adapter.modules.values_mut() {
            for b in &mut pair.b.data {
                *b = ((rng.next_f64() - 0.5) * 0.2) as f32;
            }
        }
        let example = EncodedExample {
            prompt: (3..15).collect(),
            options: vec![vec![20, 21], vec![30]],
            answer: 0,
        };
        let options = TrainOptions {
            batch_size: 1,
            learning_rate: 1e-2,
            warmup_ratio: 0.0,
            max_grad_norm: None,
            seed,
            ..Default::default()
        };
        let _serial = crate::models::fit::serial();
        let (trained, report) = train_lora::<Autodiff<CpuBackend>>(
            &checkpoint,
            &adapter,
            &[example],
            &options,
            0,
            &Default::default(),
            |_| {},
        )
        .unwrap();
        assert_eq!(report.steps, 1);
        trained
    }

    fn same(a: &LoraAdapter, b: &LoraAdapter) -> bool {
        a.modules.iter().all(|(name, pair)| {
            let other = &b.modules[name];
            pair.a.bit_eq(&other.a) && pair.b.bit_eq(&other.b)
        })
    }

    #[test]
    fn lora_dropout_masks_follow_the_clients_seed() {
        let first = trained(1, 0.5);
        assert!(same(&first, &trained(1, 0.5)), "one seed, two masks");
        assert!(!same(&first, &trained(2, 0.5)), "two seeds, one mask");
        // Without dropout the seed has nothing left to change here.
        assert!(same(&trained(1, 0.0), &trained(2, 0.0)));
    }
}
