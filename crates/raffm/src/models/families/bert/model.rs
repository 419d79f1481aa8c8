//! The BERT-family encoder in burn, with elastic widths, in the manner of candle's
//! `bert.rs`: one struct per HF block, named after it, built by HF tensor name.
//!
//! Every layer can keep fewer heads, narrower heads and a narrower FFN than the full model,
//! the hidden size can be narrower and layers can be missing (see [`crate::core::elastic`]); the
//! attention scale stays the full model's so that a sub-model computes what the full model
//! computes with the dropped heads, channels and neurons zeroed.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::config::{Activation, BertConfig, Variant};
use super::names::layer_tensor;
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::{Axis, AxisSizes};
use crate::core::error::{Error, Result};
use crate::models::families::hf::{linear_tokens, Exporter, Loader};
use crate::models::fused::{self, AttentionOptions, FusedOps};

/// Large negative bias for masked keys. Finite, so a row can never become NaN.
const MASKED: f32 = -1e9;

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    word_embeddings: Embedding<B>,
    position_embeddings: Embedding<B>,
    token_type_embeddings: Option<Embedding<B>>,
    layer_norm: LayerNorm<B>,
    dropout: Dropout,
    variant: Variant,
    pad_token_id: usize,
}

impl<B: Backend> BertEmbeddings<B> {
    fn load(l: &Loader<B>, config: &BertConfig) -> Self {
        Self {
            word_embeddings: l.embedding("embeddings.word_embeddings.weight"),
            position_embeddings: l.embedding("embeddings.position_embeddings.weight"),
            token_type_embeddings: (config.type_vocab_size > 0)
                .then(|| l.embedding("embeddings.token_type_embeddings.weight")),
            layer_norm: l.layer_norm("embeddings.LayerNorm", config.layer_norm_eps),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            variant: config.variant,
            pad_token_id: config.pad_token_id,
        }
    }

    fn export(&self, e: &mut Exporter) {
        e.tensor(
            "embeddings.word_embeddings.weight".into(),
            self.word_embeddings.weight.val(),
        );
        e.tensor(
            "embeddings.position_embeddings.weight".into(),
            self.position_embeddings.weight.val(),
        );
        if let Some(t) = &self.token_type_embeddings {
            e.tensor(
                "embeddings.token_type_embeddings.weight".into(),
                t.weight.val(),
            );
        }
        e.layer_norm("embeddings.LayerNorm", &self.layer_norm);
    }

    /// Position ids: 0.. for BERT and DistilBERT; RoBERTa counts non-padding tokens from
    /// `pad_token_id + 1` and gives padding `pad_token_id`, as HF does.
    fn position_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        match self.variant {
            Variant::Roberta => {
                let mask = input_ids
                    .clone()
                    .not_equal_elem(self.pad_token_id as i64)
                    .int(); // [batch, seq]
                (mask.clone().cumsum(1) * mask).add_scalar(self.pad_token_id as i64)
            }
            Variant::Bert | Variant::DistilBert => {
                Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                    .reshape([1, seq])
                    .expand([batch, seq])
            }
        }
    }
}

impl<B: FusedOps> BertEmbeddings<B> {
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let positions = self.position_ids(&input_ids);
        let mut x = self.word_embeddings.forward(input_ids) // [batch, seq, hidden]
            + self.position_embeddings.forward(positions);
        if let Some(token_types) = &self.token_type_embeddings {
            x = x + token_types.forward(token_type_ids);
        }
        B::fused_dropout(self.layer_norm.forward(x), self.dropout.prob)
    }
}

/// Multi-head self-attention with `num_heads` heads of `head_dim` channels.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    dropout: Dropout,
    num_heads: usize,
    head_dim: usize,
    /// `1/sqrt(full model head dim)`, also when this layer's heads are narrower.
    scale: f64,
}

impl<B: FusedOps> BertSelfAttention<B> {
    /// `mask_bias`: `[batch, seq]`, 0 for visible keys, a large negative number for padding.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 2>) -> Tensor<B, 3> {
        let q = linear_tokens(&self.query, hidden.clone()); // [batch, seq, heads * head_dim]
        let k = linear_tokens(&self.key, hidden.clone()); // [batch, seq, heads * head_dim]
        let v = linear_tokens(&self.value, hidden); // [batch, seq, heads * head_dim]
        let options = AttentionOptions {
            num_heads: self.num_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            dropout: self.dropout.prob,
        };
        B::fused_attention(q, k, v, mask_bias, &options) // [batch, seq, heads * head_dim]
    }
}

/// Attention output projection, residual and LayerNorm.
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    dense: Linear<B>,
    layer_norm: LayerNorm<B>,
    layer_norm_eps: f64,
    dropout: Dropout,
}

impl<B: FusedOps> BertSelfOutput<B> {
    pub fn forward(&self, attended: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = linear_tokens(&self.dense, attended); // [batch, seq, hidden]
        B::fused_add_layer_norm(
            x,
            residual,
            &self.layer_norm,
            self.layer_norm_eps,
            self.dropout.prob,
        )
    }
}

#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    self_attention: BertSelfAttention<B>,
    output: BertSelfOutput<B>,
}

impl<B: FusedOps> BertAttention<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 2>) -> Tensor<B, 3> {
        let attended = self.self_attention.forward(hidden.clone(), mask_bias);
        self.output.forward(attended, hidden)
    }
}

/// First FFN matrix and activation.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    dense: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

impl<B: FusedOps> BertIntermediate<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = linear_tokens(&self.dense, hidden); // [batch, seq, ffn]
        match self.activation {
            Activation::Gelu => B::fused_gelu(x),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

/// Second FFN matrix, residual and LayerNorm.
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    dense: Linear<B>,
    layer_norm: LayerNorm<B>,
    layer_norm_eps: f64,
    dropout: Dropout,
}

impl<B: FusedOps> BertOutput<B> {
    pub fn forward(&self, intermediate: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = linear_tokens(&self.dense, intermediate); // [batch, seq, hidden]
        B::fused_add_layer_norm(
            x,
            residual,
            &self.layer_norm,
            self.layer_norm_eps,
            self.dropout.prob,
        )
    }
}

#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    attention: BertAttention<B>,
    intermediate: BertIntermediate<B>,
    output: BertOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    fn load(l: &Loader<B>, config: &BertConfig, index: usize, widths: &AxisSizes) -> Self {
        let name = |suffix: &str| layer_tensor(index, suffix);
        let dropout = || DropoutConfig::new(config.hidden_dropout_prob).init();
        let eps = config.layer_norm_eps;
        Self {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: l.linear(&name("attention.self.query")),
                    key: l.linear(&name("attention.self.key")),
                    value: l.linear(&name("attention.self.value")),
                    dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    num_heads: widths.get(Axis::Heads),
                    head_dim: widths.get(Axis::HeadDim),
                    scale: 1.0 / (config.attention_scale_head_dim as f64).sqrt(),
                },
                output: BertSelfOutput {
                    dense: l.linear(&name("attention.output.dense")),
                    layer_norm: l.layer_norm(&name("attention.output.LayerNorm"), eps),
                    layer_norm_eps: eps,
                    dropout: dropout(),
                },
            },
            intermediate: BertIntermediate {
                dense: l.linear(&name("intermediate.dense")),
                activation: config.hidden_act,
            },
            output: BertOutput {
                dense: l.linear(&name("output.dense")),
                layer_norm: l.layer_norm(&name("output.LayerNorm"), eps),
                layer_norm_eps: eps,
                dropout: dropout(),
            },
        }
    }

    fn export(&self, e: &mut Exporter, index: usize) {
        let name = |suffix: &str| layer_tensor(index, suffix);
        let attention = &self.attention.self_attention;
        e.linear(&name("attention.self.query"), &attention.query);
        e.linear(&name("attention.self.key"), &attention.key);
        e.linear(&name("attention.self.value"), &attention.value);
        e.linear(
            &name("attention.output.dense"),
            &self.attention.output.dense,
        );
        e.layer_norm(
            &name("attention.output.LayerNorm"),
            &self.attention.output.layer_norm,
        );
        e.linear(&name("intermediate.dense"), &self.intermediate.dense);
        e.linear(&name("output.dense"), &self.output.dense);
        e.layer_norm(&name("output.LayerNorm"), &self.output.layer_norm);
    }
}

impl<B: FusedOps> BertLayer<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 2>) -> Tensor<B, 3> {
        let attended = self.attention.forward(hidden, mask_bias); // [batch, seq, hidden]
        let intermediate = self.intermediate.forward(attended.clone()); // [batch, seq, ffn]
        self.output.forward(intermediate, attended)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    layers: Vec<BertLayer<B>>,
}

/// Dense layer on the first token. BERT and RoBERTa use tanh; DistilBERT's
/// `pre_classifier` uses ReLU.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    dense: Linear<B>,
    variant: Variant,
}

impl<B: FusedOps> BertPooler<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, width] = hidden.dims();
        let first = hidden.slice([0..batch, 0..1]).reshape([batch, width]); // [batch, hidden]
        let x = fused::linear(&self.dense, first);
        match self.variant {
            Variant::DistilBert => activation::relu(x),
            Variant::Bert | Variant::Roberta => x.tanh(),
        }
    }
}

/// Token ids, token types and attention mask of a padded batch, on a device.
#[derive(Debug, Clone)]
pub struct BatchTensors<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub token_type_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
}

/// Encoder outputs.
pub struct EncoderOutput<B: Backend> {
    pub last_hidden_state: Tensor<B, 3>,
    pub pooler_output: Option<Tensor<B, 2>>,
}

/// The encoder with its pooler, as HF's `BertModel`.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    embeddings: BertEmbeddings<B>,
    encoder: BertEncoder<B>,
    pooler: Option<BertPooler<B>>,
}

impl<B: Backend> BertModel<B> {
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &B::Device) -> Self {
        let l = Loader { checkpoint, device };
        let config = checkpoint.config.bert();
        Self {
            embeddings: BertEmbeddings::load(&l, config),
            encoder: BertEncoder {
                layers: config
                    .stack
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, widths)| BertLayer::load(&l, config, i, widths))
                    .collect(),
            },
            pooler: config.pooler.then(|| BertPooler {
                dense: l.linear("pooler.dense"),
                variant: config.variant,
            }),
        }
    }

    fn export(&self, e: &mut Exporter) {
        self.embeddings.export(e);
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            layer.export(e, i);
        }
        if let Some(p) = &self.pooler {
            e.linear("pooler.dense", &p.dense);
        }
    }
}

impl<B: FusedOps> BertModel<B> {
    pub fn forward(&self, batch: &BatchTensors<B>) -> EncoderOutput<B> {
        let all: Vec<usize> = (0..self.encoder.layers.len()).collect();
        self.forward_layers(batch, &all)
    }

    /// The forward pass through the layers at positions `layers` only, in that order: the
    /// model with the other layers skipped (what a sub-model without them computes).
    pub fn forward_layers(&self, batch: &BatchTensors<B>, layers: &[usize]) -> EncoderOutput<B> {
        let mask_bias =
            (batch.attention_mask.clone().float().neg().add_scalar(1.0)).mul_scalar(MASKED); // [batch, seq]
        let mut hidden = self
            .embeddings
            .forward(batch.input_ids.clone(), batch.token_type_ids.clone()); // [batch, seq, hidden]
        for &layer in layers {
            hidden = self.encoder.layers[layer].forward(hidden, mask_bias.clone());
        }
        let pooler_output = self.pooler.as_ref().map(|p| p.forward(hidden.clone()));
        EncoderOutput {
            last_hidden_state: hidden,
            pooler_output,
        }
    }
}

/// The encoder with pooler and a linear classifier, as HF's
/// `BertForSequenceClassification`.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    bert: BertModel<B>,
    dropout: Dropout,
    classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &B::Device) -> Result<Self> {
        if !checkpoint.config.has_classifier() {
            let from = checkpoint
                .source
                .as_ref()
                .map_or("checkpoint".to_string(), |p| p.display().to_string());
            return Err(Error::Invalid(format!(
                "{from}: has no classification head (add one with `raffm-init-head`)"
            )));
        }
        let l = Loader { checkpoint, device };
        let config = checkpoint.config.bert();
        Ok(Self {
            bert: BertModel::from_checkpoint(checkpoint, device),
            dropout: DropoutConfig::new(
                config
                    .classifier_dropout
                    .unwrap_or(config.hidden_dropout_prob),
            )
            .init(),
            classifier: l.linear("classifier"),
        })
    }

    /// The same model with embeddings that receive no gradients (and so stay as they are).
    pub fn freeze_embeddings(mut self) -> Self {
        self.bert.embeddings = self.bert.embeddings.no_grad();
        self
    }

    /// The model's weights as a checkpoint with `template`'s config and metadata.
    pub fn to_checkpoint(&self, template: &Checkpoint) -> Checkpoint {
        let mut e = Exporter::default();
        self.bert.export(&mut e);
        e.linear("classifier", &self.classifier);
        let mut out = template.clone();
        out.tensors = e.tensors.into_iter().collect();
        out.files.clear();
        out
    }
}

impl<B: FusedOps> BertForSequenceClassification<B> {
    /// Logits, `[batch, num_labels]`.
    pub fn forward(&self, batch: &BatchTensors<B>) -> Tensor<B, 2> {
        let pooled = self
            .bert
            .forward(batch)
            .pooler_output
            .expect("classification model has a pooler");
        fused::linear(
            &self.classifier,
            B::fused_dropout(pooled, self.dropout.prob),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::bert::tiny_config;
    use crate::models::families::ModelConfig;
    use crate::CpuBackend;

    #[test]
    fn export_returns_the_loaded_tensors_bit_for_bit() {
        for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
            let mut config = tiny_config(variant, 2, 16, 4, 24);
            config.classifier = true;
            let ckpt = Checkpoint::random(&ModelConfig::Bert(config), 5);
            let model = BertForSequenceClassification::<CpuBackend>::from_checkpoint(
                &ckpt,
                &Default::default(),
            )
            .unwrap();
            let back = model.to_checkpoint(&ckpt);
            assert_eq!(back.tensors.len(), ckpt.tensors.len());
            for (name, t) in &ckpt.tensors {
                assert!(t.bit_eq(&back.tensors[name]), "{variant:?} {name}");
            }
        }
    }
}
