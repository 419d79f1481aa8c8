//! Log-probabilities of target tokens under the LM head, a block of rows of logits at a
//! time, and their gradients.

use rayon::prelude::*;

use super::math::{exp, max, sum_zip};
use super::matmul::{matmul_on, Strided};

/// Rows of logits formed at once: `[LOGIT_ROWS, vocab]` (12.6 MB for a 49,152-token
/// vocabulary) instead of all of them.
const LOGIT_ROWS: usize = 64;

fn all_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

/// `out = hidden · weightᵀ` for a block of rows: `[rows, width] · [width, vocab]`.
fn logits_block(hidden: &[f32], weight: &[f32], width: usize, out: &mut [f32]) {
    let (rows, vocab) = (hidden.len() / width, weight.len() / width);
    let w = Strided::rows(0, width).transposed();
    matmul_on(
        all_threads(),
        (rows, vocab, width),
        out,
        Strided::rows(0, vocab),
        hidden,
        Strided::rows(0, width),
        weight,
        w,
        false,
    );
}

multiversion! {
    /// Per row of logits: its log-sum-exp.
    fn log_sum_exp_rows(logits: &[f32], vocab: usize, lse: &mut [f32]) {
        for (row, l) in logits.chunks_exact(vocab).zip(lse) {
            let top = max(row);
            let total = sum_zip(row, row, |x, _| exp(x - top));
            *l = top + total.ln();
        }
    }
}

multiversion! {
    /// Per row, the gradient of `grad * log_softmax(row)[target]`: `grad * (onehot - p)`.
    fn target_log_prob_grad_rows(logits: &mut [f32], vocab: usize, lse: &[f32], targets: &[usize], grad: &[f32]) {
        for (((row, &l), &t), &g) in logits.chunks_exact_mut(vocab).zip(lse).zip(targets).zip(grad) {
            for x in row.iter_mut() {
                *x = -g * exp(*x - l);
            }
            row[t] += g;
        }
    }
}

/// `log_softmax(hidden · weightᵀ)[i, targets[i]]` for every row i of `hidden` (`[n,
/// width]`, `weight` `[vocab, width]`), without the `[n, vocab]` logits: a block of rows at
/// a time. Returns the log-probabilities and each row's log-sum-exp.
pub fn target_log_probs(
    hidden: &[f32],
    weight: &[f32],
    width: usize,
    targets: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let (n, vocab) = (hidden.len() / width, weight.len() / width);
    assert_eq!(targets.len(), n, "one target per row");
    assert!(
        targets.iter().all(|&t| t < vocab),
        "targets inside the vocabulary"
    );
    let (mut log_probs, mut lse) = (vec![0.0; n], vec![0.0; n]);
    let mut logits = vec![0.0; LOGIT_ROWS * vocab];
    for start in (0..n).step_by(LOGIT_ROWS) {
        let rows = LOGIT_ROWS.min(n - start);
        let block = &mut logits[..rows * vocab];
        logits_block(
            &hidden[start * width..(start + rows) * width],
            weight,
            width,
            block,
        );
        let lse = &mut lse[start..start + rows];
        let per_task = rows.div_ceil(rayon::current_num_threads()).max(1);
        block
            .par_chunks(per_task * vocab)
            .zip(lse.par_chunks_mut(per_task))
            .for_each(|(b, l)| log_sum_exp_rows(b, vocab, l));
        for (i, l) in lse.iter().enumerate() {
            log_probs[start + i] = block[i * vocab + targets[start + i]] - l;
        }
    }
    (log_probs, lse)
}

/// Gradients of [`target_log_probs`] with respect to `hidden` and, if `with_weight`, to
/// `weight`, from the gradient of each row's log-probability. The logits are formed again,
/// a block at a time.
pub fn target_log_probs_backward(
    hidden: &[f32],
    weight: &[f32],
    width: usize,
    targets: &[usize],
    lse: &[f32],
    grad: &[f32],
    with_weight: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, vocab) = (hidden.len() / width, weight.len() / width);
    let mut d_hidden = vec![0.0; n * width];
    let mut d_weight = with_weight.then(|| vec![0.0; vocab * width]);
    let mut logits = vec![0.0; LOGIT_ROWS * vocab];
    for start in (0..n).step_by(LOGIT_ROWS) {
        let rows = LOGIT_ROWS.min(n - start);
        let span = start..start + rows;
        let h = &hidden[start * width..(start + rows) * width];
        let block = &mut logits[..rows * vocab];
        logits_block(h, weight, width, block);
        let per_task = rows.div_ceil(rayon::current_num_threads()).max(1);
        block
            .par_chunks_mut(per_task * vocab)
            .zip(lse[span.clone()].par_chunks(per_task))
            .zip(targets[span.clone()].par_chunks(per_task))
            .zip(grad[span].par_chunks(per_task))
            .for_each(|(((b, l), t), g)| target_log_prob_grad_rows(b, vocab, l, t, g));
        // d hidden = d logits · weight: [rows, vocab] · [vocab, width]
        let dh = &mut d_hidden[start * width..(start + rows) * width];
        let (d_rows, w_rows) = (Strided::rows(0, vocab), Strided::rows(0, width));
        matmul_on(
            all_threads(),
            (rows, width, vocab),
            dh,
            Strided::rows(0, width),
            block,
            d_rows,
            weight,
            w_rows,
            false,
        );
        if let Some(dw) = &mut d_weight {
            // d weight += d logitsᵀ · hidden: [vocab, rows] · [rows, width]
            matmul_on(
                all_threads(),
                (vocab, width, rows),
                dw,
                Strided::rows(0, width),
                block,
                d_rows.transposed(),
                h,
                w_rows,
                true,
            );
        }
    }
    (d_hidden, d_weight)
}
