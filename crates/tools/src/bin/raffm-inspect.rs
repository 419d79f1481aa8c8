//! `raffm-inspect`: what is in a checkpoint folder, where it came from, and how it differs
//! from another.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use raffm::core::inspect::{
    choose_index_map, diff, lineage, load_checkpoint, tensor_report, IndexMapChoice,
};

/// Inspects checkpoint folders written by the raffm stages (or any HF BERT-family folder),
/// for ablations on intermediate results:
///
///   tensors <checkpoint>   the architecture, then every tensor's shape, stored dtype, mean,
///                          std, L1 norm, fraction of exact zeros and largest magnitude
///   lineage <folder>       the manifest (stage, tool, parameters, seeds, metrics) and, in
///                          turn, those of the folders its inputs came from; every input
///                          is checked against its recorded sha256: ok, changed or missing
///   diff <a> <b>           per tensor: max |a-b|, |a-b|/|a| (L2) and bit-identity; a
///                          sub-model is compared with its slice of the global model,
///                          by the index map in its manifest
///
/// Text by default, JSON with --json. Differences are a report, not a failure: the exit
/// code is non-zero only on errors.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-inspect",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The architecture and every tensor's statistics.
    Tensors {
        /// Checkpoint folder (config.json + model.safetensors).
        checkpoint: PathBuf,
    },
    /// The folder's manifest and those of its inputs, up to external inputs.
    Lineage {
        /// A folder written by a raffm stage (with manifest.json).
        folder: PathBuf,
        /// Follow at most this many generations of inputs (default: all).
        #[arg(long)]
        depth: Option<usize>,
    },
    /// Tensor-by-tensor differences between two checkpoints.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// auto (a sub-model's own index map when shapes differ), none, or the path of a
        /// manifest.json (or its folder) with an index_map.
        #[arg(long, default_value = "auto")]
        index_map: IndexMapChoice,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    // Every report is small next to the checkpoints it describes: both forms are cheap.
    let (json, text) = match args.command {
        Command::Tensors { checkpoint } => {
            let report = tensor_report(&checkpoint)?;
            (serde_json::to_value(&report)?, report.to_text())
        }
        Command::Lineage { folder, depth } => {
            let lineage = lineage(&folder, depth)?;
            (serde_json::to_value(&lineage)?, lineage.to_text())
        }
        Command::Diff { a, b, index_map } => {
            let (a, b) = (load_checkpoint(&a)?, load_checkpoint(&b)?);
            let mapping = choose_index_map(&a, &b, &index_map)?;
            let report = diff(&a, &b, mapping.as_ref());
            (serde_json::to_value(&report)?, report.to_text())
        }
    };
    let out = if args.json {
        serde_json::to_string_pretty(&json)? + "\n"
    } else {
        text
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().write_all(out.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-inspect", run(Args::parse()))
}
