//! `raffm-evaluate`: metrics of a checkpoint on a split of a partitioned dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use raffm::adapter::{AdapterFolder, LORA_SEQ_LEN};
use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::data::Input;
use raffm::device::DeviceChoice;
use raffm::evaluate::{metrics, EvalSet};
use raffm::io::{sha256_file, write_file_atomic};
use raffm::partition::Partition;
use raffm::{with_backend, Checkpoint};

/// Evaluates a checkpoint with a classification head on a split of a partition
/// (raffm-partition): accuracy, macro-F1 and MCC for classification; Pearson, Spearman
/// and MSE for regression (a model with one output). Prints the metrics as JSON and, with
/// --output, writes them atomically with the inputs' hashes. With --predictions, writes
/// every example's id, text, label and the model's outputs (logits) as JSON lines.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-evaluate",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// Checkpoint folder.
    #[arg(short, long)]
    model: PathBuf,
    /// partition.json from raffm-partition.
    #[arg(short, long)]
    partition: PathBuf,
    /// Which examples: validation, train, or a client id.
    #[arg(long, default_value = "validation")]
    split: String,
    /// Use at most this many examples, spread evenly over the split.
    #[arg(long)]
    max_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Tokens per example, special tokens included (longer inputs are truncated; default:
    /// 64, or the model's positions if fewer).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Also write the metrics to this JSON file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write every example's outputs to this JSON-lines file.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let inputs = [
        ("--model", args.model.as_path()),
        ("--partition", args.partition.as_path()),
    ];
    for (flag, out) in [
        ("--output", &args.output),
        ("--predictions", &args.predictions),
    ] {
        if let Some(out) = out {
            raffm::io::check_output_apart((flag, out), &inputs)?;
        }
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if raffm::adapter::is_adapter(&args.model) {
        return evaluate_adapter(&args);
    }
    let checkpoint = Checkpoint::load(&args.model)?;
    let partition = Partition::load(&args.partition)?;
    let ids = split_ids(&args, &partition)?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64)
    };
    progress.set_style(ProgressStyle::with_template(
        "evaluating [{bar:30}] {pos}/{len} {elapsed}<{eta}",
    )?);
    let start = std::time::Instant::now();
    let dataset = partition.dataset()?;
    dataset.check_labels(&ids, checkpoint.config.num_labels())?;
    let max_seq_len =
        raffm::tokenizer::resolve_max_seq_len(args.max_seq_len, checkpoint.config.max_positions())?;
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
    let seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "model": args.model,
        "model_sha256": checkpoint.weights_sha256(),
        "partition": sha256_file(&args.partition)?,
        "split": args.split,
        "metrics": result,
        "seconds": seconds,
        "examples_per_second": ids.len() as f64 / seconds,
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        write_file_atomic(path, format!("{text}\n").as_bytes())?;
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// The examples of `args.split`, at most `--max-examples`, spread evenly.
fn split_ids(args: &Args, partition: &Partition) -> anyhow::Result<Vec<usize>> {
    let mut ids = match args.split.as_str() {
        "validation" => partition.validation.clone(),
        "train" => partition.train.clone(),
        client => partition
            .client(client)
            .with_context(|| {
                format!(
                    "{}: no split or client `{client}`",
                    args.partition.display()
                )
            })?
            .examples
            .clone(),
    };
    if let Some(max) = args.max_examples {
        ids = raffm::data::spread_subset(&ids, max);
    }
    if ids.is_empty() {
        bail!("no examples in split `{}`", args.split);
    }
    Ok(ids)
}

/// A LoRA adapter on its base: each example's options scored by log-likelihood.
fn evaluate_adapter(args: &Args) -> anyhow::Result<()> {
    if args.predictions.is_some() {
        bail!("--predictions: not written for an adapter");
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
    progress.set_style(ProgressStyle::with_template(
        "scoring {pos} option sequences of {msg} examples {elapsed}",
    )?);
    progress.set_message(ids.len().to_string());
    let start = std::time::Instant::now();
    let result = with_backend!(args.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        raffm::adapter::evaluate::evaluate::<Inner>(
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
    let seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "model": args.model,
        "model_sha256": folder.weights_sha256(),
        "base": folder.base,
        "partition": sha256_file(&args.partition)?,
        "split": args.split,
        "metrics": result,
        "seconds": seconds,
        "examples_per_second": ids.len() as f64 / seconds,
    });
    if let Some(path) = &args.output {
        let text = serde_json::to_string_pretty(&report)?;
        write_file_atomic(path, format!("{text}\n").as_bytes())?;
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-evaluate", run(Args::parse()))
}
