//! Metrics of a checkpoint on labelled examples: accuracy, macro-F1 and MCC for
//! classification; Pearson, Spearman and MSE for regression.

use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::error::Result;
use crate::data::tokenizer::{collate, TokenizedRow};
use crate::models::families::bert::model::BertForSequenceClassification;
use crate::models::fused::FusedOps;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub examples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mse: Option<f64>,
}

/// Model outputs for every row, in order; rows are batched by length to save padding.
pub fn predict<B: FusedOps>(
    checkpoint: &Checkpoint,
    rows: &[TokenizedRow],
    pad_id: i64,
    batch_size: usize,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    crate::models::vision::check_not_vision(checkpoint)?;
    crate::data::tokenizer::check_vocab(rows, checkpoint.config.vocab_size())?;
    crate::data::tokenizer::check_positions(rows, checkpoint.config.max_positions())?;
    let model = BertForSequenceClassification::<B>::from_checkpoint(checkpoint, device)?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].input_ids.len());
    let mut outputs = vec![Vec::new(); rows.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&TokenizedRow> = chunk.iter().map(|&i| &rows[i]).collect();
        let logits = model.forward(&collate(&batch, pad_id).to_tensors::<B>(device)); // [batch, labels]
        let width = logits.dims()[1];
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float logits");
        for (k, &i) in chunk.iter().enumerate() {
            outputs[i] = values[k * width..(k + 1) * width].to_vec();
        }
        on_batch(chunk.len());
    }
    Ok(outputs)
}

/// A model's inputs for a set of examples, prepared once.
enum Inputs {
    /// Text, tokenized.
    Tokens(Vec<TokenizedRow>),
    /// Images, with the model's preprocessing (size, normalization).
    Images {
        images: Vec<image::RgbImage>,
        preprocess: crate::models::vision::Preprocess,
    },
}

/// Labelled examples prepared once (tokenized, or images with their preprocessing), to
/// evaluate any number of checkpoints on.
pub struct EvalSet {
    inputs: Inputs,
    pub labels: Vec<f32>,
    /// Where each example is, and what the labels need of a model, for checking it.
    locations: Vec<String>,
    task: crate::data::Task,
}

impl EvalSet {
    /// The examples `ids` of a partition's dataset, prepared with the processor files of
    /// `model_dir` (its tokenizer, or its `preprocessor_config.json` for images).
    pub fn load(
        model_dir: &std::path::Path,
        partition: &crate::data::partition::Partition,
        ids: &[usize],
        max_seq_len: usize,
    ) -> Result<Self> {
        let dataset = partition.dataset()?;
        Self::of(model_dir, &dataset, ids, max_seq_len)
    }

    /// The examples `ids` of a loaded dataset, prepared with the processor files of
    /// `model_dir`; `max_seq_len` applies to text.
    pub fn of(
        model_dir: &std::path::Path,
        dataset: &crate::data::Dataset,
        ids: &[usize],
        max_seq_len: usize,
    ) -> Result<Self> {
        let (inputs, labels) = if dataset.is_images() {
            let preprocess = crate::models::vision::Preprocess::from_model_dir(model_dir, None)?;
            let (images, labels) = crate::data::images(dataset, ids)?;
            (Inputs::Images { images, preprocess }, labels)
        } else {
            let tokenizer = crate::data::tokenizer::TextTokenizer::from_dir(model_dir)?;
            let (rows, labels) = crate::data::tokenize(dataset, ids, &tokenizer, max_seq_len)?;
            (Inputs::Tokens(rows), labels)
        };
        let locations = ids.iter().map(|&id| dataset.locate(id)).collect();
        Ok(Self {
            inputs,
            labels,
            locations,
            task: dataset.task.clone(),
        })
    }

    /// Checks that the labels fit a model of `num_labels` outputs.
    fn check_labels(&self, num_labels: usize) -> Result<()> {
        let regression = matches!(self.task, crate::data::Task::Regression);
        if regression != (num_labels == 1) {
            return Err(crate::core::error::Error::Invalid(format!(
                "the model has {num_labels} outputs, which does not suit this task"
            )));
        }
        match self
            .labels
            .iter()
            .position(|&l| !regression && l as usize >= num_labels)
        {
            Some(i) => Err(crate::core::error::Error::Invalid(format!(
                "{}: label {} is out of range for a model with {num_labels} labels",
                self.locations[i], self.labels[i]
            ))),
            None => Ok(()),
        }
    }

    /// The model's outputs (logits) for every example, in order.
    pub fn predict<B: FusedOps>(
        &self,
        checkpoint: &Checkpoint,
        batch_size: usize,
        device: &B::Device,
        on_batch: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        match &self.inputs {
            Inputs::Tokens(rows) => {
                let pad = checkpoint.config.pad_token_id() as i64;
                predict::<B>(checkpoint, rows, pad, batch_size, device, on_batch)
            }
            Inputs::Images { images, preprocess } => {
                let images: Vec<&image::RgbImage> = images.iter().collect();
                crate::models::vision::train::predict::<B>(
                    checkpoint, &images, preprocess, batch_size, device, on_batch,
                )
            }
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Metrics of `checkpoint` on these examples. `on_batch` sees the size of every batch.
    pub fn evaluate<B: FusedOps>(
        &self,
        checkpoint: &Checkpoint,
        batch_size: usize,
        device: &B::Device,
        on_batch: impl FnMut(usize),
    ) -> Result<Metrics> {
        self.check_labels(checkpoint.config.num_labels())?;
        let outputs = self.predict::<B>(checkpoint, batch_size, device, on_batch)?;
        Ok(metrics(&outputs, &self.labels))
    }
}

/// Metrics of `checkpoint` on the examples `ids` of a partition's dataset, prepared with
/// the processor files of `model_dir`. `on_batch` sees the size of every batch done.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_examples<B: FusedOps>(
    checkpoint: &Checkpoint,
    model_dir: &std::path::Path,
    partition: &crate::data::partition::Partition,
    ids: &[usize],
    max_seq_len: usize,
    batch_size: usize,
    device: &B::Device,
    on_batch: impl FnMut(usize),
) -> Result<Metrics> {
    EvalSet::load(model_dir, partition, ids, max_seq_len)?
        .evaluate::<B>(checkpoint, batch_size, device, on_batch)
}

/// Classification metrics from predicted and true class indices.
pub fn classification_metrics(predicted: &[usize], truth: &[usize], classes: usize) -> Metrics {
    let n = truth.len();
    let mut confusion = vec![vec![0u64; classes]; classes]; // [truth][predicted]
    for (&p, &t) in predicted.iter().zip(truth) {
        confusion[t][p] += 1;
    }
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    let per_true: Vec<u64> = (0..classes).map(|k| confusion[k].iter().sum()).collect();
    let per_pred: Vec<u64> = (0..classes)
        .map(|k| (0..classes).map(|t| confusion[t][k]).sum())
        .collect();
    let f1 = (0..classes)
        .map(|k| {
            let tp = confusion[k][k] as f64;
            let denominator = per_true[k] as f64 + per_pred[k] as f64;
            if denominator == 0.0 {
                0.0
            } else {
                2.0 * tp / denominator
            }
        })
        .sum::<f64>()
        / classes as f64;
    // Gorodkin's multi-class MCC; equal to the usual MCC for two classes.
    let s = n as f64;
    let c = correct as f64;
    let pt: f64 = (0..classes)
        .map(|k| per_pred[k] as f64 * per_true[k] as f64)
        .sum();
    let pp: f64 = per_pred.iter().map(|&p| (p as f64).powi(2)).sum();
    let tt: f64 = per_true.iter().map(|&t| (t as f64).powi(2)).sum();
    let denominator = ((s * s - pp) * (s * s - tt)).sqrt();
    let mcc = if denominator == 0.0 {
        0.0
    } else {
        (c * s - pt) / denominator
    };
    Metrics {
        examples: n,
        accuracy: Some(if n == 0 { 0.0 } else { c / s }),
        macro_f1: Some(f1),
        mcc: Some(mcc),
        pearson: None,
        spearman: None,
        mse: None,
    }
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let (vx, vy): (f64, f64) = (
        x.iter().map(|a| (a - mx).powi(2)).sum(),
        y.iter().map(|b| (b - my).powi(2)).sum(),
    );
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

/// Ranks from 1, ties sharing their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = average;
        }
        i = j + 1;
    }
    r
}

pub fn regression_metrics(predicted: &[f64], truth: &[f64]) -> Metrics {
    let n = truth.len();
    let mse = predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / n.max(1) as f64;
    Metrics {
        examples: n,
        accuracy: None,
        macro_f1: None,
        mcc: None,
        pearson: Some(pearson(predicted, truth)),
        spearman: Some(pearson(&ranks(predicted), &ranks(truth))),
        mse: Some(mse),
    }
}

/// Metrics of model outputs against labels (class indices, or targets for one output).
pub fn metrics(outputs: &[Vec<f32>], labels: &[f32]) -> Metrics {
    let width = outputs.first().map_or(0, Vec::len);
    if width == 1 {
        let p: Vec<f64> = outputs.iter().map(|o| o[0] as f64).collect();
        let t: Vec<f64> = labels.iter().map(|&l| l as f64).collect();
        regression_metrics(&p, &t)
    } else {
        let argmax = |o: &Vec<f32>| {
            o.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        };
        let p: Vec<usize> = outputs.iter().map(argmax).collect();
        let t: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        classification_metrics(&p, &t, width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_against_hand_computed_values() {
        // truth 0 0 0 1 1 1, predicted 0 0 1 1 1 0: TP0=2 FP0=1 FN0=1, same for class 1.
        let m = classification_metrics(&[0, 0, 1, 1, 1, 0], &[0, 0, 0, 1, 1, 1], 2);
        assert!((m.accuracy.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.macro_f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Binary MCC = (TP*TN - FP*FN) / sqrt(...) = (4 - 1) / 9 = 1/3.
        assert!((m.mcc.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        let perfect = classification_metrics(&[2, 0, 1], &[2, 0, 1], 3);
        assert_eq!((perfect.accuracy, perfect.mcc), (Some(1.0), Some(1.0)));
        let constant = classification_metrics(&[0, 0, 0], &[0, 1, 1], 2);
        assert_eq!(constant.mcc, Some(0.0));
    }

    #[test]
    fn regression_correlations() {
        let m = regression_metrics(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 100.0]);
        assert!((m.spearman.unwrap() - 1.0).abs() < 1e-12);
        assert!(m.pearson.unwrap() < 0.9);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        let m = regression_metrics(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]);
        assert!((m.pearson.unwrap() + 1.0).abs() < 1e-12);
    }
}
