//! Multiple-choice evaluation by option log-likelihood: the option whose tokens are the
//! most likely after the prompt (their log-probabilities summed) is the model's answer.

use super::{target_log_probs, EncodedExample, PaddedBatch, ScoredSequence};
use crate::models::families::llama::model::LlamaForCausalLM;

/// What to run for one example: one sequence when every option is a single token (one
/// forward pass scores them all at the prompt's last position; `None`), else one per
/// option (`Some(option)`).
fn sequences(example: &EncodedExample) -> Vec<(Option<usize>, ScoredSequence)> {
    if example.options.iter().all(|o| o.len() == 1) {
        let last = example.prompt.len() - 1;
        vec![(
            None,
            ScoredSequence {
                ids: example.prompt.clone(),
                targets: example.options.iter().map(|o| (last, o[0])).collect(),
            },
        )]
    } else {
        example
            .options
            .iter()
            .enumerate()
            .map(|(i, o)| (Some(i), ScoredSequence::completion(&example.prompt, o)))
            .collect()
    }
}

/// Each example's options' log-likelihoods, `[example][option]`. Sequences run in batches
/// of `batch_size`, shortest first to waste little on padding; `on_batch` is told the
/// number of examples finished so far.
pub fn option_log_likelihoods<B: crate::models::fused::FusedOps>(
    model: &LlamaForCausalLM<B>,
    examples: &[EncodedExample],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Vec<Vec<f64>> {
    let mut work: Vec<(usize, Option<usize>, ScoredSequence)> = examples
        .iter()
        .enumerate()
        .flat_map(|(i, e)| sequences(e).into_iter().map(move |(o, s)| (i, o, s)))
        .collect();
    work.sort_by_key(|(_, _, s)| s.ids.len());
    let mut scores: Vec<Vec<f64>> = examples
        .iter()
        .map(|e| vec![0.0; e.options.len()])
        .collect();
    let mut done = 0;
    for chunk in work.chunks(batch_size.max(1)) {
        let refs: Vec<&ScoredSequence> = chunk.iter().map(|(_, _, s)| s).collect();
        let batch = PaddedBatch::<B>::new(&refs, pad_id, device);
        let values = target_log_probs(model, &batch)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        let mut next = values.into_iter();
        for (example, option, sequence) in chunk {
            let values = next.by_ref().take(sequence.targets.len()).map(f64::from);
            match option {
                None => scores[*example] = values.collect(),
                Some(o) => scores[*example][*o] = values.sum(),
            }
        }
        done += chunk.len();
        on_batch(done);
    }
    scores
}

/// The fraction of examples whose right option has the highest log-likelihood (ties go to
/// the first option).
pub fn accuracy(examples: &[EncodedExample], scores: &[Vec<f64>]) -> f64 {
    let correct = examples
        .iter()
        .zip(scores)
        .filter(|(e, s)| {
            let best = (0..s.len()).fold(0, |b, i| if s[i] > s[b] { i } else { b });
            best == e.answer
        })
        .count();
    correct as f64 / examples.len().max(1) as f64
}
