//! `raffm-vision`: the vision family on image data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::device::DeviceChoice;
use raffm::families::vit::model::VitModel;
use raffm::image::RgbImage;
use raffm::io::{sha256_file, write_file_atomic, StagingDir};
use raffm::partition::{partition_labels, Scheme};
use raffm::rng::SplitMix64;
use raffm::train::TrainOptions;
use raffm::vision::probe::{cls_features, knn_accuracy};
use raffm::vision::train as vision_train;
use raffm::vision::{cifar10_bigbench, image_folder, LabeledImages, Preprocess};
use raffm::{with_backend, Checkpoint};

/// The vision transformers (HF ViT and DINOv2 folders, e.g. from raffm-import-onnx) on
/// image data.
///
///   probe    k-nearest-neighbour accuracy of the backbone's CLS features
///   train    fine-tune a classifier (a backbone gets a fresh head) on a client's images
///   eval     a classifier's accuracy on the held-out images
///
/// Data: --cifar10 (BIG-bench's cifar10_classification/base64/task.json, `make
/// assets-cifar10`) or --image-folder (root/<class>/<image>.png|jpg).
#[derive(Parser, Debug)]
#[command(name = "raffm-vision", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Probe(ProbeCmd),
    Train(TrainCmd),
    Eval(EvalCmd),
}

/// Where the images come from and which of them: a seeded validation split, and of the
/// rest a client's share (k-shot per class, or every N-th).
#[derive(ClapArgs, Debug)]
struct DataArgs {
    /// BIG-bench's CIFAR-10 task.json.
    #[arg(long, conflicts_with = "image_folder")]
    cifar10: Option<PathBuf>,
    /// A folder of images per class.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// Share of the images held out for validation (seeded by --split-seed).
    #[arg(long, default_value_t = 0.28)]
    validation_fraction: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Input side in pixels (the position embeddings are interpolated to it).
    #[arg(long, default_value_t = 112)]
    size: u32,
}

impl DataArgs {
    fn load(&self) -> anyhow::Result<(LabeledImages, PathBuf)> {
        match (&self.cifar10, &self.image_folder) {
            (Some(p), None) => Ok((cifar10_bigbench(p, 32)?, p.clone())),
            (None, Some(p)) => Ok((image_folder(p)?, p.clone())),
            _ => bail!("give --cifar10 or --image-folder"),
        }
    }

    /// (training ids, validation ids), seeded and stratified: every class holds out the
    /// same share, so k-shot clients find the same number of images in each class.
    fn split(&self, labels: &[usize]) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
        if !(0.0..1.0).contains(&self.validation_fraction) {
            bail!(
                "--validation-fraction must be in [0, 1), got {}",
                self.validation_fraction
            );
        }
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut rng = SplitMix64::derive(self.split_seed, "vision-split");
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for class in 0..classes {
            let mut ids: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
            rng.shuffle(&mut ids);
            let held = (ids.len() as f64 * self.validation_fraction).round() as usize;
            validation.extend_from_slice(&ids[..held]);
            train.extend_from_slice(&ids[held..]);
        }
        // Validation in a seeded order across classes, so --limit takes a fair sample.
        rng.shuffle(&mut validation);
        train.sort_unstable();
        Ok((train, validation))
    }
}

/// Fine-tunes every weight of a classifier on one client's images. A model without a
/// classification head gets a fresh one for the data's classes.
#[derive(ClapArgs, Debug)]
struct TrainCmd {
    #[arg(short, long)]
    model: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// This client's k images per class (`--client I --clients N --kshot K`); without it
    /// the client takes every N-th training image from the I-th.
    #[arg(long)]
    kshot: Option<usize>,
    #[arg(long, default_value_t = 0)]
    client: usize,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(short, long)]
    quiet: bool,
}

/// A classifier's accuracy on the validation images (or the first --limit of them).
#[derive(ClapArgs, Debug)]
struct EvalCmd {
    #[arg(short, long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Also write the result (with the inputs' hashes) here.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

fn train(cmd: TrainCmd) -> anyhow::Result<()> {
    raffm::io::check_output_apart(("--output", &cmd.output), &[("--model", &cmd.model)])?;
    if cmd.clients == 0 || cmd.client >= cmd.clients {
        bail!(
            "--client {} must be below --clients {}",
            cmd.client,
            cmd.clients
        );
    }
    let (data, path) = cmd.data.load()?;
    let (train_ids, _) = cmd.data.split(&data.labels)?;
    let mine: Vec<usize> = match cmd.kshot {
        Some(k) => {
            let shards = partition_labels(
                &data.labels,
                data.classes.len(),
                &train_ids,
                cmd.clients,
                Scheme::Kshot { k },
                cmd.data.split_seed,
            )?;
            shards[cmd.client].examples.clone()
        }
        None => train_ids
            .iter()
            .skip(cmd.client)
            .step_by(cmd.clients)
            .copied()
            .collect(),
    };
    let mut checkpoint = Checkpoint::load(&cmd.model)?;
    if checkpoint.config.vit().is_none() {
        bail!(
            "{}: a ViT or DINOv2 model was expected",
            cmd.model.display()
        );
    }
    if !checkpoint.config.has_classifier() {
        checkpoint = checkpoint.with_classification_head(&data.classes, cmd.seed);
    } else if checkpoint.config.label_names() != data.classes {
        bail!(
            "{}: the model's labels {:?} are not the data's {:?}",
            cmd.model.display(),
            checkpoint.config.label_names(),
            data.classes
        );
    }
    let preprocess = Preprocess::from_model_dir(&cmd.model, cmd.data.size)?;
    let options = TrainOptions {
        epochs: cmd.epochs,
        batch_size: cmd.batch_size,
        learning_rate: cmd.lr,
        warmup_ratio: cmd.warmup_ratio,
        weight_decay: cmd.weight_decay,
        max_grad_norm: None,
        prox_mu: 0.0,
        freeze_embeddings: false,
        max_steps: cmd.max_steps,
        seed: cmd.seed,
    };
    let images: Vec<&RgbImage> = mine.iter().map(|&i| &data.images[i]).collect();
    let labels: Vec<usize> = mine.iter().map(|&i| data.labels[i]).collect();
    let steps = (images.len().div_ceil(cmd.batch_size) * cmd.epochs)
        .min(cmd.max_steps.unwrap_or(usize::MAX));
    let bar = if cmd.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "training {bar:40} {pos}/{len} steps {msg} {elapsed}",
    )?);
    let mut staging = StagingDir::new(&cmd.output)?;
    let (trained, report) = with_backend!(cmd.device, B, device, {
        vision_train::train_classifier::<B>(
            &checkpoint,
            &images,
            &labels,
            &preprocess,
            &options,
            &device,
            |s| {
                bar.set_position(s.index as u64 + 1);
                bar.set_message(format!("loss {:.4}", s.loss));
            },
        )?
    });
    bar.finish_and_clear();
    trained.write_into(&mut staging)?;
    let preprocessor = cmd.model.join("preprocessor_config.json");
    if preprocessor.is_file() {
        staging.write("preprocessor_config.json", &std::fs::read(&preprocessor)?)?;
    }
    let manifest = json!({
        "stage": "raffm-vision train",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "model": cmd.model,
        "model_sha256": checkpoint.weights_sha256(),
        "data": path,
        "data_sha256": if path.is_file() { Some(sha256_file(&path)?.sha256) } else { None },
        "client": format!("{}/{}", cmd.client, cmd.clients),
        "kshot": cmd.kshot,
        "examples": images.len(),
        "options": options,
        "size": cmd.data.size,
        "peak_rss_bytes": raffm::sys::peak_rss_bytes(),
        "report": report,
    });
    staging.write(
        "train.json",
        format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes(),
    )?;
    staging.commit()?;
    println!(
        "{}",
        json!({"steps": report.steps, "examples": images.len(), "final_loss": report.step_losses.last(),
               "images_per_second": report.examples_per_second, "seconds": report.wall_seconds})
    );
    Ok(())
}

fn eval(cmd: EvalCmd) -> anyhow::Result<()> {
    let (data, path) = cmd.data.load()?;
    let (_, mut validation) = cmd.data.split(&data.labels)?;
    if let Some(limit) = cmd.limit {
        validation.truncate(limit);
    }
    if validation.is_empty() {
        bail!("no validation images: raise --validation-fraction");
    }
    let checkpoint = Checkpoint::load(&cmd.model)?;
    if checkpoint.config.vit().is_none() || !checkpoint.config.has_classifier() {
        bail!(
            "{}: a ViT or DINOv2 classifier was expected (train one with `raffm-vision train`)",
            cmd.model.display()
        );
    }
    let preprocess = Preprocess::from_model_dir(&cmd.model, cmd.data.size)?;
    let images: Vec<&RgbImage> = validation.iter().map(|&i| &data.images[i]).collect();
    let labels: Vec<usize> = validation.iter().map(|&i| data.labels[i]).collect();
    let start = std::time::Instant::now();
    let accuracy = with_backend!(cmd.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        vision_train::accuracy::<Inner>(
            &checkpoint,
            &images,
            &labels,
            &preprocess,
            cmd.batch_size,
            &device,
        )?
    });
    let result = json!({"accuracy": accuracy, "examples": images.len(), "seconds": start.elapsed().as_secs_f64()});
    if let Some(out) = &cmd.output {
        let mut record = result.clone();
        record["model"] = json!(cmd.model);
        record["model_sha256"] = json!(checkpoint.weights_sha256());
        record["data"] = json!(path);
        write_file_atomic(
            out,
            format!("{}\n", serde_json::to_string_pretty(&record)?).as_bytes(),
        )?;
    }
    println!("{result}");
    Ok(())
}

/// Classifies seeded held-out images by the majority of their k nearest training images
/// in the backbone's CLS feature space (cosine similarity). Prints the accuracy as JSON.
#[derive(ClapArgs, Debug)]
struct ProbeCmd {
    /// The model folder.
    #[arg(short, long)]
    model: PathBuf,
    /// BIG-bench's CIFAR-10 task.json.
    #[arg(long, conflicts_with = "image_folder")]
    cifar10: Option<PathBuf>,
    /// A folder of images per class.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// Input side in pixels (the position embeddings are interpolated to it).
    #[arg(long, default_value_t = 112)]
    size: u32,
    /// Training (reference) images, drawn with the seed.
    #[arg(long, default_value_t = 1000)]
    train: usize,
    /// Test images, drawn with the seed from the rest.
    #[arg(long, default_value_t = 1000)]
    test: usize,
    #[arg(long, default_value_t = 20)]
    k: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Also write the result (with the inputs' hashes) here.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

fn probe(cmd: ProbeCmd) -> anyhow::Result<()> {
    if cmd.k == 0 || cmd.train == 0 || cmd.test == 0 || cmd.batch_size == 0 || cmd.size == 0 {
        bail!("--k, --train, --test, --batch-size and --size must be positive");
    }
    let (data, path): (LabeledImages, &PathBuf) = match (&cmd.cifar10, &cmd.image_folder) {
        (Some(p), None) => (cifar10_bigbench(p, 32)?, p),
        (None, Some(p)) => (image_folder(p)?, p),
        _ => bail!("give --cifar10 or --image-folder"),
    };
    let n = data.images.len();
    if cmd.train + cmd.test > n {
        bail!(
            "--train {} and --test {} need {} images; {} has {n}",
            cmd.train,
            cmd.test,
            cmd.train + cmd.test,
            path.display()
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::derive(cmd.seed, "probe").shuffle(&mut order);
    let (train, test) = (&order[..cmd.train], &order[cmd.train..cmd.train + cmd.test]);
    let checkpoint = Checkpoint::load(&cmd.model)?;
    let preprocess = Preprocess::from_model_dir(&cmd.model, cmd.size)?;
    let bar = if cmd.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((cmd.train + cmd.test) as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{msg} {bar:40} {pos}/{len} images {elapsed}",
    )?);
    bar.set_message("features");
    let start = std::time::Instant::now();
    let (train_features, test_features) = with_backend!(cmd.device, B, device, {
        // Features need no gradients: the inner backend.
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let model = VitModel::<Inner>::from_checkpoint(&checkpoint, &device)?;
        let images = |ids: &[usize]| ids.iter().map(|&i| &data.images[i]).collect::<Vec<_>>();
        let a = cls_features(
            &model,
            &images(train),
            &preprocess,
            cmd.batch_size,
            &device,
            |d| bar.set_position(d as u64),
        );
        let b = cls_features(
            &model,
            &images(test),
            &preprocess,
            cmd.batch_size,
            &device,
            |d| bar.set_position((cmd.train + d) as u64),
        );
        (a, b)
    });
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let labels = |ids: &[usize]| ids.iter().map(|&i| data.labels[i]).collect::<Vec<_>>();
    let accuracy = knn_accuracy(
        &train_features,
        &labels(train),
        &test_features,
        &labels(test),
        cmd.k,
    );
    let result = json!({
        "accuracy": accuracy,
        "k": cmd.k,
        "train": cmd.train,
        "test": cmd.test,
        "size": cmd.size,
        "classes": data.classes,
        "feature_seconds": seconds,
        "images_per_second": (cmd.train + cmd.test) as f64 / seconds,
    });
    if let Some(out) = &cmd.output {
        let mut record = result.clone();
        record["model"] = json!(cmd.model);
        record["model_sha256"] = json!(checkpoint.weights_sha256());
        record["data"] = json!(path);
        // A folder of images has no single hash.
        let hash = if path.is_file() {
            Some(sha256_file(path)?.sha256)
        } else {
            None
        };
        record["data_sha256"] = json!(hash);
        write_file_atomic(
            out,
            format!("{}\n", serde_json::to_string_pretty(&record)?).as_bytes(),
        )?;
    }
    println!("{result}");
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe(c) => probe(c),
        Command::Train(c) => train(c),
        Command::Eval(c) => eval(c),
    };
    raffm::cli::exit_code("raffm-vision", result)
}
