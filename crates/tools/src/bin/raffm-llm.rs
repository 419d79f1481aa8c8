//! `raffm-llm`: what only the decoder needs beside the stages: merging an adapter into
//! its base.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args as ClapArgs, Parser, Subcommand};

use raffm::core::io::StagingDir;
use raffm::models::families::llama::lora::LoraAdapter;
use raffm::Checkpoint;

/// The decoder LLM (LLaMA family, e.g. SmolLM2 imported by raffm-import-gguf) with LoRA
/// adapters in PEFT's format.
///
///   merge    write base + adapter as a plain HF folder
///
/// Federated LoRA runs through the stages: raffm-init-head writes a fresh adapter on the
/// decoder, raffm-extract each client's slice (its rank, on its base sub-model),
/// raffm-local-train trains it, raffm-aggregate combines the adapters (every rule, and
/// FlexLoRA), raffm-evaluate scores them by option log-likelihood.
#[derive(Parser, Debug)]
#[command(name = "raffm-llm", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Merge(MergeCmd),
}

/// Writes base + adapter as a plain HF folder (config.json, model.safetensors, tokenizer).
#[derive(ClapArgs, Debug)]
struct MergeCmd {
    #[arg(short, long)]
    model: PathBuf,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
}

fn merge(cmd: MergeCmd) -> anyhow::Result<()> {
    raffm::core::io::check_output_apart(
        ("--output", &cmd.output),
        &[("--model", &cmd.model), ("--adapter", &cmd.adapter)],
    )?;
    let checkpoint = Checkpoint::load(&cmd.model)?;
    let Some(config) = checkpoint.config.llama() else {
        bail!("{}: a llama model was expected", cmd.model.display());
    };
    let adapter = LoraAdapter::load(&cmd.adapter, config)?;
    let mut tensors = checkpoint.tensors.clone();
    adapter.merge_into(&mut tensors);
    let merged = checkpoint.with_tensors(tensors);
    let mut staging = StagingDir::new(&cmd.output)?;
    merged.write_into(&mut staging)?;
    staging.commit()?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Merge(c) => merge(c),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::sys::keep_freed_memory();
    raffm::core::cli::exit_code("raffm-llm", run(Cli::parse()))
}
