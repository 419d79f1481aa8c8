//! Deploying after a LoRA round (--global is an adapter): every client gets a plain
//! decoder, the largest base sub-model its device runs with the global adapter merged in
//! ([`crate::fl::adapter::deploy`]). Both of a client's models are scored by option
//! log-likelihood, as raffm-evaluate scores adapters: the base sub-model it trained on
//! with its adapter (its rank), and the merged decoder.

use std::collections::BTreeMap;

use indicatif::ProgressBar;
use serde_json::json;

use crate::burn::tensor::backend::AutodiffBackend;
use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};
use crate::core::io::StagingDir;
use crate::core::manifest::StageRecord;
use crate::data::partition::Partition;
use crate::fl::adapter::deploy::{deployed_manifest, plan_decoder};
use crate::fl::adapter::evaluate::{encoded_examples, evaluate_encoded, tokenizer};
use crate::fl::adapter::extract::AdapterRequest;
use crate::fl::adapter::{AdapterFolder, LORA_SEQ_LEN};
use crate::fl::extract::Strategy;
use crate::fl::pipeline::Budgets;
use crate::models::evaluate::Metrics;
use crate::models::families::llama::lora::LoraAdapter;
use crate::with_backend;

use super::files::WrittenModels;
use super::summary::{ClientSummary, ModelSummary, Report};
use super::{selected_clients, Args};

/// Deploys the adapter `args.global` to the clients, into `staging`.
pub fn deploy(args: &Args, staging: StagingDir, progress: &ProgressBar) -> Result<StageRecord> {
    if args.strategy.is_some_and(|s| s != Strategy::Salient) {
        return Err(Error::Invalid("--strategy: a decoder's base sub-models are the leading rows and columns of its prioritized base, as in its rounds; only `salient` applies".into()));
    }
    let budgets = Budgets::load(&args.budgets)?;
    let partition = Partition::load(&args.partition)?;
    let global = AdapterFolder::load(&args.global)?;
    let base = global.base.load()?;
    // Budgets written before they kept to the base's axes list every family's.
    let axes = base.config.axes();
    let space = args
        .space
        .space(&budgets.search_space.clone().restricted_to(axes), axes)?;
    let clients = selected_clients(args, &budgets)?;
    let ids = args.eval.validation_ids(&partition, &args.partition)?;
    let max_seq_len = args.eval.max_seq_len.unwrap_or(LORA_SEQ_LEN);
    let examples = encoded_examples(&base, &partition, &ids, max_seq_len)?;
    let (_, pad) = tokenizer(&base)?;
    progress.set_length(clients.len() as u64);

    let mut evaluated: BTreeMap<String, Metrics> = BTreeMap::new();
    let mut written = WrittenModels::default();
    let mut summaries = Vec::new();
    with_backend!(args.eval.device, B, device, {
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let score = |model: &Checkpoint, adapter: Option<&LoraAdapter>| {
            progress.set_message(format!(
                "evaluating {:.1}M parameters",
                model.parameter_count() as f64 / 1e6
            ));
            evaluate_encoded::<Inner>(
                model,
                adapter,
                &examples,
                pad,
                args.eval.batch_size,
                &device,
                |_| {},
            )
        };
        for budget in &clients {
            let client = budget.client.as_str();
            let lora = budget.lora.as_ref().ok_or_else(|| {
                Error::format(
                    &args.budgets,
                    format!("client {client} has no LoRA tier, yet --global is an adapter"),
                )
            })?;
            let request = AdapterRequest {
                client,
                round: args.round,
                lora,
                batch_size: budgets.training.batch_size,
                seq_len: budgets.training.max_seq_len,
            };
            let device_memory = budget
                .device_memory_bytes
                .map(|m| (m as f64 * args.memory_scale) as u64);
            let plan = plan_decoder(&base, &global.adapter, &request, &space, device_memory)?;
            let (train, deployed) = (&plan.train, &plan.deployed);

            // Clients of a tier usually get the same models: each is scored and written
            // once.
            let train_key = format!("{} rank {}", train.key(), lora.rank);
            let train_metrics = match evaluated.get(&train_key) {
                Some(m) => m.clone(),
                None => {
                    let adapter = train.adapter(&global.adapter, lora.rank)?;
                    let m = score(&train.checkpoint(&base)?, Some(&adapter));
                    evaluated.insert(train_key, m.clone());
                    m
                }
            };
            let mut client_dir = staging.nested(client)?;
            let key = deployed.key();
            let deployed_metrics = match written.link(&key, staging.path(), &mut client_dir)? {
                true => evaluated[&key].clone(),
                false => {
                    let merged = deployed.merged(&base, &global.adapter)?;
                    let m = score(&merged, None);
                    merged.write_into(&mut client_dir)?;
                    written.record(key.clone(), client, &client_dir);
                    evaluated.insert(key, m.clone());
                    m
                }
            };
            let parameters = json!({"global": args.global, "budgets": args.budgets, "device_memory_bytes": device_memory});
            let mut manifest =
                deployed_manifest(&global, &base, &request, &plan, &budget.tier, parameters)?;
            manifest.write_into(&mut client_dir)?;
            client_dir.commit()?;

            let target = args.output.join(client);
            summaries.push(ClientSummary {
                client: client.to_string(),
                tier: budget.tier.clone(),
                device_memory_bytes: device_memory,
                train: ModelSummary::new(&train.cost, &train.widths, &train_metrics, None)
                    .with_adapter_rank(lora.rank),
                deployed: ModelSummary::new(
                    &deployed.cost,
                    &deployed.widths,
                    &deployed_metrics,
                    Some(target),
                )
                .with_adapter_rank(global.adapter.config.r),
            });
            progress.inc(1);
        }
    });
    progress.finish_and_clear();

    let mut inputs = global.files.clone();
    inputs.extend(base.files.iter().cloned());
    Report {
        args,
        global_sha256: global.weights_sha256().to_string(),
        strategy: Strategy::Salient,
        prioritized_here: false,
        space: &space,
        inputs,
        examples: ids.len(),
        clients: summaries,
        distinct_models: written.len(),
    }
    .write(staging)
}
