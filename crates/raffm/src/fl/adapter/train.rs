//! A client's local training of its adapter on the frozen base (sub-)model.

use std::path::Path;

use serde_json::json;

use super::{evaluate::encoded_examples, write_adapter, AdapterFolder};
use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, StagingDir};
use crate::core::manifest::{Manifest, StageRecord, TrainMetrics, Trained};
use crate::data::partition::Partition;
use crate::models::fused::FusedOps;
use crate::models::llm::train::train_lora;
use crate::models::train::{Step, TrainOptions};
use burn::tensor::backend::AutodiffBackend;

/// What a client trains on and how.
pub struct AdapterTraining<'a> {
    /// The client's folder from raffm-extract.
    pub dir: &'a Path,
    pub partition: &'a Partition,
    pub partition_path: &'a Path,
    pub client: &'a str,
    pub options: TrainOptions,
    pub max_seq_len: usize,
    /// At most this many of its examples (the first ones).
    pub max_examples: Option<usize>,
    /// The command line's parameters, recorded in the manifest.
    pub parameters: serde_json::Value,
}

/// Trains the adapter of `job.dir` on client `job.client`'s examples and writes it, with
/// a manifest that carries its placement and base over, into `out`. Returns the final
/// loss.
pub fn train_client<B: AutodiffBackend + FusedOps>(
    job: &AdapterTraining,
    out: &Path,
    device: &B::Device,
    on_step: impl FnMut(Step),
) -> Result<f32>
where
    B::InnerBackend: FusedOps,
{
    let folder = AdapterFolder::load(job.dir)?;
    let placement = folder.manifest.placement.clone().ok_or_else(|| {
        Error::format(
            job.dir.join(crate::core::manifest::MANIFEST_FILE),
            "no `placement`: train the adapter raffm-extract wrote for this client",
        )
    })?;
    if placement.client != job.client {
        return Err(Error::Invalid(format!(
            "--client {}: {} was extracted for client {}",
            job.client,
            job.dir.display(),
            placement.client
        )));
    }
    let base = folder.base.load()?;
    let shard = job
        .partition
        .client(job.client)
        .ok_or_else(|| Error::format(job.partition_path, format!("no client `{}`", job.client)))?;
    let mut ids = shard.examples.clone();
    if let Some(max) = job.max_examples {
        ids.truncate(max);
    }
    let examples = encoded_examples(&base, job.partition, &ids, job.max_seq_len)?;
    let (_, pad) = super::evaluate::tokenizer(&base)?;
    let mut staging = StagingDir::new(out)?;
    let (trained, report) = train_lora::<B>(
        &base,
        &folder.adapter,
        &examples,
        &job.options,
        pad,
        device,
        on_step,
    )?;
    let bytes = 4 * trained.parameter_count();
    let metrics = TrainMetrics {
        examples_seen: report.examples_seen as u64,
        steps: report.steps as u64,
        epochs: None,
        final_loss: report.step_losses.last().copied(),
        wall_seconds: report.wall_seconds,
        examples_per_second: report.examples_seen as f64 / report.wall_seconds.max(1e-9),
        answer_tokens: Some(report.answer_tokens as u64),
        peak_rss_bytes: crate::core::sys::peak_rss_bytes(),
        bytes_downloaded: bytes,
        bytes_uploaded: bytes,
        step_losses: report.step_losses.clone(),
    };
    let record = StageRecord::LocalTrain(Trained {
        client: job.client.to_string(),
        metrics,
        attack: None,
    });
    let mut manifest = Manifest::new(record, "raffm-local-train", job.parameters.clone());
    manifest
        .seeds
        .insert("seed".into(), json!(job.options.seed));
    manifest.inputs = folder.files.clone();
    manifest.inputs.push(sha256_file(job.partition_path)?);
    manifest.architecture = folder.manifest.architecture.clone();
    manifest.num_examples = Some(examples.len() as u64);
    manifest.placement = Some(placement);
    write_adapter(&mut staging, &trained, &folder.base, &mut manifest)?;
    staging.commit()?;
    Ok(report.step_losses.last().copied().unwrap_or(f32::NAN))
}
