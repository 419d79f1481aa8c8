//! A client's local training of its adapter on the frozen base (sub-)model.

use std::path::Path;

use serde_json::json;

use super::{evaluate::encoded_examples, write_adapter, AdapterFolder};
use crate::error::{Error, Result};
use crate::fused::FusedOps;
use crate::io::{sha256_file, StagingDir};
use crate::llm::train::train_lora;
use crate::manifest::Manifest;
use crate::partition::Partition;
use crate::train::{Step, TrainOptions};
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
            job.dir.join(crate::manifest::MANIFEST_FILE),
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
    let mut manifest = Manifest::new("local-train", "raffm-local-train", job.parameters.clone());
    manifest
        .seeds
        .insert("seed".into(), json!(job.options.seed));
    manifest.inputs = folder.files.clone();
    manifest.inputs.push(sha256_file(job.partition_path)?);
    let bytes = 4 * trained.parameter_count();
    let m = &mut manifest.metrics;
    m.insert("examples_seen".into(), json!(report.examples_seen));
    m.insert("steps".into(), json!(report.steps));
    m.insert("final_loss".into(), json!(report.step_losses.last()));
    m.insert("wall_seconds".into(), json!(report.wall_seconds));
    m.insert(
        "examples_per_second".into(),
        json!(report.examples_seen as f64 / report.wall_seconds.max(1e-9)),
    );
    m.insert("answer_tokens".into(), json!(report.answer_tokens));
    m.insert("peak_rss_bytes".into(), json!(crate::sys::peak_rss_bytes()));
    m.insert("bytes_downloaded".into(), json!(bytes));
    m.insert("bytes_uploaded".into(), json!(bytes));
    m.insert("step_losses".into(), json!(report.step_losses));
    manifest.architecture = folder.manifest.architecture.clone();
    manifest.details.insert("client".into(), json!(job.client));
    manifest.num_examples = Some(examples.len() as u64);
    manifest.placement = Some(placement);
    write_adapter(&mut staging, &trained, &folder.base, &mut manifest)?;
    staging.commit()?;
    Ok(report.step_losses.last().copied().unwrap_or(f32::NAN))
}
