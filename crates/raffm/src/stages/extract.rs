//! `raffm-extract`: per-client sub-models that fit their budgets.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::core::cli::SpaceArgs;
use crate::core::error::{Error, Result};
use crate::core::manifest::{Manifest, StageRecord, MANIFEST_FILE};
use crate::data::partition::Partition;
use crate::data::tokenizer::TextTokenizer;
use crate::data::Dataset;
use crate::fl::adapter::extract::{extract_client, AdapterRequest};
use crate::fl::adapter::AdapterFolder;
use crate::fl::cost::{CostModel, TrainingShape};
use crate::fl::extract::{write_client, ClientModel, ClientRequest, DepthPolicy, Strategy};
use crate::fl::pipeline::Budgets;
use crate::fl::search::{Budget, Policy, SearchSpace};
use crate::fl::vocab::{data_tokens, decoy_stream, with_decoys, ClientVocabulary, VocabularyMode};
use crate::Checkpoint;
use rayon::prelude::*;

/// Extracts one sub-model per client from a global checkpoint. For each client it picks
/// widths for every elastic axis (hidden size, depth, and per layer heads, head dimension
/// and FFN width) from the search space that fit the client's budget, by --policy
/// (largest: the most parameters that fit; sample: uniform among the configurations that
/// fit, seeded), chooses which global indices to keep by --strategy and which layers by
/// --depth-policy, and writes OUT_DIR/<client>/ as a checkpoint folder plus manifest.json
/// with the budget, the widths, their costs, the global checkpoint's sha256 and the index
/// map (for every tensor, the global tensor and indices it came from).
///
/// Strategies: salient (RaFFM: leading indices of a prioritized model), static (HeteroFL:
/// leading indices of the model as is), rolling (FedRolex: a window that advances one index
/// per round), random (seeded per round, client and layer). Depth policies: even (evenly
/// spaced layers), top (the top layers dropped), salience (the layers of largest weights).
///
/// With --vocabulary client, each client's sub-model keeps only the token-embedding rows of
/// the tokens its own data uses (its examples in --partition, tokenized with the global
/// model's tokenizer, plus the special tokens and --vocabulary-decoys random ids), and a
/// tokenizer reduced to them; the search counts that vocabulary.
///
/// Budgets come from --budgets budgets.json (see raffm-budgets), which also gives the
/// search space, strategy, policies and training shape the pipeline chose, for many
/// clients in one call, the global model read once; or from --max-params /
/// --param-fraction / --max-train-memory for a single client named by --client. Options
/// given here override budgets.json.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-extract",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Global checkpoint folder.
    #[arg(short, long)]
    pub global: PathBuf,
    /// Folder to write one sub-model folder per client into.
    #[arg(short, long)]
    pub out_dir: PathBuf,
    /// LoRA rounds: the folder that keeps the clients' base sub-models, each written the
    /// first time a client needs it (the base is frozen, so every round reuses them).
    #[arg(long)]
    pub bases: Option<PathBuf>,
    /// budgets.json with every client's budget.
    #[arg(long, conflicts_with_all = ["max_params", "param_fraction", "max_train_memory"])]
    pub budgets: Option<PathBuf>,
    /// Clients to extract, comma-separated (default: every client in --budgets).
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<String>,
    /// Single-client budget: at most this many parameters.
    #[arg(long)]
    pub max_params: Option<u64>,
    /// Single-client budget: at most this fraction of the global model's parameters.
    #[arg(long, conflicts_with = "max_params")]
    pub param_fraction: Option<f64>,
    /// Single-client budget: at most this many bytes of estimated training memory.
    #[arg(long)]
    pub max_train_memory: Option<u64>,
    /// Round number (moves rolling windows, seeds random indices).
    #[arg(long, default_value_t = 0)]
    pub round: u64,
    /// Seed of the `sample` policy and the `random` strategy.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index strategy: salient, static, rolling or random (default: budgets.json's, else
    /// salient).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Configuration policy: largest or sample (default: budgets.json's, else largest).
    #[arg(long)]
    pub policy: Option<Policy>,
    /// Which layers a shallower sub-model keeps: even, top or salience (default:
    /// budgets.json's, else even).
    #[arg(long)]
    pub depth_policy: Option<DepthPolicy>,
    /// Training batch size the memory estimate assumes (default: budgets.json's, else 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sequence length the memory estimate assumes (default: budgets.json's, else 64).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// The memory estimate assumes frozen embeddings (no gradients or optimizer state).
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Vocabulary of the sub-models: full, or client (the tokens of each client's data;
    /// needs --partition). Default: budgets.json's, else full.
    #[arg(long)]
    pub vocabulary: Option<VocabularyMode>,
    /// Random token ids added to each client vocabulary (default: budgets.json's, else 0).
    #[arg(long)]
    pub vocabulary_decoys: Option<usize>,
    /// partition.json with the clients' examples, for client vocabularies.
    #[arg(long)]
    pub partition: Option<PathBuf>,
    #[command(flatten)]
    pub space: SpaceArgs,
    /// No progress bar or summary.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the stage: writes each client's folder under `args.out_dir` and returns their
/// manifests' records, in client order.
pub fn run(args: &Args) -> Result<Vec<StageRecord>> {
    if crate::fl::adapter::is_adapter(&args.global) {
        return extract_adapters(args);
    }
    let global = Checkpoint::load(&args.global)?;
    global.check_tokenizer()?;
    let budgets_file = args
        .budgets
        .as_ref()
        .map(|p| Budgets::load(p))
        .transpose()?;
    let choices = Choices::resolve(args, budgets_file.as_ref());
    if choices.strategy == Strategy::Salient {
        warn_unless_prioritized(&args.global)?;
    }
    let shape = training_shape(args, budgets_file.as_ref());
    let cost_model = CostModel::for_checkpoint(&global, shape);
    // Without budgets.json, the default pipeline's space on the axes this model has.
    let base_space = budgets_file
        .as_ref()
        .map(|b| b.search_space.clone())
        .unwrap_or_else(|| SearchSpace::default().restricted_to(global.config.axes()));
    let space = args.space.space(&base_space, global.config.axes())?;
    let client_data = match choices.vocabulary {
        VocabularyMode::Full => None,
        VocabularyMode::Client => Some(ClientData::load(args)?),
    };
    let inputs = match &client_data {
        Some(data) => vec![crate::core::io::sha256_file(data.path)?],
        None => Vec::new(),
    };

    let requests = client_budgets(args, budgets_file.as_ref(), &global)?;
    check_client_folders(args, &requests)?;
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(requests.len() as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("extracting [{bar:30}] {pos}/{len} clients {elapsed}")
            .expect("valid template"),
    );
    let full_params = global.parameter_count();
    let parameters = json!({
        "global": args.global, "out_dir": args.out_dir, "round": args.round, "seed": args.seed,
        "strategy": choices.strategy, "policy": choices.policy, "depth_policy": choices.depth_policy,
        "search_space": space, "training_shape": shape, "budgets": args.budgets,
        "vocabulary": choices.vocabulary, "vocabulary_decoys": choices.decoys, "partition": args.partition,
    });
    // Clients in parallel: one client's gathering and hashing overlaps another's writing.
    let results: Vec<Result<(String, StageRecord)>> = requests
        .par_iter()
        .map(|(client, budget)| {
            let vocabulary = client_data
                .as_ref()
                .map(|data| {
                    let vocab_size = global.config.vocab_size();
                    data.vocabulary(client, vocab_size, args.seed, choices.decoys)
                })
                .transpose()?;
            let request = ClientRequest {
                client,
                budget: *budget,
                round: args.round,
                seed: args.seed,
                strategy: choices.strategy,
                policy: choices.policy,
                depth_policy: choices.depth_policy,
                space: &space,
                cost_model: &cost_model,
                vocabulary: vocabulary.as_ref(),
            };
            let target = args.out_dir.join(client);
            let sub = write_client(&global, &request, &target, parameters.clone(), &inputs)?;
            let record = Manifest::load(&target.join(MANIFEST_FILE))?.record;
            progress.inc(1);
            Ok((summary_line(client, &sub, full_params), record))
        })
        .collect();
    let written = results
        .into_iter()
        .collect::<Result<Vec<(String, StageRecord)>>>()?;
    progress.finish_and_clear();
    let mut records = Vec::new();
    for (line, record) in written {
        if !args.quiet {
            eprintln!("{line}");
        }
        records.push(record);
    }
    Ok(records)
}

/// The choices of an extraction that budgets.json may also give: each as given here,
/// else budgets.json's, else the default.
struct Choices {
    strategy: Strategy,
    policy: Policy,
    depth_policy: DepthPolicy,
    vocabulary: VocabularyMode,
    /// Random token ids added to each client vocabulary.
    decoys: usize,
}

impl Choices {
    /// Resolves each choice from the options given here and budgets.json, if any.
    fn resolve(args: &Args, budgets_file: Option<&Budgets>) -> Self {
        Self {
            strategy: args
                .strategy
                .or(budgets_file.map(|b| b.strategy))
                .unwrap_or(Strategy::Salient),
            policy: args
                .policy
                .or(budgets_file.map(|b| b.policy))
                .unwrap_or(Policy::Largest),
            depth_policy: args
                .depth_policy
                .or(budgets_file.map(|b| b.depth_policy))
                .unwrap_or_default(),
            vocabulary: args
                .vocabulary
                .or(budgets_file.map(|b| b.vocabulary))
                .unwrap_or_default(),
            decoys: args
                .vocabulary_decoys
                .or(budgets_file.map(|b| b.vocabulary_decoys))
                .unwrap_or(0),
        }
    }
}

/// Warns on stderr unless `global` was written by raffm-prioritize, as strategy `salient`
/// expects. Fails only when its manifest.json does not read.
fn warn_unless_prioritized(global: &Path) -> Result<()> {
    // No manifest is a model from elsewhere; one that does not read is an error.
    let manifest = global.join(MANIFEST_FILE);
    let prioritized = manifest.exists() && Manifest::load(&manifest)?.is_prioritized();
    if !prioritized {
        eprintln!(
            "raffm-extract: warning: strategy `salient` expects a prioritized checkpoint; {} was not written by raffm-prioritize",
            global.display()
        );
    }
    Ok(())
}

/// The training shape the memory estimate assumes: budgets.json's (else the default),
/// with the options given here in its place.
fn training_shape(args: &Args, budgets_file: Option<&Budgets>) -> TrainingShape {
    let base_shape = budgets_file.map(|b| b.training).unwrap_or_default();
    TrainingShape {
        batch_size: args.batch_size.unwrap_or(base_shape.batch_size),
        max_seq_len: args.max_seq_len.unwrap_or(base_shape.max_seq_len),
        freeze_embeddings: args.freeze_embeddings || base_shape.freeze_embeddings,
        image_size: base_shape.image_size,
    }
}

/// What client vocabularies are made from: the clients' examples (--partition, whose path
/// the messages name), their dataset and the global model's tokenizer.
struct ClientData<'a> {
    path: &'a PathBuf,
    partition: Partition,
    dataset: Dataset,
    tokenizer: TextTokenizer,
}

impl<'a> ClientData<'a> {
    /// Loads --partition, its dataset and the tokenizer of --global.
    fn load(args: &'a Args) -> Result<Self> {
        let path = args.partition.as_ref().ok_or_else(|| {
            Error::Invalid("--vocabulary client needs --partition (the clients' examples)".into())
        })?;
        let partition = Partition::load(path)?;
        let dataset = partition.dataset()?;
        let tokenizer = TextTokenizer::from_dir(&args.global)?;
        Ok(Self {
            path,
            partition,
            dataset,
            tokenizer,
        })
    }

    /// The vocabulary of `client`: the tokens of its examples, plus `decoys` random ids
    /// seeded by `seed` and the client.
    fn vocabulary(
        &self,
        client: &str,
        vocab_size: usize,
        seed: u64,
        decoys: usize,
    ) -> Result<ClientVocabulary> {
        let shard = self
            .partition
            .client(client)
            .ok_or_else(|| Error::format(self.path, format!("no client `{client}`")))?;
        let tokens = data_tokens(&self.tokenizer, &self.dataset, &shard.examples, vocab_size)?;
        let mut rng = decoy_stream(seed, client);
        Ok(with_decoys(&tokens, vocab_size, decoys, &mut rng))
    }
}

/// Every client to extract, with its budget: from budgets.json (by default all its
/// clients), else the single budget of --max-params / --param-fraction /
/// --max-train-memory for each client of --clients (by default one named `client`).
fn client_budgets(
    args: &Args,
    budgets_file: Option<&Budgets>,
    global: &Checkpoint,
) -> Result<Vec<(String, Budget)>> {
    Ok(match budgets_file {
        Some(budgets) => {
            let ids: Vec<String> = if args.clients.is_empty() {
                budgets.clients.iter().map(|c| c.client.clone()).collect()
            } else {
                args.clients.clone()
            };
            ids.into_iter()
                .map(|id| match budgets.client(&id) {
                    Some(c) => Ok((id, c.train)),
                    None => Err(Error::format(
                        args.budgets.as_ref().expect("budgets were read"),
                        format!("no client `{id}`"),
                    )),
                })
                .collect::<Result<_>>()?
        }
        None => {
            if let Some(f) = args.param_fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
                return Err(Error::Invalid(format!(
                    "--param-fraction must be in (0, 1], got {f}"
                )));
            }
            if args.max_params == Some(0) {
                return Err(Error::Invalid("--max-params must be at least 1".into()));
            }
            let full = global.parameter_count();
            let max_parameters = args.max_params.or(args
                .param_fraction
                .map(|f| (f * full as f64).floor() as u64));
            let budget = Budget {
                max_parameters,
                max_train_memory_bytes: args.max_train_memory,
            };
            let ids = if args.clients.is_empty() {
                vec!["client".to_string()]
            } else {
                args.clients.clone()
            };
            ids.into_iter().map(|id| (id, budget)).collect()
        }
    })
}

/// Checks every client's output folder before anything is written: its id is a plain
/// name, given once, and the folder is apart from every input.
fn check_client_folders(args: &Args, requests: &[(String, Budget)]) -> Result<()> {
    // Client ids become folder names: plain names, each once.
    let mut seen = std::collections::BTreeSet::new();
    for (client, _) in requests {
        crate::core::io::check_client_id(client)?;
        if !seen.insert(client.as_str()) {
            return Err(Error::Invalid(format!(
                "--clients names client {client} twice"
            )));
        }
        let mut inputs = vec![("--global", args.global.as_path())];
        inputs.extend(args.budgets.iter().map(|b| ("--budgets", b.as_path())));
        inputs.extend(args.partition.iter().map(|p| ("--partition", p.as_path())));
        crate::core::io::check_output_apart(("--out-dir", &args.out_dir.join(client)), &inputs)?;
    }
    Ok(())
}

/// A LoRA round: each client's slice of the global adapter, on the base sub-model that
/// budgets.json gives it (written once into --bases), in client order.
fn extract_adapters(args: &Args) -> Result<Vec<StageRecord>> {
    let Some(budgets_path) = &args.budgets else {
        return Err(Error::Invalid(
            "--budgets: a LoRA round takes each client's rank and base sub-model from budgets.json"
                .into(),
        ));
    };
    let Some(bases) = &args.bases else {
        return Err(Error::Invalid(
            "--bases: give the folder the clients' base sub-models are kept in".into(),
        ));
    };
    let budgets = Budgets::load(budgets_path)?;
    let global = AdapterFolder::load(&args.global)?;
    let base = global.base.load()?;
    let clients: Vec<String> = match args.clients.is_empty() {
        true => budgets.clients.iter().map(|c| c.client.clone()).collect(),
        false => args.clients.clone(),
    };
    let requests: Vec<(String, Budget)> = clients
        .iter()
        .map(|c| (c.clone(), Budget::default()))
        .collect();
    check_client_folders(args, &requests)?;
    let mut records = Vec::new();
    let batch_size = args.batch_size.unwrap_or(budgets.training.batch_size);
    let seq_len = args.max_seq_len.unwrap_or(budgets.training.max_seq_len);
    for client in &clients {
        let lora = budgets
            .client(client)
            .and_then(|b| b.lora.as_ref())
            .ok_or_else(|| {
                Error::format(budgets_path, format!("no LoRA budget for client {client}"))
            })?;
        let request = AdapterRequest {
            client,
            round: args.round,
            lora,
            batch_size,
            seq_len,
        };
        let target = args.out_dir.join(client);
        let memory = extract_client(&global, &base, &request, bases, &target)?;
        records.push(Manifest::load(&target.join(MANIFEST_FILE))?.record);
        if !args.quiet {
            eprintln!(
                "{client:>8}  rank {:>3}  {:<28} {:>7.1} MiB training memory",
                lora.rank,
                lora.submodel.options().replace("--", ""),
                memory as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(records)
}

/// One human-readable line about a client's sub-model.
fn summary_line(client: &str, sub: &ClientModel, full_params: u64) -> String {
    let p = sub.checkpoint.parameter_count();
    format!(
        "{client:>8}  {:>6.2}M params ({:>5.1}%)  {:>7.1} MiB  {}",
        p as f64 / 1e6,
        100.0 * p as f64 / full_params as f64,
        sub.checkpoint.bytes_on_wire() as f64 / (1 << 20) as f64,
        sub.choice.widths.summary(),
    )
}
