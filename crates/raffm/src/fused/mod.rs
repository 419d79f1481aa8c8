//! The encoder's memory-bound steps as backend operations: GELU, dropout, self-attention
//! from projected queries, keys and values to the context, and dropout + residual +
//! LayerNorm.
//!
//! Composed from burn's tensor ops these steps dominate CPU training time: each op is a
//! separate pass over memory, the head split copies, and autodiff keeps every intermediate.
//! [`FusedOps`] gives each step one call. Its default methods are those compositions, which
//! the CUDA and ndarray backends use; the flex CPU backend overrides them with the kernels
//! in [`kernels`] and, under autodiff, with hand-written backward passes.
//!
//! Dropout on flex draws its masks from a counter-based hash keyed by [`seed_dropout`]'s
//! seed and a per-call counter, not from burn's generator; [`seed_dropout`] resets both.

#[cfg(feature = "flex")]
mod flex;
pub mod kernels;

use std::sync::atomic::{AtomicU64, Ordering};

use burn::nn::{DropoutConfig, LayerNorm};
use burn::optim::{AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

static DROPOUT_SEED: AtomicU64 = AtomicU64::new(0);
static DROPOUT_CALLS: AtomicU64 = AtomicU64::new(0);

/// Seeds the fused kernels' dropout: the masks that follow depend only on this seed and
/// on how many dropout calls came before. Backends that use burn's dropout are seeded by
/// `B::seed` instead. Like burn's generator this is per process: concurrent training runs
/// would interleave their draws.
pub fn seed_dropout(seed: u64) {
    DROPOUT_SEED.store(seed, Ordering::SeqCst);
    DROPOUT_CALLS.store(0, Ordering::SeqCst);
}

/// A fresh key for the next dropout call.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn next_dropout_key() -> u64 {
    let call = DROPOUT_CALLS.fetch_add(1, Ordering::SeqCst);
    crate::rng::SplitMix64::new(DROPOUT_SEED.load(Ordering::SeqCst) ^ call.rotate_left(32))
        .next_u64()
}

/// One self-attention call's geometry.
#[derive(Debug, Clone, Copy)]
pub struct AttentionOptions {
    pub num_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax.
    pub scale: f64,
    /// Dropout on the attention probabilities (only while training).
    pub dropout: f64,
}

pub use kernels::AdamWStep;

/// Backends the encoder runs on. Every method defaults to its [`composed`] form.
pub trait FusedOps: Backend {
    /// The exact (erf) GELU.
    fn fused_gelu(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        composed::gelu(x)
    }

    /// Dropout with probability `prob`, active only under autodiff, as burn's `Dropout`.
    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, prob: f64) -> Tensor<Self, D> {
        composed::dropout(x, prob)
    }

    /// `dropout(softmax(scale * q kᵀ + mask_bias)) v` per head, from and to
    /// `[batch, seq, heads * head_dim]`. `mask_bias` is `[batch, seq]`: 0 for keys to attend
    /// to, a large negative number for padding.
    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        mask_bias: Tensor<Self, 2>,
        options: &AttentionOptions,
    ) -> Tensor<Self, 3> {
        composed::attention(q, k, v, mask_bias, options)
    }

    /// `norm(dropout(y) + residual)`, with the norm's epsilon given as `eps` (burn keeps
    /// it private).
    fn fused_add_layer_norm(
        y: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
        norm: &LayerNorm<Self>,
        _eps: f64,
        prob: f64,
    ) -> Tensor<Self, 3> {
        composed::add_layer_norm(y, residual, norm, prob)
    }

    /// One AdamW step for one parameter tensor: the new parameter and both moments.
    /// `moments` is `None` on the first step (both start at zero).
    fn fused_adamw<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        step: &AdamWStep,
    ) -> [Tensor<Self, D>; 3] {
        composed::adamw(param, grad, moments, step)
    }
}

/// The fused steps composed from burn's tensor ops: [`FusedOps`]' defaults, and the
/// reference its flex kernels are tested against.
pub mod composed {
    use super::*;

    pub fn gelu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
        activation::gelu(x)
    }

    pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
        DropoutConfig::new(prob).init().forward(x)
    }

    pub fn attention<B: Backend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        mask_bias: Tensor<B, 2>,
        options: &AttentionOptions,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = q.dims();
        let AttentionOptions {
            num_heads,
            head_dim,
            ..
        } = *options;
        let split = |x: Tensor<B, 3>| {
            x.reshape([batch, seq, num_heads, head_dim]) // [batch, seq, heads, head_dim]
                .swap_dims(1, 2) // [batch, heads, seq, head_dim]
        };
        let scores = split(q)
            .matmul(split(k).transpose())
            .mul_scalar(options.scale)
            + mask_bias.reshape([batch, 1, 1, seq]); // [batch, heads, seq, seq]
        let probs = dropout(activation::softmax(scores, 3), options.dropout);
        probs
            .matmul(split(v)) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2) // [batch, seq, heads, head_dim]
            .reshape([batch, seq, num_heads * head_dim])
    }

    pub fn add_layer_norm<B: Backend>(
        y: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        norm: &LayerNorm<B>,
        prob: f64,
    ) -> Tensor<B, 3> {
        norm.forward(dropout(y, prob) + residual)
    }

    pub fn adamw<B: Backend, const D: usize>(
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
        step: &AdamWStep,
    ) -> [Tensor<B, D>; 3] {
        let (m, v) = moments.unwrap_or_else(|| (grad.zeros_like(), grad.zeros_like()));
        let m = m.mul_scalar(step.beta_1) + grad.clone().mul_scalar(1.0 - step.beta_1);
        let v = v.mul_scalar(step.beta_2) + grad.square().mul_scalar(1.0 - step.beta_2);
        let t = step.time as i32;
        let update = m.clone().div_scalar(1.0 - step.beta_1.powi(t))
            / v.clone()
                .div_scalar(1.0 - step.beta_2.powi(t))
                .sqrt()
                .add_scalar(step.epsilon);
        let param = param.mul_scalar(1.0 - step.learning_rate * step.weight_decay)
            - update.mul_scalar(step.learning_rate);
        [param, m, v]
    }
}

/// AdamW as a burn optimizer whose per-tensor update is [`FusedOps::fused_adamw`]: one
/// pass over each parameter on flex instead of burn's dozen.
#[derive(Debug, Clone, Copy)]
pub struct FusedAdamW {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl<B: FusedOps> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdaptiveMomentumState<B, D>;

    fn step<const D: usize>(
        &self,
        learning_rate: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.time + 1);
        let step = AdamWStep {
            learning_rate,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        let moments = state.map(|s| (s.moment_1, s.moment_2));
        let [param, moment_1, moment_2] = B::fused_adamw(param, grad, moments, &step);
        let state = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (param, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.to_device(device)
    }
}

#[cfg(feature = "ndarray")]
impl FusedOps for burn::backend::NdArray {}
#[cfg(feature = "ndarray")]
impl<C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> FusedOps
    for burn::backend::Autodiff<burn::backend::NdArray, C>
{
}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cuda {}
#[cfg(feature = "cuda")]
impl<C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> FusedOps
    for burn::backend::Autodiff<burn::backend::Cuda, C>
{
}

/// The flex overrides against the burn compositions they replace, through autodiff: the
/// same outputs and the same gradient for every input.
#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Distribution, TensorData};

    type Ad = Autodiff<Flex>;

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Ad, D> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    fn values<const D: usize>(t: &Tensor<Ad, D>) -> Vec<f32> {
        t.clone().into_data().into_vec().unwrap()
    }

    fn grad<const D: usize>(
        t: &Tensor<Ad, D>,
        grads: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) -> Vec<f32> {
        t.grad(grads)
            .expect("a gradient")
            .into_data()
            .into_vec()
            .unwrap()
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst <= tolerance, "{what}: max |difference| {worst}");
    }

    /// `sum(out * weights)`, so every output element gets a distinct gradient.
    fn weighted_sum(out: Tensor<Ad, 3>, seed: u64) -> Tensor<Ad, 1> {
        let weights = random(out.dims(), seed);
        (out * weights).sum()
    }

    #[test]
    fn fused_attention_matches_the_composition_with_padding() {
        let options = AttentionOptions {
            num_heads: 3,
            head_dim: 4,
            scale: 0.5,
            dropout: 0.0,
        };
        let inputs = || [1, 2, 3].map(|s| random([2, 5, 12], s).require_grad());
        let mut bias = vec![0.0f32; 10];
        bias[4] = -1e9;
        bias[8] = -1e9;
        let mask_bias =
            Tensor::<Ad, 2>::from_data(TensorData::new(bias, [2, 5]), &Default::default());
        let [q1, k1, v1] = inputs();
        let fused = Ad::fused_attention(
            q1.clone(),
            k1.clone(),
            v1.clone(),
            mask_bias.clone(),
            &options,
        );
        let [q2, k2, v2] = inputs();
        let reference =
            composed::attention(q2.clone(), k2.clone(), v2.clone(), mask_bias, &options);
        assert_close("output", &values(&fused), &values(&reference), 1e-5);
        let (g1, g2) = (
            weighted_sum(fused, 9).backward(),
            weighted_sum(reference, 9).backward(),
        );
        for (name, a, b) in [("q", &q1, &q2), ("k", &k1, &k2), ("v", &v1, &v2)] {
            assert_close(name, &grad(a, &g1), &grad(b, &g2), 1e-5);
        }
    }

    #[test]
    fn fused_layer_norm_and_gelu_match_the_composition() {
        let norm = || {
            let mut n = LayerNormConfig::new(8)
                .with_epsilon(1e-12)
                .init::<Ad>(&Default::default());
            n.gamma = Param::from_tensor(random([8], 4));
            n.beta = Some(Param::from_tensor(random([8], 5)));
            n
        };
        let inputs = || [6, 7].map(|s| random([3, 4, 8], s).require_grad());
        let (n1, [y1, r1]) = (norm(), inputs());
        let fused = Ad::fused_add_layer_norm(y1.clone(), r1.clone(), &n1, 1e-12, 0.0);
        let fused = Ad::fused_gelu(fused);
        let (n2, [y2, r2]) = (norm(), inputs());
        let reference = composed::gelu(composed::add_layer_norm(y2.clone(), r2.clone(), &n2, 0.0));
        assert_close("output", &values(&fused), &values(&reference), 1e-5);
        let (g1, g2) = (
            weighted_sum(fused, 8).backward(),
            weighted_sum(reference, 8).backward(),
        );
        assert_close("y", &grad(&y1, &g1), &grad(&y2, &g2), 1e-5);
        assert_close("residual", &grad(&r1, &g1), &grad(&r2, &g2), 1e-5);
        assert_close(
            "gamma",
            &grad(&n1.gamma.val(), &g1),
            &grad(&n2.gamma.val(), &g2),
            1e-5,
        );
        let beta = |n: &LayerNorm<Ad>, g| grad(&n.beta.as_ref().unwrap().val(), g);
        assert_close("beta", &beta(&n1, &g1), &beta(&n2, &g2), 1e-5);
    }

    #[test]
    fn fused_dropout_scales_kept_elements_and_routes_gradients_through_the_same_mask() {
        seed_dropout(3);
        let x = Tensor::<Ad, 2>::random(
            [64, 50],
            Distribution::Uniform(1.0, 2.0),
            &Default::default(),
        )
        .require_grad();
        let out = Ad::fused_dropout(x.clone(), 0.25);
        let (xs, outs) = (values(&x), values(&out));
        let factors: Vec<f32> = xs.iter().zip(&outs).map(|(x, o)| o / x).collect();
        let dropped = factors.iter().filter(|&&f| f == 0.0).count() as f64 / factors.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
        assert!(factors
            .iter()
            .all(|&f| f == 0.0 || (f - 1.0 / 0.75).abs() < 1e-6));
        let grads = out.sum().backward();
        assert_close("gradient", &grad(&x, &grads), &factors, 1e-6);
    }

    #[test]
    fn fused_adamw_matches_the_composition() {
        let param = || random::<2>([33, 7], 10).inner();
        let grad = random::<2>([33, 7], 11).inner();
        let (mut fused, mut reference) = ((param(), None), (param(), None));
        for time in 1..=3 {
            let step = AdamWStep {
                learning_rate: 1e-2,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.01,
                time,
            };
            let [p, m, v] = Flex::fused_adamw(fused.0, grad.clone(), fused.1, &step);
            fused = (p, Some((m, v)));
            let [p, m, v] = composed::adamw(reference.0, grad.clone(), reference.1, &step);
            reference = (p, Some((m, v)));
        }
        let flat = |t: Tensor<Flex, 2>| t.into_data().into_vec::<f32>().unwrap();
        assert_close("parameter", &flat(fused.0), &flat(reference.0), 1e-6);
    }
}
