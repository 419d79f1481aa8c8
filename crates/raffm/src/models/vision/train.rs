//! Local training and evaluation of an image classifier (the vision family with its head):
//! cross-entropy over the labels, the encoders' AdamW with their warmup and decay,
//! gradient clipping and FedProx ([`crate::models::train::TrainOptions`]), seeded crop-and-flip
//! augmentation per epoch.

use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;

use super::data::Preprocess;
use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::models::families::vit::model::VitForImageClassification;
use crate::models::fit::{fit, TrainTask};
use crate::models::fused::FusedOps;
use crate::models::train::{Step, TrainOptions, TrainReport};

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
    on_step: impl FnMut(Step),
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
    let model = VitForImageClassification::<B>::from_checkpoint(checkpoint, device)?;
    let mut task = ImageTask {
        images,
        labels,
        preprocess,
        ce: CrossEntropyLossConfig::new().init(device),
        device: device.clone(),
    };
    let (model, report) = fit(model, &mut task, options, device, on_step)?;
    Ok((model.valid().to_checkpoint(checkpoint), report))
}

/// Image classification with seeded crop-and-flip augmentation.
struct ImageTask<'a, B: Backend> {
    images: &'a [&'a RgbImage],
    labels: &'a [usize],
    preprocess: &'a Preprocess,
    ce: CrossEntropyLoss<B>,
    device: B::Device,
}

impl<B: AutodiffBackend + FusedOps> TrainTask<B> for ImageTask<'_, B>
where
    B::InnerBackend: FusedOps,
{
    type Model = VitForImageClassification<B>;
    const STREAM: &'static str = "vision-train";

    fn examples(&self) -> usize {
        self.images.len()
    }

    fn loss(&mut self, model: &Self::Model, batch: &[usize], rng: &mut SplitMix64) -> Tensor<B, 1> {
        let images: Vec<&RgbImage> = batch.iter().map(|&i| self.images[i]).collect();
        let x = batch_tensor::<B>(self.preprocess, &images, Some(rng), &self.device); // [batch, 3, size, size]
        let y: Vec<i64> = batch.iter().map(|&i| self.labels[i] as i64).collect();
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [batch.len()]), &self.device);
        self.ce.forward(model.forward(x), y)
    }
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
    use crate::models::families::vit::{tiny_config, Variant};
    use crate::models::families::ModelConfig;
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
            let _serial = crate::models::fit::serial();
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
            crate::models::evaluate::metrics(&logits, &outputs)
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
