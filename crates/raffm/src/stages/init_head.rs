//! `raffm-init-head`: give a pre-trained encoder a fresh classification head (round 0).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use crate::core::checkpoint::{Checkpoint, HeadInit};
use crate::core::error::{Error, Result};
use crate::core::io::{check_output_apart, sha256_file, StagingDir};
use crate::core::manifest::{Manifest, StageRecord};
use crate::data::partition::Partition;
use crate::fl::adapter::{write_adapter, BaseModel};
use crate::models::families::llama::lora::{LoraAdapter, LoraConfig, DEFAULT_TARGETS};
use crate::models::vision::data::PREPROCESSOR_FILE;
use crate::models::vision::Preprocess;

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
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "raffm-init-head", version, allow_negative_numbers = true)]
pub struct Args {
    /// Pre-trained checkpoint folder.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Take the label names from this partition.json.
    #[arg(short, long, conflicts_with = "labels")]
    pub partition: Option<PathBuf>,
    /// Label names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the classifier's weights start: normal (HF's N(0, 0.02)) or zeros.
    #[arg(long, default_value = "normal")]
    pub head_init: HeadInit,
    /// A vision model's input side in pixels (default: its preprocessor's).
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Folder to write.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub lora: LoraArgs,
}

/// A decoder (llama) takes a fresh LoRA adapter instead of a head: the global model of a
/// LoRA round (A drawn as PEFT draws it, seeded by --seed; B = 0).
#[derive(clap::Args, Debug, Clone)]
pub struct LoraArgs {
    /// The adapter's rank.
    #[arg(long, default_value_t = crate::fl::pipeline::DEFAULT_LORA_RANK)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Projections it adapts (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.map(String::from))]
    pub lora_targets: Vec<String>,
}

/// Writes the fresh adapter of `args.lora` on the decoder `checkpoint`.
fn init_adapter(args: &Args, checkpoint: &Checkpoint) -> Result<StageRecord> {
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
    Ok(manifest.record)
}

/// Writes the model with its fresh head (or a decoder's fresh adapter) and returns the
/// manifest's record.
pub fn run(args: &Args) -> Result<StageRecord> {
    let mut inputs = vec![("--model", args.model.as_path())];
    inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
    check_output_apart(("--output", &args.output), &inputs)?;
    let checkpoint = Checkpoint::load(&args.model)?;
    if checkpoint.config.llama().is_some() {
        if !args.labels.is_empty() || args.partition.is_some() || args.image_size.is_some() {
            return Err(Error::format(
                &args.model,
                "a decoder takes a LoRA adapter, not a classification head: give --lora-* options, not --labels, --partition or --image-size",
            ));
        }
        checkpoint.check_tokenizer()?;
        return init_adapter(args, &checkpoint);
    }
    let labels = match &args.partition {
        Some(p) => Partition::load(p)?.label_names,
        None => args.labels.clone(),
    };
    if labels.is_empty() {
        return Err(Error::Invalid("give --partition or --labels".into()));
    }
    if !checkpoint.config.takes_classification_head() {
        return Err(Error::format(
            &args.model,
            format!(
                "a `{}` model takes no classification head",
                checkpoint.config.model_type()
            ),
        ));
    }
    checkpoint.check_tokenizer()?;
    let mut with_head =
        checkpoint
            .clone()
            .with_classification_head_init(&labels, args.seed, args.head_init);
    if let Some(size) = args.image_size {
        let Some(vit) = checkpoint.config.vit() else {
            return Err(Error::Invalid(format!(
                "--image-size: {} is a `{}` model, which takes text",
                args.model.display(),
                checkpoint.config.model_type()
            )));
        };
        if (size as usize) < vit.patch_size {
            return Err(Error::Invalid(format!(
                "--image-size {size} is smaller than the model's {}-pixel patches",
                vit.patch_size
            )));
        }
        let preprocess = Preprocess::from_model_dir(&args.model, Some(size))?;
        let text =
            serde_json::to_string_pretty(&preprocess.to_json()).expect("JSON serializes") + "\n";
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
    Ok(manifest.record)
}
