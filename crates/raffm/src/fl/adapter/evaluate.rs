//! Scoring an adapter: each example's options by log-likelihood under base + adapter, the
//! most likely taken as the answer, with the metrics of a classifier.

use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};
use crate::data::partition::Partition;
use crate::models::evaluate::{metrics, Metrics};
use crate::models::families::llama::lora::LoraAdapter;
use crate::models::families::llama::model::LlamaForCausalLM;
use crate::models::fused::FusedOps;
use crate::models::llm::{encode, score, EncodedExample};

/// The base's tokenizer and padding id.
pub fn tokenizer(base: &Checkpoint) -> Result<(tokenizers::Tokenizer, u32)> {
    let dir = base.source.clone().unwrap_or_default();
    let path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| Error::format(&path, format!("cannot load the tokenizer: {e}")))?;
    let pad = base
        .config
        .llama()
        .and_then(|c| c.pad_token_id)
        .unwrap_or(0) as u32;
    Ok((tokenizer, pad))
}

/// The examples `ids` of a decoder task's partition, tokenized for `base`.
pub fn encoded_examples(
    base: &Checkpoint,
    partition: &Partition,
    ids: &[usize],
    max_seq_len: usize,
) -> Result<Vec<EncodedExample>> {
    let all = partition.choice_examples()?;
    let chosen = ids
        .iter()
        .map(|&id| {
            all.get(id).cloned().ok_or_else(|| {
                Error::format(
                    &partition.file,
                    format!("example {id} is not in {}", partition.data.path.display()),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (tokenizer, _) = tokenizer(base)?;
    encode(&tokenizer, &chosen, max_seq_len, &partition.data.path)
}

/// Metrics of `adapter` on `base` over the examples `ids` of `partition`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: FusedOps>(
    base: &Checkpoint,
    adapter: &LoraAdapter,
    partition: &Partition,
    ids: &[usize],
    max_seq_len: usize,
    batch_size: usize,
    device: &B::Device,
    on_batch: impl FnMut(usize),
) -> Result<Metrics> {
    let examples = encoded_examples(base, partition, ids, max_seq_len)?;
    let (_, pad) = tokenizer(base)?;
    Ok(evaluate_encoded::<B>(
        base,
        Some(adapter),
        &examples,
        pad,
        batch_size,
        device,
        on_batch,
    ))
}

/// Metrics of `model` (with `adapter` on it, where one is) over examples already
/// tokenized, padded with `pad`.
pub fn evaluate_encoded<B: FusedOps>(
    model: &Checkpoint,
    adapter: Option<&LoraAdapter>,
    examples: &[EncodedExample],
    pad: u32,
    batch_size: usize,
    device: &B::Device,
    on_batch: impl FnMut(usize),
) -> Metrics {
    let model = LlamaForCausalLM::<B>::from_checkpoint(model, adapter, device);
    let scores = score::option_log_likelihoods(&model, examples, batch_size, pad, device, on_batch);
    let outputs: Vec<Vec<f32>> = scores
        .iter()
        .map(|s| s.iter().map(|&x| x as f32).collect())
        .collect();
    let labels: Vec<f32> = examples.iter().map(|e| e.answer as f32).collect();
    metrics(&outputs, &labels)
}
