//! Model families. Each lives in its own module, as candle's model files do: its
//! `config.json` view, its HF name table, its burn model, and its elastic description
//! (axes and tensor specs, see [`crate::core::elastic`]), as the [`Family`] trait asks for.
//! [`ModelConfig`] is the one place that lists them; every stage works through it and
//! never names a family's tensors.

pub mod bert;
pub(crate) mod config_fields;
mod family;
pub(crate) mod hf;
pub mod layer_stack;
pub mod llama;
pub mod vit;

use std::path::Path;

use serde_json::Value;

use crate::core::elastic::{AxisSizes, AxisSpec, TensorSpec, Widths};
use crate::core::error::{Error, Result};

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
pub use family::Family;

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

    /// The family's description, which every method below reads.
    pub fn family(&self) -> &dyn Family {
        match self {
            ModelConfig::Bert(c) => c,
            ModelConfig::Llama(c) => c,
            ModelConfig::Vit(c) => c,
        }
    }

    fn family_mut(&mut self) -> &mut dyn Family {
        match self {
            ModelConfig::Bert(c) => c,
            ModelConfig::Llama(c) => c,
            ModelConfig::Vit(c) => c,
        }
    }

    pub fn model_type(&self) -> &str {
        self.family().model_type()
    }

    pub fn to_json(&self) -> Value {
        self.family().to_json()
    }

    // ---- the elastic description ----

    pub fn axes(&self) -> &'static [AxisSpec] {
        self.family().axes()
    }

    /// Tensors before and after the layers, in model order.
    pub fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        self.family().outer_tensors()
    }

    /// The tensors of layer `layer`.
    pub fn layer_tensors(&self, layer: usize) -> Vec<TensorSpec> {
        self.family().layer_tensors(layer)
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
        self.family().widths()
    }

    /// The config of a model of this family with other widths.
    pub fn with_widths(&self, widths: &Widths) -> Result<Self> {
        self.family().with_widths(widths)
    }

    /// Activations one layer of widths `layer` holds, for `batch` sequences of `seq` tokens.
    pub fn layer_activations(
        &self,
        global: &AxisSizes,
        layer: &AxisSizes,
        batch: u64,
        seq: u64,
    ) -> LayerActivations {
        self.family().layer_activations(global, layer, batch, seq)
    }

    /// Activations outside the layers that training keeps.
    pub fn outer_activations(&self, global: &AxisSizes, batch: u64, seq: u64) -> u64 {
        self.family().outer_activations(global, batch, seq)
    }

    // ---- names ----

    /// See [`Family::canonical_name`].
    pub fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)> {
        self.family().canonical_name(hf_name)
    }

    pub fn hf_name(&self, canonical: &str, prefixed: bool) -> String {
        self.family().hf_name(canonical, prefixed)
    }

    /// See [`Family::adopt_parts`].
    pub fn adopt_parts(&mut self, names: &std::collections::BTreeSet<&str>) {
        self.family_mut().adopt_parts(names)
    }

    /// See [`Family::remap_vocabulary`].
    pub fn remap_vocabulary(&mut self, kept: &[usize]) -> Result<()> {
        self.family_mut().remap_vocabulary(kept)
    }

    // ---- classification ----

    pub fn has_classifier(&self) -> bool {
        self.family().has_classifier()
    }

    /// See [`Family::takes_classification_head`].
    pub fn takes_classification_head(&self) -> bool {
        self.family().takes_classification_head()
    }

    /// See [`Family::set_classification_head`].
    pub fn set_classification_head(&mut self, labels: &[String]) {
        self.family_mut().set_classification_head(labels)
    }

    pub fn num_labels(&self) -> usize {
        self.family().num_labels()
    }

    pub fn label_names(&self) -> Vec<String> {
        self.family().label_names()
    }

    // ---- tokens ----

    pub fn vocab_size(&self) -> usize {
        self.family().vocab_size()
    }

    /// The longest sequence the model's position embeddings cover.
    pub fn max_positions(&self) -> usize {
        self.family().max_positions()
    }

    /// See [`Family::needs_tokenizer`].
    pub fn needs_tokenizer(&self) -> bool {
        self.family().needs_tokenizer()
    }

    pub fn pad_token_id(&self) -> usize {
        self.family().pad_token_id()
    }
}
