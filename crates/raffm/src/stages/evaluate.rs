//! `raffm-evaluate`: metrics of a checkpoint on a split of a partitioned dataset.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::core::checkpoint::Checkpoint;
use crate::core::device::DeviceChoice;
use crate::core::error::{Error, Result};
use crate::core::io::{check_output_apart, sha256_file, write_file_atomic};
use crate::data::partition::Partition;
use crate::data::Input;
use crate::fl::adapter::{AdapterFolder, LORA_SEQ_LEN};
use crate::models::evaluate::{metrics, EvalSet, Metrics};
use crate::models::fused::{check_precision_device, set_precision, Precision};
use crate::with_backend;

/// Evaluates a checkpoint with a classification head on a split of a partition
/// (raffm-partition): accuracy, macro-F1 and MCC for classification; Pearson, Spearman
/// and MSE for regression (a model with one output). Prints the metrics as JSON and, with
/// --output, writes them atomically with the inputs' hashes. With --predictions, writes
/// every example's id, text, label and the model's outputs (logits) as JSON lines.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-evaluate",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(short, long)]
    pub model: PathBuf,
    /// partition.json from raffm-partition.
    #[arg(short, long)]
    pub partition: PathBuf,
    /// Which examples: validation, train, or a client id.
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Use at most this many examples, spread evenly over the split.
    #[arg(long)]
    pub max_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Tokens per example, special tokens included (longer inputs are truncated; default:
    /// 64, or the model's positions if fewer).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The linear layers' products: fp32, bf16 operands with fp32 accumulation, or auto
    /// (bf16 where the CPU has AMX, fp32 elsewhere). fp32 by default, so that every
    /// host scores a model alike; the report records the precision that ran.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Also write the metrics to this JSON file.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write every example's outputs to this JSON-lines file.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    #[arg(short, long)]
    pub quiet: bool,
}

/// Scores the model on the split, writes what was asked for, and returns the metrics.
pub fn run(args: &Args) -> Result<Metrics> {
    let inputs = [
        ("--model", args.model.as_path()),
        ("--partition", args.partition.as_path()),
    ];
    for (flag, out) in [
        ("--output", &args.output),
        ("--predictions", &args.predictions),
    ] {
        if let Some(out) = out {
            check_output_apart((flag, out), &inputs)?;
        }
    }
    if args.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be at least 1".into()));
    }
    let precision = args.precision.resolve(&args.device)?;
    check_precision_device(precision, &args.device)?;
    set_precision(precision)?;
    if crate::fl::adapter::is_adapter(&args.model) {
        return evaluate_adapter(args);
    }
    let checkpoint = Checkpoint::load(&args.model)?;
    let partition = Partition::load(&args.partition)?;
    let ids = split_ids(args, &partition)?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("evaluating [{bar:30}] {pos}/{len} {elapsed}<{eta}")
            .expect("valid template"),
    );
    let start = std::time::Instant::now();
    let dataset = partition.dataset()?;
    dataset.check_labels(&ids, checkpoint.config.num_labels())?;
    let max_seq_len = crate::data::tokenizer::resolve_max_seq_len(
        args.max_seq_len,
        checkpoint.config.max_positions(),
    )?;
    let examples = EvalSet::of(&args.model, &dataset, &ids, max_seq_len)?;
    let outputs = with_backend!(args.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        examples.predict::<Inner>(&checkpoint, args.batch_size, &device, |n| {
            progress.inc(n as u64)
        })?
    });
    let result = metrics(&outputs, &examples.labels);
    progress.finish_and_clear();
    if let Some(path) = &args.predictions {
        let mut lines = String::new();
        for ((id, output), label) in ids.iter().zip(&outputs).zip(&examples.labels) {
            let input = match &dataset.get(*id).expect("tokenized, so present").input {
                Input::Text(t) => json!({"text": t}),
                Input::Pair(a, b) => json!({"text": a, "text_pair": b}),
                Input::Image(_) => json!({}),
            };
            let mut line = json!({"example": id, "label": label, "logits": output});
            line.as_object_mut()
                .expect("an object")
                .extend(input.as_object().expect("an object").clone());
            lines += &format!("{line}\n");
        }
        write_file_atomic(path, lines.as_bytes())?;
    }
    let identity = json!({"model_sha256": checkpoint.weights_sha256()});
    finish(args, identity, result, ids.len(), start)
}

/// The examples of `args.split`, at most `--max-examples`, spread evenly.
fn split_ids(args: &Args, partition: &Partition) -> Result<Vec<usize>> {
    let mut ids = match args.split.as_str() {
        "validation" => partition.validation.clone(),
        "train" => partition.train.clone(),
        client => partition
            .client(client)
            .ok_or_else(|| {
                Error::format(&args.partition, format!("no split or client `{client}`"))
            })?
            .examples
            .clone(),
    };
    if let Some(max) = args.max_examples {
        ids = crate::data::spread_subset(&ids, max);
    }
    if ids.is_empty() {
        return Err(Error::Invalid(format!(
            "no examples in split `{}`",
            args.split
        )));
    }
    Ok(ids)
}

/// A LoRA adapter on its base: each example's options scored by log-likelihood.
fn evaluate_adapter(args: &Args) -> Result<Metrics> {
    if args.predictions.is_some() {
        return Err(Error::Invalid(
            "--predictions: not written for an adapter".into(),
        ));
    }
    let folder = AdapterFolder::load(&args.model)?;
    let partition = Partition::load(&args.partition)?;
    let ids = split_ids(args, &partition)?;
    let base = folder.base.load()?;
    let max_seq_len = args.max_seq_len.unwrap_or(LORA_SEQ_LEN);
    // The bar counts option sequences, which are known once the examples are encoded.
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::no_length()
    };
    progress.set_style(
        ProgressStyle::with_template("scoring {pos} option sequences of {msg} examples {elapsed}")
            .expect("valid template"),
    );
    progress.set_message(ids.len().to_string());
    let start = std::time::Instant::now();
    let result = with_backend!(args.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        crate::fl::adapter::evaluate::evaluate::<Inner>(
            &base,
            &folder.adapter,
            &partition,
            &ids,
            max_seq_len,
            args.batch_size,
            &device,
            |n| progress.set_position(n as u64),
        )?
    });
    progress.finish_and_clear();
    let identity = json!({"model_sha256": folder.weights_sha256(), "base": folder.base});
    finish(args, identity, result, ids.len(), start)
}

/// Writes `--output` (the metrics, what was scored with its hashes, and the speed), prints
/// the metrics, and returns them. `identity` names the model scored.
fn finish(
    args: &Args,
    identity: serde_json::Value,
    result: Metrics,
    examples: usize,
    start: std::time::Instant,
) -> Result<Metrics> {
    let seconds = start.elapsed().as_secs_f64();
    let mut report = json!({
        "model": args.model,
        "partition": sha256_file(&args.partition)?,
        "split": args.split,
        "precision": args.precision.resolve(&args.device)?,
        "metrics": result,
        "seconds": seconds,
        "examples_per_second": examples as f64 / seconds,
    });
    let fields = report.as_object_mut().expect("an object");
    fields.extend(identity.as_object().expect("an object").clone());
    if let Some(path) = &args.output {
        let text = serde_json::to_string_pretty(&report).expect("JSON serializes");
        write_file_atomic(path, format!("{text}\n").as_bytes())?;
    }
    println!(
        "{}",
        serde_json::to_string(&result).expect("metrics serialize")
    );
    Ok(result)
}
