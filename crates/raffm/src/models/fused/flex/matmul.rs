//! The linear layers' product on flex in bf16 ([`super::super::Precision::Bf16`]): forward
//! `y = x · w`, and under autodiff its backward, `dx = dy · wᵀ` and `dw = xᵀ · dy`, each
//! with bf16 operands and fp32 accumulation, as autocast runs a matmul's backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::Tensor;

use super::super::kernels::bf16::{self, Engine};
use super::super::kernels::Strided;
use super::{dims, flex_tensor, primitive, values, wrap, AutodiffFlex};

/// `a · b` for row-major `a` (`[m, k]`, or read transposed) and `b` (`[k, n]`, or read
/// transposed): `[m, n]`.
fn product(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    a: (&FlexTensor, bool),
    b: (&FlexTensor, bool),
) -> FlexTensor {
    let view = |rows: usize, cols: usize, transposed: bool| {
        if transposed {
            Strided::rows(0, rows).transposed()
        } else {
            Strided::rows(0, cols)
        }
    };
    let mut out = vec![0.0; m * n];
    bf16::matmul(
        engine,
        (m, n, k),
        &mut out,
        Strided::rows(0, n),
        values(a.0),
        view(m, k, a.1),
        values(b.0),
        view(k, n, b.1),
        false,
    );
    flex_tensor(out, vec![m, n])
}

/// `x · w`: `[rows, in] · [in, out]`.
fn forward(engine: Engine, x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let ([rows, width], [_, out]) = (shape2(x), shape2(w));
    product(engine, (rows, out, width), (x, false), (w, false))
}

fn shape2(t: &FlexTensor) -> [usize; 2] {
    let d = dims(t);
    [d[0], d[1]]
}

/// Inference.
pub(super) fn inference(engine: Engine, x: Tensor<Flex, 2>, w: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
    let [x, w] = [primitive(x), primitive(w)].map(|t| t.to_contiguous());
    wrap(forward(engine, &x, &w))
}

/// What the backward needs: `x` only for `w`'s gradient and `w` only for `x`'s, so a
/// frozen weight (LoRA's base) keeps no activation alive.
#[derive(Clone, Debug)]
struct MatmulState {
    engine: Engine,
    /// `[rows, in]`, when `w` needs a gradient.
    x: Option<FlexTensor>,
    /// `[in, out]`, when `x` needs a gradient.
    w: Option<FlexTensor>,
    rows: usize,
    width: usize,
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    type State = MatmulState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous(); // [rows, out]
        let MatmulState {
            engine,
            x,
            w,
            rows,
            width,
        } = ops.state;
        let out = shape2(&grad)[1];
        let [x_node, w_node] = &ops.parents;
        if let (Some(node), Some(w)) = (x_node, &w) {
            let dx = product(engine, (rows, width, out), (&grad, false), (w, true)); // [rows, in]
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(x)) = (w_node, &x) {
            let dw = product(engine, (width, out, rows), (x, true), (&grad, false)); // [in, out]
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// Under autodiff: one graph node with the backward above.
pub(super) fn autodiff<C: CheckpointStrategy>(
    engine: Engine,
    x: Tensor<AutodiffFlex<C>, 2>,
    w: Tensor<AutodiffFlex<C>, 2>,
) -> Tensor<AutodiffFlex<C>, 2> {
    let [x, w] = [primitive(x), primitive(w)];
    let [ix, iw] = [&x, &w].map(|t| t.primitive.to_contiguous());
    let out = forward(engine, &ix, &iw);
    let [rows, width] = shape2(&ix);
    let state = MatmulState {
        engine,
        x: w.is_tracked().then_some(ix),
        w: x.is_tracked().then_some(iw),
        rows,
        width,
    };
    wrap(
        match MatmulBackward
            .prepare::<C>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    )
}
