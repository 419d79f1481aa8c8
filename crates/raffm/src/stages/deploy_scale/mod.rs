//! `raffm-deploy-scale`: after the last round, every client gets the largest sub-model of
//! the final global model that its inference budget allows (after LoRA rounds, a decoder
//! with the adapter merged in: [`decoder`]).

mod decoder;
mod files;
mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::burn::tensor::backend::AutodiffBackend;
use crate::core::checkpoint::Checkpoint;
use crate::core::cli::{EvalArgs, SpaceArgs};
use crate::core::error::{Error, Result};
use crate::core::io::StagingDir;
use crate::core::manifest::{Deployed, Manifest, StageRecord, MANIFEST_FILE};
use crate::core::tensor::Norm;
use crate::data::partition::Partition;
use crate::fl::cost::CostModel;
use crate::fl::deploy::{plan_client, ClientDeployment};
use crate::fl::extract::{ClientModel, ClientRequest, Strategy};
use crate::fl::pipeline::{Budgets, ClientBudget};
use crate::fl::prioritize::prioritize;
use crate::fl::search::{Policy, SearchSpace};
use crate::models::evaluate::{EvalSet, Metrics};
use crate::with_backend;

use files::WrittenModels;
use summary::{ClientSummary, ModelSummary, Report};

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
/// After a LoRA round (--global is an adapter) each client gets a plain decoder instead:
/// the largest base sub-model its device runs for inference (the whole base where memory
/// is unlimited), never smaller than the one it trained on, with the global adapter merged
/// in at its full rank. Its trained model is the base sub-model with its own-rank adapter.
/// Both are scored by option log-likelihood, as raffm-evaluate scores adapters.
///
/// Writes OUTPUT/summary.json and OUTPUT/summary.csv (client, tier, sizes, memory,
/// accuracies), and OUTPUT/manifest.json. The folder is written atomically.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-deploy-scale",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Final global checkpoint (e.g. artifacts/default/round-5/global).
    #[arg(short, long)]
    pub global: PathBuf,
    /// budgets.json (raffm-budgets): every client's tier, budgets and the search space.
    #[arg(short, long)]
    pub budgets: PathBuf,
    /// partition.json: the validation split to evaluate on.
    #[arg(short, long)]
    pub partition: PathBuf,
    /// Folder to write (e.g. artifacts/default/round-5/deploy).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Clients to deploy to, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<String>,
    /// Multiply every device memory by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub memory_scale: f64,
    /// Index strategy (default: budgets.json's). `salient` prioritizes the global model
    /// first unless it already is.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Norm of the salience scores when prioritizing.
    #[arg(long, default_value = "l1")]
    pub norm: Norm,
    /// Round the model comes from (moves rolling windows, seeds random indices).
    #[arg(long, default_value_t = 0)]
    pub round: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub space: SpaceArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the stage: writes `args.output` and returns its manifest's record.
pub fn run(args: &Args) -> Result<StageRecord> {
    if !(args.memory_scale > 0.0 && args.memory_scale.is_finite()) {
        return Err(Error::Invalid(format!(
            "--memory-scale must be positive, got {}",
            args.memory_scale
        )));
    }
    crate::core::io::check_output_apart(
        ("--output", &args.output),
        &[
            ("--global", &args.global),
            ("--budgets", &args.budgets),
            ("--partition", &args.partition),
        ],
    )?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template(
            "deploying [{bar:30}] {pos}/{len} clients {elapsed}<{eta} {msg}",
        )
        .expect("valid template"),
    );
    let staging = StagingDir::new(&args.output)?;
    if crate::fl::adapter::is_adapter(&args.global) {
        return decoder::deploy(args, staging, &progress);
    }
    deploy_models(args, staging, &progress)
}

/// Deploys sub-models of the model `args.global` to the clients, into `staging`.
fn deploy_models(
    args: &Args,
    mut staging: StagingDir,
    progress: &ProgressBar,
) -> Result<StageRecord> {
    let deployment = Deployment::load(args)?;
    let clients = selected_clients(args, &deployment.budgets)?;
    let ids = args
        .eval
        .validation_ids(&deployment.partition, &args.partition)?;
    let examples = EvalSet::load(
        &args.global,
        &deployment.partition,
        &ids,
        deployment.max_seq_len,
    )?;
    progress.set_length(clients.len() as u64);
    let mut summaries = Vec::new();
    // Clients of a tier usually get the same sub-models: evaluate and write each once.
    let mut evaluated: BTreeMap<String, Metrics> = BTreeMap::new();
    let mut written = WrittenModels::default();
    with_backend!(args.eval.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let mut evaluate = |model: &ClientModel| -> Result<Metrics> {
            let key = model_key(model);
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
            let summary = |model: &ClientModel, metrics, path| {
                ModelSummary::new(&model.choice.cost, &model.choice.widths, &metrics, path)
            };
            summaries.push(ClientSummary {
                client: budget.client.clone(),
                tier: budget.tier.clone(),
                device_memory_bytes: plan.device_memory_bytes,
                train: summary(&plan.train, evaluate(&plan.train)?, None),
                deployed: summary(&plan.deployed, evaluate(&plan.deployed)?, Some(target)),
            });
            progress.inc(1);
        }
    });
    progress.finish_and_clear();

    let global_sha256 = deployment
        .global
        .weights_sha256()
        .ok_or_else(|| Error::format(&args.global, "has no weights file"))?
        .to_string();
    Report {
        args,
        global_sha256,
        strategy: deployment.strategy,
        prioritized_here: deployment.prioritized_here,
        space: &deployment.space,
        inputs: deployment.global.files.clone(),
        examples: ids.len(),
        clients: summaries,
        distinct_models: written.len(),
    }
    .write(staging)
}

/// The budgets of the clients to deploy to: those of --clients, else every client's.
fn selected_clients<'a>(args: &Args, budgets: &'a Budgets) -> Result<Vec<&'a ClientBudget>> {
    if args.clients.is_empty() {
        return Ok(budgets.clients.iter().collect());
    }
    args.clients
        .iter()
        .map(|id| {
            budgets
                .client(id)
                .ok_or_else(|| Error::format(&args.budgets, format!("no client `{id}`")))
        })
        .collect()
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
    fn load(args: &'a Args) -> Result<Self> {
        let mut global = Checkpoint::load(&args.global)?;
        let max_seq_len = crate::data::tokenizer::resolve_max_seq_len(
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

    /// Plans the deployment of `budget`'s client and writes its deployed model and
    /// manifest.json into its folder in `staging`, linking the files of the same model
    /// where `written` has them. Returns the plan, with the client's device memory.
    fn deploy_client(
        &self,
        budget: &ClientBudget,
        staging: &mut StagingDir,
        written: &mut WrittenModels,
    ) -> Result<ClientDeployment> {
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
        let key = model_key(&plan.deployed);
        if !written.link(&key, staging.path(), &mut client_dir)? {
            plan.deployed.checkpoint.write_into(&mut client_dir)?;
            written.record(key, &budget.client, &client_dir);
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
}

/// The key of a sub-model, the same for the same widths and indices: clients whose
/// models share it share their evaluation and files.
fn model_key(model: &ClientModel) -> String {
    serde_json::to_string(&(&model.choice.widths, &model.selection))
        .expect("widths and selections serialize")
}
