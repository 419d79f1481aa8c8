//! `raffm-pipeline`: reads and checks pipeline files, and writes a pipeline's settings as
//! the Make variables the Makefile's rounds run on.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use raffm::fl::pipeline::{make_vars, PipelineFile};

/// A pipeline (pipelines/*.json) is either fine-tuning through the stages (no `kind`) or
/// the decoder's federated LoRA (`"kind": "llm-lora"`). Every section refuses keys it does
/// not know, and every value a binary would refuse is refused here first, naming the file.
///
///     raffm-pipeline check pipelines/*.json
///     raffm-pipeline make-vars pipelines/default.json > artifacts/default/pipeline.mk
#[derive(Parser, Debug)]
#[command(name = "raffm-pipeline", version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks every file given; prints one line per pipeline.
    Check {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Prints the pipeline's settings as Make variables (`PL_NAME := value`); a setting
    /// the pipeline leaves out is empty, and the Makefile then leaves its option out.
    MakeVars { pipeline: PathBuf },
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Check { pipelines } => {
            for path in pipelines {
                let kind = match PipelineFile::load(&path)? {
                    PipelineFile::Finetune(_) => "finetune",
                    PipelineFile::LlmLora(_) => "llm-lora",
                };
                println!("{}: {kind}, ok", path.display());
            }
        }
        Command::MakeVars { pipeline } => {
            let vars = make_vars(&PipelineFile::load(&pipeline)?)
                .map_err(|m| anyhow::anyhow!("{}: {m}", pipeline.display()))?;
            let mut out = String::new();
            out.push_str(&format!(
                "# generated from {} by raffm-pipeline make-vars\n",
                pipeline.display()
            ));
            for (name, value) in vars {
                out.push_str(&format!("{name} := {value}\n"));
            }
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("cannot write to standard output")?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-pipeline", run(Args::parse()))
}
