//! `raffm-budgets`: draw every client's training and inference budget from a pipeline.

use std::path::PathBuf;

use crate::core::checkpoint::CONFIG_FILE;
use crate::core::error::{Error, Result};
use crate::core::io::{check_output_apart, write_file_atomic};
use crate::data::partition::Partition;
use crate::fl::adapter::LORA_SEQ_LEN;
use crate::fl::cost::{CostModel, TrainingShape};
use crate::fl::pipeline::{
    make_budgets, make_lora_budgets, Budgets, LoraPipeline, Pipeline, PipelineFile,
};
use crate::ModelConfig;

/// Turns a pipeline's client tiers into budgets.json: per client, its tier, its training
/// budget (parameters and/or training memory) and its device memory (which the deployed
/// model must fit). Tiers are assigned in exact proportion to their shares, in an order
/// drawn from --seed: the same seed gives the same file. budgets.json also carries what the
/// search for the sub-models needs: the pipeline's search space, strategy, policies and
/// training shape.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "raffm-budgets", version, allow_negative_numbers = true)]
pub struct Args {
    /// Pipeline definition (pipelines/*.json).
    #[arg(short, long)]
    pub pipeline: PathBuf,
    /// Where to write budgets.json.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed of the tier assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model folder whose config.json the fractions refer to (default: the pipeline's).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// partition.json, whose labels size the classification head the fractions count
    /// (default: the model's own labels), so that a fraction of 1 is the whole model the
    /// rounds train.
    #[arg(long)]
    pub partition: Option<PathBuf>,
}

/// A LoRA pipeline's budgets: each client's rank and base sub-model.
fn lora_budgets(args: &Args, pipeline: &LoraPipeline) -> Result<Budgets> {
    let model = args.model.clone().unwrap_or_else(|| pipeline.model.clone());
    check_output_apart(
        ("--output", &args.output),
        &[
            ("--pipeline", args.pipeline.as_path()),
            ("the pipeline's model", model.as_path()),
        ],
    )?;
    let config = ModelConfig::load(&model.join(CONFIG_FILE))?;
    let training = TrainingShape {
        batch_size: pipeline.local.batch_size.unwrap_or(8),
        max_seq_len: pipeline.local.max_seq_len.unwrap_or(LORA_SEQ_LEN),
        ..TrainingShape::default()
    };
    let full = CostModel::new(&config, training).cost(&config.widths());
    Ok(make_lora_budgets(
        pipeline,
        config.axes(),
        full,
        training,
        args.seed,
    ))
}

/// Draws every client's budgets, writes budgets.json and returns it.
pub fn run(args: &Args) -> Result<Budgets> {
    let budgets = match PipelineFile::load(&args.pipeline)? {
        PipelineFile::Finetune(pipeline) => finetune_budgets(args, *pipeline)?,
        PipelineFile::LlmLora(pipeline) => lora_budgets(args, &pipeline)?,
    };
    let text = serde_json::to_string_pretty(&budgets).expect("budgets serialize");
    write_file_atomic(&args.output, format!("{text}\n").as_bytes())?;
    let mut tiers: Vec<(&str, usize)> = Vec::new();
    for c in &budgets.clients {
        match tiers.iter_mut().find(|(t, _)| *t == c.tier) {
            Some((_, n)) => *n += 1,
            None => tiers.push((&c.tier, 1)),
        }
    }
    let mix: Vec<String> = tiers.iter().map(|(t, n)| format!("{t} {n}")).collect();
    eprintln!(
        "{} clients ({}) -> {}",
        budgets.clients.len(),
        mix.join("; "),
        args.output.display()
    );
    Ok(budgets)
}

fn finetune_budgets(args: &Args, mut pipeline: Pipeline) -> Result<Budgets> {
    let model = args.model.clone().unwrap_or_else(|| pipeline.model.clone());
    let mut inputs = vec![
        ("--pipeline", args.pipeline.as_path()),
        ("the pipeline's model", model.as_path()),
    ];
    inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
    check_output_apart(("--output", &args.output), &inputs)?;
    let mut config = ModelConfig::load(&model.join(CONFIG_FILE))?;
    let space = pipeline.space_for(config.axes());
    space
        .validate(config.axes())
        .map_err(|e| Error::format(&args.pipeline, e.to_string()))?;
    pipeline.search_space = Some(space);
    if config.vit().is_some() && pipeline.training.image_size.is_none() {
        return Err(Error::format(
            &args.pipeline,
            "a vision model needs `training.image_size` (the input side in pixels, which its memory depends on)",
        ));
    }
    // The fractions refer to the model the rounds train: with its task head.
    let labels = match &args.partition {
        Some(p) => Partition::load(p)?.label_names,
        None => config.label_names(),
    };
    config.set_classification_head(&labels);
    let full = CostModel::new(&config, pipeline.training).cost(&config.widths());
    Ok(make_budgets(&pipeline, full, args.seed))
}
