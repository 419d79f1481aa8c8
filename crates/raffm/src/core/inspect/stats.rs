//! Per-tensor statistics and the architecture of a checkpoint folder.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde::Serialize;

use crate::core::checkpoint::{map_file, Checkpoint, CONFIG_FILE, WEIGHTS_FILE};
use crate::core::elastic::Widths;
use crate::core::error::{Error, Result};
use crate::core::tensor::HostTensor;

/// Summary statistics of a tensor's values, accumulated in f64; `std` is the population
/// standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub numel: usize,
    pub mean: f64,
    pub std: f64,
    pub l1: f64,
    pub zero_fraction: f64,
    pub max_abs: f64,
    /// NaN or infinite values (a diverged run); they make `mean` and `std` NaN.
    pub non_finite: usize,
}

pub fn stats(values: &[f32]) -> Stats {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    // Two passes: the spread about the mean does not cancel catastrophically.
    let variance = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    Stats {
        numel: values.len(),
        mean,
        std: variance.sqrt(),
        l1: values.iter().map(|&v| (v as f64).abs()).sum(),
        zero_fraction: values.iter().filter(|&&v| v == 0.0).count() as f64 / n,
        max_abs: values.iter().map(|&v| (v as f64).abs()).fold(0.0, f64::max),
        non_finite: values.iter().filter(|v| !v.is_finite()).count(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorStats {
    pub name: String,
    pub shape: Vec<usize>,
    /// As stored in `model.safetensors`; the values were widened to f32 on load.
    pub dtype: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Architecture {
    pub model_type: String,
    pub vocab_size: usize,
    /// Elastic widths: global sizes, per-layer sizes, and which global layer each is.
    pub widths: Widths,
    /// Labels of the classification head, if there is one.
    pub classifier_labels: Option<usize>,
    pub parameter_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub checkpoint: String,
    pub architecture: Architecture,
    pub tensors: Vec<TensorStats>,
}

/// Tensors in model order (the description's: embeddings, layers by number, head) rather
/// than the map's alphabetical one, which puts layer 10 before layer 2.
pub(crate) fn model_order(c: &Checkpoint) -> Vec<(&String, &HostTensor)> {
    let position: HashMap<String, usize> = c
        .config
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t.name, i))
        .collect();
    let mut tensors: Vec<_> = c.tensors.iter().collect();
    tensors.sort_by_key(|(name, _)| position.get(*name).copied().unwrap_or(usize::MAX));
    tensors
}

/// Statistics of every tensor, by canonical name; `dtype` is F32, what they are in memory
/// ([`tensor_report`] reads what the file stores).
pub fn tensor_stats(checkpoint: &Checkpoint) -> Vec<TensorStats> {
    let stats_of = |(name, t): (&String, &HostTensor)| TensorStats {
        name: name.clone(),
        shape: t.shape.clone(),
        dtype: "F32".into(),
        stats: stats(&t.data),
    };
    model_order(checkpoint).into_iter().map(stats_of).collect()
}

/// Loads a checkpoint folder, checked against its manifest like any stage's input (a
/// changed file is reported, not inspected); a folder that is not a checkpoint at all gets
/// an error saying so.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    if dir.is_dir() && !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::format(
            dir,
            "not a checkpoint folder (no config.json)",
        ));
    }
    Checkpoint::load(dir)
}

/// The architecture and every tensor's statistics of a checkpoint folder.
pub fn tensor_report(dir: &Path) -> Result<CheckpointReport> {
    let checkpoint = load_checkpoint(dir)?;
    let config = &checkpoint.config;
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = map_file(&weights)?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(&weights, format!("bad safetensors header: {e}")))?;
    let dtypes: HashMap<String, String> = header
        .tensors()
        .into_iter()
        .filter_map(|(hf_name, info)| Some((config.canonical_name(&hf_name)?.0, info)))
        .map(|(name, info)| (name, info.dtype.to_string()))
        .collect();
    let mut tensors = tensor_stats(&checkpoint);
    for t in &mut tensors {
        if let Some(dtype) = dtypes.get(&t.name) {
            t.dtype.clone_from(dtype);
        }
    }
    let architecture = Architecture {
        model_type: config.model_type().to_string(),
        vocab_size: config.vocab_size(),
        widths: config.widths(),
        classifier_labels: config.has_classifier().then(|| config.num_labels()),
        parameter_count: checkpoint.parameter_count(),
    };
    let checkpoint = dir.display().to_string();
    Ok(CheckpointReport {
        checkpoint,
        architecture,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_small_tensor_match_hand_computed_values() {
        let s = stats(&[1.0, -2.0, 0.0, 3.0]);
        assert_eq!((s.numel, s.mean), (4, 0.5));
        // Deviations 0.5, 2.5, 0.5, 2.5: variance 13/4.
        assert!((s.std - 3.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            (s.l1, s.zero_fraction, s.max_abs, s.non_finite),
            (6.0, 0.25, 3.0, 0)
        );
        assert_eq!(stats(&[f32::NAN, 1.0]).non_finite, 1);
    }
}
