//! The one local training loop. Every family's training (the encoder classifier, the
//! image classifier, the LoRA decoder) is a [`TrainTask`]: it says how a batch of its
//! examples becomes a loss. [`fit`] does the rest once for all of them: seeding, the data
//! order, AdamW with warmup and decay, FedProx and clipping, the non-finite-loss check and
//! the per-step report.
//!
//! Everything random in a run derives from `TrainOptions::seed`: the data order and a
//! task's augmentation (one stream, named by the task), burn's generator and the fused
//! kernels' dropout key ([`crate::models::fused::seed_dropout`]). Both generators are per process,
//! so reproducibility assumes one training run at a time per process, as the binaries do.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::models::fused::{self, FusedAdamW, FusedOps};
use crate::models::train::{
    adjust_gradients, learning_rate_at, Snapshot, Step, TrainOptions, TrainReport,
};

/// What one family's training supplies to [`fit`].
pub trait TrainTask<B: AutodiffBackend> {
    /// The trainable model; parameters it keeps frozen get no gradient and no optimizer
    /// state.
    type Model: AutodiffModule<B>;

    /// The name of the run's random stream (data order, then the task's own draws).
    const STREAM: &'static str;

    /// How many examples the batches are drawn from.
    fn examples(&self) -> usize;

    /// The mean loss over the examples at `batch` (indices below [`Self::examples`]);
    /// `rng` is the run's stream, for augmentation.
    fn loss(&mut self, model: &Self::Model, batch: &[usize], rng: &mut SplitMix64) -> Tensor<B, 1>;
}

/// Trains `model` on `task` with `options` (checked here, whatever the caller checked);
/// `on_step` sees every step. Returns the trained model and what the run did.
pub fn fit<B, T>(
    mut model: T::Model,
    task: &mut T,
    options: &TrainOptions,
    device: &B::Device,
    mut on_step: impl FnMut(Step),
) -> Result<(T::Model, TrainReport)>
where
    B: AutodiffBackend,
    B::InnerBackend: FusedOps,
    T: TrainTask<B>,
{
    options.validate()?;
    let n = task.examples();
    if n == 0 {
        return Err(Error::Invalid("no training examples".into()));
    }
    B::seed(device, options.seed);
    fused::seed_dropout(options.seed);
    fused::set_precision(options.precision)?;
    let start = (options.prox_mu > 0.0).then(|| Snapshot::of(&model));
    let mut optimizer = OptimizerAdaptor::from(FusedAdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: options.weight_decay,
    });
    let total = options
        .max_steps
        .unwrap_or(usize::MAX)
        .min(n.div_ceil(options.batch_size) * options.epochs);
    let clock = Instant::now();
    let mut losses = Vec::with_capacity(total);
    let (mut seen, mut epochs) = (0, 0);
    let mut rng = SplitMix64::derive(options.seed, T::STREAM);
    'epochs: for _ in 0..options.epochs {
        if losses.len() == total {
            break;
        }
        epochs += 1;
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for batch in order.chunks(options.batch_size) {
            let step = losses.len();
            if step == total {
                break 'epochs;
            }
            let loss = task.loss(&model, batch, &mut rng); // [1]
            let value = loss.clone().into_scalar().elem::<f64>() as f32;
            if !value.is_finite() {
                return Err(Error::Invalid(format!(
                    "the loss became {value} at step {step}; lower the learning rate"
                )));
            }
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            adjust_gradients(&model, &mut grads, start.as_ref(), options);
            model = optimizer.step(learning_rate_at(options, step, total), model, grads);
            losses.push(value);
            seen += batch.len();
            on_step(Step {
                index: step,
                total,
                loss: value,
                examples_seen: seen,
            });
        }
    }
    let wall_seconds = clock.elapsed().as_secs_f64();
    let report = TrainReport {
        steps: losses.len(),
        examples_seen: seen,
        epochs,
        step_losses: losses,
        wall_seconds,
        examples_per_second: seen as f64 / wall_seconds.max(1e-9),
    };
    Ok((model, report))
}

/// Held by tests that train: burn's generator and the dropout key are per process, so two
/// training runs in one test binary must not overlap.
#[cfg(test)]
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}
