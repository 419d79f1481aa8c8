//! Model families. Each lives in its own module, as candle's model files do: its
//! `config.json` view, its HF name table, its burn model, and its elastic description
//! (axes and tensor specs, see [`crate::elastic`]). [`ModelConfig`] is the one place that
//! lists them; every stage works through it and never names a family's tensors.

pub mod bert;
pub(crate) mod config_fields;
pub(crate) mod hf;
pub mod llama;
pub mod vit;

use std::path::Path;

use serde_json::Value;

use crate::elastic::{AxisSizes, AxisSpec, TensorSpec, Widths};
use crate::error::{Error, Result};

/// A checkpoint's `config.json`, of whichever family it is.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Bert(bert::BertConfig),
    Llama(llama::LlamaConfig),
    Vit(vit::VitConfig),
}

/// The model types we read, for error messages.
const SUPPORTED: &str = "bert, roberta, xlm-roberta, camembert, distilbert, llama, vit, dinov2";

/// Activations of one layer, in elements (see each family's `layer_activations`).
pub use bert::LayerActivations;

impl ModelConfig {
    /// Reads and checks `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json(value, path)
    }

    /// Builds the config of the family `model_type` names; `path` only names it in errors.
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Error::format(path, "expected a JSON object"));
        };
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format(path, "missing `model_type`"))?;
        if let Some(variant) = bert::Variant::of_model_type(model_type) {
            return Ok(ModelConfig::Bert(bert::BertConfig::from_json(
                variant, raw, path,
            )?));
        }
        if let Some(variant) = vit::Variant::of_model_type(model_type) {
            return Ok(ModelConfig::Vit(vit::VitConfig::from_json(
                variant, raw, path,
            )?));
        }
        if model_type == "llama" {
            return Ok(ModelConfig::Llama(llama::LlamaConfig::from_json(
                raw, path,
            )?));
        }
        Err(Error::UnknownModelType {
            path: path.to_path_buf(),
            model_type: model_type.to_string(),
            supported: SUPPORTED,
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            ModelConfig::Bert(c) => c.to_json(),
            ModelConfig::Llama(c) => c.to_json(),
            ModelConfig::Vit(c) => c.to_json(),
        }
    }

    /// The BERT-family config, for code that runs BERT-family models (after checking
    /// [`ModelConfig::has_classifier`], which only they have).
    pub fn bert(&self) -> &bert::BertConfig {
        match self {
            ModelConfig::Bert(c) => c,
            ModelConfig::Llama(_) | ModelConfig::Vit(_) => {
                panic!("a BERT-family model was expected")
            }
        }
    }

    /// The decoder's config, if this is one.
    pub fn llama(&self) -> Option<&llama::LlamaConfig> {
        match self {
            ModelConfig::Llama(c) => Some(c),
            ModelConfig::Bert(_) | ModelConfig::Vit(_) => None,
        }
    }

    /// The vision transformer's config, if this is one.
    pub fn vit(&self) -> Option<&vit::VitConfig> {
        match self {
            ModelConfig::Vit(c) => Some(c),
            ModelConfig::Bert(_) | ModelConfig::Llama(_) => None,
        }
    }

    /// The family's `model_type`.
    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::Bert(c) => c.model_type(),
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Vit(c) => c.variant.model_type(),
        }
    }

    // ---- the elastic description ----

    pub fn axes(&self) -> &'static [AxisSpec] {
        match self {
            ModelConfig::Bert(_) => &bert::AXES,
            ModelConfig::Llama(_) => &llama::AXES,
            ModelConfig::Vit(_) => &vit::AXES,
        }
    }

    /// Tensors before and after the layers, in model order.
    pub fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        match self {
            ModelConfig::Bert(c) => c.outer_tensors(),
            ModelConfig::Llama(c) => c.outer_tensors(),
            ModelConfig::Vit(c) => c.outer_tensors(),
        }
    }

    /// The tensors of layer `layer`.
    pub fn layer_tensors(&self, layer: usize) -> Vec<TensorSpec> {
        match self {
            ModelConfig::Bert(c) => c.layer_tensors(layer),
            ModelConfig::Llama(c) => c.layer_tensors(layer),
            ModelConfig::Vit(c) => c.layer_tensors(layer),
        }
    }

    /// Every tensor of a model of this config with `depth` layers, in model order.
    pub fn tensors_for_depth(&self, depth: usize) -> Vec<TensorSpec> {
        let (before, after) = self.outer_tensors();
        let mut all = before;
        for layer in 0..depth {
            all.extend(self.layer_tensors(layer));
        }
        all.extend(after);
        all
    }

    /// Every tensor of this model, in model order.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.tensors_for_depth(self.widths().layers.len())
    }

    /// Every tensor of this model with its shape.
    pub fn shapes(&self) -> Vec<(TensorSpec, Vec<usize>)> {
        let widths = self.widths();
        let axes = self.axes();
        self.tensors()
            .into_iter()
            .map(|t| {
                let shape = widths.shape(axes, &t);
                (t, shape)
            })
            .collect()
    }

    pub fn parameter_count(&self) -> u64 {
        self.widths().parameter_count(self.axes(), &self.tensors())
    }

    pub fn widths(&self) -> Widths {
        match self {
            ModelConfig::Bert(c) => c.widths(),
            ModelConfig::Llama(c) => c.widths(),
            ModelConfig::Vit(c) => c.widths(),
        }
    }

    /// The config of a model of this family with other widths.
    pub fn with_widths(&self, widths: &Widths) -> Result<Self> {
        Ok(match self {
            ModelConfig::Bert(c) => ModelConfig::Bert(c.with_widths(widths)?),
            ModelConfig::Llama(c) => ModelConfig::Llama(c.with_widths(widths)?),
            ModelConfig::Vit(c) => ModelConfig::Vit(c.with_widths(widths)?),
        })
    }

    /// Activations one layer of widths `layer` holds, for `batch` sequences of `seq` tokens.
    pub fn layer_activations(
        &self,
        global: &AxisSizes,
        layer: &AxisSizes,
        batch: u64,
        seq: u64,
    ) -> LayerActivations {
        match self {
            ModelConfig::Bert(_) => bert::layer_activations(global, layer, batch, seq),
            ModelConfig::Llama(_) => llama::layer_activations(global, layer, batch, seq),
            ModelConfig::Vit(_) => vit::layer_activations(global, layer, batch, seq),
        }
    }

    /// Activations outside the layers that training keeps.
    pub fn outer_activations(&self, global: &AxisSizes, batch: u64, seq: u64) -> u64 {
        match self {
            ModelConfig::Bert(_) => bert::embedding_activations(global, batch, seq),
            ModelConfig::Llama(_) => llama::outer_activations(global, batch, seq),
            ModelConfig::Vit(_) => vit::outer_activations(global, batch, seq),
        }
    }

    // ---- names ----

    /// The canonical name of an HF tensor name, and whether it carried the base prefix;
    /// `None` for tensors that are not part of the model (buffers, other heads).
    pub fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)> {
        match self {
            ModelConfig::Bert(c) => bert::names::to_canonical(c.variant, hf_name),
            ModelConfig::Llama(_) => llama::to_canonical(hf_name),
            ModelConfig::Vit(c) => vit::to_canonical(c.variant, hf_name),
        }
    }

    /// The HF name to write a canonical name under.
    pub fn hf_name(&self, canonical: &str, prefixed: bool) -> String {
        match self {
            ModelConfig::Bert(c) => {
                bert::names::from_canonical(c.variant, canonical, prefixed, c.classifier)
            }
            ModelConfig::Llama(_) => canonical.to_string(),
            ModelConfig::Vit(c) => vit::from_canonical(c.variant, canonical, prefixed),
        }
    }

    /// Learns which optional parts (a pooler, a task head) the model has from the canonical
    /// names of the tensors its file holds.
    pub fn adopt_parts(&mut self, names: &std::collections::BTreeSet<&str>) {
        match self {
            ModelConfig::Bert(c) => c.adopt_parts(names),
            // Whether lm_head is tied comes from the config, as in HF.
            ModelConfig::Llama(_) => {}
            ModelConfig::Vit(c) => c.adopt_parts(names),
        }
    }

    /// Moves the special-token ids the config names (padding) to their positions among
    /// the kept global token ids `kept` (a client's vocabulary).
    pub fn remap_vocabulary(&mut self, kept: &[usize]) -> Result<()> {
        match self {
            ModelConfig::Bert(c) => {
                c.pad_token_id =
                    kept.iter()
                        .position(|&g| g == c.pad_token_id)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "a client vocabulary must keep the padding token (id {})",
                                c.pad_token_id
                            ))
                        })?;
                Ok(())
            }
            // The special-token ids (bos, eos, pad) and the chat template would all have to
            // move with the kept rows.
            ModelConfig::Llama(_) => Err(Error::Invalid(
                "client vocabularies are implemented for the encoders only, not for llama".into(),
            )),
            ModelConfig::Vit(_) => Err(Error::Invalid(
                "a vision model has no vocabulary to cut".into(),
            )),
        }
    }

    // ---- classification ----

    pub fn has_classifier(&self) -> bool {
        match self {
            ModelConfig::Bert(c) => c.classifier,
            ModelConfig::Llama(_) => false,
            ModelConfig::Vit(c) => c.classifier,
        }
    }

    /// Whether the family takes a classification head (the encoders; a decoder scores
    /// its answers with its language-model head).
    pub fn takes_classification_head(&self) -> bool {
        matches!(self, ModelConfig::Bert(_) | ModelConfig::Vit(_))
    }

    /// Declares a classification head for `labels` (and whatever it reads, a pooler); a
    /// family without one (see [`ModelConfig::takes_classification_head`]) is unchanged.
    pub fn set_classification_head(&mut self, labels: &[String]) {
        match self {
            ModelConfig::Bert(c) => {
                c.set_labels(labels);
                c.pooler = true;
                c.classifier = true;
            }
            ModelConfig::Llama(_) => {}
            ModelConfig::Vit(c) => c.set_labels(labels),
        }
    }

    pub fn num_labels(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.num_labels,
            ModelConfig::Llama(_) => 0,
            ModelConfig::Vit(c) => c.num_labels,
        }
    }

    pub fn label_names(&self) -> Vec<String> {
        match self {
            ModelConfig::Bert(c) => c.label_names(),
            ModelConfig::Llama(_) => Vec::new(),
            ModelConfig::Vit(c) => c.label_names(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Vit(_) => 0,
        }
    }

    /// The longest sequence the model's position embeddings cover.
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => match c.variant {
                // RoBERTa counts positions from pad_token_id + 1.
                bert::Variant::Roberta => {
                    c.max_position_embeddings.saturating_sub(c.pad_token_id + 1)
                }
                bert::Variant::Bert | bert::Variant::DistilBert => c.max_position_embeddings,
            },
            ModelConfig::Llama(c) => c.max_position_embeddings,
            // Patches at the pre-training size, and the CLS token.
            ModelConfig::Vit(c) => 1 + c.grid() * c.grid(),
        }
    }

    /// Whether the family reads text through a tokenizer that travels with its checkpoints.
    pub fn needs_tokenizer(&self) -> bool {
        match self {
            ModelConfig::Bert(_) | ModelConfig::Llama(_) => true,
            ModelConfig::Vit(_) => false,
        }
    }

    pub fn pad_token_id(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.pad_token_id,
            // Right padding behind a causal mask is never attended to: any id will do.
            ModelConfig::Llama(c) => c.pad_token_id.unwrap_or(0),
            ModelConfig::Vit(_) => 0,
        }
    }
}
