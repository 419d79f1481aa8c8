//! Reading a pipeline run folder (`artifacts/<pipeline>/`): the per-round numbers from the
//! stage manifests, the client sub-model sizes, and the optional deploy-scale and SPP
//! ablation summaries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use raffm::core::manifest::{Manifest, StageRecord, MANIFEST_FILE};

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One line of metrics.jsonl: one finished round of one pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pipeline: String,
    pub round: u32,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub mcc: Option<f64>,
    /// Clients aggregated into the round's global model.
    pub clients: Option<u64>,
    pub mean_client_parameters: Option<f64>,
    /// Mean float32 size of the clients' sub-models, MiB.
    pub mean_client_mib: Option<f64>,
    /// Means over the round's trained clients.
    pub bytes_down_per_client: Option<f64>,
    pub bytes_up_per_client: Option<f64>,
    /// Download + upload of every trained client of the round.
    pub round_bytes: u64,
    pub cumulative_bytes: u64,
    /// Sum of the clients' local training wall time.
    pub local_train_seconds: Option<f64>,
    /// DP-FedAvg: the cumulative privacy loss after this round, at the pipeline's δ.
    pub epsilon: Option<f64>,
}

pub const COLUMNS: [&str; 14] = [
    "pipeline",
    "round",
    "accuracy",
    "macro_f1",
    "mcc",
    "clients",
    "mean_client_parameters",
    "mean_client_mib",
    "bytes_down_per_client",
    "bytes_up_per_client",
    "round_bytes",
    "cumulative_bytes",
    "local_train_seconds",
    "epsilon",
];

/// Everything the report needs from one run folder.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub name: String,
    pub rows: Vec<Row>,
    /// Parameters of every aggregated client sub-model, round by round.
    pub client_parameters: Vec<u64>,
    pub full_parameters: Option<u64>,
    pub validation_examples: Option<u64>,
    pub deploy: Option<DeploySummary>,
    /// The file `deploy` was read from: the newest round's `round-R/deploy/summary.json`.
    pub deploy_path: Option<PathBuf>,
    pub spp: Option<SppSummary>,
    /// The newest round's `round-R/spp.json`.
    pub spp_path: Option<PathBuf>,
}

impl Run {
    pub fn last_round(&self) -> u32 {
        self.rows.last().map_or(0, |r| r.round)
    }
}

// ---- file formats (only the fields the report reads) --------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct Scores {
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub mcc: Option<f64>,
    pub examples: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct EvalFile {
    metrics: Scores,
}

#[derive(Debug, Deserialize)]
struct FullModel {
    parameters: u64,
}

/// budgets.json from raffm-budgets.
#[derive(Debug, Deserialize)]
struct Budgets {
    full_model: Option<FullModel>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Evaluation {
    pub split: Option<String>,
    pub examples: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeployModel {
    pub parameters: u64,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeployClient {
    pub tier: String,
    pub train: DeployModel,
    pub deployed: DeployModel,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeployTier {
    pub tier: String,
    pub clients: Option<u64>,
    pub train_parameters: f64,
    pub train_accuracy: Option<f64>,
    pub deployed_parameters: f64,
    pub deployed_accuracy: Option<f64>,
    /// The device memory both models fit, and the training sub-model's training memory
    /// over its inference memory.
    pub device_memory_bytes: Option<u64>,
    pub train_to_inference_memory: Option<f64>,
}

/// deploy/summary.json from raffm-deploy-scale.
#[derive(Debug, Clone, Deserialize)]
pub struct DeploySummary {
    pub round: Option<u32>,
    pub strategy: Option<String>,
    pub memory_scale: Option<f64>,
    #[serde(default)]
    pub evaluation: Evaluation,
    #[serde(default)]
    pub clients: Vec<DeployClient>,
    #[serde(default)]
    pub tiers: Vec<DeployTier>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SppRow {
    pub fraction: f64,
    pub kind: String,
    pub parameters: Option<u64>,
    pub accuracy_spp: Option<f64>,
    pub accuracy_no_spp: Option<f64>,
}

/// spp.json from the SPP ablation.
#[derive(Debug, Clone, Deserialize)]
pub struct SppSummary {
    pub round: Option<u32>,
    #[serde(default)]
    pub evaluation: Evaluation,
    pub full_parameters: Option<u64>,
    pub layer_parameters: Option<u64>,
    pub rows: Vec<SppRow>,
}

// ---- loading -------------------------------------------------------------------------------

/// Reads and parses a JSON file; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))
}

fn read_optional<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The run's name: the folder's name (`artifacts/default/` is `default`).
fn run_name(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The trained client folders of a round (hidden staging folders skipped), sorted.
fn trained_dirs(round_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let trained = round_dir.join("trained");
    let entries = std::fs::read_dir(&trained).with_context(|| {
        format!(
            "{}: cannot read the round's trained clients",
            trained.display()
        )
    })?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", trained.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// round-R/global/manifest.json in a run folder.
fn global_manifest_path(dir: &Path, round: u32) -> PathBuf {
    dir.join(format!("round-{round}"))
        .join("global")
        .join("manifest.json")
}

/// Loads a run folder. Errors: the folder is missing, has no finished round, or a file in
/// it is malformed (the error names the file).
pub fn load_run(dir: &Path) -> anyhow::Result<Run> {
    if !dir.is_dir() {
        bail!("{}: no such run folder", dir.display());
    }
    let name = run_name(dir);
    let eval_path = dir.join("round-0").join("eval.json");
    if !eval_path.exists() && !global_manifest_path(dir, 1).exists() {
        bail!(
            "{}: no finished rounds (neither round-0/eval.json nor round-1/global/manifest.json)",
            dir.display()
        );
    }
    let budgets: Option<Budgets> = read_optional(&dir.join("budgets.json"))?;

    let zero: Scores = match read_optional::<EvalFile>(&eval_path)? {
        Some(e) => e.metrics,
        None => Scores::default(),
    };
    let mut validation_examples = zero.examples;
    let mut rows = vec![pretrained_row(&name, &zero)];

    let mut client_parameters = Vec::new();
    let mut cumulative = 0u64;
    let mut r = 1u32;
    while global_manifest_path(dir, r).exists() {
        let round = federated_round(dir, &name, r, cumulative)?;
        cumulative = round.row.cumulative_bytes;
        client_parameters.extend(round.client_parameters);
        validation_examples = validation_examples.or(round.validation_examples);
        rows.push(round.row);
        r += 1;
    }
    let last_round = r - 1;

    // Deployment and the ablation are per round; the newest round that has them counts.
    let deploy_path = newest_round_file(dir, last_round, "deploy/summary.json");
    let spp_path = newest_round_file(dir, last_round, "spp.json");
    let deploy = read_deploy_summary(deploy_path.as_deref())?;
    let spp: Option<SppSummary> = match &spp_path {
        Some(p) => read_optional(p)?,
        None => None,
    };
    let full_parameters = budgets
        .as_ref()
        .and_then(|b| b.full_model.as_ref().map(|f| f.parameters))
        .or(spp.as_ref().and_then(|s| s.full_parameters));
    Ok(Run {
        dir: dir.to_path_buf(),
        name,
        rows,
        client_parameters,
        full_parameters,
        validation_examples,
        deploy,
        deploy_path,
        spp,
        spp_path,
    })
}

/// Round 0: the pre-trained model (with a fresh head) before any federated round, scored
/// by round-0/eval.json; nothing trained or sent yet.
fn pretrained_row(name: &str, zero: &Scores) -> Row {
    Row {
        pipeline: name.to_string(),
        round: 0,
        accuracy: zero.accuracy,
        macro_f1: zero.macro_f1,
        mcc: zero.mcc,
        clients: None,
        mean_client_parameters: None,
        mean_client_mib: None,
        bytes_down_per_client: None,
        bytes_up_per_client: None,
        round_bytes: 0,
        cumulative_bytes: 0,
        local_train_seconds: None,
        epsilon: None,
    }
}

/// One finished federated round of a run.
struct FederatedRound {
    row: Row,
    /// Parameters of every client sub-model aggregated in the round.
    client_parameters: Vec<u64>,
    /// How many examples the round's global model was validated on.
    validation_examples: Option<u64>,
}

/// Reads round `round` from its global manifest and its trained clients' manifests;
/// `cumulative` is the traffic of the rounds before it.
fn federated_round(
    dir: &Path,
    name: &str,
    round: u32,
    cumulative: u64,
) -> anyhow::Result<FederatedRound> {
    let path = global_manifest_path(dir, round);
    let manifest = Manifest::load(&path)?;
    let StageRecord::Aggregate(global) = manifest.record else {
        bail!(
            "{}: written by stage `{}`, not by raffm-aggregate",
            path.display(),
            manifest.stage()
        );
    };
    let aggregated = global.clients;
    let traffic = client_traffic(&dir.join(format!("round-{round}")))?;
    let round_bytes: u64 = traffic.downs.iter().sum::<u64>() + traffic.ups.iter().sum::<u64>();
    let metrics = global.metrics;
    let validation = metrics.validation;
    let score = |pick: fn(&raffm::models::evaluate::Metrics) -> Option<f64>| {
        validation.as_ref().and_then(pick)
    };
    let row = Row {
        pipeline: name.to_string(),
        round,
        accuracy: score(|v| v.accuracy),
        macro_f1: score(|v| v.macro_f1),
        mcc: score(|v| v.mcc),
        clients: Some(metrics.clients as u64),
        mean_client_parameters: Some(metrics.mean_client_parameters),
        mean_client_mib: Some(metrics.mean_client_bytes / MIB),
        bytes_down_per_client: mean(traffic.downs.iter().map(|&b| b as f64)),
        bytes_up_per_client: mean(traffic.ups.iter().map(|&b| b as f64)),
        round_bytes,
        cumulative_bytes: cumulative + round_bytes,
        local_train_seconds: (!traffic.downs.is_empty()).then_some(traffic.seconds),
        epsilon: metrics.epsilon,
    };
    Ok(FederatedRound {
        row,
        client_parameters: aggregated.iter().map(|c| c.parameters).collect(),
        validation_examples: validation.map(|v| v.examples as u64),
    })
}

/// What the trained clients of one round report, in the order of their folders.
struct ClientTraffic {
    /// Bytes each client downloaded.
    downs: Vec<u64>,
    /// Bytes each client uploaded.
    ups: Vec<u64>,
    /// Their local training wall time, summed.
    seconds: f64,
}

/// Reads the manifests under `<round_dir>/trained/`: each client's bytes each way and its
/// training time.
fn client_traffic(round_dir: &Path) -> anyhow::Result<ClientTraffic> {
    let mut traffic = ClientTraffic {
        downs: Vec::new(),
        ups: Vec::new(),
        seconds: 0.0,
    };
    for client_dir in trained_dirs(round_dir)? {
        let path = client_dir.join(MANIFEST_FILE);
        let manifest = Manifest::load(&path)?;
        let StageRecord::LocalTrain(trained) = manifest.record else {
            bail!(
                "{}: written by stage `{}`, not by raffm-local-train",
                path.display(),
                manifest.stage()
            );
        };
        traffic.downs.push(trained.metrics.bytes_downloaded);
        traffic.ups.push(trained.metrics.bytes_uploaded);
        traffic.seconds += trained.metrics.wall_seconds;
    }
    Ok(traffic)
}

/// `<dir>/round-R/<relative>` for the newest round R in 1..=`last_round` that has it.
fn newest_round_file(dir: &Path, last_round: u32, relative: &str) -> Option<PathBuf> {
    (1..=last_round)
        .rev()
        .map(|round| dir.join(format!("round-{round}")).join(relative))
        .find(|p| p.is_file())
}

/// Reads a deploy summary; one that lists clients but no tiers gets per-tier means.
fn read_deploy_summary(path: Option<&Path>) -> anyhow::Result<Option<DeploySummary>> {
    let deploy: Option<DeploySummary> = match path {
        Some(p) => read_optional(p)?,
        None => None,
    };
    Ok(deploy.map(|mut d| {
        if d.tiers.is_empty() {
            d.tiers = tiers_from_clients(&d.clients);
        }
        d
    }))
}

/// Per-tier means, where a deploy summary lists clients but no tiers.
fn tiers_from_clients(clients: &[DeployClient]) -> Vec<DeployTier> {
    let mut names: Vec<&str> = Vec::new();
    for c in clients {
        if !names.contains(&c.tier.as_str()) {
            names.push(&c.tier);
        }
    }
    names
        .into_iter()
        .map(|tier| {
            let of: Vec<&DeployClient> = clients.iter().filter(|c| c.tier == tier).collect();
            let acc = |f: fn(&DeployClient) -> Option<f64>| {
                let v: Vec<f64> = of.iter().filter_map(|c| f(c)).collect();
                mean(v)
            };
            DeployTier {
                tier: tier.to_string(),
                clients: Some(of.len() as u64),
                train_parameters: mean(of.iter().map(|c| c.train.parameters as f64)).unwrap_or(0.0),
                train_accuracy: acc(|c| c.train.accuracy),
                deployed_parameters: mean(of.iter().map(|c| c.deployed.parameters as f64))
                    .unwrap_or(0.0),
                deployed_accuracy: acc(|c| c.deployed.accuracy),
                device_memory_bytes: None,
                train_to_inference_memory: None,
            }
        })
        .collect()
}
