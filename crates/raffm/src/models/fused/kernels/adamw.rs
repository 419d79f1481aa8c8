//! The AdamW update, in one pass over parameters, gradients and both moments.

use rayon::prelude::*;

use super::TASK_ELEMENTS;

/// One AdamW step's hyper-parameters, as PyTorch's `AdamW`: decoupled weight decay and
/// bias-corrected moments. `time` counts steps from 1.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub time: usize,
}

/// The per-element constants of one step, in f32.
#[derive(Clone, Copy)]
struct AdamWCoefficients {
    decay: f32,
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    step_size: f32,
    inv_bias_2: f32,
    epsilon: f32,
}

multiversion! {
    fn adamw_chunk(param: &mut [f32], grad: &[f32], moment_1: &mut [f32], moment_2: &mut [f32], c: &AdamWCoefficients) {
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(moment_1.iter_mut()).zip(moment_2.iter_mut()) {
            *m = c.beta_1 * *m + c.one_minus_beta_1 * g;
            *v = c.beta_2 * *v + c.one_minus_beta_2 * g * g;
            *p = *p * c.decay - c.step_size * *m / ((*v * c.inv_bias_2).sqrt() + c.epsilon);
        }
    }
}

/// Updates `param` and both moments in place, in one pass.
pub fn adamw(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: &AdamWStep,
) {
    assert!(
        param.len() == grad.len() && param.len() == moment_1.len() && param.len() == moment_2.len()
    );
    assert!(step.time >= 1, "AdamW steps count from 1");
    let t = step.time.min(i32::MAX as usize) as i32;
    let c = AdamWCoefficients {
        decay: (1.0 - step.learning_rate * step.weight_decay) as f32,
        beta_1: step.beta_1 as f32,
        one_minus_beta_1: (1.0 - step.beta_1) as f32,
        beta_2: step.beta_2 as f32,
        one_minus_beta_2: (1.0 - step.beta_2) as f32,
        // lr / (1 - beta_1^t) folds the first moment's bias correction into the step.
        step_size: (step.learning_rate / (1.0 - step.beta_1.powi(t))) as f32,
        inv_bias_2: (1.0 / (1.0 - step.beta_2.powi(t))) as f32,
        epsilon: step.epsilon as f32,
    };
    param
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(grad.par_chunks(TASK_ELEMENTS))
        .zip(moment_1.par_chunks_mut(TASK_ELEMENTS))
        .zip(moment_2.par_chunks_mut(TASK_ELEMENTS))
        .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, &c));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::fused::kernels::test_support::random;

    #[test]
    fn adamw_matches_the_pytorch_update_in_f64() {
        let n = 70_001;
        let (mut param, grad) = (random(n, 20), random(n, 21));
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut reference: Vec<(f64, f64, f64)> =
            param.iter().map(|&p| (p as f64, 0.0, 0.0)).collect();
        for time in 1..=3 {
            let step = AdamWStep {
                learning_rate: 1e-2,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.01,
                time,
            };
            adamw(&mut param, &grad, &mut m, &mut v, &step);
            for ((p, m, v), &g) in reference.iter_mut().zip(&grad) {
                let g = g as f64;
                *p *= 1.0 - step.learning_rate * step.weight_decay;
                *m = 0.9 * *m + 0.1 * g;
                *v = 0.999 * *v + 0.001 * g * g;
                let m_hat = *m / (1.0 - 0.9f64.powi(time as i32));
                let v_hat = *v / (1.0 - 0.999f64.powi(time as i32));
                *p -= step.learning_rate * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        let worst = param
            .iter()
            .zip(&reference)
            .map(|(a, (b, _, _))| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{worst}");
    }
}
