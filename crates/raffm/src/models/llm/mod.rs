//! The decoder's tasks: instruction text ([`task`]), option scoring by log-likelihood
//! ([`score`]), and LoRA training with the loss on the answer tokens only ([`train`]).
//!
//! Both read the model at chosen positions only: a sequence is a prompt followed by a
//! completion, and what matters is the log-probability of each completion token given
//! what precedes it. The model's hidden states are gathered at those positions before the
//! language-model head, so the `[tokens, vocabulary]` logits are never formed for the rest.

pub mod score;
pub mod task;
pub mod train;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::core::error::{Error, Result};
use task::ChoiceExample;

/// An example as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedExample {
    pub prompt: Vec<u32>,
    pub options: Vec<Vec<u32>>,
    pub answer: usize,
}

/// Tokenizes examples without special tokens; a prompt too long for `max_len` with its
/// longest option loses its beginning (the instruction's end, "Sentiment:", stays).
pub fn encode(
    tokenizer: &tokenizers::Tokenizer,
    examples: &[ChoiceExample],
    max_len: usize,
    source: &Path,
) -> Result<Vec<EncodedExample>> {
    let ids = |text: &str| -> Result<Vec<u32>> {
        tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::format(source, format!("cannot tokenize: {e}")))
    };
    examples
        .iter()
        .map(|e| {
            let options: Vec<Vec<u32>> = e.options.iter().map(|o| ids(o)).collect::<Result<_>>()?;
            let longest = options.iter().map(Vec::len).max().unwrap_or(0);
            if longest + 1 > max_len {
                return Err(Error::Invalid(format!(
                    "an option of {longest} tokens does not fit --max-seq-len {max_len}"
                )));
            }
            let mut prompt = ids(&e.prompt)?;
            if prompt.len() + longest > max_len {
                prompt.drain(..prompt.len() + longest - max_len);
            }
            Ok(EncodedExample {
                prompt,
                options,
                answer: e.answer,
            })
        })
        .collect()
}

/// Sequences to run and, for each, the positions whose next-token log-probability is
/// wanted: `(position, token)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSequence {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, u32)>,
}

impl ScoredSequence {
    /// `prompt` followed by `completion`, scored on the completion's tokens.
    pub fn completion(prompt: &[u32], completion: &[u32]) -> Self {
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(completion);
        let targets = completion
            .iter()
            .enumerate()
            .map(|(j, &t)| (prompt.len() + j - 1, t))
            .collect();
        Self { ids, targets }
    }
}

/// A right-padded batch of sequences and the flat row (`b * seq + position`) of every
/// target, in order.
pub struct PaddedBatch<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub rows: Tensor<B, 1, Int>,
    pub tokens: Tensor<B, 1, Int>,
}

impl<B: Backend> PaddedBatch<B> {
    pub fn new(sequences: &[&ScoredSequence], pad_id: u32, device: &B::Device) -> Self {
        let seq = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let (mut rows, mut tokens) = (Vec::new(), Vec::new());
        for (b, s) in sequences.iter().enumerate() {
            ids.extend(s.ids.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(pad_id as i64, seq - s.ids.len()));
            for &(position, token) in &s.targets {
                rows.push((b * seq + position) as i64);
                tokens.push(token as i64);
            }
        }
        let n = rows.len();
        Self {
            input_ids: Tensor::from_data(TensorData::new(ids, [sequences.len(), seq]), device),
            rows: Tensor::from_data(TensorData::new(rows, [n]), device),
            tokens: Tensor::from_data(TensorData::new(tokens, [n]), device),
        }
    }
}

/// The log-probability of every target of a batch, `[targets]`: the language-model head
/// runs on the targets' positions only, a block of rows at a time.
pub fn target_log_probs<B: crate::models::fused::FusedOps>(
    model: &crate::models::families::llama::model::LlamaForCausalLM<B>,
    batch: &PaddedBatch<B>,
) -> Tensor<B, 1> {
    let hidden = model.hidden_states(batch.input_ids.clone()); // [batch, seq, hidden]
    let [b, s, h] = hidden.dims();
    let picked = hidden.reshape([b * s, h]).select(0, batch.rows.clone()); // [targets, hidden]
    B::fused_target_log_probs(picked, model.lm_head_weight(), batch.tokens.clone())
    // [targets]
}
