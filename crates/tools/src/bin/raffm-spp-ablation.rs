//! `raffm-spp-ablation`: what salient parameter prioritization buys (paper Appendix A.2).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::core::cli::{EvalArgs, SpaceArgs};
use raffm::core::io::{sha256_file, write_file_atomic};
use raffm::core::rng::SplitMix64;
use raffm::core::tensor::Norm;
use raffm::data::partition::Partition;
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::deploy::{spp_budget, spp_pair};
use raffm::fl::extract::depth_plan;
use raffm::fl::pipeline::round_of;
use raffm::fl::pipeline::Budgets;
use raffm::fl::prioritize::prioritize;
use raffm::fl::search::{choose, Policy};
use raffm::models::evaluate::EvalSet;
use raffm::{with_backend, Checkpoint};

/// Extracts sub-models from one trained global model at several budgets, each twice:
/// with salient parameter prioritization (leading indices of the prioritized model) and
/// without (heads, channels and neurons drawn at random, seeded; the model's stored order
/// is no neutral baseline, as a RaFFM-trained model was extracted from a prioritized one
/// every round), and evaluates both on the validation split. Same architecture, same
/// weights, only the choice of channels differs.
///
/// A budget is a fraction of the layers' parameters (everything outside the layers stays
/// whole: MiniLM's embeddings are half of it). Per fraction: the `largest` configuration
/// that fits, plus --samples configurations drawn uniformly among those that fit (seeded).
/// The search space and depth policy are budgets.json's (--budgets) or the defaults, and
/// --space overrides them.
///
/// Writes the results as JSON to --output (read by raffm-report) and prints a table.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-spp-ablation",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// Trained global checkpoint, not prioritized (e.g. artifacts/default/round-5/global).
    #[arg(short, long)]
    global: PathBuf,
    /// partition.json: the validation split to evaluate on.
    #[arg(short, long)]
    partition: PathBuf,
    /// JSON file to write (e.g. artifacts/default/spp.json).
    #[arg(short, long)]
    output: PathBuf,
    /// budgets.json, for the pipeline's search space and depth policy.
    #[arg(long)]
    budgets: Option<PathBuf>,
    /// Budgets, as fractions of the encoder layers' parameters.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    fractions: Vec<f64>,
    /// Sampled configurations per fraction, besides the largest.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Norm of the salience scores.
    #[arg(long, default_value = "l1")]
    norm: Norm,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    eval: EvalArgs,
    #[arg(short, long)]
    quiet: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(f) = args.fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--fractions must lie in (0, 1], got {f}");
    }
    let mut inputs = vec![
        ("--global", args.global.as_path()),
        ("--partition", args.partition.as_path()),
    ];
    inputs.extend(args.budgets.iter().map(|b| ("--budgets", b.as_path())));
    raffm::core::io::check_output_apart(("--output", &args.output), &inputs)?;
    let global = Checkpoint::load(&args.global)?;
    let max_seq_len = raffm::data::tokenizer::resolve_max_seq_len(
        args.eval.max_seq_len,
        global.config.max_positions(),
    )?;
    let partition = Partition::load(&args.partition)?;
    let budgets = args.budgets.as_deref().map(Budgets::load).transpose()?;
    let base_space = budgets
        .as_ref()
        .map(|b| b.search_space.clone())
        .unwrap_or_default();
    let space = args.space.space(&base_space, global.config.axes())?;
    let depth_policy = budgets.as_ref().map(|b| b.depth_policy).unwrap_or_default();
    let plan = depth_plan(&global, depth_policy);
    let (prioritized, _) = prioritize(&global, args.norm, |_| {});
    let cost_model = CostModel::for_checkpoint(&global, TrainingShape::default());
    let full = cost_model.cost(&global.config.widths());
    let ids = args.eval.validation_ids(&partition, &args.partition)?;
    let examples = EvalSet::load(&args.global, &partition, &ids, max_seq_len)?;

    // Every configuration to try: (fraction, kind, sample index, layers).
    // A fraction below the smallest sub-model of the space is skipped, not an error.
    let mut configurations = Vec::new();
    let mut skipped = Vec::new();
    for &fraction in &args.fractions {
        let budget = spp_budget(&cost_model, fraction);
        let largest = match choose(
            &cost_model,
            &space,
            &budget,
            Policy::Largest,
            &plan,
            &mut SplitMix64::new(0),
        ) {
            Ok(choice) => choice,
            Err(e @ raffm::Error::Infeasible { .. }) => {
                eprintln!("raffm-spp-ablation: skipping fraction {fraction}: {e}");
                skipped.push(json!({"fraction": fraction, "reason": e.to_string()}));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        configurations.push((fraction, "largest", None, largest));
        for k in 0..args.samples {
            let mut rng = SplitMix64::derive(args.seed, &format!("spp/{fraction}/{k}"));
            let sampled = choose(
                &cost_model,
                &space,
                &budget,
                Policy::Sample,
                &plan,
                &mut rng,
            )?;
            configurations.push((fraction, "sample", Some(k), sampled));
        }
    }
    if configurations.is_empty() {
        bail!("no fraction in --fractions admits a sub-model of the search space");
    }
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(2 * configurations.len() as u64)
    };
    progress.set_style(ProgressStyle::with_template(
        "evaluating [{bar:30}] {pos}/{len} sub-models {elapsed}<{eta}",
    )?);
    let mut rows = Vec::new();
    with_backend!(args.eval.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let accuracy = |model: &Checkpoint| -> anyhow::Result<Option<f64>> {
            let metrics =
                examples.evaluate::<Inner>(model, args.eval.batch_size, &device, |_| {})?;
            progress.inc(1);
            Ok(metrics.accuracy)
        };
        for (fraction, kind, sample, choice) in &configurations {
            let seed = args.seed + sample.map_or(0, |k| k as u64 + 1);
            let (with, without) = spp_pair(
                &global,
                &prioritized,
                &cost_model,
                &space,
                &choice.widths,
                seed,
            )?;
            rows.push(json!({
                "fraction": fraction, "kind": kind, "sample": sample,
                "parameters": choice.cost.parameters, "architecture": choice.widths,
                "accuracy_spp": accuracy(&with)?, "accuracy_no_spp": accuracy(&without)?,
            }));
        }
    });
    progress.finish_and_clear();
    let report = json!({
        "global": args.global,
        "global_sha256": global.weights_sha256(),
        "partition": sha256_file(&args.partition)?,
        "round": round_of(&args.global),
        "norm": args.norm,
        "seed": args.seed,
        "without_spp": "random indices (seeded), same architecture",
        "search_space": space,
        "evaluation": {"split": "validation", "examples": ids.len()},
        "full_parameters": full.parameters,
        "layer_parameters": full.layer_parameters,
        "rows": rows,
        "skipped": skipped,
    });
    write_file_atomic(
        &args.output,
        format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
    )?;
    if !args.quiet {
        println!("fraction  kind     parameters  with SPP  without SPP");
        for r in &rows {
            let acc = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
            println!(
                "{:>8.2}  {:<7}  {:>9.2}M  {:>8}  {:>11}",
                r["fraction"].as_f64().unwrap_or(0.0),
                r["kind"].as_str().unwrap_or(""),
                r["parameters"].as_f64().unwrap_or(0.0) / 1e6,
                acc("accuracy_spp"),
                acc("accuracy_no_spp")
            );
        }
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-spp-ablation", run(Args::parse()))
}
