//! `raffm-export`: a sub-model as an ordinary HF checkpoint at its global model's shapes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use raffm::core::io::StagingDir;
use raffm::core::manifest::{Exported, Manifest, StageRecord, MANIFEST_FILE};
use raffm::fl::extract::padded;
use raffm::Checkpoint;

/// Writes the zero-padded equivalent of a sub-model (from raffm-extract, raffm-local-train
/// or raffm-deploy-scale): a checkpoint with the global model's widths holding the
/// sub-model's values where its index map places them and zeros elsewhere. HF
/// `transformers` opens it like any checkpoint of the family, and it computes the
/// sub-model's function, because a BERT sub-model with fewer heads, narrower heads or a
/// narrower FFN computes what the full model computes with those slices set to zero.
///
/// A sub-model with a narrower hidden size or fewer layers has no such form (its
/// LayerNorms normalise over fewer channels; a post-LayerNorm layer cannot be zeroed
/// away): for it the command fails and says why.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-export",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// The sub-model's folder (its manifest.json holds the index map).
    #[arg(short, long)]
    model: PathBuf,
    /// The global checkpoint it was extracted from (for its widths).
    #[arg(short, long)]
    global: PathBuf,
    /// Folder to write.
    #[arg(short, long)]
    output: PathBuf,
}

fn run(args: Args) -> anyhow::Result<()> {
    raffm::core::io::check_output_apart(
        ("--output", &args.output),
        &[("--model", &args.model), ("--global", &args.global)],
    )?;
    let sub = Checkpoint::load(&args.model)?;
    let manifest_path = args.model.join(MANIFEST_FILE);
    let placement = Manifest::load(&manifest_path)?.placement.with_context(|| {
        format!(
            "{}: no index map (is this a sub-model from raffm-extract?)",
            manifest_path.display()
        )
    })?;
    let global = Checkpoint::load(&args.global)?;
    let export = padded(&global.config, &sub, &placement.index_map)
        .with_context(|| format!("{}", args.model.display()))?;
    let record = Exported {
        sub_model_parameters: sub.parameter_count(),
    };
    let mut manifest = Manifest::new(
        StageRecord::Export(record),
        "raffm-export",
        json!({"model": args.model, "global": args.global, "output": args.output}),
    );
    manifest.inputs = sub.files.iter().chain(&global.files).cloned().collect();
    manifest.architecture = Some(export.config.widths());
    manifest.parameter_count = Some(export.parameter_count());
    let mut staging = StagingDir::new(&args.output)?;
    export.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    eprintln!(
        "{} ({} parameters) padded to {} parameters -> {}",
        args.model.display(),
        sub.parameter_count(),
        export.parameter_count(),
        args.output.display()
    );
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-export", run(Args::parse()))
}
