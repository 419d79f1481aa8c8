//! `raffm-local-train`: fine-tune a client's sub-model (or its LoRA adapter) on its shard
//! of the data.

use std::path::PathBuf;

use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::core::checkpoint::Checkpoint;
use crate::core::device::DeviceChoice;
use crate::core::elastic::TensorKind;
use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, StagingDir};
use crate::core::manifest::{
    Manifest, StageRecord, TrainMetrics, Trained as TrainedRecord, MANIFEST_FILE,
};
use crate::data::partition::Partition;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{tokenize, Dataset, Task};
use crate::fl::adapter::train::{train_client, AdapterTraining};
use crate::fl::adapter::LORA_SEQ_LEN;
use crate::fl::attack::Attack;
use crate::models::fused::{check_precision_device, describe_precision, set_precision, Precision};
use crate::models::train::{train_encoder, Step, TrainData, TrainOptions, TrainReport};
use crate::models::vision::train::train_classifier;
use crate::models::vision::Preprocess;
use crate::with_backend;

/// Fine-tunes a checkpoint with a classification head (a client's sub-model from
/// raffm-extract, or any model from raffm-init-head) on one client's examples of a
/// partition (raffm-partition): text with a BERT-family model, images with a ViT or
/// DINOv2 one (at the input size of its preprocessor_config.json, with seeded random crop
/// and flip). Writes the trained checkpoint plus manifest.json:
/// the input's sha256, client, examples seen, per-step loss, wall time, peak memory, and
/// bytes downloaded and uploaded. Index maps and the global checkpoint's hash in the
/// input's manifest are carried over, so raffm-aggregate can place the update.
///
/// AdamW with linear warmup and linear decay, gradient clipping by global norm, optional
/// FedProx (--mu) and frozen embeddings (text). The data order, dropout and augmentation
/// are seeded.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-local-train",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Checkpoint folder to train (with a classification head).
    #[arg(short, long)]
    pub model: PathBuf,
    /// partition.json from raffm-partition.
    #[arg(short, long)]
    pub partition: PathBuf,
    /// Client whose examples to train on.
    #[arg(short, long)]
    pub client: String,
    /// Folder to write the trained checkpoint to.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Use at most this many of the client's examples (the first ones).
    #[arg(long)]
    pub max_examples: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples per step [default: 32; 8 for an adapter].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per example, special tokens included (longer inputs are truncated; default:
    /// 64, or the model's positions if fewer; 256 for an adapter).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Peak learning rate [default: 5e-5; 2e-4 for an adapter].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fraction of the steps spent warming up (linear), then linear decay to zero
    /// [default: 0.1; 0 for an adapter].
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// AdamW decoupled weight decay [default: 0.01; 0 for an adapter].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global L2 norm (0: no clipping) [default: 1; none for an
    /// adapter].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// FedProx proximal coefficient (0: FedAvg).
    #[arg(long, default_value_t = 0.0)]
    pub mu: f64,
    /// Keep the embeddings fixed; they are then not uploaded either.
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The linear layers' products: fp32, bf16 operands with fp32 accumulation (as
    /// PyTorch's bf16 autocast; on AMX or AVX512-BF16 where the CPU has them, emulated
    /// otherwise), or auto: bf16 where the CPU has AMX, fp32 elsewhere (bf16 trains as
    /// well as fp32 there, several times faster; see docs/results.md). Weights,
    /// gradients, optimizer state and checkpoints stay fp32; manifest.json records the
    /// precision that ran.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// Make this client malicious, for robustness experiments and tests only: scale:F sends
    /// the model it started from plus F times its update, flip sends the update negated.
    /// Recorded in manifest.json.
    #[arg(long)]
    pub attack: Option<String>,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the stage: writes `args.output` and returns its manifest's record.
pub fn run(args: &Args) -> Result<StageRecord> {
    let attack: Option<Attack> = args.attack.as_deref().map(str::parse).transpose()?;
    // A bf16 engine the CPU or the backend lacks is refused before anything is read.
    let precision = args.precision.resolve(&args.device)?;
    check_precision_device(precision, &args.device)?;
    set_precision(precision)?;
    crate::core::io::check_output_apart(
        ("--output", &args.output),
        &[("--model", &args.model), ("--partition", &args.partition)],
    )?;
    if crate::fl::adapter::is_adapter(&args.model) {
        return train_adapter(args, attack, precision);
    }
    // Taken before training, not after: a second writer of the same output is refused at
    // once instead of training for minutes and then replacing this one's result.
    let mut staging = StagingDir::new(&args.output)?;
    let checkpoint = Checkpoint::load(&args.model)?;
    let extracted = extraction_manifest(args)?;
    let partition = Partition::load(&args.partition)?;
    let (dataset, ids) = client_examples(args, &partition, &checkpoint)?;
    let options = train_options(args, false, precision);

    let progress = step_progress(args);
    let started = std::time::Instant::now();
    let on_step = |step: Step| {
        progress.set_length(step.total as u64);
        let rate = step.examples_seen as f64 / started.elapsed().as_secs_f64();
        progress.set_message(format!("loss {:.4}  {rate:.1} ex/s", step.loss));
        progress.inc(1);
    };
    let mut trained = train(args, &checkpoint, &dataset, &ids, &options, on_step)?;
    progress.finish_and_clear();
    if let Some(attack) = attack {
        attack.apply(&checkpoint, &mut trained.checkpoint)?;
    }

    let mut manifest = trained_manifest(
        args,
        &options,
        attack,
        &checkpoint,
        &trained,
        ids.len(),
        extracted,
    )?;
    trained.checkpoint.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    let record = manifest.record;
    if !args.quiet {
        let report = &trained.report;
        eprintln!(
            "{}: {} steps on {} examples in {:.1} s, loss {:.4} -> {:.4}, {:.1} ex/s, {} -> {}",
            args.client,
            report.steps,
            ids.len(),
            report.wall_seconds,
            report.step_losses.first().copied().unwrap_or(f32::NAN),
            report.step_losses.last().copied().unwrap_or(f32::NAN),
            report.examples_per_second,
            describe_precision(precision),
            args.output.display()
        );
    }
    Ok(record)
}

/// The manifest.json of --model if it has one (raffm-extract's, for a client's
/// sub-model). Fails when that sub-model was extracted for another client.
fn extraction_manifest(args: &Args) -> Result<Option<Manifest>> {
    let manifest_path = args.model.join(MANIFEST_FILE);
    let extracted = match manifest_path.is_file() {
        true => Some(Manifest::load(&manifest_path)?),
        false => None,
    };
    if let Some(p) = extracted.as_ref().and_then(|m| m.placement.as_ref()) {
        if p.client != args.client {
            return Err(Error::format(
                &manifest_path,
                format!(
                    "the sub-model was extracted for client {}, not {}",
                    p.client, args.client
                ),
            ));
        }
    }
    Ok(extracted)
}

/// The partition's dataset and the ids of the client's examples to train on (the first
/// --max-examples). Fails when there are none or a label does not fit the model's head.
fn client_examples(
    args: &Args,
    partition: &Partition,
    checkpoint: &Checkpoint,
) -> Result<(Dataset, Vec<usize>)> {
    let shard = partition
        .client(&args.client)
        .ok_or_else(|| Error::format(&args.partition, format!("no client `{}`", args.client)))?;
    let dataset = partition.dataset()?;
    let mut ids = shard.examples.clone();
    if let Some(max) = args.max_examples {
        ids.truncate(max);
    }
    if ids.is_empty() {
        return Err(Error::Invalid(format!(
            "client {} has no examples in {}",
            args.client,
            args.partition.display()
        )));
    }
    dataset.check_labels(&ids, checkpoint.config.num_labels())?;
    Ok((dataset, ids))
}

/// A progress bar of training steps, named by the client (hidden with --quiet).
fn step_progress(args: &Args) -> ProgressBar {
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {elapsed}<{eta} {msg}")
            .expect("valid template"),
    );
    progress.set_prefix(args.client.clone());
    progress
}

/// The optimizer and schedule options as given on the command line, else the defaults of
/// a whole model or (`adapter`) of LoRA.
fn train_options(args: &Args, adapter: bool, precision: Precision) -> TrainOptions {
    let (batch_size, lr, warmup_ratio, weight_decay, max_grad_norm) = match adapter {
        false => (32, 5e-5, 0.1, 0.01, 1.0),
        true => (8, 2e-4, 0.0, 0.0, 0.0),
    };
    let max_grad_norm = args.max_grad_norm.unwrap_or(max_grad_norm);
    TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size.unwrap_or(batch_size),
        learning_rate: args.lr.unwrap_or(lr),
        warmup_ratio: args.warmup_ratio.unwrap_or(warmup_ratio),
        weight_decay: args.weight_decay.unwrap_or(weight_decay),
        max_grad_norm: (max_grad_norm != 0.0).then_some(max_grad_norm),
        prox_mu: args.mu,
        freeze_embeddings: args.freeze_embeddings,
        max_steps: args.max_steps,
        seed: args.seed,
        precision,
    }
}

/// A trained checkpoint and how its training went.
struct Trained {
    checkpoint: Checkpoint,
    report: TrainReport,
    /// Tokens per example the text was cut to (`None` for images).
    max_seq_len: Option<usize>,
}

/// Trains `checkpoint` on the examples `ids` of `dataset` on --device, calling `on_step`
/// after every optimizer step.
fn train(
    args: &Args,
    checkpoint: &Checkpoint,
    dataset: &Dataset,
    ids: &[usize],
    options: &TrainOptions,
    on_step: impl FnMut(Step),
) -> Result<Trained> {
    // Images train the vision classifier at the input size of the model's preprocessor;
    // text is tokenized with the model's tokenizer.
    let mut max_seq_len = None;
    let (trained, report) = if dataset.is_images() {
        let preprocess = Preprocess::from_model_dir(&args.model, None)?;
        let (images, labels) = crate::data::images(dataset, ids)?;
        let images: Vec<&RgbImage> = images.iter().collect();
        let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        with_backend!(
            args.device,
            B,
            device,
            train_classifier::<B>(
                checkpoint,
                &images,
                &labels,
                &preprocess,
                options,
                &device,
                on_step
            )?
        )
    } else {
        let tokenizer = TextTokenizer::from_dir(&args.model)?;
        let len = crate::data::tokenizer::resolve_max_seq_len(
            args.max_seq_len,
            checkpoint.config.max_positions(),
        )?;
        max_seq_len = Some(len);
        let (rows, labels) = tokenize(dataset, ids, &tokenizer, len)?;
        let data = TrainData {
            rows: &rows,
            labels: &labels,
            pad_id: checkpoint.config.pad_token_id() as i64,
            regression: dataset.task == Task::Regression,
        };
        with_backend!(
            args.device,
            B,
            device,
            train_encoder::<B>(checkpoint, &data, options, &device, on_step)?
        )
    };
    Ok(Trained {
        checkpoint: trained,
        report,
        max_seq_len,
    })
}

/// The manifest.json of the trained checkpoint: what it was trained from and how, its
/// metrics, and the placement carried over from `extracted`.
fn trained_manifest(
    args: &Args,
    options: &TrainOptions,
    attack: Option<Attack>,
    input: &Checkpoint,
    trained: &Trained,
    num_examples: usize,
    extracted: Option<Manifest>,
) -> Result<Manifest> {
    let report = &trained.report;
    let embedding_bytes: u64 = trained
        .checkpoint
        .config
        .tensors()
        .iter()
        .filter(|t| t.kind == TensorKind::Embedding)
        .map(|t| 4 * trained.checkpoint.tensor(&t.name).numel() as u64)
        .sum();
    let uploaded = trained.checkpoint.bytes_on_wire()
        - if args.freeze_embeddings {
            embedding_bytes
        } else {
            0
        };
    let metrics = TrainMetrics {
        examples_seen: report.examples_seen as u64,
        steps: report.steps as u64,
        epochs: Some(report.epochs as u64),
        final_loss: report.step_losses.last().copied(),
        wall_seconds: report.wall_seconds,
        examples_per_second: report.examples_per_second,
        answer_tokens: None,
        peak_rss_bytes: crate::core::sys::peak_rss_bytes(),
        bytes_downloaded: input.bytes_on_wire(),
        bytes_uploaded: uploaded,
        step_losses: report.step_losses.clone(),
    };
    let record = TrainedRecord {
        client: args.client.clone(),
        metrics,
        attack,
    };
    let mut manifest = Manifest::new(
        StageRecord::LocalTrain(record),
        "raffm-local-train",
        json!({
            "model": args.model, "partition": args.partition, "client": args.client, "output": args.output,
            "max_examples": args.max_examples, "max_seq_len": trained.max_seq_len, "device": args.device.to_string(),
            "options": options, "attack": attack,
        }),
    );
    manifest.seeds.insert("seed".into(), json!(args.seed));
    manifest.inputs = input.files.clone();
    manifest.inputs.push(sha256_file(&args.partition)?);
    manifest.architecture = Some(trained.checkpoint.config.widths());
    manifest.parameter_count = Some(trained.checkpoint.parameter_count());
    manifest.bytes_on_wire = Some(trained.checkpoint.bytes_on_wire());
    manifest.num_examples = Some(num_examples as u64);
    // Where the update belongs: carried over from raffm-extract's manifest.
    manifest.placement = extracted.and_then(|m| m.placement);
    Ok(manifest)
}

/// A client's LoRA adapter (from raffm-extract in a LoRA round) on its frozen base.
fn train_adapter(args: &Args, attack: Option<Attack>, precision: Precision) -> Result<StageRecord> {
    if attack.is_some() || args.mu != 0.0 || args.freeze_embeddings {
        return Err(Error::Invalid(
            "--attack, --mu and --freeze-embeddings do not apply to an adapter".into(),
        ));
    }
    // Clients of a round get one --seed; each draws its own dropout masks and order.
    let mut options = train_options(args, true, precision);
    options.seed = crate::core::rng::SplitMix64::derive(args.seed, &args.client).next_u64();
    let partition = Partition::load(&args.partition)?;
    let job = AdapterTraining {
        dir: &args.model,
        partition: &partition,
        partition_path: &args.partition,
        client: &args.client,
        options: options.clone(),
        max_seq_len: args.max_seq_len.unwrap_or(LORA_SEQ_LEN),
        max_examples: args.max_examples,
        parameters: json!({
            "model": args.model, "partition": args.partition, "client": args.client, "output": args.output,
            "max_examples": args.max_examples, "max_seq_len": args.max_seq_len, "device": args.device.to_string(),
            "options": options,
        }),
    };
    let progress = step_progress(args);
    let loss = with_backend!(args.device, B, device, {
        train_client::<B>(&job, &args.output, &device, |step: Step| {
            progress.set_length(step.total as u64);
            progress.set_message(format!("loss {:.4}", step.loss));
            progress.inc(1);
        })?
    });
    progress.finish_and_clear();
    if !args.quiet {
        eprintln!(
            "{}: final loss {loss:.4}, {} -> {}",
            args.client,
            describe_precision(precision),
            args.output.display()
        );
    }
    Ok(Manifest::load(&args.output.join(MANIFEST_FILE))?.record)
}
