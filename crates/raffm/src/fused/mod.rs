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

/// Backends the encoder runs on. Every method has a default composed from burn ops.
pub trait FusedOps: Backend {
    /// The exact (erf) GELU.
    fn fused_gelu(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        activation::gelu(x)
    }

    /// Dropout with probability `prob`, active only under autodiff, as burn's `Dropout`.
    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, prob: f64) -> Tensor<Self, D> {
        DropoutConfig::new(prob).init().forward(x)
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
        let [batch, seq, _] = q.dims();
        let AttentionOptions {
            num_heads,
            head_dim,
            ..
        } = *options;
        let split = |x: Tensor<Self, 3>| {
            x.reshape([batch, seq, num_heads, head_dim]) // [batch, seq, heads, head_dim]
                .swap_dims(1, 2) // [batch, heads, seq, head_dim]
        };
        let scores = split(q).matmul(split(k).transpose()).mul_scalar(options.scale)
            + mask_bias.reshape([batch, 1, 1, seq]); // [batch, heads, seq, seq]
        let probs = Self::fused_dropout(activation::softmax(scores, 3), options.dropout);
        probs
            .matmul(split(v)) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2) // [batch, seq, heads, head_dim]
            .reshape([batch, seq, num_heads * head_dim])
    }

    /// `norm(dropout(y) + residual)`, with the norm's epsilon given as `eps` (burn keeps
    /// it private).
    fn fused_add_layer_norm(
        y: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
        norm: &LayerNorm<Self>,
        eps: f64,
        prob: f64,
    ) -> Tensor<Self, 3> {
        let _ = eps;
        norm.forward(Self::fused_dropout(y, prob) + residual)
    }

    /// One AdamW step for one parameter tensor: the new parameter and both moments.
    /// `moments` is `None` on the first step (both start at zero).
    fn fused_adamw<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        step: &AdamWStep,
    ) -> [Tensor<Self, D>; 3] {
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
