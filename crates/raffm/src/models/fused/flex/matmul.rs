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

#[derive(Clone, Debug)]
struct MatmulState {
    engine: Engine,
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    type State = MatmulState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous(); // [rows, out]
        let MatmulState { engine, x, w } = ops.state;
        let ([rows, width], [_, out]) = (shape2(&x), shape2(&w));
        let [x_node, w_node] = &ops.parents;
        if let Some(node) = x_node {
            let dx = product(engine, (rows, width, out), (&grad, false), (&w, true)); // [rows, in]
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = w_node {
            let dw = product(engine, (width, out, rows), (&x, true), (&grad, false)); // [in, out]
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
    wrap(
        match MatmulBackward
            .prepare::<C>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                MatmulState {
                    engine,
                    x: ix,
                    w: iw,
                },
                out,
            ),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    )
}
