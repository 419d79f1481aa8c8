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
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::kernels::{self, AttentionSaved, AttentionShape, DropoutMask, LayerNormSaved};
use super::{next_dropout_key, AdamWStep, AttentionOptions, FusedOps};

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

fn attention_shape(q: &FlexTensor, options: &AttentionOptions) -> AttentionShape {
    let d = dims(q);
    AttentionShape {
        batch: d[0],
        seq: d[1],
        heads: options.num_heads,
        head_dim: options.head_dim,
        scale: options.scale as f32,
    }
}

fn attention_forward(
    shape: &AttentionShape,
    [q, k, v]: [&FlexTensor; 3],
    mask_bias: &FlexTensor,
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
        mask,
        &mut out,
        save,
    );
    (flex_tensor(out, dims(q)), saved)
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
        wrap(attention_forward(&shape, [&q, &k, &v], &bias, None, false).0)
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
            saved,
            mask,
        } = ops.state;
        let gradients = kernels::attention_backward(
            &shape,
            values(&q),
            values(&k),
            values(&v),
            &saved.0,
            mask.as_ref(),
            values(&grad),
        );
        for (parent, g) in ops.parents.iter().zip(gradients) {
            register!(grads, parent, flex_tensor(g, dims(&q)));
        }
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
        let forward = |save| attention_forward(&shape, [iq, ik, iv], &bias, mask.as_ref(), save);
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
