//! `raffm-vision`: quick checks of a vision backbone on image data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::core::device::DeviceChoice;
use raffm::core::io::{sha256_data, write_file_atomic};
use raffm::core::rng::SplitMix64;
use raffm::data::partition::Partition;
use raffm::data::spread_subset;
use raffm::models::families::vit::model::VitModel;
use raffm::models::vision::probe::{cls_features, knn_accuracy};
use raffm::models::vision::{cifar10_bigbench, image_folder, LabeledImages, Preprocess};
use raffm::{with_backend, Checkpoint};

/// Quick checks of a vision transformer (an HF ViT or DINOv2 folder, e.g. from
/// raffm-import-onnx) on image data, before any training.
///
///   probe    k-nearest-neighbour accuracy of the backbone's CLS features
///
/// Data: a partition (--partition partition.json from raffm-partition: its training
/// examples are the references, its validation examples the queries; any image format
/// raffm-partition reads, Fashion-MNIST's 60,000 / 10,000 say), --cifar10 (BIG-bench's
/// cifar10_classification/base64/task.json) or --image-folder (root/<class>/<image>).
///
/// Training and evaluation go through the federated stages, as for text: raffm-partition
/// (--format idx, cifar10-binary, cifar10-bigbench or image-folder), raffm-init-head
/// --image-size, raffm-local-train, raffm-evaluate; or a pipeline (`make round
/// PIPELINE=fashion-mnist-raffm`).
#[derive(Parser, Debug)]
#[command(name = "raffm-vision", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Probe(ProbeCmd),
}

/// Classifies held-out images by the majority of their k nearest training images in the
/// backbone's CLS feature space (cosine similarity). Prints the accuracy as JSON.
#[derive(ClapArgs, Debug)]
struct ProbeCmd {
    /// The model folder.
    #[arg(short, long)]
    model: PathBuf,
    /// A partition of an image dataset: references from its training examples, queries
    /// from its validation examples (all of each unless --train / --test cap them).
    #[arg(long, conflicts_with_all = ["cifar10", "image_folder"])]
    partition: Option<PathBuf>,
    /// BIG-bench's CIFAR-10 task.json.
    #[arg(long, conflicts_with = "image_folder")]
    cifar10: Option<PathBuf>,
    /// A folder of images per class.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// Input side in pixels (the position embeddings are interpolated to it).
    #[arg(long, default_value_t = 112)]
    size: u32,
    /// Training (reference) images, drawn with the seed [default: 1000; with --partition,
    /// all its training examples, or this many spread over them].
    #[arg(long)]
    train: Option<usize>,
    /// Test images, drawn with the seed from the rest [default: 1000; with --partition,
    /// all its validation examples, or this many spread over them].
    #[arg(long)]
    test: Option<usize>,
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

/// The probe's images: all of them, with the reference and query ids among them.
struct ProbeData {
    images: LabeledImages,
    /// What the images were read from, hashed into the record.
    source: PathBuf,
    train: Vec<usize>,
    test: Vec<usize>,
}

fn probe_data(cmd: &ProbeCmd) -> anyhow::Result<ProbeData> {
    if let Some(path) = &cmd.partition {
        let partition = Partition::load(path)?;
        let dataset = partition.dataset()?;
        if !dataset.is_images() {
            bail!("{}: its data are not images", path.display());
        }
        // Every image is kept (ids index them); the lists are capped by spreading.
        let all: Vec<usize> = (0..dataset.examples.len()).collect();
        let (images, labels) = raffm::data::images(&dataset, &all)?;
        let cap = |ids: &[usize], max: Option<usize>| spread_subset(ids, max.unwrap_or(ids.len()));
        if partition.validation.is_empty() {
            bail!("{}: no validation examples to query", path.display());
        }
        return Ok(ProbeData {
            images: LabeledImages {
                images,
                labels: labels.iter().map(|&l| l as usize).collect(),
                classes: dataset.label_names(),
            },
            source: partition.data.path.clone(),
            train: cap(&partition.train, cmd.train),
            test: cap(&partition.validation, cmd.test),
        });
    }
    let (images, path): (LabeledImages, &PathBuf) = match (&cmd.cifar10, &cmd.image_folder) {
        (Some(p), None) => (cifar10_bigbench(p, 32)?, p),
        (None, Some(p)) => (image_folder(p)?, p),
        _ => bail!("give --partition, --cifar10 or --image-folder"),
    };
    let (train, test) = (cmd.train.unwrap_or(1000), cmd.test.unwrap_or(1000));
    let n = images.images.len();
    if train + test > n {
        bail!(
            "--train {train} and --test {test} need {} images; {} has {n}",
            train + test,
            path.display()
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::derive(cmd.seed, "probe").shuffle(&mut order);
    Ok(ProbeData {
        images,
        source: path.clone(),
        train: order[..train].to_vec(),
        test: order[train..train + test].to_vec(),
    })
}

fn probe(cmd: ProbeCmd) -> anyhow::Result<()> {
    if cmd.k == 0
        || cmd.train == Some(0)
        || cmd.test == Some(0)
        || cmd.batch_size == 0
        || cmd.size == 0
    {
        bail!("--k, --train, --test, --batch-size and --size must be positive");
    }
    let ProbeData {
        images: data,
        source: path,
        train,
        test,
    } = probe_data(&cmd)?;
    let (train, test) = (&train[..], &test[..]);
    let checkpoint = Checkpoint::load(&cmd.model)?;
    let preprocess = Preprocess::from_model_dir(&cmd.model, Some(cmd.size))?;
    let bar = if cmd.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((train.len() + test.len()) as u64)
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
            |d| bar.set_position((train.len() + d) as u64),
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
        "train": train.len(),
        "test": test.len(),
        "size": cmd.size,
        "classes": data.classes,
        "feature_seconds": seconds,
        "images_per_second": (train.len() + test.len()) as f64 / seconds,
    });
    if let Some(out) = &cmd.output {
        let mut record = result.clone();
        record["model"] = json!(cmd.model);
        record["model_sha256"] = json!(checkpoint.weights_sha256());
        record["data"] = json!(path);
        record["data_sha256"] = json!(sha256_data(&path)?);
        record["partition"] = json!(cmd.partition);
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
    };
    raffm::core::cli::exit_code("raffm-vision", result)
}
