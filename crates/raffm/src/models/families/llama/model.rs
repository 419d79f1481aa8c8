//! The LLaMA decoder in burn, in the manner of candle's `llama.rs`: one struct per HF block,
//! named after it, built by HF tensor name, with elastic widths (KV groups, query heads per
//! group and FFN neurons per layer; hidden size; depth) and optional LoRA adapters on its
//! projections.
//!
//! Batches are right-padded: under the causal mask a real token never sees the padding
//! behind it, so no padding mask is needed and positions count from 0 in every row.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::LlamaConfig;
use super::layer_tensor;
use super::lora::{LoraAdapter, LoraConfig, LoraPair};
use crate::core::checkpoint::Checkpoint;
use crate::core::elastic::Axis;
use crate::core::tensor::HostTensor;
use crate::models::fused::{DecoderAttentionOptions, FusedOps};

fn device_tensor<B: Backend, const D: usize>(t: &HostTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn host_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor");
    HostTensor::new(shape, data)
}

/// A parameter; frozen ones get no gradient (and so no optimizer state).
fn param<B: Backend, const D: usize>(t: Tensor<B, D>, trainable: bool) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(trainable)
}

/// The LoRA factors on one projection, in burn's `[in, out]` layout.
#[derive(Module, Debug)]
pub struct LoraLinearAdapter<B: Backend> {
    /// `[in, r]`: PEFT's `lora_A.weight` transposed.
    lora_a: Param<Tensor<B, 2>>,
    /// `[r, out]`: PEFT's `lora_B.weight` transposed.
    lora_b: Param<Tensor<B, 2>>,
    dropout: f64,
    scaling: f64,
}

/// A bias-free projection (`nn.Linear(bias=False)`), with an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[in, out]`: the HF weight transposed.
    weight: Param<Tensor<B, 2>>,
    adapter: Option<LoraLinearAdapter<B>>,
}

impl<B: FusedOps> LoraLinear<B> {
    fn load(
        weight: &HostTensor,
        pair: Option<(&LoraPair, &LoraConfig)>,
        trainable_base: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: param(device_tensor(&weight.transposed(), device), trainable_base),
            adapter: pair.map(|(pair, config)| LoraLinearAdapter {
                lora_a: param(device_tensor(&pair.a.transposed(), device), true),
                lora_b: param(device_tensor(&pair.b.transposed(), device), true),
                dropout: config.lora_dropout,
                scaling: config.scaling(),
            }),
        }
    }

    /// `[tokens, in]` -> `[tokens, out]`: `x W + scaling * dropout(x) A B`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let base = B::fused_matmul(x.clone(), self.weight.val()); // [tokens, out]
        match &self.adapter {
            None => base,
            Some(lora) => {
                let low = B::fused_matmul(B::fused_dropout(x, lora.dropout), lora.lora_a.val()); // [tokens, r]
                base + B::fused_matmul(low, lora.lora_b.val()).mul_scalar(lora.scaling)
                // [tokens, out]
            }
        }
    }

    /// On `[batch, seq, in]`, as one `[batch * seq, in]` matmul.
    fn forward3(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, width] = x.dims();
        let y = self.forward(x.reshape([batch * seq, width])); // [batch * seq, out]
        let out = y.dims()[1];
        y.reshape([batch, seq, out])
    }

    fn export_adapter(&self) -> Option<LoraPair> {
        self.adapter.as_ref().map(|lora| LoraPair {
            a: host_tensor(lora.lora_a.val()).transposed(),
            b: host_tensor(lora.lora_b.val()).transposed(),
        })
    }
}

/// `weight * x / sqrt(mean(x^2) + eps)` over the hidden channels.
#[derive(Module, Debug)]
pub struct LlamaRMSNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: FusedOps> LlamaRMSNorm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::fused_rms_norm(x, self.weight.val(), self.eps) // [batch, seq, hidden]
    }
}

/// Rotary position embeddings as HF computes them: channel i and i + d/2 of every head
/// rotate together at frequency `theta^(-2i/d)`.
#[derive(Debug, Clone)]
pub struct LlamaRotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl LlamaRotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// `cos` and `sin` of every position's angles, each `[seq, head_dim]` (the angles of the
    /// first half repeated for the second).
    pub fn cos_sin<B: Backend>(
        &self,
        seq: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq * 2 * half);
        let mut sin = Vec::with_capacity(seq * 2 * half);
        for p in 0..seq {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let make = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [seq, 2 * half]), device);
        (make(cos), make(sin))
    }
}

/// Grouped-query self-attention: `kv_heads` key/value heads, each shared by
/// `heads_per_group` query heads, with rotary embeddings and a causal mask.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    q_proj: LoraLinear<B>,
    k_proj: LoraLinear<B>,
    v_proj: LoraLinear<B>,
    o_proj: LoraLinear<B>,
    kv_heads: usize,
    heads_per_group: usize,
    head_dim: usize,
}

/// What every layer of one forward pass shares: the rotary tables, `[seq, head_dim]`.
pub struct Positions<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Positions<B> {
    pub fn new(rotary: &LlamaRotaryEmbedding, seq: usize, device: &B::Device) -> Self {
        let (cos, sin) = rotary.cos_sin::<B>(seq, device);
        Self { cos, sin }
    }
}

impl<B: FusedOps> LlamaAttention<B> {
    pub fn forward(&self, x: Tensor<B, 3>, positions: &Positions<B>) -> Tensor<B, 3> {
        let q = self.q_proj.forward3(x.clone()); // [batch, seq, heads * head_dim]
        let k = self.k_proj.forward3(x.clone()); // [batch, seq, kv_heads * head_dim]
        let v = self.v_proj.forward3(x); // [batch, seq, kv_heads * head_dim]
        let options = DecoderAttentionOptions {
            num_heads: self.kv_heads * self.heads_per_group,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f64).sqrt(),
        };
        let context = B::fused_decoder_attention(
            q,
            k,
            v,
            positions.cos.clone(),
            positions.sin.clone(),
            &options,
        );
        self.o_proj.forward3(context) // [batch, seq, hidden]
    }
}

/// The SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMLP<B: Backend> {
    gate_proj: LoraLinear<B>,
    up_proj: LoraLinear<B>,
    down_proj: LoraLinear<B>,
}

impl<B: FusedOps> LlamaMLP<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward3(x.clone()); // [batch, seq, ffn]
        let up = self.up_proj.forward3(x); // [batch, seq, ffn]
        self.down_proj.forward3(B::fused_swiglu(gate, up)) // [batch, seq, hidden]
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    self_attn: LlamaAttention<B>,
    mlp: LlamaMLP<B>,
    input_layernorm: LlamaRMSNorm<B>,
    post_attention_layernorm: LlamaRMSNorm<B>,
}

impl<B: FusedOps> LlamaDecoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>, positions: &Positions<B>) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), positions);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x)) // [batch, seq, hidden]
    }
}

/// The embeddings, the decoder layers and the final norm, as HF's `LlamaModel`.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// `[vocab, hidden]`
    embed_tokens: Param<Tensor<B, 2>>,
    layers: Vec<LlamaDecoderLayer<B>>,
    norm: LlamaRMSNorm<B>,
    #[module(skip)]
    rotary: LlamaRotaryEmbedding,
}

impl<B: FusedOps> LlamaModel<B> {
    /// The final hidden states, `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let hidden = self.embed_tokens.dims()[1];
        let mut x = self
            .embed_tokens
            .val()
            .select(0, input_ids.reshape([batch * seq]))
            .reshape([batch, seq, hidden]); // [batch, seq, hidden]
        let positions = Positions::new(&self.rotary, seq, &device);
        for layer in &self.layers {
            x = layer.forward(x, &positions);
        }
        self.norm.forward(x)
    }
}

/// The decoder with its language-model head, as HF's `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    model: LlamaModel<B>,
    /// `[vocab, hidden]`; `None` when tied to the input embeddings.
    lm_head: Option<Param<Tensor<B, 2>>>,
}

impl<B: FusedOps> LlamaForCausalLM<B> {
    /// Builds the model from a decoder checkpoint, with `adapter`'s LoRA factors on its
    /// projections. With an adapter the base is frozen: only the factors get gradients.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        adapter: Option<&LoraAdapter>,
        device: &B::Device,
    ) -> Self {
        let config: &LlamaConfig = checkpoint
            .config
            .llama()
            .expect("LlamaForCausalLM is built from a llama checkpoint");
        let trainable = adapter.is_none();
        let host = |name: &str| checkpoint.tensor(name);
        let norm = |name: &str| LlamaRMSNorm {
            weight: param(device_tensor(host(name), device), trainable),
            eps: config.rms_norm_eps,
        };
        let layers = config
            .stack
            .layers
            .iter()
            .enumerate()
            .map(|(i, widths)| {
                let linear = |key: &str| {
                    let module = layer_tensor(i, key);
                    let pair = adapter.and_then(|a| a.modules.get(&module).map(|p| (p, &a.config)));
                    LoraLinear::load(host(&format!("{module}.weight")), pair, trainable, device)
                };
                LlamaDecoderLayer {
                    self_attn: LlamaAttention {
                        q_proj: linear("self_attn.q_proj"),
                        k_proj: linear("self_attn.k_proj"),
                        v_proj: linear("self_attn.v_proj"),
                        o_proj: linear("self_attn.o_proj"),
                        kv_heads: widths.get(Axis::KvHeads),
                        heads_per_group: widths.get(Axis::Heads),
                        head_dim: widths.get(Axis::HeadDim),
                    },
                    mlp: LlamaMLP {
                        gate_proj: linear("mlp.gate_proj"),
                        up_proj: linear("mlp.up_proj"),
                        down_proj: linear("mlp.down_proj"),
                    },
                    input_layernorm: norm(&layer_tensor(i, "input_layernorm.weight")),
                    post_attention_layernorm: norm(&layer_tensor(
                        i,
                        "post_attention_layernorm.weight",
                    )),
                }
            })
            .collect();
        Self {
            model: LlamaModel {
                embed_tokens: param(
                    device_tensor(host("model.embed_tokens.weight"), device),
                    trainable,
                ),
                layers,
                norm: norm("model.norm.weight"),
                rotary: LlamaRotaryEmbedding::new(config.head_dim, config.rope_theta),
            },
            lm_head: (!config.tie_word_embeddings)
                .then(|| param(device_tensor(host("lm_head.weight"), device), trainable)),
        }
    }

    /// The final hidden states, `[batch, seq, hidden]`.
    pub fn hidden_states(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.forward(input_ids)
    }

    /// Logits of some positions' hidden states: `[n, hidden]` -> `[n, vocab]`. Training
    /// and scoring ask only for the positions they need: at batch 8 x 128 the whole
    /// `[batch, seq, 49152]` would be 0.2 GB per copy.
    pub fn logits_of(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        hidden.matmul(self.lm_head_weight().transpose()) // [n, vocab]
    }

    /// The language-model head's weight, `[vocab, hidden]` (the input embeddings when tied).
    pub fn lm_head_weight(&self) -> Tensor<B, 2> {
        self.lm_head
            .as_ref()
            .unwrap_or(&self.model.embed_tokens)
            .val()
    }

    /// Every position's logits, `[batch, seq, vocab]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let hidden = self.hidden_states(input_ids);
        let width = hidden.dims()[2];
        let logits = self.logits_of(hidden.reshape([batch * seq, width]));
        let vocab = logits.dims()[1];
        logits.reshape([batch, seq, vocab])
    }

    /// The adapter's current factors, by module path (empty without an adapter).
    pub fn adapter_factors(&self) -> BTreeMap<String, LoraPair> {
        let mut out = BTreeMap::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let mlp = &layer.mlp;
            let linears = [
                ("self_attn.q_proj", &attn.q_proj),
                ("self_attn.k_proj", &attn.k_proj),
                ("self_attn.v_proj", &attn.v_proj),
                ("self_attn.o_proj", &attn.o_proj),
                ("mlp.gate_proj", &mlp.gate_proj),
                ("mlp.up_proj", &mlp.up_proj),
                ("mlp.down_proj", &mlp.down_proj),
            ];
            for (key, linear) in linears {
                if let Some(pair) = linear.export_adapter() {
                    out.insert(layer_tensor(i, key), pair);
                }
            }
        }
        out
    }
}
