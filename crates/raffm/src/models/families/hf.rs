//! Reading HF-layout blocks (Linear stored `[out, in]`, LayerNorm with weight and bias,
//! Embedding) out of a checkpoint into burn modules, and writing them back, for the
//! families whose blocks are HF's plain ones.

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::core::checkpoint::Checkpoint;
use crate::core::tensor::HostTensor;
use crate::models::fused::{self, FusedOps};

/// Reads tensors out of a checkpoint onto a device, by canonical name.
pub(crate) struct Loader<'a, B: Backend> {
    pub checkpoint: &'a Checkpoint,
    pub device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    pub fn host(&self, name: &str) -> &HostTensor {
        self.checkpoint.tensor(name)
    }

    pub fn tensor<const D: usize>(&self, t: &HostTensor) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(t.data.clone(), t.shape.clone()),
            self.device,
        )
    }

    /// An HF Linear: PyTorch stores `[out, in]`, burn computes with `[in, out]`.
    pub fn linear(&self, prefix: &str) -> Linear<B> {
        let weight = self.host(&format!("{prefix}.weight")).transposed();
        Linear {
            weight: Param::from_tensor(self.tensor(&weight)),
            bias: Some(Param::from_tensor(
                self.tensor(self.host(&format!("{prefix}.bias"))),
            )),
        }
    }

    pub fn layer_norm(&self, prefix: &str, eps: f64) -> LayerNorm<B> {
        let gamma = self.host(&format!("{prefix}.weight"));
        let mut norm = LayerNormConfig::new(gamma.numel())
            .with_epsilon(eps)
            .init(self.device);
        norm.gamma = Param::from_tensor(self.tensor(gamma));
        norm.beta = Some(Param::from_tensor(
            self.tensor(self.host(&format!("{prefix}.bias"))),
        ));
        norm
    }

    pub fn embedding(&self, name: &str) -> Embedding<B> {
        Embedding {
            weight: Param::from_tensor(self.tensor(self.host(name))),
        }
    }
}

/// A Linear on `[batch, seq, in]` as one `[batch * seq, in]` matmul. burn's Linear on a
/// 3-D input runs a batched matmul that broadcasts the weight, and its weight gradient
/// then materialises one `[in, out]` product per batch row before summing them.
pub(crate) fn linear_tokens<B: FusedOps>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let y = fused::linear(linear, x.reshape([batch * seq, width])); // [batch * seq, out]
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// Collects a module's tensors back to the host under canonical names.
#[derive(Default)]
pub(crate) struct Exporter {
    pub tensors: Vec<(String, HostTensor)>,
}

impl Exporter {
    pub fn tensor<B: Backend, const D: usize>(&mut self, name: String, t: Tensor<B, D>) {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        self.tensors.push((name, HostTensor::new(shape, data)));
    }

    pub fn linear<B: Backend>(&mut self, prefix: &str, l: &Linear<B>) {
        let shape = l.weight.val().dims();
        let data = l
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        let weight = HostTensor::new(shape.to_vec(), data).transposed();
        self.tensors.push((format!("{prefix}.weight"), weight));
        let bias = l.bias.as_ref().expect("HF linears have biases").val();
        self.tensor(format!("{prefix}.bias"), bias);
    }

    pub fn layer_norm<B: Backend>(&mut self, prefix: &str, n: &LayerNorm<B>) {
        self.tensor(format!("{prefix}.weight"), n.gamma.val());
        let beta = n.beta.as_ref().expect("HF layer norms have biases").val();
        self.tensor(format!("{prefix}.bias"), beta);
    }
}
