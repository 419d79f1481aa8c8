//! Local training and evaluation of an image classifier (the vision family with its head):
//! cross-entropy over the labels, the encoders' AdamW with their warmup and decay,
//! gradient clipping and FedProx ([`crate::train::TrainOptions`]), seeded crop-and-flip
//! augmentation per epoch.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;

use super::data::Preprocess;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::families::vit::model::VitForImageClassification;
use crate::fused::{FusedAdamW, FusedOps};
use crate::rng::SplitMix64;
use crate::train::{adjust_gradients, learning_rate_at, Snapshot, Step, TrainOptions, TrainReport};

fn batch_tensor<B: Backend>(
    preprocess: &Preprocess,
    images: &[&RgbImage],
    augment: Option<&mut SplitMix64>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let size = preprocess.size as usize;
    let data = preprocess.batch(images, augment);
    Tensor::from_data(TensorData::new(data, [images.len(), 3, size, size]), device)
}

/// Fine-tunes the whole classifier in `checkpoint` on `images` with `labels`; `on_step`
/// sees every step. Returns the trained checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier<B: AutodiffBackend + FusedOps>(
    checkpoint: &Checkpoint,
    images: &[&RgbImage],
    labels: &[usize],
    preprocess: &Preprocess,
    options: &TrainOptions,
    device: &B::Device,
    mut on_step: impl FnMut(Step),
) -> Result<(Checkpoint, TrainReport)>
where
    B::InnerBackend: FusedOps,
{
    options.validate()?;
    if images.is_empty() || images.len() != labels.len() {
        return Err(Error::Invalid(format!(
            "{} images and {} labels: need as many, and at least one",
            images.len(),
            labels.len()
        )));
    }
    let classes = checkpoint.config.num_labels();
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::Invalid(format!(
            "label {bad} is outside the model's {classes} labels"
        )));
    }
    if options.freeze_embeddings {
        return Err(Error::Invalid(
            "frozen embeddings are for text models; a vision model trains its patch embedding"
                .into(),
        ));
    }
    B::seed(device, options.seed);
    let mut model = VitForImageClassification::<B>::from_checkpoint(checkpoint, device)?;
    let start = (options.prox_mu > 0.0).then(|| Snapshot::of(&model));
    let mut optimizer = OptimizerAdaptor::from(FusedAdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: options.weight_decay,
    });
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let n = images.len();
    let total = options
        .max_steps
        .unwrap_or(usize::MAX)
        .min(n.div_ceil(options.batch_size) * options.epochs);
    let clock = Instant::now();
    let mut losses = Vec::with_capacity(total);
    let mut seen = 0;
    let mut rng = SplitMix64::derive(options.seed, "vision-train");
    let mut epochs = 0;
    'epochs: for _ in 0..options.epochs {
        epochs += 1;
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for chunk in order.chunks(options.batch_size) {
            let step = losses.len();
            if step == total {
                break 'epochs;
            }
            let batch: Vec<&RgbImage> = chunk.iter().map(|&i| images[i]).collect();
            let x = batch_tensor::<B>(preprocess, &batch, Some(&mut rng), device);
            let y: Vec<i64> = chunk.iter().map(|&i| labels[i] as i64).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [chunk.len()]), device);
            let loss = loss_fn.forward(model.forward(x), y);
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
            seen += chunk.len();
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
    Ok((model.valid().to_checkpoint(checkpoint), report))
}

/// The classifier's logits for every image, in order, in batches of `batch`; `on_batch`
/// sees the size of every batch done.
pub fn predict<B: FusedOps>(
    checkpoint: &Checkpoint,
    images: &[&RgbImage],
    preprocess: &Preprocess,
    batch: usize,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let model = VitForImageClassification::<B>::from_checkpoint(checkpoint, device)?;
    let mut outputs = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let logits = model.forward(batch_tensor::<B>(preprocess, chunk, None, device)); // [batch, labels]
        let width = logits.dims()[1];
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float logits");
        outputs.extend(values.chunks(width).map(<[f32]>::to_vec));
        on_batch(chunk.len());
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::vit::{tiny_config, Variant};
    use crate::families::ModelConfig;
    use crate::CpuBackend;

    /// Two classes a tiny model can tell apart after a few steps: dark and bright images.
    fn data() -> (Vec<RgbImage>, Vec<usize>) {
        (0..16)
            .map(|i| {
                let level = if i % 2 == 0 { 30 } else { 220 };
                let image = RgbImage::from_fn(16, 16, |x, y| {
                    image::Rgb([level + ((x + y + i) % 7) as u8; 3])
                });
                (image, (i % 2) as usize)
            })
            .unzip()
    }

    #[test]
    fn training_learns_a_separable_task_and_is_deterministic() {
        let mut config = tiny_config(Variant::Dinov2, 2, 24, 4, 48, 16, 4);
        config.set_labels(&["dark".into(), "bright".into()]);
        let checkpoint = Checkpoint::random(&ModelConfig::Vit(config), 1);
        let (images, labels) = data();
        let refs: Vec<&RgbImage> = images.iter().collect();
        let preprocess = Preprocess {
            size: 16,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let options = TrainOptions {
            epochs: 10,
            batch_size: 8,
            learning_rate: 3e-3,
            max_grad_norm: None,
            ..Default::default()
        };
        let device = Default::default();
        let train = || {
            train_classifier::<burn::backend::Autodiff<CpuBackend>>(
                &checkpoint,
                &refs,
                &labels,
                &preprocess,
                &options,
                &device,
                |_| {},
            )
            .unwrap()
        };
        let (trained, report) = train();
        assert_eq!(report.steps, 20);
        let acc = |c: &Checkpoint| {
            let logits = predict::<CpuBackend>(c, &refs, &preprocess, 5, &device, |_| {}).unwrap();
            let outputs: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            crate::evaluate::metrics(&logits, &outputs)
                .accuracy
                .unwrap()
        };
        assert_eq!(acc(&trained), 1.0, "losses {:?}", report.step_losses);
        let (again, _) = train();
        for (name, t) in &trained.tensors {
            assert!(
                t.bit_eq(&again.tensors[name]),
                "{name} differs between two seeded runs"
            );
        }
        assert!(train_classifier::<burn::backend::Autodiff<CpuBackend>>(
            &checkpoint,
            &refs,
            &[5; 16],
            &preprocess,
            &options,
            &device,
            |_| {},
        )
        .is_err());
    }
}
