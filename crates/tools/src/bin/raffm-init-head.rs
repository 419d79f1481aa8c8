//! `raffm-init-head`: give a pre-trained encoder a fresh classification head.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Parser;
use serde_json::json;

use raffm::adapter::{write_adapter, BaseModel};
use raffm::checkpoint::HeadInit;
use raffm::families::llama::lora::{LoraAdapter, LoraConfig, DEFAULT_TARGETS};
use raffm::io::{sha256_file, StagingDir};
use raffm::manifest::{Manifest, StageRecord};
use raffm::partition::Partition;
use raffm::vision::data::PREPROCESSOR_FILE;
use raffm::vision::Preprocess;
use raffm::Checkpoint;

/// Adds a freshly initialised sequence-classification head (a pooler if the model has
/// none, and a classifier; N(0, 0.02) weights, or zero classifier weights with
/// --head-init zeros; zero biases; seeded) to a checkpoint, with the labels of a
/// partition or given by --labels. This is round 0 of a federated run.
///
/// A vision model (ViT, DINOv2) gets its input size here: --image-size writes its
/// preprocessor_config.json at that size (the source's mean and std kept); every later
/// stage reads it from there, and the position embeddings are interpolated to it.
///
/// A decoder (llama) gets a fresh LoRA adapter instead (--lora-*): the global model of a
/// LoRA round, whose manifest names the frozen base.
#[derive(Parser, Debug)]
#[command(name = "raffm-init-head", version, allow_negative_numbers = true)]
struct Args {
    /// Pre-trained checkpoint folder.
    #[arg(short, long)]
    model: PathBuf,
    /// Take the label names from this partition.json.
    #[arg(short, long, conflicts_with = "labels")]
    partition: Option<PathBuf>,
    /// Label names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the classifier's weights start: normal (HF's N(0, 0.02)) or zeros.
    #[arg(long, default_value = "normal")]
    head_init: HeadInit,
    /// A vision model's input side in pixels (default: its preprocessor's).
    #[arg(long)]
    image_size: Option<u32>,
    /// Folder to write.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    lora: LoraArgs,
}

/// A decoder (llama) takes a fresh LoRA adapter instead of a head: the global model of a
/// LoRA round (A drawn as PEFT draws it, seeded by --seed; B = 0).
#[derive(clap::Args, Debug)]
struct LoraArgs {
    /// The adapter's rank.
    #[arg(long, default_value_t = raffm::pipeline::DEFAULT_LORA_RANK)]
    lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Projections it adapts (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.map(String::from))]
    lora_targets: Vec<String>,
}

/// Writes the fresh adapter of `args.lora` on the decoder `checkpoint`.
fn init_adapter(args: &Args, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    let config = checkpoint.config.llama().expect("checked by the caller");
    let lora = LoraConfig::new(
        args.lora.lora_r,
        args.lora.lora_alpha,
        args.lora.lora_dropout,
        &args.lora.lora_targets,
    )?;
    let adapter = LoraAdapter::init(&lora, config, args.seed);
    let base = BaseModel::of(checkpoint, &args.model)?;
    let mut manifest = Manifest::new(
        StageRecord::InitHead {},
        "raffm-init-head",
        json!({"model": args.model, "output": args.output, "lora": lora.to_json()}),
    );
    manifest.seeds.insert("seed".into(), json!(args.seed));
    manifest.inputs = checkpoint.files.clone();
    manifest.architecture = Some(checkpoint.config.widths());
    let mut staging = StagingDir::new(&args.output)?;
    write_adapter(&mut staging, &adapter, &base, &mut manifest)?;
    staging.commit()?;
    eprintln!(
        "{} + fresh LoRA adapter (rank {}, {} parameters) -> {}",
        args.model.display(),
        lora.r,
        adapter.parameter_count(),
        args.output.display()
    );
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs = vec![("--model", args.model.as_path())];
    inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
    raffm::io::check_output_apart(("--output", &args.output), &inputs)?;
    let checkpoint = Checkpoint::load(&args.model)?;
    if checkpoint.config.llama().is_some() {
        if !args.labels.is_empty() || args.partition.is_some() || args.image_size.is_some() {
            bail!(
                "{}: a decoder takes a LoRA adapter, not a classification head: give --lora-* options, not --labels, --partition or --image-size",
                args.model.display()
            );
        }
        checkpoint.check_tokenizer()?;
        return init_adapter(&args, &checkpoint);
    }
    let labels = match &args.partition {
        Some(p) => Partition::load(p)?.label_names,
        None => args.labels.clone(),
    };
    if labels.is_empty() {
        bail!("give --partition or --labels");
    }
    if !checkpoint.config.takes_classification_head() {
        bail!(
            "{}: a `{}` model takes no classification head",
            args.model.display(),
            checkpoint.config.model_type()
        );
    }
    checkpoint.check_tokenizer()?;
    let mut with_head =
        checkpoint
            .clone()
            .with_classification_head_init(&labels, args.seed, args.head_init);
    if let Some(size) = args.image_size {
        let Some(vit) = checkpoint.config.vit() else {
            bail!(
                "--image-size: {} is a `{}` model, which takes text",
                args.model.display(),
                checkpoint.config.model_type()
            );
        };
        if (size as usize) < vit.patch_size {
            bail!(
                "--image-size {size} is smaller than the model's {}-pixel patches",
                vit.patch_size
            );
        }
        let preprocess = Preprocess::from_model_dir(&args.model, Some(size))?;
        let text = serde_json::to_string_pretty(&preprocess.to_json())? + "\n";
        let files = BTreeMap::from([(PREPROCESSOR_FILE.to_string(), text.into_bytes())]);
        with_head.processor_files = Some(Arc::new(files));
    }
    let mut manifest = Manifest::new(
        StageRecord::InitHead {},
        "raffm-init-head",
        json!({"model": args.model, "labels": labels, "output": args.output, "head_init": args.head_init, "image_size": args.image_size}),
    );
    manifest.seeds.insert("seed".into(), json!(args.seed));
    manifest.inputs = checkpoint.files.clone();
    if let Some(p) = &args.partition {
        manifest.inputs.push(sha256_file(p)?);
    }
    manifest.architecture = Some(with_head.config.widths());
    manifest.parameter_count = Some(with_head.parameter_count());
    manifest.bytes_on_wire = Some(with_head.bytes_on_wire());
    let mut staging = StagingDir::new(&args.output)?;
    with_head.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    eprintln!(
        "{} + head for {:?} -> {}",
        args.model.display(),
        labels,
        args.output.display()
    );
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-init-head", run(Args::parse()))
}
