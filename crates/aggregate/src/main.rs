//! `raffm-aggregate`: heterogeneous FedAvg of the round's client updates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use serde_json::json;

use raffm::aggregate::{aggregate_dirs, Weighting};
use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::cli::EvalArgs;
use raffm::evaluate::evaluate_examples;
use raffm::io::{sha256_file, StagingDir};
use raffm::manifest::Manifest;
use raffm::partition::Partition;
use raffm::{with_backend, Checkpoint};

/// Aggregates the round's trained client models into the next global model. Each element
/// of the global model becomes the weighted mean of the values the clients hold for it,
/// placed by each client's index map (from raffm-extract, carried by raffm-local-train);
/// elements no client holds keep their value. Weights are the clients' example counts
/// (or uniform); --server-lr 1.0 is plain FedAvg.
///
/// Every update is checked first: it was extracted from this global checkpoint (sha256 in
/// its manifest), its shapes match its index map, and every value is finite. A bad update
/// is an error naming the client, or, with --skip-bad, is left out and recorded.
///
/// With --partition the new global model is evaluated on the validation split and the
/// metrics go into manifest.json.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-aggregate",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// The round's global checkpoint (the one the sub-models were extracted from).
    #[arg(short, long)]
    global: PathBuf,
    /// Trained client folders.
    #[arg(short, long, num_args = 1.., required = true)]
    updates: Vec<PathBuf>,
    /// Folder to write the new global checkpoint to.
    #[arg(short, long)]
    output: PathBuf,
    /// Client weights: examples or uniform.
    #[arg(long, default_value = "examples")]
    weighting: Weighting,
    /// Server learning rate: new = old + lr * (mean - old).
    #[arg(long, default_value_t = 1.0)]
    server_lr: f64,
    /// Leave out bad updates (recorded in the manifest) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate the new global model on this partition's validation split.
    #[arg(long)]
    partition: Option<PathBuf>,
    #[command(flatten)]
    eval: EvalArgs,
    #[arg(short, long)]
    quiet: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs = vec![("--global", args.global.as_path())];
    inputs.extend(args.updates.iter().map(|u| ("--updates", u.as_path())));
    inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
    raffm::io::check_output_apart(("--output", &args.output), &inputs)?;
    if !(args.server_lr.is_finite() && args.server_lr > 0.0) {
        bail!(
            "--server-lr must be a positive number, got {}",
            args.server_lr
        );
    }
    let global = Checkpoint::load(&args.global)?;
    let max_seq_len = raffm::tokenizer::resolve_max_seq_len(
        args.eval.max_seq_len,
        global.config.max_positions(),
    )?;
    let outcome = aggregate_dirs(
        &global,
        &args.updates,
        args.weighting,
        args.server_lr,
        args.skip_bad,
    )?;
    for s in &outcome.skipped {
        let who = s
            .client
            .as_deref()
            .map_or(String::new(), |c| format!("client {c} "));
        eprintln!(
            "raffm-aggregate: skipped {who}({}): {}",
            s.dir.display(),
            s.reason
        );
    }
    let next = &outcome.model;
    let coverage = &outcome.coverage;
    let mean_params = outcome.clients.iter().map(|c| c.parameters).sum::<u64>() as f64
        / outcome.clients.len() as f64;
    let mut inputs = global.files.clone();
    inputs.extend(outcome.inputs.iter().cloned());

    let mut manifest = Manifest::new(
        "aggregate",
        "raffm-aggregate",
        json!({
            "global": args.global, "updates": args.updates, "output": args.output, "weighting": args.weighting,
            "server_lr": args.server_lr, "skip_bad": args.skip_bad, "partition": args.partition,
            "eval_max_examples": args.eval.eval_max_examples,
        }),
    );
    manifest.inputs = inputs;
    manifest.architecture = Some(next.config.widths());
    manifest.parameter_count = Some(next.parameter_count());
    manifest.bytes_on_wire = Some(next.bytes_on_wire());
    manifest
        .details
        .insert("clients".into(), json!(outcome.clients));
    manifest
        .details
        .insert("skipped".into(), json!(outcome.skipped));
    manifest.details.insert("coverage".into(), json!(coverage));
    manifest
        .metrics
        .insert("clients".into(), json!(outcome.clients.len()));
    manifest
        .metrics
        .insert("mean_client_parameters".into(), json!(mean_params));
    manifest
        .metrics
        .insert("mean_client_bytes".into(), json!(4.0 * mean_params));
    manifest.metrics.insert(
        "updated_fraction".into(),
        json!(coverage.updated_elements as f64 / coverage.total_elements as f64),
    );

    if let Some(partition_path) = &args.partition {
        let partition = Partition::load(partition_path)?;
        let ids = args.eval.validation_ids(&partition, partition_path)?;
        let result = with_backend!(args.eval.device, B, device, {
            type Inner = <B as AutodiffBackend>::InnerBackend;
            evaluate_examples::<Inner>(
                next,
                &args.global,
                &partition,
                &ids,
                max_seq_len,
                args.eval.batch_size,
                &device,
                |_| {},
            )?
        });
        manifest.metrics.insert("validation".into(), json!(result));
        manifest.inputs.push(sha256_file(partition_path)?);
        if !args.quiet {
            eprintln!("validation: {}", serde_json::to_string(&result)?);
        }
    }

    let mut staging = StagingDir::new(&args.output)?;
    next.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    if !args.quiet {
        eprintln!(
            "aggregated {} clients ({} skipped), {:.1}% of the global elements updated -> {}",
            outcome.clients.len(),
            outcome.skipped.len(),
            100.0 * coverage.updated_elements as f64 / coverage.total_elements as f64,
            args.output.display()
        );
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-aggregate", run(Args::parse()))
}
