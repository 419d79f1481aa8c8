//! [`FusedOps`] on the flex CPU backend: the kernels of [`super::kernels`] for inference,
//! and under autodiff one graph node per fused step with its hand-written backward pass.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor as Primitive;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

mod matmul;

use super::kernels::{
    self, AttentionSaved, AttentionShape, DropoutMask, LayerNormSaved, RotaryTables,
};
use super::{next_dropout_key, AdamWStep, AttentionOptions, DecoderAttentionOptions, FusedOps};

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> Primitive<B> {
    x.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(x: Primitive<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused kernels take contiguous f32 tensors")
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

fn flex_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

fn gelu_forward(x: &FlexTensor) -> FlexTensor {
    let mut y = vec![0.0; x.layout().num_elements()];
    kernels::gelu(values(x), &mut y);
    flex_tensor(y, dims(x))
}

/// `x` times the mask's factors (dropout forward, and its backward on the gradient).
fn apply_mask(x: &FlexTensor, mask: &DropoutMask) -> FlexTensor {
    let mut y = values(x).to_vec();
    kernels::apply_dropout(&mut y, mask);
    flex_tensor(y, dims(x))
}

/// The kernel's geometry of a call on queries `q`, `[batch, seq, heads * head_dim]`.
fn shape_of(
    q: &FlexTensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    causal: bool,
) -> AttentionShape {
    let d = dims(q);
    AttentionShape {
        batch: d[0],
        seq: d[1],
        heads,
        kv_heads,
        head_dim,
        scale: scale as f32,
        causal,
    }
}

/// The encoder's self-attention: every head its own keys, no causal mask.
fn attention_shape(q: &FlexTensor, o: &AttentionOptions) -> AttentionShape {
    shape_of(q, o.num_heads, o.num_heads, o.head_dim, o.scale, false)
}

/// The decoder's: grouped keys and values, causal.
fn decoder_attention_shape(q: &FlexTensor, o: &DecoderAttentionOptions) -> AttentionShape {
    shape_of(q, o.num_heads, o.kv_heads, o.head_dim, o.scale, true)
}

fn rotary_tables(cos: &FlexTensor, sin: &FlexTensor) -> RotaryTables {
    RotaryTables {
        cos: values(cos).to_vec(),
        sin: values(sin).to_vec(),
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_forward(
    shape: &AttentionShape,
    [q, k, v]: [&FlexTensor; 3],
    mask_bias: &FlexTensor,
    rotary: Option<&RotaryTables>,
    mask: Option<&DropoutMask>,
    save: bool,
) -> (FlexTensor, Option<AttentionSaved>) {
    let mut out = vec![0.0; q.layout().num_elements()];
    let saved = kernels::attention(
        shape,
        values(q),
        values(k),
        values(v),
        values(mask_bias),
        rotary,
        mask,
        &mut out,
        save,
    );
    (flex_tensor(out, dims(q)), saved)
}

/// Right-padded decoder batches need no key mask: a zero bias per key.
fn no_bias(shape: &AttentionShape) -> FlexTensor {
    flex_tensor(
        vec![0.0; shape.batch * shape.seq],
        vec![shape.batch, shape.seq],
    )
}

fn rms_norm_forward(x: &FlexTensor, weight: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let mut out = vec![0.0; x.layout().num_elements()];
    let inv_rms = kernels::rms_norm(values(x), values(weight), eps as f32, &mut out);
    (flex_tensor(out, dims(x)), inv_rms)
}

/// Token ids as indices (targets are never tracked by autodiff).
fn indices<B: Backend>(targets: Tensor<B, 1, Int>) -> Vec<usize> {
    targets
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("integer tensor")
        .into_iter()
        .map(|t| t as usize)
        .collect()
}

fn target_log_probs_forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &[usize],
) -> (FlexTensor, Vec<f32>) {
    let width = dims(hidden)[1];
    let (log_probs, lse) =
        kernels::target_log_probs(values(hidden), values(weight), width, targets);
    (flex_tensor(log_probs, vec![targets.len()]), lse)
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let mut out = vec![0.0; gate.layout().num_elements()];
    kernels::swiglu(values(gate), values(up), &mut out);
    flex_tensor(out, dims(gate))
}

fn layer_norm_forward(
    [y, residual, gamma, beta]: [&FlexTensor; 4],
    eps: f64,
    mask: Option<&DropoutMask>,
    save: bool,
) -> (FlexTensor, Option<LayerNormSaved>) {
    let mut out = vec![0.0; y.layout().num_elements()];
    let saved = kernels::add_layer_norm(
        values(y),
        values(residual),
        values(gamma),
        values(beta),
        eps as f32,
        mask,
        &mut out,
        save,
    );
    (flex_tensor(out, dims(y)), saved)
}

/// The norm's gamma and beta as tensors of the backend `B`.
fn norm_parameters<B: Backend>(norm: &LayerNorm<B>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let beta = norm.beta.as_ref().expect("HF layer norms have biases");
    (norm.gamma.val(), beta.val())
}

/// Inference: no dropout, no saved state.
impl FusedOps for Flex {
    fn fused_matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        match super::bf16_engine() {
            Some(engine) => matmul::inference(engine, x, w),
            None => x.matmul(w),
        }
    }

    fn fused_gelu(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        wrap(gelu_forward(&primitive(x).to_contiguous()))
    }

    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, _prob: f64) -> Tensor<Self, D> {
        x
    }

    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        mask_bias: Tensor<Self, 2>,
        options: &AttentionOptions,
    ) -> Tensor<Self, 3> {
        let [q, k, v, bias] = [
            primitive(q),
            primitive(k),
            primitive(v),
            primitive(mask_bias),
        ]
        .map(|t| t.to_contiguous());
        let shape = attention_shape(&q, options);
        wrap(attention_forward(&shape, [&q, &k, &v], &bias, None, None, false).0)
    }

    fn fused_decoder_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        options: &DecoderAttentionOptions,
    ) -> Tensor<Self, 3> {
        let [q, k, v, cos, sin] = [
            primitive(q),
            primitive(k),
            primitive(v),
            primitive(cos),
            primitive(sin),
        ]
        .map(|t| t.to_contiguous());
        let shape = decoder_attention_shape(&q, options);
        let rotary = rotary_tables(&cos, &sin);
        wrap(
            attention_forward(
                &shape,
                [&q, &k, &v],
                &no_bias(&shape),
                Some(&rotary),
                None,
                false,
            )
            .0,
        )
    }

    fn fused_rms_norm(x: Tensor<Self, 3>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        let [x, weight] = [primitive(x), primitive(weight)].map(|t| t.to_contiguous());
        wrap(rms_norm_forward(&x, &weight, eps).0)
    }

    fn fused_swiglu(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        let [gate, up] = [primitive(gate), primitive(up)].map(|t| t.to_contiguous());
        wrap(swiglu_forward(&gate, &up))
    }

    fn fused_target_log_probs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        let targets = indices(targets);
        let [hidden, weight] = [primitive(hidden), primitive(weight)].map(|t| t.to_contiguous());
        wrap(target_log_probs_forward(&hidden, &weight, &targets).0)
    }

    fn fused_add_layer_norm(
        y: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
        norm: &LayerNorm<Self>,
        eps: f64,
        _prob: f64,
    ) -> Tensor<Self, 3> {
        let (gamma, beta) = norm_parameters(norm);
        let inputs = [
            primitive(y),
            primitive(residual),
            primitive(gamma),
            primitive(beta),
        ]
        .map(|t| t.to_contiguous());
        let [y, residual, gamma, beta] = &inputs;
        wrap(layer_norm_forward([y, residual, gamma, beta], eps, None, false).0)
    }

    fn fused_adamw<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        step: &AdamWStep,
    ) -> [Tensor<Self, D>; 3] {
        let grad = primitive(grad).to_contiguous();
        let (mut m, mut v) = match moments {
            Some((m, v)) => (owned(primitive(m)), owned(primitive(v))),
            None => {
                let zeros = || flex_tensor(vec![0.0; grad.layout().num_elements()], dims(&grad));
                (zeros(), zeros())
            }
        };
        let mut param = owned(primitive(param));
        kernels::adamw(
            param.storage_mut(),
            values(&grad),
            m.storage_mut(),
            v.storage_mut(),
            step,
        );
        [param, m, v].map(wrap)
    }
}

/// The tensor's storage to update in place: copied only if it is shared or strided.
fn owned(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

type AutodiffFlex<C> = Autodiff<Flex, C>;

/// Registers `grad` for `parent` if it requires one.
macro_rules! register {
    ($grads:expr, $parent:expr, $grad:expr) => {
        if let Some(node) = $parent {
            $grads.register::<Flex>(node.id, $grad);
        }
    };
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let x = ops.state;
        register!(grads, &ops.parents[0], {
            let mut out = vec![0.0; x.layout().num_elements()];
            kernels::gelu_backward(values(&x), values(&grad), &mut out);
            flex_tensor(out, dims(&x))
        });
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    type State = DropoutMask;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        register!(grads, &ops.parents[0], apply_mask(&grad, &ops.state));
    }
}

/// Saved activations, shared and printed by type only (burn's graph wants `Clone + Debug`).
struct Saved<T>(Arc<T>);

// By hand: a derive would ask for `T: Clone`, and cloning only shares the Arc.
impl<T> Clone for Saved<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Saved<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<T>())
    }
}

#[derive(Clone, Debug)]
struct AttentionState {
    shape: AttentionShape,
    inputs: [FlexTensor; 3],
    rotary: Option<Saved<RotaryTables>>,
    saved: Saved<AttentionSaved>,
    mask: Option<DropoutMask>,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let AttentionState {
            shape,
            inputs: [q, k, v],
            rotary,
            saved,
            mask,
        } = ops.state;
        let gradients = kernels::attention_backward(
            &shape,
            values(&q),
            values(&k),
            values(&v),
            rotary.as_ref().map(|r| &*r.0),
            &saved.0,
            mask.as_ref(),
            values(&grad),
        );
        for ((parent, g), input) in ops.parents.iter().zip(gradients).zip([&q, &k, &v]) {
            register!(grads, parent, flex_tensor(g, dims(input)));
        }
    }
}

#[derive(Clone, Debug)]
struct RmsNormState {
    x: FlexTensor,
    weight: FlexTensor,
    inv_rms: Saved<Vec<f32>>,
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = RmsNormState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let RmsNormState { x, weight, inv_rms } = ops.state;
        let (dx, dweight) =
            kernels::rms_norm_backward(values(&grad), values(&x), values(&weight), &inv_rms.0);
        let [x_node, weight_node] = &ops.parents;
        register!(grads, x_node, flex_tensor(dx, dims(&x)));
        register!(grads, weight_node, flex_tensor(dweight, dims(&weight)));
    }
}

#[derive(Clone, Debug)]
struct TargetLogProbsState {
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: Saved<Vec<usize>>,
    lse: Saved<Vec<f32>>,
}

#[derive(Debug)]
struct TargetLogProbsBackward;

impl Backward<Flex, 2> for TargetLogProbsBackward {
    type State = TargetLogProbsState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let TargetLogProbsState {
            hidden,
            weight,
            targets,
            lse,
        } = ops.state;
        let [hidden_node, weight_node] = &ops.parents;
        let width = dims(&hidden)[1];
        let (d_hidden, d_weight) = kernels::target_log_probs_backward(
            values(&hidden),
            values(&weight),
            width,
            &targets.0,
            &lse.0,
            values(&grad),
            weight_node.is_some(),
        );
        register!(grads, hidden_node, flex_tensor(d_hidden, dims(&hidden)));
        if let Some(d_weight) = d_weight {
            register!(grads, weight_node, flex_tensor(d_weight, dims(&weight)));
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// The gate and up projections.
    type State = [FlexTensor; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [gate, up] = ops.state;
        let (dgate, dup) = kernels::swiglu_backward(values(&gate), values(&up), values(&grad));
        let [gate_node, up_node] = &ops.parents;
        register!(grads, gate_node, flex_tensor(dgate, dims(&gate)));
        register!(grads, up_node, flex_tensor(dup, dims(&up)));
    }
}

#[derive(Clone, Debug)]
struct LayerNormState {
    saved: Saved<LayerNormSaved>,
    gamma: FlexTensor,
    mask: Option<DropoutMask>,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 4> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let LayerNormState { saved, gamma, mask } = ops.state;
        let (grad_z, grad_gamma, grad_beta) =
            kernels::add_layer_norm_backward(values(&grad), &saved.0, values(&gamma));
        let width = grad_gamma.len();
        let [y, residual, gamma_node, beta_node] = &ops.parents;
        let grad_z = flex_tensor(grad_z, dims(&grad)); // y's shape
        register!(
            grads,
            y,
            match &mask {
                Some(m) => apply_mask(&grad_z, m),
                None => grad_z.clone(),
            }
        );
        register!(grads, residual, grad_z.clone());
        register!(grads, gamma_node, flex_tensor(grad_gamma, vec![width]));
        register!(grads, beta_node, flex_tensor(grad_beta, vec![width]));
    }
}

/// Training: dropout is on, and every fused step records its backward pass.
impl<C: CheckpointStrategy> FusedOps for AutodiffFlex<C> {
    fn fused_matmul(x: Tensor<Self, 2>, w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        match super::bf16_engine() {
            Some(engine) => matmul::autodiff(engine, x, w),
            None => x.matmul(w),
        }
    }

    fn fused_gelu(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        let x = primitive(x);
        let input = x.primitive.to_contiguous();
        let y = gelu_forward(&input);
        wrap(
            match GeluBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(input, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }

    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, prob: f64) -> Tensor<Self, D> {
        let Some(mask) = DropoutMask::new(prob, next_dropout_key()) else {
            return x;
        };
        let x = primitive(x);
        let y = apply_mask(&x.primitive.to_contiguous(), &mask);
        wrap(
            match DropoutBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(mask, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        )
    }

    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        mask_bias: Tensor<Self, 2>,
        options: &AttentionOptions,
    ) -> Tensor<Self, 3> {
        let [q, k, v] = [primitive(q), primitive(k), primitive(v)];
        let inputs = [&q, &k, &v].map(|t| t.primitive.to_contiguous());
        let bias = primitive(mask_bias).primitive.to_contiguous();
        let shape = attention_shape(&inputs[0], options);
        let mask = DropoutMask::new(options.dropout, next_dropout_key());
        let [iq, ik, iv] = &inputs;
        let forward =
            |save| attention_forward(&shape, [iq, ik, iv], &bias, None, mask.as_ref(), save);
        wrap(
            match AttentionBackward
                .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = forward(true);
                    let saved = Saved(Arc::new(saved.expect("saved on request")));
                    prep.finish(
                        AttentionState {
                            shape,
                            inputs: inputs.clone(),
                            rotary: None,
                            saved,
                            mask,
                        },
                        out,
                    )
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
            },
        )
    }

    fn fused_decoder_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        options: &DecoderAttentionOptions,
    ) -> Tensor<Self, 3> {
        let [q, k, v] = [primitive(q), primitive(k), primitive(v)];
        let inputs = [&q, &k, &v].map(|t| t.primitive.to_contiguous());
        let [cos, sin] = [primitive(cos), primitive(sin)].map(|t| t.primitive.to_contiguous());
        let shape = decoder_attention_shape(&inputs[0], options);
        let rotary = Saved(Arc::new(rotary_tables(&cos, &sin)));
        let bias = no_bias(&shape);
        let [iq, ik, iv] = &inputs;
        let forward =
            |save| attention_forward(&shape, [iq, ik, iv], &bias, Some(&rotary.0), None, save);
        wrap(
            match AttentionBackward
                .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = forward(true);
                    let saved = Saved(Arc::new(saved.expect("saved on request")));
                    let state = AttentionState {
                        shape,
                        inputs: inputs.clone(),
                        rotary: Some(rotary.clone()),
                        saved,
                        mask: None,
                    };
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
            },
        )
    }

    fn fused_rms_norm(x: Tensor<Self, 3>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        let [x, weight] = [primitive(x), primitive(weight)];
        let [ix, iw] = [&x, &weight].map(|t| t.primitive.to_contiguous());
        let (out, inv_rms) = rms_norm_forward(&ix, &iw, eps);
        wrap(
            match RmsNormBackward
                .prepare::<C>([x.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let state = RmsNormState {
                        x: ix,
                        weight: iw,
                        inv_rms: Saved(Arc::new(inv_rms)),
                    };
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            },
        )
    }

    fn fused_target_log_probs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        let targets = indices(targets);
        let [hidden, weight] = [primitive(hidden), primitive(weight)];
        let [ih, iw] = [&hidden, &weight].map(|t| t.primitive.to_contiguous());
        let (out, lse) = target_log_probs_forward(&ih, &iw, &targets);
        wrap(
            match TargetLogProbsBackward
                .prepare::<C>([hidden.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let state = TargetLogProbsState {
                        hidden: ih,
                        weight: iw,
                        targets: Saved(Arc::new(targets)),
                        lse: Saved(Arc::new(lse)),
                    };
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            },
        )
    }

    fn fused_swiglu(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        let [gate, up] = [primitive(gate), primitive(up)];
        let inputs = [&gate, &up].map(|t| t.primitive.to_contiguous());
        let out = swiglu_forward(&inputs[0], &inputs[1]);
        wrap(
            match SwigluBackward
                .prepare::<C>([gate.node.clone(), up.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(inputs, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            },
        )
    }

    fn fused_add_layer_norm(
        y: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
        norm: &LayerNorm<Self>,
        eps: f64,
        prob: f64,
    ) -> Tensor<Self, 3> {
        let (gamma, beta) = norm_parameters(norm);
        let nodes = [
            primitive(y),
            primitive(residual),
            primitive(gamma),
            primitive(beta),
        ];
        let inputs = nodes.each_ref().map(|t| t.primitive.to_contiguous());
        let mask = DropoutMask::new(prob, next_dropout_key());
        let [iy, ir, ig, ib] = &inputs;
        let forward = |save| layer_norm_forward([iy, ir, ig, ib], eps, mask.as_ref(), save);
        wrap(
            match LayerNormBackward
                .prepare::<C>(nodes.each_ref().map(|t| t.node.clone()))
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = forward(true);
                    prep.finish(
                        LayerNormState {
                            saved: Saved(Arc::new(saved.expect("saved on request"))),
                            gamma: ig.clone(),
                            mask,
                        },
                        out,
                    )
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
            },
        )
    }
}
