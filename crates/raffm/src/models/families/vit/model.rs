//! ViT and DINOv2 in burn, with elastic widths, in the manner of candle's `vit.rs`: one
//! struct per HF block, built by HF tensor name. The two layouts share every block; DINOv2
//! adds LayerScale and its classifier reads the CLS token with the mean of the patches.
//!
//! As in the encoders, a layer can keep fewer heads, narrower heads and a narrower FFN,
//! the hidden size can be narrower and layers can be missing; the attention scale stays
//! the full model's.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::config::{Variant, VitConfig};
use super::{layer_tensor, Part};
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::{Axis, AxisSizes};
use crate::core::error::{Error, Result};
use crate::core::tensor::HostTensor;
use crate::models::families::hf::{linear_tokens, Exporter, Loader};
use crate::models::fused::{self, AttentionOptions, FusedOps};

/// PyTorch's bicubic interpolation (`align_corners=False`, cubic coefficient -0.75, edge
/// samples clamped) from `input` to `output` points, as a `[output, input]` matrix.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f64> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    let scale = input as f64 / output as f64;
    let mut m = vec![0.0; output * input];
    for o in 0..output {
        let x = scale * (o as f64 + 0.5) - 0.5;
        let base = x.floor();
        let t = x - base;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, w) in weights.into_iter().enumerate() {
            let i = (base as i64 + k as i64 - 1).clamp(0, input as i64 - 1) as usize;
            m[o * input + i] += w;
        }
    }
    m
}

/// The patch projection: HF's strided convolution, run as a Linear over flattened
/// `[channels, patch, patch]` patches.
#[derive(Module, Debug)]
pub struct VitPatchEmbeddings<B: Backend> {
    projection: Linear<B>,
    patch_size: usize,
    num_channels: usize,
}

impl<B: FusedOps> VitPatchEmbeddings<B> {
    /// `[batch, channels, height, width]` pixels to `[batch, patches, hidden]`, patches in
    /// row-major order; a border narrower than a patch is dropped, as the convolution does.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, channels, height, width] = pixels.dims();
        let p = self.patch_size;
        let (rows, cols) = (height / p, width / p);
        let pixels = pixels.slice([0..batch, 0..channels, 0..rows * p, 0..cols * p]);
        let patches = pixels
            .reshape([batch * channels, rows, p, cols, p]) // [batch * channels, rows, p, cols, p]
            .swap_dims(2, 3) // [batch * channels, rows, cols, p, p]
            .reshape([batch, channels, rows * cols, p * p])
            .swap_dims(1, 2) // [batch, patches, channels, p * p]
            .reshape([batch, rows * cols, channels * p * p]);
        linear_tokens(&self.projection, patches) // [batch, patches, hidden]
    }
}

/// CLS token, patch embeddings and position embeddings (interpolated to the input's patch
/// grid when it differs from the pre-training grid).
#[derive(Module, Debug)]
pub struct VitEmbeddings<B: Backend> {
    cls_token: Param<Tensor<B, 3>>,
    /// DINOv2's mask token: unused without masked positions, kept for export.
    mask_token: Option<Param<Tensor<B, 2>>>,
    position_embeddings: Param<Tensor<B, 3>>,
    patch_embeddings: VitPatchEmbeddings<B>,
    grid: usize,
}

impl<B: FusedOps> VitEmbeddings<B> {
    /// The position embeddings for a `rows x cols` patch grid: `[1, 1 + rows * cols, hidden]`.
    fn positions(&self, rows: usize, cols: usize) -> Tensor<B, 3> {
        let all = self.position_embeddings.val(); // [1, 1 + grid², hidden]
        if rows == self.grid && cols == self.grid {
            return all;
        }
        let [_, n, hidden] = all.dims();
        let cls = all.clone().slice([0..1, 0..1]);
        let grid = all.slice([0..1, 1..n]).reshape([n - 1, hidden]); // [grid², hidden]
        let (h, w) = (
            bicubic_matrix(self.grid, rows),
            bicubic_matrix(self.grid, cols),
        );
        // Separable: the weight of grid point (a, b) for patch (i, j) is h[i, a] * w[j, b].
        let kron: Vec<f32> = (0..rows * cols)
            .flat_map(|ij| {
                let (i, j) = (ij / cols, ij % cols);
                let (h, w) = (&h, &w);
                (0..self.grid * self.grid).map(move |ab| {
                    let (a, b) = (ab / self.grid, ab % self.grid);
                    (h[i * self.grid + a] * w[j * self.grid + b]) as f32
                })
            })
            .collect();
        let device = grid.device();
        let kron = Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(kron, [rows * cols, self.grid * self.grid]),
            &device,
        );
        let patches = kron.matmul(grid).reshape([1, rows * cols, hidden]); // [1, rows * cols, hidden]
        Tensor::cat(vec![cls, patches], 1)
    }

    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, _, height, width] = pixels.dims();
        let p = self.patch_embeddings.patch_size;
        let patches = self.patch_embeddings.forward(pixels); // [batch, patches, hidden]
        let hidden = patches.dims()[2];
        let cls = self.cls_token.val().expand([batch, 1, hidden]); // [batch, 1, hidden]
        let tokens = Tensor::cat(vec![cls, patches], 1); // [batch, 1 + patches, hidden]
        tokens + self.positions(height / p, width / p)
    }
}

/// Multi-head self-attention (ViTSelfAttention / Dinov2SelfAttention) with its output
/// projection (ViTSelfOutput / Dinov2SelfOutput).
#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    output: Linear<B>,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl<B: FusedOps> VitAttention<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, _] = hidden.dims();
        let q = linear_tokens(&self.query, hidden.clone()); // [batch, seq, heads * head_dim]
        let k = linear_tokens(&self.key, hidden.clone()); // [batch, seq, heads * head_dim]
        let v = linear_tokens(&self.value, hidden); // [batch, seq, heads * head_dim]
        let options = AttentionOptions {
            num_heads: self.num_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            dropout: 0.0,
        };
        // Every patch sees every patch: no mask.
        let visible = Tensor::zeros([batch, seq], &q.device());
        let attended = B::fused_attention(q, k, v, visible, &options); // [batch, seq, heads * head_dim]
        linear_tokens(&self.output, attended) // [batch, seq, hidden]
    }
}

/// The feed-forward block: fc1, GELU, fc2 (Dinov2MLP; ViTIntermediate + ViTOutput).
#[derive(Module, Debug)]
pub struct VitMlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: FusedOps> VitMlp<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = B::fused_gelu(linear_tokens(&self.fc1, hidden)); // [batch, seq, ffn]
        linear_tokens(&self.fc2, x) // [batch, seq, hidden]
    }
}

/// A pre-LayerNorm block: `x + s1 * attention(norm1(x))`, then `x + s2 * mlp(norm2(x))`,
/// with DINOv2's LayerScales `s1`, `s2` (ViT has none).
#[derive(Module, Debug)]
pub struct VitLayer<B: Backend> {
    norm1: LayerNorm<B>,
    attention: VitAttention<B>,
    layer_scale1: Option<Param<Tensor<B, 1>>>,
    norm2: LayerNorm<B>,
    mlp: VitMlp<B>,
    layer_scale2: Option<Param<Tensor<B, 1>>>,
}

fn scaled<B: Backend>(x: Tensor<B, 3>, scale: &Option<Param<Tensor<B, 1>>>) -> Tensor<B, 3> {
    match scale {
        Some(s) => {
            let width = s.val().dims()[0];
            x * s.val().reshape([1, 1, width])
        }
        None => x,
    }
}

impl<B: FusedOps> VitLayer<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let attended = self.attention.forward(self.norm1.forward(hidden.clone()));
        let hidden = hidden + scaled(attended, &self.layer_scale1); // [batch, seq, hidden]
        let fed = self.mlp.forward(self.norm2.forward(hidden.clone()));
        hidden + scaled(fed, &self.layer_scale2) // [batch, seq, hidden]
    }
}

impl<B: Backend> VitLayer<B> {
    fn load(l: &Loader<B>, config: &VitConfig, index: usize, widths: &AxisSizes) -> Self {
        let name = |part: Part| part.key(config.variant).map(|k| layer_tensor(index, k));
        let linear = |part: Part| l.linear(&name(part).expect("every layout has it"));
        let norm = |part: Part| {
            l.layer_norm(
                &name(part).expect("every layout has it"),
                config.layer_norm_eps,
            )
        };
        let scale = |part: Part| {
            name(part).map(|n| Param::from_tensor(l.tensor(l.host(&format!("{n}.lambda1")))))
        };
        Self {
            norm1: norm(Part::Norm1),
            attention: VitAttention {
                query: linear(Part::Query),
                key: linear(Part::Key),
                value: linear(Part::Value),
                output: linear(Part::AttentionOutput),
                num_heads: widths.get(Axis::Heads),
                head_dim: widths.get(Axis::HeadDim),
                scale: 1.0 / (config.attention_scale_head_dim as f64).sqrt(),
            },
            layer_scale1: scale(Part::LayerScale1),
            norm2: norm(Part::Norm2),
            mlp: VitMlp {
                fc1: linear(Part::Fc1),
                fc2: linear(Part::Fc2),
            },
            layer_scale2: scale(Part::LayerScale2),
        }
    }

    fn export(&self, e: &mut Exporter, variant: Variant, index: usize) {
        let name = |part: Part| part.key(variant).map(|k| layer_tensor(index, k));
        let some = |part: Part| name(part).expect("every layout has it");
        e.layer_norm(&some(Part::Norm1), &self.norm1);
        e.linear(&some(Part::Query), &self.attention.query);
        e.linear(&some(Part::Key), &self.attention.key);
        e.linear(&some(Part::Value), &self.attention.value);
        e.linear(&some(Part::AttentionOutput), &self.attention.output);
        e.layer_norm(&some(Part::Norm2), &self.norm2);
        e.linear(&some(Part::Fc1), &self.mlp.fc1);
        e.linear(&some(Part::Fc2), &self.mlp.fc2);
        for (part, scale) in [
            (Part::LayerScale1, &self.layer_scale1),
            (Part::LayerScale2, &self.layer_scale2),
        ] {
            if let (Some(n), Some(s)) = (name(part), scale) {
                e.tensor(format!("{n}.lambda1"), s.val());
            }
        }
    }
}

/// The backbone, as HF's `ViTModel` (without its pooler) and `Dinov2Model`: embeddings,
/// the layers, a final LayerNorm.
#[derive(Module, Debug)]
pub struct VitModel<B: Backend> {
    embeddings: VitEmbeddings<B>,
    layers: Vec<VitLayer<B>>,
    layernorm: LayerNorm<B>,
    #[module(skip)]
    variant: Variant,
}

impl<B: Backend> VitModel<B> {
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &B::Device) -> Result<Self> {
        let config = checkpoint.config.vit().ok_or_else(|| {
            Error::Invalid(format!(
                "a ViT or DINOv2 model was expected, not `{}`",
                checkpoint.config.model_type()
            ))
        })?;
        let l = Loader { checkpoint, device };
        let p = config.patch_size;
        let projection = l.host("embeddings.patch_embeddings.projection.weight");
        let hidden = projection.shape[0];
        let flat = HostTensor::new(
            vec![hidden, projection.numel() / hidden],
            projection.data.clone(),
        );
        let projection = Linear {
            weight: Param::from_tensor(l.tensor(&flat.transposed())),
            bias: Some(Param::from_tensor(
                l.tensor(l.host("embeddings.patch_embeddings.projection.bias")),
            )),
        };
        Ok(Self {
            embeddings: VitEmbeddings {
                cls_token: Param::from_tensor(l.tensor(l.host("embeddings.cls_token"))),
                mask_token: config
                    .use_mask_token
                    .then(|| Param::from_tensor(l.tensor(l.host("embeddings.mask_token")))),
                position_embeddings: Param::from_tensor(
                    l.tensor(l.host("embeddings.position_embeddings")),
                ),
                patch_embeddings: VitPatchEmbeddings {
                    projection,
                    patch_size: p,
                    num_channels: config.num_channels,
                },
                grid: config.grid(),
            },
            layers: config
                .stack
                .layers
                .iter()
                .enumerate()
                .map(|(i, widths)| VitLayer::load(&l, config, i, widths))
                .collect(),
            layernorm: l.layer_norm("layernorm", config.layer_norm_eps),
            variant: config.variant,
        })
    }

    fn export(&self, e: &mut Exporter) {
        let emb = &self.embeddings;
        e.tensor("embeddings.cls_token".into(), emb.cls_token.val());
        if let Some(m) = &emb.mask_token {
            e.tensor("embeddings.mask_token".into(), m.val());
        }
        e.tensor(
            "embeddings.position_embeddings".into(),
            emb.position_embeddings.val(),
        );
        let patch = &emb.patch_embeddings;
        let mut flat = Exporter::default();
        flat.linear("projection", &patch.projection);
        for (name, t) in flat.tensors {
            let t = match name.as_str() {
                "projection.weight" => {
                    let (hidden, p) = (t.shape[0], patch.patch_size);
                    HostTensor::new(vec![hidden, patch.num_channels, p, p], t.data)
                }
                _ => t,
            };
            e.tensors
                .push((format!("embeddings.patch_embeddings.{name}"), t));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            layer.export(e, self.variant, i);
        }
        e.layer_norm("layernorm", &self.layernorm);
    }
}

impl<B: FusedOps> VitModel<B> {
    /// `[batch, channels, height, width]` normalised pixels to the last hidden state,
    /// `[batch, 1 + patches, hidden]` (after the final LayerNorm).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let mut hidden = self.embeddings.forward(pixels); // [batch, 1 + patches, hidden]
        for layer in &self.layers {
            hidden = layer.forward(hidden);
        }
        self.layernorm.forward(hidden)
    }
}

/// The backbone with a linear classifier, as HF's `ViTForImageClassification` (on the CLS
/// token) and `Dinov2ForImageClassification` (on the CLS token and the patches' mean).
#[derive(Module, Debug)]
pub struct VitForImageClassification<B: Backend> {
    backbone: VitModel<B>,
    classifier: Linear<B>,
}

impl<B: Backend> VitForImageClassification<B> {
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &B::Device) -> Result<Self> {
        if !checkpoint.config.has_classifier() {
            return Err(Error::Invalid(
                "the model has no classification head (add one with `raffm-init-head`)".into(),
            ));
        }
        let l = Loader { checkpoint, device };
        Ok(Self {
            backbone: VitModel::from_checkpoint(checkpoint, device)?,
            classifier: l.linear("classifier"),
        })
    }

    pub fn backbone(&self) -> &VitModel<B> {
        &self.backbone
    }

    /// The model's weights as a checkpoint with `template`'s config and metadata.
    pub fn to_checkpoint(&self, template: &Checkpoint) -> Checkpoint {
        let mut e = Exporter::default();
        self.backbone.export(&mut e);
        e.linear("classifier", &self.classifier);
        let mut out = template.clone();
        out.tensors = e.tensors.into_iter().collect();
        out.files.clear();
        out
    }
}

impl<B: FusedOps> VitForImageClassification<B> {
    /// Logits, `[batch, num_labels]`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let hidden = self.backbone.forward(pixels); // [batch, 1 + patches, hidden]
        let [batch, tokens, width] = hidden.dims();
        let cls = hidden
            .clone()
            .slice([0..batch, 0..1])
            .reshape([batch, width]); // [batch, hidden]
        let features = match self.backbone.variant {
            Variant::Vit => cls,
            Variant::Dinov2 => {
                let patches = hidden
                    .slice([0..batch, 1..tokens])
                    .mean_dim(1)
                    .reshape([batch, width]);
                Tensor::cat(vec![cls, patches], 1) // [batch, 2 * hidden]
            }
        };
        fused::linear(&self.classifier, features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::vit::tiny_config;
    use crate::models::families::ModelConfig;
    use crate::CpuBackend;

    #[test]
    fn bicubic_keeps_a_grid_of_its_own_size_and_sums_to_one() {
        let same = bicubic_matrix(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                assert!((same[o * 5 + i] - f64::from(o == i)).abs() < 1e-12);
            }
        }
        for (input, output) in [(37, 8), (37, 16), (4, 9)] {
            let m = bicubic_matrix(input, output);
            for o in 0..output {
                let sum: f64 = m[o * input..(o + 1) * input].iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-12,
                    "{input}->{output} row {o}: {sum}"
                );
            }
        }
        // A linear ramp stays a ramp inside the borders (cubic convolution reproduces it).
        let m = bicubic_matrix(8, 4);
        let ramp: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let out: Vec<f64> = (0..4)
            .map(|o| (0..8).map(|i| m[o * 8 + i] * ramp[i]).sum())
            .collect();
        assert!(
            (out[1] - 2.5).abs() < 1e-12 && (out[2] - 4.5).abs() < 1e-12,
            "{out:?}"
        );
    }

    #[test]
    fn export_returns_the_loaded_tensors_bit_for_bit() {
        for variant in [Variant::Vit, Variant::Dinov2] {
            let mut config = tiny_config(variant, 2, 24, 4, 40, 28, 14);
            config.set_labels(&["a".into(), "b".into()]);
            let ckpt = Checkpoint::random(&ModelConfig::Vit(config), 5);
            let model = VitForImageClassification::<CpuBackend>::from_checkpoint(
                &ckpt,
                &Default::default(),
            )
            .unwrap();
            let back = model.to_checkpoint(&ckpt);
            assert_eq!(back.tensors.len(), ckpt.tensors.len());
            for (name, t) in &ckpt.tensors {
                assert!(t.bit_eq(&back.tensors[name]), "{variant:?} {name}");
            }
            let logits = model.forward(Tensor::ones([3, 3, 28, 42], &Default::default()));
            assert_eq!(logits.dims(), [3, 2]);
        }
    }
}
