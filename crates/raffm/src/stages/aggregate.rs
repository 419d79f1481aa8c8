//! `raffm-aggregate`: the round's client updates combined into the next global model.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::burn::tensor::backend::AutodiffBackend;
use crate::core::checkpoint::Checkpoint;
use crate::core::cli::EvalArgs;
use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, StagingDir};
use crate::core::manifest::{AggregateMetrics, Aggregated, Manifest, StageRecord};
use crate::data::partition::Partition;
use crate::fl::adapter::{flexlora, from_factors, write_adapter, AdapterFolder, LORA_SEQ_LEN};
use crate::fl::aggregate::{aggregate_dirs, DpRound, Outcome, Rule, ServerRule, Weighting};
use crate::fl::privacy::{noise_seed, DpFedAvg, SEED_VARIABLE};
use crate::models::evaluate::evaluate_examples;
use crate::models::families::llama::lora::LoraAdapter;
use crate::with_backend;

/// Aggregates the round's trained client models into the next global model. Each element
/// of the global model is combined over the clients that hold it, placed by each client's
/// index map (from raffm-extract, carried by raffm-local-train); elements no client holds
/// keep their value. --server-lr 1.0 assigns the combined value itself.
///
/// Rules (--rule): fedavg, the mean weighted by example counts (or uniform); median, the
/// coordinate-wise median; trimmed-mean, the coordinate-wise mean after dropping
/// floor(β·n) of an element's n values at each end (--trim-fraction β; elements with fewer
/// than 1/β holders are not trimmed, and manifest.json counts them per tensor). --clip-norm
/// first clips every client's update (its weights minus the global ones, over what it
/// holds) to that L2 norm.
///
/// DP-FedAvg (--dp-noise-multiplier and the other --dp options): updates clipped to
/// --dp-clip-norm, summed unweighted, Gaussian noise of standard deviation σ·S on every
/// element of the global model, divided by the expected number of participants. The noise
/// seed comes from the environment variable RAFFM_DP_SEED (a secret; only its hash is
/// written) or, for experiments, --dp-seed. The RDP accountant's epsilon after --round
/// rounds goes into manifest.json; a round past --dp-target-epsilon is refused. Clients
/// must have been drawn by Poisson sampling at --dp-sample-rate (raffm-sample-clients
/// --sample-rate), which is what the accountant assumes.
///
/// LoRA rounds: when --global is an adapter (raffm-init-head on a decoder), the updates
/// are the clients' adapters and every rule above combines their factors, each client's
/// rank and base block placed by its index map and rescaled to the global scaling.
/// --rule flexlora (adapters only) is FlexLoRA instead: the weighted mean of the updates
/// s·B·A, split back into factors of the global rank by a truncated SVD.
///
/// Every update is checked first: it was extracted from this global checkpoint (sha256 in
/// its manifest), its shapes match its index map, and every value is finite. A bad update
/// is an error naming the client, or, with --skip-bad, is left out and recorded.
///
/// With --partition the new global model is evaluated on the validation split and the
/// metrics go into manifest.json.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-aggregate",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// The round's global checkpoint (the one the sub-models were extracted from).
    #[arg(short, long)]
    pub global: PathBuf,
    /// Trained client folders (none: only with DP, whose Poisson draw may be empty).
    #[arg(short, long, num_args = 0..)]
    pub updates: Vec<PathBuf>,
    /// Folder to write the new global checkpoint to.
    #[arg(short, long)]
    pub output: PathBuf,
    /// How each element's values are combined: fedavg, median or trimmed-mean.
    #[arg(long, default_value = "fedavg")]
    pub rule: String,
    /// trimmed-mean: the fraction β of an element's values dropped at each end, in (0, 0.5).
    #[arg(long)]
    pub trim_fraction: Option<f64>,
    /// Clip every client's update to this L2 norm before combining.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Client weights in fedavg: examples or uniform [default: examples; uniform for the
    /// median, trimmed mean and DP].
    #[arg(long)]
    pub weighting: Option<Weighting>,
    /// DP-FedAvg: noise multiplier σ (the noise's standard deviation over the clip norm).
    #[arg(long)]
    pub dp_noise_multiplier: Option<f64>,
    /// DP-FedAvg: the L2 norm S every update is clipped to.
    #[arg(long)]
    pub dp_clip_norm: Option<f64>,
    /// DP-FedAvg: q, the probability with which each client was drawn this round.
    #[arg(long)]
    pub dp_sample_rate: Option<f64>,
    /// DP-FedAvg: the expected number of participants q·N, the sum's fixed denominator.
    #[arg(long)]
    pub dp_expected_clients: Option<f64>,
    /// DP-FedAvg: the δ of the reported (ε, δ).
    #[arg(long, default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// DP-FedAvg: refuse a round that would take the cumulative ε past this.
    #[arg(long)]
    pub dp_target_epsilon: Option<f64>,
    /// DP-FedAvg: the noise seed, written into the manifest (experiments; a deployment
    /// keeps it secret in RAFFM_DP_SEED instead).
    #[arg(long)]
    pub dp_seed: Option<u64>,
    /// The round this aggregation makes (1 for the first); DP composes over rounds 1..=R.
    #[arg(long)]
    pub round: Option<u64>,
    /// Server learning rate: new = old + lr * (mean - old).
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f64,
    /// Leave out bad updates (recorded in the manifest) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Evaluate the new global model on this partition's validation split.
    #[arg(long)]
    pub partition: Option<PathBuf>,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[arg(short, long)]
    pub quiet: bool,
}

/// The server's rule from the options, and where the DP noise seed came from.
fn server_rule(args: &Args) -> Result<(ServerRule, Option<crate::fl::privacy::SeedRecord>)> {
    // FlexLoRA (adapters only) weights clients as FedAvg does and takes no other option.
    let flexlora = args.rule == "flexlora";
    if flexlora
        && (args.trim_fraction.is_some()
            || args.clip_norm.is_some()
            || args.dp_noise_multiplier.is_some())
    {
        return Err(Error::Invalid("--rule flexlora combines whole updates B A: it takes no --trim-fraction, --clip-norm or DP".into()));
    }
    let rule = match flexlora {
        true => Rule::Fedavg,
        false => Rule::parse(&args.rule, args.trim_fraction)?,
    };
    let dp_options = [
        ("--dp-noise-multiplier", args.dp_noise_multiplier),
        ("--dp-clip-norm", args.dp_clip_norm),
        ("--dp-sample-rate", args.dp_sample_rate),
        ("--dp-expected-clients", args.dp_expected_clients),
    ];
    let (dp, seed) = match (
        args.dp_noise_multiplier,
        args.dp_clip_norm,
        args.dp_sample_rate,
        args.dp_expected_clients,
    ) {
        (None, None, None, None) => {
            if args.dp_target_epsilon.is_some() || args.dp_seed.is_some() {
                return Err(Error::Invalid("--dp-target-epsilon and --dp-seed apply to DP-FedAvg: give --dp-noise-multiplier and the other --dp options".into()));
            }
            (None, None)
        }
        (Some(noise_multiplier), Some(clip_norm), Some(sample_rate), Some(expected_clients)) => {
            let round = args.round.ok_or_else(|| {
                Error::Invalid(
                    "DP-FedAvg needs --round (the accountant composes rounds 1..=R)".into(),
                )
            })?;
            let settings = DpFedAvg {
                noise_multiplier,
                clip_norm,
                sample_rate,
                expected_clients,
                delta: args.dp_delta,
                target_epsilon: args.dp_target_epsilon,
            };
            let environment = std::env::var(SEED_VARIABLE).ok();
            let (seed, record) = noise_seed(args.dp_seed, environment.as_deref())?;
            (
                Some(DpRound {
                    settings,
                    seed,
                    round,
                }),
                Some(record),
            )
        }
        _ => {
            let names = |given: bool| {
                dp_options
                    .iter()
                    .filter(|(_, v)| v.is_some() == given)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::Invalid(format!(
                "DP-FedAvg needs {} as well as {}",
                names(false),
                names(true)
            )));
        }
    };
    let order_statistic_or_dp = rule.is_order_statistic() || dp.is_some();
    let weighting = args.weighting.unwrap_or(match order_statistic_or_dp {
        true => Weighting::Uniform,
        false => Weighting::Examples,
    });
    let rule = ServerRule {
        rule,
        weighting,
        server_lr: args.server_lr,
        clip_norm: args.clip_norm,
        dp,
    };
    Ok((rule, seed))
}

/// The round's global model: a whole model, or (LoRA rounds) an adapter on its frozen
/// base, aggregated as the checkpoint of its factors.
enum Global {
    Model(Box<Checkpoint>),
    Adapter(Box<AdapterGlobal>),
}

struct AdapterGlobal {
    folder: AdapterFolder,
    base: Checkpoint,
    factors: Checkpoint,
}

impl Global {
    fn load(dir: &Path) -> Result<Self> {
        if !crate::fl::adapter::is_adapter(dir) {
            return Ok(Global::Model(Box::new(Checkpoint::load(dir)?)));
        }
        let folder = AdapterFolder::load(dir)?;
        let base = folder.base.load()?;
        let factors = folder.as_checkpoint(&base);
        Ok(Global::Adapter(Box::new(AdapterGlobal {
            folder,
            base,
            factors,
        })))
    }

    /// What the rules combine.
    fn checkpoint(&self) -> &Checkpoint {
        match self {
            Global::Model(c) => c,
            Global::Adapter(a) => &a.factors,
        }
    }

    fn max_seq_len(&self, given: Option<usize>) -> Result<usize> {
        Ok(match self {
            Global::Model(c) => {
                crate::data::tokenizer::resolve_max_seq_len(given, c.config.max_positions())?
            }
            Global::Adapter(_) => given.unwrap_or(LORA_SEQ_LEN),
        })
    }

    /// The outcome's model as what this global is: the model, or an adapter.
    fn next_adapter(&self, next: &Checkpoint) -> Result<Option<LoraAdapter>> {
        Ok(match self {
            Global::Model(_) => None,
            Global::Adapter(a) => Some(from_factors(
                &a.folder.adapter.config,
                next.tensors.clone(),
            )?),
        })
    }
}

/// Combines the updates by the rule: FlexLoRA for adapters, or the per-element rules.
fn combine(args: &Args, global: &Global, rule: &ServerRule) -> Result<Outcome> {
    Ok(match (global, args.rule.as_str()) {
        (Global::Adapter(a), "flexlora") => {
            flexlora::aggregate_dirs(&a.folder, &a.factors, &args.updates, rule.weighting)?
        }
        (Global::Model(_), "flexlora") => {
            return Err(Error::Invalid(format!(
                "--rule flexlora combines LoRA adapters; {} is a whole model",
                args.global.display()
            )))
        }
        _ => aggregate_dirs(global.checkpoint(), &args.updates, rule, args.skip_bad)?,
    })
}

/// The round's manifest: rule, privacy, clients, coverage and sizes.
fn round_manifest(
    args: &Args,
    rule: &ServerRule,
    seed_record: Option<&crate::fl::privacy::SeedRecord>,
    global: &Checkpoint,
    outcome: &Outcome,
) -> Manifest {
    let next = &outcome.model;
    let coverage = &outcome.coverage;
    let mean_params = outcome.clients.iter().map(|c| c.parameters).sum::<u64>() as f64
        / outcome.clients.len().max(1) as f64;
    let rule_name = match args.rule.as_str() {
        "flexlora" => json!("flexlora"),
        _ => json!(rule.rule),
    };
    let privacy = match (&rule.dp, seed_record) {
        (Some(dp), Some(seed)) => Some(dp.settings.record(dp.round, seed)),
        _ => None,
    };
    if let (Some(record), false) = (&privacy, args.quiet) {
        eprintln!(
            "privacy: epsilon {:.4} at delta {} after {} rounds ({:.4} per round)",
            record.epsilon, record.settings.delta, record.round, record.epsilon_round
        );
    }
    let record = Aggregated {
        metrics: AggregateMetrics {
            clients: outcome.clients.len(),
            mean_client_parameters: mean_params,
            mean_client_bytes: 4.0 * mean_params,
            updated_fraction: coverage.updated_elements as f64 / coverage.total_elements as f64,
            epsilon: privacy.as_ref().map(|p| p.epsilon),
            epsilon_round: privacy.as_ref().map(|p| p.epsilon_round),
            validation: None,
        },
        clients: outcome.clients.clone(),
        skipped: outcome.skipped.clone(),
        coverage: coverage.clone(),
        tensors: outcome.tensors.clone(),
        privacy,
    };
    let mut manifest = Manifest::new(
        StageRecord::Aggregate(record),
        "raffm-aggregate",
        json!({
            "global": args.global, "updates": args.updates, "output": args.output, "rule": rule_name,
            "clip_norm": rule.clip_norm, "weighting": rule.weighting, "server_lr": args.server_lr,
            "skip_bad": args.skip_bad, "partition": args.partition, "round": args.round,
            "eval_max_examples": args.eval.eval_max_examples,
        }),
    );
    manifest.inputs = global.files.clone();
    manifest.inputs.extend(outcome.inputs.iter().cloned());
    manifest.architecture = Some(next.config.widths());
    manifest.parameter_count = Some(next.parameter_count());
    manifest.bytes_on_wire = Some(next.bytes_on_wire());
    manifest
}

/// The new model's validation metrics (`--partition`), into `manifest`.
fn evaluate_next(
    args: &Args,
    global: &Global,
    next: &Checkpoint,
    next_adapter: Option<&LoraAdapter>,
    manifest: &mut Manifest,
) -> Result<()> {
    let Some(partition_path) = &args.partition else {
        return Ok(());
    };
    let partition = Partition::load(partition_path)?;
    let ids = args.eval.validation_ids(&partition, partition_path)?;
    let max_seq_len = global.max_seq_len(args.eval.max_seq_len)?;
    let result = with_backend!(args.eval.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        match (global, next_adapter) {
            (Global::Adapter(a), Some(adapter)) => crate::fl::adapter::evaluate::evaluate::<Inner>(
                &a.base,
                adapter,
                &partition,
                &ids,
                max_seq_len,
                args.eval.batch_size,
                &device,
                |_| {},
            )?,
            _ => evaluate_examples::<Inner>(
                next,
                &args.global,
                &partition,
                &ids,
                max_seq_len,
                args.eval.batch_size,
                &device,
                |_| {},
            )?,
        }
    });
    if let StageRecord::Aggregate(aggregated) = &mut manifest.record {
        aggregated.metrics.validation = Some(result.clone());
    }
    manifest.inputs.push(sha256_file(partition_path)?);
    if !args.quiet {
        let line = serde_json::to_string(&result).expect("metrics serialize");
        eprintln!("validation: {line}");
    }
    Ok(())
}

/// Runs the stage: writes `args.output` and returns its manifest's record.
pub fn run(args: &Args) -> Result<StageRecord> {
    let mut inputs = vec![("--global", args.global.as_path())];
    inputs.extend(args.updates.iter().map(|u| ("--updates", u.as_path())));
    inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
    crate::core::io::check_output_apart(("--output", &args.output), &inputs)?;
    // Held from the start, so a concurrent writer of the same output is refused at once.
    let mut staging = StagingDir::new(&args.output)?;
    let (rule, seed_record) = server_rule(args)?;
    rule.validate()?;
    if let Some(dp) = &rule.dp {
        dp.settings.check_target(dp.round)?;
    }
    let global = Global::load(&args.global)?;
    // Before the aggregation: a bad --max-seq-len fails at once.
    global.max_seq_len(args.eval.max_seq_len)?;
    let outcome = combine(args, &global, &rule)?;
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
    let next_adapter = global.next_adapter(next)?;
    let mut manifest = round_manifest(
        args,
        &rule,
        seed_record.as_ref(),
        global.checkpoint(),
        &outcome,
    );
    evaluate_next(args, &global, next, next_adapter.as_ref(), &mut manifest)?;
    match (&global, &next_adapter) {
        (Global::Adapter(a), Some(adapter)) => {
            write_adapter(&mut staging, adapter, &a.folder.base, &mut manifest)?
        }
        _ => {
            next.write_into(&mut staging)?;
            manifest.write_into(&mut staging)?;
        }
    }
    staging.commit()?;
    let record = manifest.record;
    if !args.quiet {
        let coverage = &outcome.coverage;
        eprintln!(
            "aggregated {} clients ({} skipped), {:.1}% of the global elements updated -> {}",
            outcome.clients.len(),
            outcome.skipped.len(),
            100.0 * coverage.updated_elements as f64 / coverage.total_elements as f64,
            args.output.display()
        );
    }
    Ok(record)
}
