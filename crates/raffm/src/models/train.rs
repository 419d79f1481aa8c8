//! Local training's options and what they do to the gradients, and the encoder
//! classifier's task for [`crate::models::fit`].
//!
//! AdamW with linear warmup and linear decay, gradient clipping by the global norm (as
//! PyTorch's `clip_grad_norm_`), an optional FedProx proximal term `mu/2 * |w - w0|^2`
//! (applied as `mu * (w - w0)` on the gradients, which is its exact gradient) and optional
//! frozen embeddings. Two runs with the same seed give bit-identical weights on CPU (see
//! [`crate::models::fit`] for what the seed covers). AdamW is [`crate::models::fused::FusedAdamW`]:
//! PyTorch's update, one pass per parameter on flex.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig, MseLoss, Reduction};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::data::tokenizer::{collate, TokenizedRow};
use crate::models::families::bert::model::BertForSequenceClassification;
use crate::models::fit::{fit, TrainTask};
use crate::models::fused::{FusedOps, Precision};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Fraction of the steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm.
    pub max_grad_norm: Option<f64>,
    /// FedProx proximal coefficient; 0 is plain FedAvg local training.
    pub prox_mu: f64,
    pub freeze_embeddings: bool,
    /// Stop after this many steps (for quick runs and tests).
    pub max_steps: Option<usize>,
    pub seed: u64,
    /// The linear layers' products: fp32, or bf16 operands with fp32 accumulation.
    /// Manifests written before the option existed trained in fp32.
    #[serde(default)]
    pub precision: Precision,
}

impl TrainOptions {
    /// Checks every option, naming it as the command line does.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        let lr = self.learning_rate;
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {lr}"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be 0 or more, got {}",
                self.weight_decay
            ));
        }
        if let Some(n) = self.max_grad_norm.filter(|n| !(n.is_finite() && *n > 0.0)) {
            return bad(format!(
                "--max-grad-norm must be a positive number (0: no clipping), got {n}"
            ));
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return bad(format!("--mu must be 0 or more, got {}", self.prox_mu));
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("--epochs and --batch-size must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            learning_rate: 5e-5,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            prox_mu: 0.0,
            freeze_embeddings: false,
            max_steps: None,
            seed: 0,
            precision: Precision::Fp32,
        }
    }
}

/// Training examples: tokenized rows and their labels (class index or target value).
pub struct TrainData<'a> {
    pub rows: &'a [TokenizedRow],
    pub labels: &'a [f32],
    pub pad_id: i64,
    /// True for a regression task (one output, MSE loss).
    pub regression: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub examples_seen: usize,
    pub epochs: usize,
    pub step_losses: Vec<f32>,
    pub wall_seconds: f64,
    pub examples_per_second: f64,
}

/// What `train` reports after every optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// 0-based index of the step just taken.
    pub index: usize,
    pub total: usize,
    pub loss: f32,
    pub examples_seen: usize,
}

/// Learning rate at `step` (0-based) of `total`: linear warmup, then linear decay to 0.
pub fn learning_rate_at(options: &TrainOptions, step: usize, total: usize) -> f64 {
    let warmup = (options.warmup_ratio * total as f64).round() as usize;
    let lr = options.learning_rate;
    if step < warmup {
        lr * (step + 1) as f64 / warmup as f64
    } else {
        lr * (total - step) as f64 / (total - warmup).max(1) as f64
    }
}

/// Every parameter's value at the start of local training, flattened, by id: FedProx's
/// anchor.
pub(crate) struct Snapshot<B: Backend> {
    values: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> Snapshot<B> {
    pub(crate) fn of<A, M>(model: &M) -> Self
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut s = Snapshot {
            values: HashMap::new(),
        };
        model.visit(&mut s);
        s
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Snapshot<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val().inner();
        let n = value.shape().num_elements();
        self.values.insert(param.id, value.reshape([n]));
    }
}

/// Adds the proximal gradient and accumulates the squared global gradient norm.
struct ProxAndNorm<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    start: Option<&'a Snapshot<B>>,
    mu: f64,
    /// Whether to accumulate the norm.
    clipping: bool,
    squared_norm: Option<Tensor<B, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ProxAndNorm<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(mut grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return; // frozen
        };
        if let Some(start) = self.start {
            let w = param.val().inner();
            let dims = w.dims();
            let w0 = start.values[&param.id].clone().reshape(dims);
            grad = grad + (w - w0).mul_scalar(self.mu);
        }
        if self.clipping {
            let sq = grad.clone().powi_scalar(2).sum(); // [1]
            self.squared_norm = Some(match self.squared_norm.take() {
                Some(acc) => acc + sq,
                None => sq,
            });
        }
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
    }
}

/// Scales every gradient.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// What the options do to a step's gradients before the optimizer sees them: FedProx's
/// proximal term `mu (w - w0)` (with `start` the anchor `w0`), then clipping to a global
/// L2 norm.
pub(crate) fn adjust_gradients<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    start: Option<&Snapshot<B::InnerBackend>>,
    options: &TrainOptions,
) {
    if start.is_none() && options.max_grad_norm.is_none() {
        return;
    }
    let mut pass = ProxAndNorm {
        grads,
        start,
        mu: options.prox_mu,
        clipping: options.max_grad_norm.is_some(),
        squared_norm: None,
    };
    model.visit(&mut pass);
    if let (Some(max), Some(sq)) = (options.max_grad_norm, pass.squared_norm) {
        let norm = sq.into_scalar().elem::<f64>().sqrt();
        if norm > max {
            model.visit(&mut Scale {
                grads,
                factor: max / (norm + 1e-6),
            });
        }
    }
}

/// Fine-tunes the encoder classifier in `checkpoint` (which must have a classification
/// head) on `data`; `on_step` sees every step. Returns the trained checkpoint.
pub fn train_encoder<B: AutodiffBackend + FusedOps>(
    checkpoint: &Checkpoint,
    data: &TrainData,
    options: &TrainOptions,
    device: &B::Device,
    on_step: impl FnMut(Step),
) -> Result<(Checkpoint, TrainReport)>
where
    B::InnerBackend: FusedOps,
{
    if data.rows.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    options.validate()?;
    let num_labels = checkpoint.config.num_labels();
    if data.regression != (num_labels == 1) {
        return Err(Error::Invalid(format!(
            "the model has {num_labels} outputs, which does not suit this task"
        )));
    }
    if !data.regression {
        if let Some((i, l)) = data
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= num_labels)
        {
            return Err(Error::Invalid(format!(
                "example {i}: label {l} is out of range for a model with {num_labels} labels"
            )));
        }
    }
    crate::models::vision::check_not_vision(checkpoint)?;
    crate::data::tokenizer::check_vocab(data.rows, checkpoint.config.vocab_size())?;
    crate::data::tokenizer::check_positions(data.rows, checkpoint.config.max_positions())?;
    let mut model = BertForSequenceClassification::<B>::from_checkpoint(checkpoint, device)?;
    if options.freeze_embeddings {
        model = model.freeze_embeddings();
    }
    let mut task = EncoderTask {
        data,
        ce: CrossEntropyLossConfig::new().init(device),
        device: device.clone(),
    };
    let (model, report) = fit(model, &mut task, options, device, on_step)?;
    Ok((model.valid().to_checkpoint(checkpoint), report))
}

/// Sequence classification or regression of tokenized rows.
struct EncoderTask<'a, B: Backend> {
    data: &'a TrainData<'a>,
    ce: CrossEntropyLoss<B>,
    device: B::Device,
}

impl<B: AutodiffBackend + FusedOps> TrainTask<B> for EncoderTask<'_, B>
where
    B::InnerBackend: FusedOps,
{
    type Model = BertForSequenceClassification<B>;
    const STREAM: &'static str = "train-order";

    fn examples(&self) -> usize {
        self.data.rows.len()
    }

    fn loss(&mut self, model: &Self::Model, batch: &[usize], _: &mut SplitMix64) -> Tensor<B, 1> {
        let data = self.data;
        let device = &self.device;
        let rows: Vec<&TokenizedRow> = batch.iter().map(|&i| &data.rows[i]).collect();
        let logits = model.forward(&collate(&rows, data.pad_id).to_tensors::<B>(device)); // [batch, labels]
        let labels: Vec<f32> = batch.iter().map(|&i| data.labels[i]).collect();
        if data.regression {
            let targets =
                Tensor::<B, 2>::from_data(TensorData::new(labels, [batch.len(), 1]), device);
            MseLoss::new().forward(logits, targets, Reduction::Mean)
        } else {
            let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
            let targets =
                Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [batch.len()]), device);
            self.ce.forward(logits, targets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::elastic::TensorKind;
    use crate::models::families::bert::{tiny_model, Variant};
    use crate::CpuBackend;
    use burn::backend::Autodiff;

    type B = Autodiff<CpuBackend>;

    fn setup() -> (Checkpoint, Vec<TokenizedRow>, Vec<f32>) {
        let config = tiny_model(Variant::Bert, 2, 32, 4, 64, false);
        let labels = vec!["a".to_string(), "b".to_string()];
        let ckpt = Checkpoint::random(&config, 3).with_classification_head(&labels, 4);
        let mut rng = SplitMix64::new(8);
        let rows: Vec<TokenizedRow> = (0..16)
            .map(|i| {
                let len = 4 + i % 6;
                let mut ids: Vec<i64> = (0..len).map(|_| 5 + rng.below(50) as i64).collect();
                ids[0] = 2;
                TokenizedRow {
                    token_type_ids: vec![0; ids.len()],
                    input_ids: ids,
                }
            })
            .collect();
        let labels: Vec<f32> = (0..16).map(|i| (i % 2) as f32).collect();
        (ckpt, rows, labels)
    }

    fn run(
        ckpt: &Checkpoint,
        rows: &[TokenizedRow],
        labels: &[f32],
        options: &TrainOptions,
    ) -> (Checkpoint, TrainReport) {
        let _serial = crate::models::fit::serial();
        let data = TrainData {
            rows,
            labels,
            pad_id: 0,
            regression: false,
        };
        train_encoder::<B>(ckpt, &data, options, &Default::default(), |_| {}).unwrap()
    }

    fn options() -> TrainOptions {
        TrainOptions {
            epochs: 30,
            batch_size: 16,
            learning_rate: 1e-2,
            warmup_ratio: 0.0,
            seed: 5,
            ..Default::default()
        }
    }

    fn distance(a: &Checkpoint, b: &Checkpoint) -> f64 {
        a.tensors
            .iter()
            .map(|(n, t)| {
                t.data
                    .iter()
                    .zip(&b.tensors[n].data)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn thirty_steps_on_a_fixed_batch_halve_the_loss() {
        let (ckpt, rows, labels) = setup();
        let (_, report) = run(&ckpt, &rows, &labels, &options());
        assert_eq!(report.steps, 30);
        let (first, last) = (report.step_losses[0], *report.step_losses.last().unwrap());
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }

    #[test]
    fn same_seed_gives_bit_identical_weights_and_another_seed_does_not() {
        let (ckpt, rows, labels) = setup();
        let mut o = options();
        o.epochs = 3;
        o.batch_size = 4; // several batches per epoch, so the data order matters
        let (a, _) = run(&ckpt, &rows, &labels, &o);
        let (b, _) = run(&ckpt, &rows, &labels, &o);
        for (name, t) in &a.tensors {
            assert!(
                t.bit_eq(&b.tensors[name]),
                "{name} differs between identical runs"
            );
        }
        o.seed = 6;
        let (c, _) = run(&ckpt, &rows, &labels, &o);
        assert!(distance(&a, &c) > 0.0);
    }

    /// bf16 products train too: deterministic, the loss falls as in fp32, and the
    /// weights end near fp32's but not on them (the products really were bf16).
    #[test]
    fn bf16_training_is_deterministic_and_follows_fp32() {
        let (ckpt, rows, labels) = setup();
        let fp32 = options();
        let bf16 = TrainOptions {
            precision: Precision::Bf16,
            ..options()
        };
        let (a, report) = run(&ckpt, &rows, &labels, &bf16);
        let (b, _) = run(&ckpt, &rows, &labels, &bf16);
        for (name, t) in &a.tensors {
            assert!(
                t.bit_eq(&b.tensors[name]),
                "{name} differs between bf16 runs"
            );
        }
        let (first, last) = (report.step_losses[0], *report.step_losses.last().unwrap());
        assert!(last < 0.5 * first, "bf16 loss {first} -> {last}");
        let (c, reference) = run(&ckpt, &rows, &labels, &fp32);
        assert!((report.step_losses[0] - reference.step_losses[0]).abs() < 1e-2);
        let (apart, moved) = (distance(&a, &c), distance(&c, &ckpt));
        assert!(
            apart > 0.0 && apart < 0.25 * moved,
            "bf16 is {apart} from fp32, which moved {moved}"
        );
    }

    #[test]
    fn fedprox_pulls_weights_toward_the_start() {
        let (ckpt, rows, labels) = setup();
        let plain = run(&ckpt, &rows, &labels, &options()).0;
        let prox = run(
            &ckpt,
            &rows,
            &labels,
            &TrainOptions {
                prox_mu: 1.0,
                ..options()
            },
        )
        .0;
        let (d_plain, d_prox) = (distance(&plain, &ckpt), distance(&prox, &ckpt));
        assert!(
            d_prox < 0.9 * d_plain,
            "mu=1 moved {d_prox}, mu=0 moved {d_plain}"
        );
    }

    #[test]
    fn frozen_embeddings_come_out_bit_identical() {
        let (ckpt, rows, labels) = setup();
        let (out, _) = run(
            &ckpt,
            &rows,
            &labels,
            &TrainOptions {
                freeze_embeddings: true,
                ..options()
            },
        );
        for spec in ckpt.config.tensors() {
            let same = ckpt.tensors[&spec.name].bit_eq(&out.tensors[&spec.name]);
            let frozen = spec.kind == TensorKind::Embedding;
            assert_eq!(
                same, frozen,
                "{}: frozen={frozen} but changed={}",
                spec.name, !same
            );
        }
    }

    #[test]
    fn labels_out_of_range_are_an_error() {
        let (ckpt, rows, mut labels) = setup();
        labels[3] = 2.0;
        let data = TrainData {
            rows: &rows,
            labels: &labels,
            pad_id: 0,
            regression: false,
        };
        let e =
            train_encoder::<B>(&ckpt, &data, &options(), &Default::default(), |_| {}).unwrap_err();
        assert!(
            e.to_string().contains("example 3: label 2 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let o = TrainOptions {
            learning_rate: 1.0,
            warmup_ratio: 0.1,
            ..Default::default()
        };
        let lr: Vec<f64> = (0..100).map(|s| learning_rate_at(&o, s, 100)).collect();
        assert!((lr[0] - 0.1).abs() < 1e-12 && (lr[9] - 1.0).abs() < 1e-12);
        assert!(lr[10..].windows(2).all(|w| w[1] < w[0]));
        assert!(lr[99] > 0.0 && lr[99] < 0.02);
    }
}
