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
//!
//! The linear layers' product is one more step ([`FusedOps::fused_matmul`], through
//! [`linear`]): fp32 as burn computes it, or with bf16 operands where [`set_precision`]
//! asks for them (mixed precision, as PyTorch's autocast).

#[cfg(feature = "flex")]
mod flex;
pub mod kernels;
mod precision;

pub use precision::{
    bf16_engine, check_device as check_precision_device, describe as describe_precision, precision,
    set_precision, Precision,
};

use std::sync::atomic::{AtomicU64, Ordering};

use burn::nn::{DropoutConfig, LayerNorm, Linear};
use burn::optim::{AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

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

/// burn's `Linear` on `x` (`[..., in]` -> `[..., out]`), with its product through
/// [`FusedOps::fused_matmul`] where the precision is bf16. In fp32 it is `layer.forward`
/// itself, so fp32 results stay those of burn's `Linear`, bit for bit.
pub fn linear<B: FusedOps, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    if precision() == Precision::Fp32 {
        return layer.forward(x);
    }
    let mut shape = x.dims();
    let width = shape[D - 1];
    let rows = shape[..D - 1].iter().product();
    let y = B::fused_matmul(x.reshape([rows, width]), layer.weight.val()); // [rows, out]
    let y = match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze::<2>(), // [rows, out]
        None => y,
    };
    shape[D - 1] = y.dims()[1];
    y.reshape(shape)
}

/// A fresh key for the next dropout call.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn next_dropout_key() -> u64 {
    let call = DROPOUT_CALLS.fetch_add(1, Ordering::SeqCst);
    crate::core::rng::SplitMix64::new(DROPOUT_SEED.load(Ordering::SeqCst) ^ call.rotate_left(32))
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

/// One causal decoder self-attention call's geometry (LLaMA's grouped-query attention).
#[derive(Debug, Clone, Copy)]
pub struct DecoderAttentionOptions {
    pub num_heads: usize,
    /// Key/value heads; query head h reads key/value head h / (num_heads / kv_heads).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax.
    pub scale: f64,
}

/// Backends the encoder runs on. Every method defaults to its [`composed`] form.
pub trait FusedOps: Backend {
    /// `x · w` for `x` `[rows, in]` and `w` `[in, out]`: a linear layer's product, with
    /// bf16 operands where [`set_precision`] asked for them. The default is fp32 on every
    /// backend: flex overrides it.
    fn fused_matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        x.matmul(w)
    }

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

    /// Causal grouped-query self-attention with rotary position embeddings, as LLaMA's:
    /// `q` is `[batch, seq, heads * head_dim]`, `k` and `v` `[batch, seq, kv_heads *
    /// head_dim]`, `cos` and `sin` `[seq, head_dim]`; the result is `[batch, seq, heads *
    /// head_dim]`. Right padding needs no mask of its own: no real token sees it.
    fn fused_decoder_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        options: &DecoderAttentionOptions,
    ) -> Tensor<Self, 3> {
        composed::decoder_attention(q, k, v, cos, sin, options)
    }

    /// RMSNorm over the last dimension: `weight * x / sqrt(mean(x^2) + eps)`.
    fn fused_rms_norm(x: Tensor<Self, 3>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        composed::rms_norm(x, weight, eps)
    }

    /// The log-probability of each row's target token under a language-model head:
    /// `log_softmax(hidden · weightᵀ)[i, targets[i]]`, with `hidden` `[n, width]`, `weight`
    /// `[vocab, width]` and `targets` `[n]`; the result is `[n]`.
    fn fused_target_log_probs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        composed::target_log_probs(hidden, weight, targets)
    }

    /// The SwiGLU gate: `silu(gate) * up`.
    fn fused_swiglu(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        composed::swiglu(gate, up)
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

    /// Large negative bias for the keys after a query. Finite, so no row becomes NaN.
    const MASKED: f32 = -1e9;

    /// HF's `apply_rotary_pos_emb` on `[batch, heads, seq, head_dim]`: `x * cos +
    /// rotate_half(x) * sin`, with `cos` and `sin` `[1, 1, seq, head_dim]`.
    pub fn rotary<B: Backend>(
        x: Tensor<B, 4>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let d = x.dims()[3];
        let first = x.clone().narrow(3, 0, d / 2); // [batch, heads, seq, d/2]
        let second = x.clone().narrow(3, d / 2, d / 2); // [batch, heads, seq, d/2]
        let rotated = Tensor::cat(vec![second.neg(), first], 3); // [batch, heads, seq, d]
        x * cos + rotated * sin
    }

    pub fn decoder_attention<B: Backend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
        options: &DecoderAttentionOptions,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = q.dims();
        let DecoderAttentionOptions {
            num_heads: heads,
            kv_heads: kv,
            head_dim: d,
            ..
        } = *options;
        let group = heads / kv;
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, d]).swap_dims(1, 2);
        let (cos, sin) = (cos.reshape([1, 1, seq, d]), sin.reshape([1, 1, seq, d]));
        let q = rotary(split(q, heads), cos.clone(), sin.clone()); // [batch, heads, seq, d]
        let k = rotary(split(k, kv), cos, sin); // [batch, kv, seq, d]
                                                // Query head g * group + j reads KV head g, as HF's repeat_kv orders them.
        let repeat = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, kv, group, seq, d])
                .reshape([batch, heads, seq, d])
        };
        let mask: Vec<f32> = (0..seq * seq)
            .map(|i| if i % seq > i / seq { MASKED } else { 0.0 })
            .collect();
        let causal = Tensor::<B, 4>::from_data(
            burn::tensor::TensorData::new(mask, [1, 1, seq, seq]),
            &q.device(),
        );
        let scores = q
            .matmul(repeat(k).swap_dims(2, 3))
            .mul_scalar(options.scale)
            + causal; // [batch, heads, seq, seq]
        activation::softmax(scores, 3)
            .matmul(repeat(split(v, kv))) // [batch, heads, seq, d]
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * d])
    }

    pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
        let hidden = weight.dims()[0];
        let inv_rms = x
            .clone()
            .powi_scalar(2)
            .mean_dim(2)
            .add_scalar(eps)
            .sqrt()
            .recip(); // [batch, seq, 1]
        x * inv_rms * weight.reshape([1, 1, hidden])
    }

    pub fn target_log_probs<B: Backend>(
        hidden: Tensor<B, 2>,
        weight: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let n = targets.dims()[0];
        let logits = hidden.matmul(weight.transpose()); // [n, vocab]
        activation::log_softmax(logits, 1)
            .gather(1, targets.reshape([n, 1]))
            .reshape([n])
    }

    pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
        activation::silu(gate) * up
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
        let mut rng = crate::core::rng::SplitMix64::new(seed);
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

    /// Checks `got` (`[m, n]`) against the f64 product of `a` (`[m, k]`) and `b`
    /// (`[k, n]`) within the bf16 bound of every element.
    fn assert_bf16_product(
        what: &str,
        got: &[f32],
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
    ) {
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64);
                let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                let error = (got[i * n + j] as f64 - exact).abs();
                let bound = kernels::bf16::error_bound(k, magnitude);
                assert!(
                    error <= bound,
                    "{what} ({i}, {j}): error {error:e} > {bound:e}"
                );
            }
        }
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows)
            .map(|x| a[(x % rows) * cols + x / rows])
            .collect()
    }

    #[test]
    fn fused_matmul_in_bf16_is_the_bf16_product_forward_and_backward() {
        let (m, k, n) = (37, 70, 45);
        let x = random([m, k], 1).require_grad();
        let w = random([k, n], 2).require_grad();
        let dy = random([m, n], 3);
        set_precision(Precision::Bf16).unwrap();
        let y = Ad::fused_matmul(x.clone(), w.clone());
        let grads = (y.clone() * dy.clone()).sum().backward();
        let inference = Flex::fused_matmul(x.clone().inner(), w.clone().inner());
        set_precision(Precision::Fp32).unwrap();
        let (xv, wv, dyv, yv) = (values(&x), values(&w), values(&dy), values(&y));
        assert_bf16_product("y", &yv, &xv, &wv, (m, n, k));
        let dx = grad(&x, &grads);
        assert_bf16_product("dx", &dx, &dyv, &transpose(&wv, k, n), (m, k, n));
        let dw = grad(&w, &grads);
        assert_bf16_product("dw", &dw, &transpose(&xv, m, k), &dyv, (k, n, m));
        // The operands were rounded: the product is not the fp32 one.
        let fp32 = values(&x.clone().matmul(w.clone()));
        assert!(yv.iter().zip(&fp32).any(|(a, b)| a != b));
        // Inference runs the same kernel.
        let inference: Vec<f32> = inference.into_data().into_vec().unwrap();
        assert_eq!(inference, yv);
        // In fp32 the product is burn's matmul, bit for bit.
        assert_eq!(values(&Ad::fused_matmul(x, w)), fp32);
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
    fn fused_decoder_attention_matches_the_composition() {
        // 6 query heads in 2 groups of 3, head dim 4, rotary tables of real angles.
        let options = DecoderAttentionOptions {
            num_heads: 6,
            kv_heads: 2,
            head_dim: 4,
            scale: 0.5,
        };
        let (seq, d) = (5, 4);
        let rotary = crate::models::families::llama::model::LlamaRotaryEmbedding::new(d, 10_000.0);
        let (cos, sin) = rotary.cos_sin::<Ad>(seq, &Default::default());
        let inputs = || {
            [
                random([2, seq, 24], 1).require_grad(),
                random([2, seq, 8], 2).require_grad(),
                random([2, seq, 8], 3).require_grad(),
            ]
        };
        let [q1, k1, v1] = inputs();
        let fused = Ad::fused_decoder_attention(
            q1.clone(),
            k1.clone(),
            v1.clone(),
            cos.clone(),
            sin.clone(),
            &options,
        );
        let [q2, k2, v2] = inputs();
        let reference =
            composed::decoder_attention(q2.clone(), k2.clone(), v2.clone(), cos, sin, &options);
        assert_close("output", &values(&fused), &values(&reference), 1e-5);
        let (g1, g2) = (
            weighted_sum(fused, 9).backward(),
            weighted_sum(reference, 9).backward(),
        );
        for (name, a, b) in [("q", &q1, &q2), ("k", &k1, &k2), ("v", &v1, &v2)] {
            assert_close(name, &grad(a, &g1), &grad(b, &g2), 1e-5);
        }
        // Causal: the first position's output depends on the first key only.
        let [q, k, v] = inputs();
        let mut later = values(&k);
        later[8..].iter_mut().for_each(|x| *x += 1.0);
        let k_later =
            Tensor::<Ad, 3>::from_data(TensorData::new(later, [2, seq, 8]), &Default::default());
        let (cos, sin) = rotary.cos_sin::<Ad>(seq, &Default::default());
        let a = Ad::fused_decoder_attention(
            q.clone(),
            k,
            v.clone(),
            cos.clone(),
            sin.clone(),
            &options,
        );
        let b = Ad::fused_decoder_attention(q, k_later, v, cos, sin, &options);
        assert_close("first position", &values(&a)[..24], &values(&b)[..24], 0.0);
    }

    #[test]
    fn fused_target_log_probs_match_the_composition() {
        // 70 rows: two blocks of logits, the second partial.
        let (n, width, vocab) = (70, 6, 50);
        let targets: Vec<i64> = (0..n).map(|i| (i * 7 % vocab) as i64).collect();
        let targets = || {
            Tensor::<Ad, 1, Int>::from_data(
                TensorData::new(targets.clone(), [n]),
                &Default::default(),
            )
        };
        let inputs = || {
            [
                random([n, width], 1).require_grad(),
                random([vocab, width], 2).require_grad(),
            ]
        };
        let [h1, w1] = inputs();
        let fused = Ad::fused_target_log_probs(h1.clone(), w1.clone(), targets());
        let [h2, w2] = inputs();
        let reference = composed::target_log_probs(h2.clone(), w2.clone(), targets());
        assert_close("output", &values(&fused), &values(&reference), 1e-5);
        let weights = random::<1>([n], 3);
        let g1 = (fused * weights.clone()).sum().backward();
        let g2 = (reference * weights).sum().backward();
        assert_close("hidden", &grad(&h1, &g1), &grad(&h2, &g2), 1e-5);
        assert_close("weight", &grad(&w1, &g1), &grad(&w2, &g2), 1e-5);
    }

    #[test]
    fn fused_rms_norm_and_swiglu_match_the_composition() {
        let weight = || random::<1>([8], 4).require_grad();
        let inputs = || [6, 7].map(|s| random([3, 4, 8], s).require_grad());
        let (w1, [x1, u1]) = (weight(), inputs());
        let fused = Ad::fused_swiglu(Ad::fused_rms_norm(x1.clone(), w1.clone(), 1e-5), u1.clone());
        let (w2, [x2, u2]) = (weight(), inputs());
        let reference =
            composed::swiglu(composed::rms_norm(x2.clone(), w2.clone(), 1e-5), u2.clone());
        assert_close("output", &values(&fused), &values(&reference), 1e-5);
        let (g1, g2) = (
            weighted_sum(fused, 8).backward(),
            weighted_sum(reference, 8).backward(),
        );
        assert_close("x", &grad(&x1, &g1), &grad(&x2, &g2), 1e-5);
        assert_close("up", &grad(&u1, &g1), &grad(&u2, &g2), 1e-5);
        assert_close("weight", &grad(&w1, &g1), &grad(&w2, &g2), 1e-5);
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
