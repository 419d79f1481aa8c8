//! `raffm-prioritize`: salient parameter prioritization of a checkpoint folder.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::core::checkpoint::Checkpoint;
use crate::core::error::Result;
use crate::core::io::StagingDir;
use crate::core::manifest::{Manifest, PrioritizeMetrics, Prioritized, StageRecord};
use crate::core::tensor::Norm;
use crate::fl::prioritize::{prioritize, salience_instances};

/// Reorders every permutable elastic axis of a checkpoint by channel salience, keeping the
/// network's function. For the BERT family: hidden channels (with every tensor on the
/// residual stream, LayerNorms included), heads by head salience, Q/K channels inside each
/// head with one shared permutation, V channels with the matching columns of the attention
/// output projection, and FFN neurons. Afterwards the leading indices of every axis are the
/// most salient, so `raffm-extract --strategy salient` can take leading ranges.
///
/// Writes OUTPUT as a checkpoint folder (config.json, model.safetensors, tokenizer files)
/// plus manifest.json with the permutations, the scores, and the inputs' hashes. The
/// folder appears only once complete.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-prioritize",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Checkpoint folder to read (HF layout: config.json + model.safetensors).
    #[arg(short, long)]
    pub input: PathBuf,
    /// Checkpoint folder to write; replaced whole if it exists.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Channel salience metric: l1 (paper default) or l2.
    #[arg(long, default_value = "l1")]
    pub norm: Norm,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the stage: writes `args.output` and returns its manifest's record.
pub fn run(args: &Args) -> Result<StageRecord> {
    crate::core::io::check_output_apart(("--output", &args.output), &[("--input", &args.input)])?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} axes {elapsed}")
            .expect("valid template"),
    );
    progress.set_message("loading");
    let checkpoint = Checkpoint::load(&args.input)?;
    checkpoint.check_tokenizer()?;
    progress.set_length(salience_instances(&checkpoint.config) as u64);
    progress.set_message("prioritizing");
    let (prioritized, permutations) = prioritize(&checkpoint, args.norm, |_| progress.inc(1));
    progress.set_message("writing");

    let moved = permutations.iter().filter(|p| !p.is_identity()).count();
    let record = StageRecord::Prioritize(Prioritized {
        metrics: PrioritizeMetrics {
            axes_reordered: moved,
        },
        permutations: permutations.clone(),
        ignored_tensors: checkpoint.ignored.clone(),
    });
    let mut manifest = Manifest::new(
        record.clone(),
        "raffm-prioritize",
        json!({"input": args.input, "output": args.output, "norm": args.norm}),
    );
    manifest.inputs = checkpoint.files.clone();
    manifest.architecture = Some(prioritized.config.widths());
    manifest.parameter_count = Some(prioritized.parameter_count());
    manifest.bytes_on_wire = Some(prioritized.bytes_on_wire());

    let mut staging = StagingDir::new(&args.output)?;
    prioritized.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    progress.finish_and_clear();
    if !args.quiet {
        eprintln!(
            "prioritized {} axes ({} reordered) by {:?} salience -> {}",
            permutations.len(),
            moved,
            args.norm,
            args.output.display()
        );
    }
    Ok(record)
}
