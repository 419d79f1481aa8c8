//! A pipeline as Make variables (`PL_*`), which the Makefile includes, so every command of
//! a round carries its options on its command line (`make -n round N=1` shows them). A
//! setting the pipeline leaves out is empty, and the Makefile then leaves the option out:
//! its default lives in one place, the binary that reads it (or, for the search space,
//! strategy and policies, `budgets.json`, which raffm-budgets writes from the pipeline).

use super::{LoraPipeline, Pipeline, PipelineFile, ServerSettings};
use crate::fl::extract::Strategy;

/// The variables of `pipeline`, in a stable order; empty values are settings left out.
/// Fails when the pipeline lacks what a round needs (its `data`).
pub fn make_vars(pipeline: &PipelineFile) -> Result<Vec<(&'static str, String)>, String> {
    match pipeline {
        PipelineFile::Finetune(p) => finetune_vars(p),
        PipelineFile::LlmLora(p) => lora_vars(p),
    }
}

fn text<T: ToString>(value: Option<T>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

fn path(value: &Option<std::path::PathBuf>) -> String {
    text(value.as_ref().map(|p| p.display()))
}

fn finetune_vars(p: &Pipeline) -> Result<Vec<(&'static str, String)>, String> {
    let data = p
        .data
        .as_ref()
        .ok_or("no `data`: a round needs its examples (`data.path`)")?;
    let (local, server) = (&p.local, &p.server);
    let attack = p.attack.as_ref();
    let mut vars = vec![
        ("PL_MODEL", p.model.display().to_string()),
        ("PL_DATA", data.path.display().to_string()),
        ("PL_DATA_FORMAT", text(data.format.as_ref())),
        ("PL_LABELS_FILE", path(&data.labels_file)),
        ("PL_VALIDATION_DATA", path(&data.validation_path)),
        (
            "PL_VALIDATION_LABELS_FILE",
            path(&data.validation_labels_file),
        ),
        ("PL_VALIDATION_FRACTION", text(data.validation_fraction)),
        ("PL_CLIENTS", p.clients.to_string()),
        ("PL_SCHEME", text(p.partition.scheme.as_ref())),
        ("PL_ALPHA", text(p.partition.alpha)),
        ("PL_KSHOT", text(p.partition.k)),
        (
            "PL_PER_ROUND",
            p.rounds
                .clients_per_round
                .unwrap_or((p.clients / 10).max(1))
                .to_string(),
        ),
        ("PL_SEED", p.seed.to_string()),
        ("PL_HEAD_INIT", text(p.head_init.as_ref())),
        // Only RaFFM's salient strategy reorders the global model before extracting.
        (
            "PL_PRIORITIZE",
            text((p.strategy == Strategy::Salient).then_some(1)),
        ),
        ("PL_EPOCHS", text(local.epochs)),
        ("PL_BATCH_SIZE", text(local.batch_size)),
        ("PL_MAX_SEQ_LEN", text(local.max_seq_len)),
        // A vision model's input side: raffm-init-head writes it into the model's
        // preprocessor_config.json, where every later stage reads it.
        ("PL_IMAGE_SIZE", text(p.training.image_size)),
        ("PL_LR", text(local.lr)),
        ("PL_WEIGHT_DECAY", text(local.weight_decay)),
        ("PL_MU", text(local.mu)),
        (
            "PL_FREEZE",
            text(local.freeze_embeddings.then_some("--freeze-embeddings")),
        ),
        ("PL_MAX_STEPS", text(local.max_steps)),
        ("PL_PRECISION", text(local.precision)),
        // Experiments: the first `per_round` participants of every round are malicious.
        (
            "PL_ATTACK",
            text(attack.map(|a| a.option().expect("checked when loaded"))),
        ),
        ("PL_ATTACK_PER_ROUND", text(attack.map(|a| a.per_round))),
        ("PL_EVAL_MAX", text(p.evaluation.max_examples)),
    ];
    vars.extend(server_vars(server, server.rule.clone(), p.clients));
    Ok(vars)
}

/// The server's rule, clipping, DP-FedAvg and learning rate.
fn server_vars(
    server: &ServerSettings,
    rule: Option<String>,
    clients: usize,
) -> Vec<(&'static str, String)> {
    let dp = server.dp.as_ref();
    vec![
        ("PL_WEIGHTING", text(server.weighting.as_ref())),
        ("PL_SERVER_LR", text(server.lr)),
        ("PL_RULE", text(rule)),
        ("PL_TRIM_FRACTION", text(server.trim_fraction)),
        ("PL_CLIP_NORM", text(server.clip_norm)),
        // DP-FedAvg: Poisson sampling at sample_rate, the sum over the expected q * N; the
        // noise seed from the pipeline (experiments) or RAFFM_DP_SEED (a secret).
        ("PL_DP_NOISE", text(dp.map(|d| d.noise_multiplier))),
        ("PL_DP_CLIP", text(dp.map(|d| d.clip_norm))),
        ("PL_DP_RATE", text(dp.map(|d| d.sample_rate))),
        (
            "PL_DP_EXPECTED",
            text(dp.map(|d| d.sample_rate * clients as f64)),
        ),
        ("PL_DP_DELTA", text(dp.and_then(|d| d.delta))),
        ("PL_DP_TARGET", text(dp.and_then(|d| d.target_epsilon))),
        ("PL_DP_SEED", text(dp.and_then(|d| d.seed))),
    ]
}

fn lora_vars(p: &LoraPipeline) -> Result<Vec<(&'static str, String)>, String> {
    let (lora, local) = (&p.lora, &p.local);
    let task = p.data.format.as_deref().ok_or(
        "no `data.format`: the decoder task's format (rotten-tomatoes, bigbench, jsonl or political)",
    )?;
    let targets = lora.target_modules.as_ref().map(|t| t.join(","));
    let lora_flags: Vec<String> = [
        ("--lora-r", Some(p.global_rank().to_string())),
        ("--lora-alpha", lora.alpha.map(|a| a.to_string())),
        ("--lora-dropout", lora.dropout.map(|d| d.to_string())),
        ("--lora-targets", targets),
    ]
    .into_iter()
    .filter_map(|(flag, v)| v.map(|v| format!("{flag} {v}")))
    .collect();
    let mut vars = vec![
        ("PL_KIND", "llm-lora".into()),
        ("PL_MODEL", p.model.display().to_string()),
        ("PL_DATA", p.data.path.display().to_string()),
        ("PL_DATA_FORMAT", format!("llm:{task}")),
        ("PL_TASK", task.to_string()),
        ("PL_VALIDATION_FRACTION", text(p.data.validation_fraction)),
        ("PL_CLIENTS", p.clients.to_string()),
        ("PL_SCHEME", text(p.partition.scheme.as_ref())),
        ("PL_ALPHA", text(p.partition.alpha)),
        ("PL_KSHOT", text(p.partition.k)),
        // Every client in every round, unless the pipeline samples.
        (
            "PL_PER_ROUND",
            p.rounds.clients_per_round.unwrap_or(p.clients).to_string(),
        ),
        ("PL_SEED", p.seed.to_string()),
        // RaFFM + LoRA: the base is prioritized once (it is frozen), and the global
        // adapter is made on the prioritized base.
        ("PL_LORA_BASE", text(p.submodels.is_some().then_some(1))),
        ("PL_LORA_FLAGS", lora_flags.join(" ")),
        ("PL_EPOCHS", text(local.epochs)),
        ("PL_BATCH_SIZE", text(local.batch_size)),
        ("PL_MAX_SEQ_LEN", text(local.max_seq_len)),
        ("PL_LR", text(local.lr)),
        ("PL_WEIGHT_DECAY", text(local.weight_decay)),
        ("PL_MAX_STEPS", text(local.max_steps)),
        ("PL_PRECISION", text(local.precision)),
        ("PL_EVAL_MAX", text(p.evaluation.max_examples)),
    ];
    vars.extend(server_vars(&p.server, p.rule(), p.clients));
    Ok(vars)
}
