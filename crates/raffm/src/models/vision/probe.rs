//! A k-nearest-neighbour probe: the backbone's CLS features of labelled training images,
//! and each test image classified by the majority of its `k` most cosine-similar training
//! images (ties to the nearer neighbours' class). No training: it measures what the
//! backbone's features already separate.

use burn::tensor::{Tensor, TensorData};
use image::RgbImage;

use super::data::Preprocess;
use crate::models::families::vit::model::VitModel;
use crate::models::fused::FusedOps;

/// The CLS token of the last hidden state of every image, L2-normalised, in batches of
/// `batch`; `on_batch` is called with the number of images done.
pub fn cls_features<B: FusedOps>(
    model: &VitModel<B>,
    images: &[&RgbImage],
    preprocess: &Preprocess,
    batch: usize,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Vec<Vec<f32>> {
    let size = preprocess.size as usize;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let pixels = preprocess.batch(chunk, None);
        let pixels = Tensor::<B, 4>::from_data(
            TensorData::new(pixels, [chunk.len(), 3, size, size]),
            device,
        );
        let hidden = model.forward(pixels); // [batch, 1 + patches, hidden]
        let [n, _, width] = hidden.dims();
        let cls = hidden.slice([0..n, 0..1]).reshape([n, width]); // [batch, hidden]
        let values: Vec<f32> = cls
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("float tensor");
        for row in values.chunks(width) {
            let norm = row
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            out.push(row.iter().map(|v| v / norm).collect());
        }
        on_batch(out.len());
    }
    out
}

/// The share of `test` whose majority class among its `k` nearest `train` features (by
/// cosine similarity of normalised features) is its label. Queries run in parallel; each
/// selects its `k` nearest in linear time, so 60,000 references by 10,000 queries take
/// seconds rather than a sort per query.
pub fn knn_accuracy(
    train: &[Vec<f32>],
    train_labels: &[usize],
    test: &[Vec<f32>],
    test_labels: &[usize],
    k: usize,
) -> f64 {
    use rayon::prelude::*;
    let classes = train_labels.iter().max().map_or(0, |m| m + 1);
    let k = k.min(train.len());
    if k == 0 {
        return 0.0;
    }
    let correct = test
        .par_iter()
        .zip(test_labels.par_iter())
        .filter(|(query, &label)| {
            // Nearest first; equal similarities by training index, so the result does
            // not depend on how the selection ran.
            let mut scored: Vec<(f32, usize)> = train
                .iter()
                .enumerate()
                .map(|(i, t)| (dot(t, query), i))
                .collect();
            let nearer =
                |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            scored.select_nth_unstable_by(k - 1, nearer);
            let nearest = &mut scored[..k];
            nearest.sort_unstable_by(nearer);
            let mut votes = vec![(0usize, usize::MAX); classes];
            for (rank, &(_, i)) in nearest.iter().enumerate() {
                let l = train_labels[i];
                votes[l].0 += 1;
                votes[l].1 = votes[l].1.min(rank);
            }
            // Most votes; among equals, the class whose nearest neighbour ranks first.
            let best = (0..classes)
                .max_by(|&a, &b| {
                    votes[a]
                        .0
                        .cmp(&votes[b].0)
                        .then(votes[b].1.cmp(&votes[a].1))
                })
                .unwrap_or(0);
            best == label
        })
        .count();
    correct as f64 / test.len().max(1) as f64
}

/// A dot product in eight independent lanes, which the compiler keeps in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_votes_by_the_nearest_neighbours() {
        let unit = |x: f32, y: f32| {
            let n = (x * x + y * y).sqrt();
            vec![x / n, y / n]
        };
        let train = vec![
            unit(1.0, 0.0),
            unit(1.0, 0.1),
            unit(0.0, 1.0),
            unit(0.1, 1.0),
            unit(-1.0, 0.2),
        ];
        let labels = [0, 0, 1, 1, 2];
        let test = vec![unit(1.0, 0.05), unit(0.05, 1.0), unit(-1.0, 0.0)];
        assert_eq!(knn_accuracy(&train, &labels, &test, &[0, 1, 2], 1), 1.0);
        // With k = 3 the third query's neighbours are classes 2, 1 and 1 (or 0): outvoted.
        assert!(knn_accuracy(&train, &labels, &test, &[0, 1, 2], 3) < 1.0);
        // A tie between two classes goes to the nearer neighbour's.
        assert_eq!(
            knn_accuracy(&train[1..3], &labels[1..3], &[unit(1.0, 0.3)], &[0], 2),
            1.0
        );
        // k past the references takes them all.
        assert_eq!(
            knn_accuracy(&train[..2], &labels[..2], &test[..1], &[0], 50),
            1.0
        );
    }

    #[test]
    fn the_lane_dot_product_is_the_plain_one() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(
            (dot(&a, &b) - plain).abs() < 1e-4,
            "{} vs {plain}",
            dot(&a, &b)
        );
    }
}
