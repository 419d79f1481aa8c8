//! `raffm-deploy-scale`: after the last round, every client gets the largest sub-model of
//! the final global model that its inference budget allows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use raffm::burn::tensor::backend::AutodiffBackend;
use raffm::checkpoint::Checkpoint;
use raffm::cli::{EvalArgs, SpaceArgs};
use raffm::cost::CostModel;
use raffm::deploy::{plan_client, ClientDeployment};
use raffm::evaluate::{EvalSet, Metrics};
use raffm::extract::{ClientModel, ClientRequest, Strategy};
use raffm::io::{sha256_file, StagingDir};
use raffm::manifest::{
    DeployMetrics, DeploySummary, Deployed, Manifest, StageRecord, TierSummary, MANIFEST_FILE,
};
use raffm::partition::Partition;
use raffm::pipeline::{round_of, Budgets, ClientBudget};
use raffm::prioritize::prioritize;
use raffm::search::{Policy, SearchSpace};
use raffm::tensor::Norm;
use raffm::{with_backend, Widths};

/// Deploys the final global model to every client in budgets.json. For each client it
/// extracts two sub-models: the one its training budget allows (what it trained during
/// the rounds) and the largest one whose inference cost fits the same device memory
/// (inference needs far less memory than training: the activations of one layer, no
/// gradients or optimizer state), never smaller than the first. The deployed model is
/// written to OUTPUT/<client>/; both are evaluated on the validation split. Clients that
/// get the same model share its files (hard links).
///
/// The device memory is the tier's `memory_bytes` in budgets.json (unlimited where a tier
/// gives none); --memory-scale multiplies it, for what-if studies.
///
/// Writes OUTPUT/summary.json and OUTPUT/summary.csv (client, tier, sizes, memory,
/// accuracies), and OUTPUT/manifest.json. The folder is written atomically.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-deploy-scale",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// Final global checkpoint (e.g. artifacts/default/round-5/global).
    #[arg(short, long)]
    global: PathBuf,
    /// budgets.json (raffm-budgets): every client's tier, budgets and the search space.
    #[arg(short, long)]
    budgets: PathBuf,
    /// partition.json: the validation split to evaluate on.
    #[arg(short, long)]
    partition: PathBuf,
    /// Folder to write (e.g. artifacts/default/round-5/deploy).
    #[arg(short, long)]
    output: PathBuf,
    /// Clients to deploy to, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Multiply every device memory by this factor.
    #[arg(long, default_value_t = 1.0)]
    memory_scale: f64,
    /// Index strategy (default: budgets.json's). `salient` prioritizes the global model
    /// first unless it already is.
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Norm of the salience scores when prioritizing.
    #[arg(long, default_value = "l1")]
    norm: Norm,
    /// Round the model comes from (moves rolling windows, seeds random indices).
    #[arg(long, default_value_t = 0)]
    round: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    eval: EvalArgs,
    #[arg(short, long)]
    quiet: bool,
}

/// One model in the summary.
#[derive(Debug, Clone, Serialize)]
struct ModelSummary {
    parameters: u64,
    bytes: u64,
    train_memory_bytes: u64,
    inference_memory_bytes: u64,
    architecture: Widths,
    accuracy: Option<f64>,
    macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct ClientSummary {
    client: String,
    tier: String,
    device_memory_bytes: Option<u64>,
    train: ModelSummary,
    deployed: ModelSummary,
}

/// The files of a deployed model already written (into the folder of `client`), to link
/// instead of writing again.
struct Written {
    client: String,
    records: Vec<raffm::io::FileRecord>,
}

fn run(args: Args) -> anyhow::Result<()> {
    if !(args.memory_scale > 0.0 && args.memory_scale.is_finite()) {
        bail!("--memory-scale must be positive, got {}", args.memory_scale);
    }
    raffm::io::check_output_apart(
        ("--output", &args.output),
        &[
            ("--global", &args.global),
            ("--budgets", &args.budgets),
            ("--partition", &args.partition),
        ],
    )?;
    let deployment = Deployment::load(&args)?;
    let clients = deployment.clients()?;
    let ids = args
        .eval
        .validation_ids(&deployment.partition, &args.partition)?;
    let examples = EvalSet::load(
        &args.global,
        &deployment.partition,
        &ids,
        deployment.max_seq_len,
    )?;

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(clients.len() as u64)
    };
    progress.set_style(ProgressStyle::with_template(
        "deploying [{bar:30}] {pos}/{len} clients {elapsed}<{eta} {msg}",
    )?);
    let mut staging = StagingDir::new(&args.output)?;
    let mut summaries = Vec::new();
    // Clients of a tier usually get the same sub-models: evaluate and write each once.
    let mut evaluated: BTreeMap<String, Metrics> = BTreeMap::new();
    let mut written: BTreeMap<String, Written> = BTreeMap::new();
    with_backend!(args.eval.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let mut evaluate = |model: &ClientModel| -> anyhow::Result<Metrics> {
            let key = model_key(model)?;
            if let Some(m) = evaluated.get(&key) {
                return Ok(m.clone());
            }
            progress.set_message(format!(
                "evaluating {:.2}M parameters",
                model.checkpoint.parameter_count() as f64 / 1e6
            ));
            let m = examples.evaluate::<Inner>(
                &model.checkpoint,
                args.eval.batch_size,
                &device,
                |_| {},
            )?;
            evaluated.insert(key, m.clone());
            Ok(m)
        };
        for budget in &clients {
            let plan = deployment.deploy_client(budget, &mut staging, &mut written)?;
            let target = args.output.join(&budget.client);
            let train = model_summary(&plan.train, evaluate(&plan.train)?, None);
            let deployed = model_summary(&plan.deployed, evaluate(&plan.deployed)?, Some(target));
            summaries.push(ClientSummary {
                client: budget.client.clone(),
                tier: budget.tier.clone(),
                device_memory_bytes: plan.device_memory_bytes,
                train,
                deployed,
            });
            progress.inc(1);
        }
    });
    progress.finish_and_clear();

    let tiers = tier_summaries(&summaries);
    deployment.write_summaries(&mut staging, ids.len(), &summaries, &tiers)?;
    let mut manifest = deployment.manifest(summaries.len(), written.len(), &tiers)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    if !args.quiet {
        print_tiers(&tiers);
    }
    Ok(())
}

/// What every client's deployment shares: the options, the inputs (the global model
/// prioritized here where the strategy needs it) and the search it runs.
struct Deployment<'a> {
    args: &'a Args,
    global: Checkpoint,
    /// Tokens per validation example.
    max_seq_len: usize,
    budgets: Budgets,
    partition: Partition,
    space: SearchSpace,
    strategy: Strategy,
    /// Whether strategy `salient` had to prioritize a global model raffm-prioritize did
    /// not write.
    prioritized_here: bool,
    cost_model: CostModel,
}

impl<'a> Deployment<'a> {
    /// Loads the inputs and resolves the options, prioritizing the global model where the
    /// strategy needs it.
    fn load(args: &'a Args) -> anyhow::Result<Self> {
        let mut global = Checkpoint::load(&args.global)?;
        let max_seq_len = raffm::tokenizer::resolve_max_seq_len(
            args.eval.max_seq_len,
            global.config.max_positions(),
        )?;
        let budgets = Budgets::load(&args.budgets)?;
        let partition = Partition::load(&args.partition)?;
        let space = args
            .space
            .space(&budgets.search_space, global.config.axes())?;
        let strategy = args.strategy.unwrap_or(budgets.strategy);
        // No manifest is a model from elsewhere; one that does not read is an error.
        let manifest = args.global.join(MANIFEST_FILE);
        let prioritized = manifest.exists() && Manifest::load(&manifest)?.is_prioritized();
        let prioritized_here = strategy == Strategy::Salient && !prioritized;
        if prioritized_here {
            let files = global.files.clone();
            global = prioritize(&global, args.norm, |_| {}).0;
            global.files = files; // the deployed models come from these files, reordered
        }
        let cost_model = CostModel::for_checkpoint(&global, budgets.training);
        Ok(Self {
            args,
            global,
            max_seq_len,
            budgets,
            partition,
            space,
            strategy,
            prioritized_here,
            cost_model,
        })
    }

    /// The budgets of the clients to deploy to: those of --clients, else every client's.
    fn clients(&self) -> anyhow::Result<Vec<&ClientBudget>> {
        let args = self.args;
        if args.clients.is_empty() {
            Ok(self.budgets.clients.iter().collect())
        } else {
            args.clients
                .iter()
                .map(|id| {
                    self.budgets
                        .client(id)
                        .with_context(|| format!("{}: no client `{id}`", args.budgets.display()))
                })
                .collect()
        }
    }

    /// Plans the deployment of `budget`'s client and writes its deployed model and
    /// manifest.json into its folder in `staging`, linking the files of the same model
    /// where `written` has them. Returns the plan, with the client's device memory.
    fn deploy_client(
        &self,
        budget: &ClientBudget,
        staging: &mut StagingDir,
        written: &mut BTreeMap<String, Written>,
    ) -> anyhow::Result<ClientDeployment> {
        let args = self.args;
        let request = ClientRequest {
            client: &budget.client,
            budget: budget.train,
            round: args.round,
            seed: args.seed,
            strategy: self.strategy,
            policy: Policy::Largest,
            depth_policy: self.budgets.depth_policy,
            space: &self.space,
            cost_model: &self.cost_model,
            vocabulary: None,
        };
        let device_memory = budget
            .device_memory_bytes
            .map(|m| (m as f64 * args.memory_scale) as u64);
        let plan = plan_client(&self.global, &request, device_memory)?;
        let mut client_dir = staging.nested(&budget.client)?;
        let model_key = model_key(&plan.deployed)?;
        match written.get(&model_key) {
            Some(first) => {
                for record in &first.records {
                    let name = Path::new(&record.path)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .context("a written file has a name")?;
                    let existing = staging.path().join(&first.client).join(name);
                    client_dir.link(name, &existing, record)?;
                }
            }
            None => {
                plan.deployed.checkpoint.write_into(&mut client_dir)?;
                written.insert(
                    model_key,
                    Written {
                        client: budget.client.clone(),
                        records: client_dir.records().to_vec(),
                    },
                );
            }
        }
        let mut manifest = plan.deployed.manifest(
            &self.global,
            &request,
            json!({"global": args.global, "budgets": args.budgets, "device_memory_bytes": device_memory}),
        )?;
        let StageRecord::Extract(sub_model) = manifest.record else {
            unreachable!("a client sub-model's manifest is an extract record")
        };
        manifest.record = StageRecord::Deploy(Deployed {
            device_memory_bytes: device_memory,
            tier: budget.tier.clone(),
            sub_model,
        });
        manifest.tool = "raffm-deploy-scale".into();
        manifest.write_into(&mut client_dir)?;
        client_dir.commit()?;
        Ok(plan)
    }

    /// Writes summary.json and summary.csv into `staging`: every client's models and each
    /// tier's, evaluated on `num_examples` validation examples.
    fn write_summaries(
        &self,
        staging: &mut StagingDir,
        num_examples: usize,
        clients: &[ClientSummary],
        tiers: &[TierSummary],
    ) -> anyhow::Result<()> {
        let args = self.args;
        let summary = json!({
            "global": args.global,
            "global_sha256": self.global.weights_sha256(),
            "round": round_of(&args.global),
            "strategy": self.strategy,
            "prioritized_here": self.prioritized_here,
            "memory_scale": args.memory_scale,
            "evaluation": {"split": "validation", "examples": num_examples},
            "clients": clients,
            "tiers": tiers,
        });
        staging.write(
            "summary.json",
            format!("{}\n", serde_json::to_string_pretty(&summary)?).as_bytes(),
        )?;
        staging.write("summary.csv", summary_csv(clients).as_bytes())?;
        Ok(())
    }

    /// The output folder's manifest.json, for `clients` clients given `distinct_models`
    /// different models.
    fn manifest(
        &self,
        clients: usize,
        distinct_models: usize,
        tiers: &[TierSummary],
    ) -> anyhow::Result<Manifest> {
        let args = self.args;
        let record = DeploySummary {
            metrics: DeployMetrics {
                clients,
                distinct_models,
            },
            tiers: tiers.to_vec(),
        };
        let mut manifest = Manifest::new(
            StageRecord::DeployScale(record),
            "raffm-deploy-scale",
            json!({
                "global": args.global, "budgets": args.budgets, "partition": args.partition, "output": args.output,
                "memory_scale": args.memory_scale, "strategy": self.strategy, "norm": args.norm,
                "round": args.round, "seed": args.seed, "search_space": self.space, "eval_max_examples": args.eval.eval_max_examples,
            }),
        );
        manifest.seeds.insert("seed".into(), json!(args.seed));
        manifest.inputs = self.global.files.clone();
        manifest.inputs.push(sha256_file(&args.budgets)?);
        manifest.inputs.push(sha256_file(&args.partition)?);
        Ok(manifest)
    }
}

/// The key of a sub-model, the same for the same widths and indices: clients whose
/// models share it share their evaluation and files.
fn model_key(model: &ClientModel) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&(
        &model.choice.widths,
        &model.selection,
    ))?)
}

/// The summary of one of a client's models, with its metrics and, for the deployed one,
/// its folder.
fn model_summary(model: &ClientModel, metrics: Metrics, path: Option<PathBuf>) -> ModelSummary {
    let cost = &model.choice.cost;
    ModelSummary {
        parameters: cost.parameters,
        bytes: cost.bytes_on_wire,
        train_memory_bytes: cost.train_memory_bytes,
        inference_memory_bytes: cost.inference_memory_bytes,
        architecture: model.choice.widths.clone(),
        accuracy: metrics.accuracy,
        macro_f1: metrics.macro_f1,
        path,
    }
}

/// Per tier: the first client's sizes (every client of a tier has the same budget) and
/// the mean accuracies.
fn tier_summaries(clients: &[ClientSummary]) -> Vec<TierSummary> {
    let mut order: Vec<&str> = Vec::new();
    for c in clients {
        if !order.contains(&c.tier.as_str()) {
            order.push(&c.tier);
        }
    }
    let mean = |values: Vec<Option<f64>>| -> Option<f64> {
        let v: Vec<f64> = values.into_iter().collect::<Option<_>>()?;
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut tiers: Vec<TierSummary> = order
        .into_iter()
        .map(|tier| {
            let of_tier: Vec<&ClientSummary> = clients.iter().filter(|c| c.tier == tier).collect();
            let first = &of_tier[0];
            TierSummary {
                tier: tier.to_string(),
                clients: of_tier.len(),
                device_memory_bytes: first.device_memory_bytes,
                train_parameters: first.train.parameters,
                train_accuracy: mean(of_tier.iter().map(|c| c.train.accuracy).collect()),
                train_to_inference_memory: first.train.train_memory_bytes as f64
                    / first.train.inference_memory_bytes as f64,
                deployed_parameters: first.deployed.parameters,
                deployed_accuracy: mean(of_tier.iter().map(|c| c.deployed.accuracy).collect()),
            }
        })
        .collect();
    tiers.sort_by_key(|t| t.train_parameters);
    tiers
}

fn summary_csv(clients: &[ClientSummary]) -> String {
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let mut csv = String::from(
        "client,tier,device_memory_bytes,train_parameters,train_bytes,train_memory_bytes,train_inference_memory_bytes,train_accuracy,deployed_parameters,deployed_bytes,deployed_inference_memory_bytes,deployed_accuracy\n",
    );
    for c in clients {
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.client,
            c.tier,
            c.device_memory_bytes
                .map_or(String::new(), |m| m.to_string()),
            c.train.parameters,
            c.train.bytes,
            c.train.train_memory_bytes,
            c.train.inference_memory_bytes,
            f(c.train.accuracy),
            c.deployed.parameters,
            c.deployed.bytes,
            c.deployed.inference_memory_bytes,
            f(c.deployed.accuracy)
        );
    }
    csv
}

fn print_tiers(tiers: &[TierSummary]) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mib = |m: Option<u64>| {
        m.map_or("unlimited".into(), |m| {
            format!("{:.0} MiB", m as f64 / (1 << 20) as f64)
        })
    };
    println!("tier        clients     device  trained params  train/infer  accuracy  deployed params  accuracy");
    for t in tiers {
        println!(
            "{:<10}  {:>7}  {:>9}  {:>13.2}M  {:>10.1}x  {:>8}  {:>14.2}M  {:>8}",
            t.tier,
            t.clients,
            mib(t.device_memory_bytes),
            t.train_parameters as f64 / 1e6,
            t.train_to_inference_memory,
            f(t.train_accuracy),
            t.deployed_parameters as f64 / 1e6,
            f(t.deployed_accuracy)
        );
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-deploy-scale", run(Args::parse()))
}
