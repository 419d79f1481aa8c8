//! `raffm-import-gguf`: turn a LLaMA-architecture GGUF file into an F32 HF folder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use raffm::core::io::StagingDir;
use raffm::core::manifest::{GgufSource, Imported, Manifest, StageRecord};
use raffm::formats::gguf::import::import_llama;
use raffm::formats::gguf::GgufFile;

/// Dequantizes a LLaMA-architecture GGUF file (F32, F16, BF16, Q4_0, Q4_1 and Q8_0
/// tensors) into an HF folder: config.json (LlamaForCausalLM), model.safetensors in F32
/// under HF's tensor names with the Q and K rows put back in HF's rotary layout,
/// tokenizer.json (byte-level BPE from the file's vocabulary, merges and pre-tokenizer)
/// and tokenizer_config.json (special tokens, chat template), plus manifest.json with
/// the input's sha256. `make assets-llm` runs it once; from
/// then on the folder is the model.
#[derive(Parser, Debug)]
#[command(name = "raffm-import-gguf", version)]
struct Args {
    /// The GGUF file.
    #[arg(short, long)]
    input: PathBuf,
    /// Folder to write.
    #[arg(short, long)]
    output: PathBuf,
}

fn run(args: Args) -> anyhow::Result<()> {
    raffm::core::io::check_output_apart(("--output", &args.output), &[("--input", &args.input)])?;
    let gguf = GgufFile::open(&args.input)?;
    let mut staging = StagingDir::new(&args.output)?;
    let imported = import_llama(&gguf, &mut staging)?;
    let source = GgufSource {
        version: gguf.version,
        name: gguf
            .metadata
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(String::from),
        pre_tokenizer: imported.pre_tokenizer.clone(),
        tensor_types: tensor_types(&gguf),
    };
    let record = Imported {
        gguf: Some(source),
        recovered: Vec::new(),
    };
    let mut manifest = Manifest::new(
        StageRecord::Import(record),
        "raffm-import-gguf",
        json!({"input": args.input, "output": args.output}),
    );
    manifest.inputs.push(gguf.record());
    manifest.parameter_count = Some(imported.parameters);
    // The folder must read back as the model it claims to be (every weight finite, the
    // tokenizer loading) before it replaces anything.
    raffm::Checkpoint::check_import(staging.path(), &args.input)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    eprintln!(
        "{}: {} tensors, {:.1}M parameters ({} layers, hidden {}) -> {}",
        args.input.display(),
        imported.tensors,
        imported.parameters as f64 / 1e6,
        imported.config["num_hidden_layers"],
        imported.config["hidden_size"],
        args.output.display()
    );
    Ok(())
}

/// How many tensors of each storage type the file holds (`{"Q4_1": 210, ...}`).
fn tensor_types(gguf: &GgufFile) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for t in &gguf.tensors {
        *counts.entry(format!("{:?}", t.kind)).or_default() += 1;
    }
    counts
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-import-gguf", run(Args::parse()))
}
