//! Vision transformers in HF's ViT and DINOv2 layouts: the config (`config.rs`), the burn
//! model (`model.rs`), and their elastic description and names (here).
//!
//! Canonical names are the backbone's own HF names (`encoder.layer.3.norm1.weight` for
//! DINOv2, `encoder.layer.3.layernorm_before.weight` for ViT); a classification model's
//! file prefixes them with `dinov2.` or `vit.`, and its head is `classifier.*`.
//!
//! Axes: hidden channels (global: the patch projection's outputs, the CLS token, the
//! position embeddings, every LayerNorm and LayerScale, and the classifier's inputs),
//! depth, and per layer heads, Q/K channels per head (one permutation shared by Q and K),
//! V channels per head (with the matching columns of the attention output), and FFN
//! neurons. Pre-LayerNorm blocks and no rotary embeddings: every axis but depth permutes
//! without changing the function (LayerNorm's statistics do not depend on the channels'
//! order), and heads, head dimension and FFN can be cut exactly as they can be zeroed.

pub mod config;
pub mod model;

pub use config::{tiny_config, Variant, VitConfig};

use serde_json::Value;

use crate::core::elastic::{
    Axis, AxisSizes, AxisSpec, Factor, Init, Salience, Scope, TensorKind, TensorSpec, Widths,
};
use crate::core::error::{Error, Result};
use crate::models::families::LayerActivations;
use crate::models::families::{Family, ModelConfig};

const fn axis(axis: Axis, scope: Scope, nested_in: Option<Axis>, width_of: Axis) -> AxisSpec {
    AxisSpec {
        axis,
        scope,
        nested_in,
        width_of,
        permutable: !matches!(axis, Axis::Layers),
        // A narrower LayerNorm is not a zeroed slice, nor is a dropped layer here.
        masked_equivalent: !matches!(axis, Axis::Layers | Axis::Hidden),
        searchable: !matches!(axis, Axis::ValueDim),
        salience: match axis {
            Axis::Layers => Salience::LayerMagnitude,
            _ => Salience::CoupledSlices,
        },
    }
}

pub const AXES: [AxisSpec; 6] = [
    axis(Axis::Hidden, Scope::Global, None, Axis::Hidden),
    axis(Axis::Layers, Scope::Global, None, Axis::Layers),
    axis(Axis::Heads, Scope::Layer, None, Axis::Heads),
    axis(
        Axis::HeadDim,
        Scope::Layer,
        Some(Axis::Heads),
        Axis::HeadDim,
    ),
    axis(
        Axis::ValueDim,
        Scope::Layer,
        Some(Axis::Heads),
        Axis::HeadDim,
    ),
    axis(Axis::Ffn, Scope::Layer, None, Axis::Ffn),
];

use Factor::Axis as A;
const HIDDEN: &[Factor] = &[A(Axis::Hidden)];
const QK: &[Factor] = &[A(Axis::Heads), A(Axis::HeadDim)];
const V: &[Factor] = &[A(Axis::Heads), A(Axis::ValueDim)];
const FFN: &[Factor] = &[A(Axis::Ffn)];

/// The parts of a layer: the same in both layouts, under different names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Norm1,
    Query,
    Key,
    Value,
    AttentionOutput,
    LayerScale1,
    Norm2,
    Fc1,
    Fc2,
    LayerScale2,
}

impl Part {
    /// The HF name of the part inside a layer (`None`: ViT has no LayerScale).
    pub fn key(self, variant: Variant) -> Option<&'static str> {
        use Part::*;
        Some(match (self, variant) {
            (Norm1, Variant::Dinov2) => "norm1",
            (Norm1, Variant::Vit) => "layernorm_before",
            (Query, _) => "attention.attention.query",
            (Key, _) => "attention.attention.key",
            (Value, _) => "attention.attention.value",
            (AttentionOutput, _) => "attention.output.dense",
            (LayerScale1, Variant::Dinov2) => "layer_scale1",
            (Norm2, Variant::Dinov2) => "norm2",
            (Norm2, Variant::Vit) => "layernorm_after",
            (Fc1, Variant::Dinov2) => "mlp.fc1",
            (Fc1, Variant::Vit) => "intermediate.dense",
            (Fc2, Variant::Dinov2) => "mlp.fc2",
            (Fc2, Variant::Vit) => "output.dense",
            (LayerScale2, Variant::Dinov2) => "layer_scale2",
            (LayerScale1 | LayerScale2, Variant::Vit) => return None,
        })
    }
}

/// The canonical (backbone) name of a layer tensor.
pub fn layer_tensor(layer: usize, key: &str) -> String {
    format!("encoder.layer.{layer}.{key}")
}

impl Family for VitConfig {
    fn model_type(&self) -> &str {
        self.variant.model_type()
    }

    fn to_json(&self) -> Value {
        VitConfig::to_json(self)
    }

    fn axes(&self) -> &'static [AxisSpec] {
        &AXES
    }

    /// Tensors before and after the layers, in model order.
    fn outer_tensors(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        use TensorKind::{Embedding, Task};
        let fixed = |n: usize| [Factor::Fixed(n)];
        let (one, positions, channels, patch, labels, two) = (
            fixed(1),
            fixed(1 + self.grid() * self.grid()),
            fixed(self.num_channels),
            fixed(self.patch_size),
            fixed(self.num_labels),
            Factor::Fixed(2),
        );
        let mut before = vec![TensorSpec::outer(
            "embeddings.cls_token",
            &[&one, &one, HIDDEN],
            Embedding,
            Init::Weight,
        )];
        if self.use_mask_token {
            before.push(TensorSpec::outer(
                "embeddings.mask_token",
                &[&one, HIDDEN],
                Embedding,
                Init::Bias,
            ));
        }
        before.extend([
            TensorSpec::outer(
                "embeddings.position_embeddings",
                &[&one, &positions, HIDDEN],
                Embedding,
                Init::Weight,
            ),
            TensorSpec::outer(
                "embeddings.patch_embeddings.projection.weight",
                &[HIDDEN, &channels, &patch, &patch],
                Embedding,
                Init::Weight,
            ),
            TensorSpec::outer(
                "embeddings.patch_embeddings.projection.bias",
                &[HIDDEN],
                Embedding,
                Init::Bias,
            ),
        ]);
        let mut after = vec![
            TensorSpec::outer(
                "layernorm.weight",
                &[HIDDEN],
                TensorKind::Head,
                Init::NormScale,
            ),
            TensorSpec::outer(
                "layernorm.bias",
                &[HIDDEN],
                TensorKind::Head,
                Init::NormShift,
            ),
        ];
        if self.classifier {
            // DINOv2's head reads [CLS, mean of the patches]: two hidden-sized halves.
            let input: Vec<Factor> = match self.variant {
                Variant::Vit => HIDDEN.to_vec(),
                Variant::Dinov2 => vec![two, A(Axis::Hidden)],
            };
            after.push(TensorSpec::outer(
                "classifier.weight",
                &[&labels, &input],
                Task,
                Init::Weight,
            ));
            after.push(TensorSpec::outer(
                "classifier.bias",
                &[&labels],
                Task,
                Init::Bias,
            ));
        }
        (before, after)
    }

    /// The tensors of layer `layer`.
    fn layer_tensors(&self, layer: usize) -> Vec<TensorSpec> {
        use Part::*;
        let parts: [(Part, &str, &[&[Factor]], Init); 18] = [
            (Norm1, "weight", &[HIDDEN], Init::NormScale),
            (Norm1, "bias", &[HIDDEN], Init::NormShift),
            (Query, "weight", &[QK, HIDDEN], Init::Weight),
            (Query, "bias", &[QK], Init::Bias),
            (Key, "weight", &[QK, HIDDEN], Init::Weight),
            (Key, "bias", &[QK], Init::Bias),
            (Value, "weight", &[V, HIDDEN], Init::Weight),
            (Value, "bias", &[V], Init::Bias),
            (AttentionOutput, "weight", &[HIDDEN, V], Init::Weight),
            (AttentionOutput, "bias", &[HIDDEN], Init::Bias),
            (LayerScale1, "lambda1", &[HIDDEN], Init::NormScale),
            (Norm2, "weight", &[HIDDEN], Init::NormScale),
            (Norm2, "bias", &[HIDDEN], Init::NormShift),
            (Fc1, "weight", &[FFN, HIDDEN], Init::Weight),
            (Fc1, "bias", &[FFN], Init::Bias),
            (Fc2, "weight", &[HIDDEN, FFN], Init::Weight),
            (Fc2, "bias", &[HIDDEN], Init::Bias),
            (LayerScale2, "lambda1", &[HIDDEN], Init::NormScale),
        ];
        // ViT has no LayerScale: its parts have no key.
        parts
            .iter()
            .filter_map(|(part, leaf, dims, init)| {
                let key = format!("{}.{leaf}", part.key(self.variant)?);
                let name = layer_tensor(layer, &key);
                Some(TensorSpec::in_layer(name, layer, &key, dims, *init))
            })
            .collect()
    }

    /// Learns whether the model has a classification head from its tensors' names.
    fn adopt_parts(&mut self, names: &std::collections::BTreeSet<&str>) {
        self.classifier = names.contains("classifier.weight");
    }

    fn widths(&self) -> Widths {
        VitConfig::widths(self)
    }

    fn with_widths(&self, widths: &Widths) -> Result<ModelConfig> {
        Ok(ModelConfig::Vit(VitConfig::with_widths(self, widths)?))
    }

    fn layer_activations(
        &self,
        global: &AxisSizes,
        layer: &AxisSizes,
        batch: u64,
        seq: u64,
    ) -> LayerActivations {
        layer_activations(global, layer, batch, seq)
    }

    fn outer_activations(&self, global: &AxisSizes, batch: u64, seq: u64) -> u64 {
        outer_activations(global, batch, seq)
    }

    fn canonical_name(&self, hf_name: &str) -> Option<(String, bool)> {
        to_canonical(self.variant, hf_name)
    }

    fn hf_name(&self, canonical: &str, prefixed: bool) -> String {
        from_canonical(self.variant, canonical, prefixed)
    }

    fn needs_tokenizer(&self) -> bool {
        false
    }

    /// Patches at the pre-training size, and the CLS token.
    fn max_positions(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    fn remap_vocabulary(&mut self, _kept: &[usize]) -> Result<()> {
        Err(Error::Invalid(
            "a vision model has no vocabulary to cut".into(),
        ))
    }

    fn takes_classification_head(&self) -> bool {
        true
    }

    fn has_classifier(&self) -> bool {
        self.classifier
    }

    fn set_classification_head(&mut self, labels: &[String]) {
        self.set_labels(labels)
    }

    fn num_labels(&self) -> usize {
        self.num_labels
    }

    fn label_names(&self) -> Vec<String> {
        VitConfig::label_names(self)
    }
}

/// The canonical name of an HF tensor name and whether it carried the backbone prefix;
/// `None` for tensors that are not part of the model (ViTModel's pooler).
pub fn to_canonical(variant: Variant, hf_name: &str) -> Option<(String, bool)> {
    if hf_name.starts_with("classifier.") {
        return Some((hf_name.to_string(), true));
    }
    let (name, prefixed) = match hf_name.strip_prefix(variant.base_prefix()) {
        Some(rest) => (rest, true),
        None => (hf_name, false),
    };
    if name.starts_with("pooler.") {
        return None;
    }
    Some((name.to_string(), prefixed))
}

/// The HF name to write a canonical name under.
pub fn from_canonical(variant: Variant, canonical: &str, prefixed: bool) -> String {
    if canonical.starts_with("classifier.") || !prefixed {
        canonical.to_string()
    } else {
        format!("{}{canonical}", variant.base_prefix())
    }
}

/// What one layer of these widths holds for `batch` images of `tokens` tokens (patches
/// plus CLS): as the encoders' estimate (pre- instead of post-LayerNorm keeps as many
/// tensors), plus LayerScale's two outputs.
pub fn layer_activations(
    global: &AxisSizes,
    layer: &AxisSizes,
    batch: u64,
    tokens: u64,
) -> LayerActivations {
    let base = crate::models::families::bert::layer_activations(global, layer, batch, tokens);
    let scaled = 2 * batch * tokens * global.get(Axis::Hidden) as u64;
    LayerActivations {
        train: base.train + scaled,
        inference: base.inference,
    }
}

/// The patch embedding's input and output, the token sequence, and the final norm's.
pub fn outer_activations(global: &AxisSizes, batch: u64, tokens: u64) -> u64 {
    4 * batch * tokens * global.get(Axis::Hidden) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::elastic::check_description;

    #[test]
    fn the_description_is_well_formed_for_both_layouts() {
        for variant in [Variant::Vit, Variant::Dinov2] {
            let mut c = tiny_config(variant, 2, 24, 4, 40, 28, 14);
            c.set_labels(&["a".into(), "b".into(), "c".into()]);
            let (before, after) = c.outer_tensors();
            let mut all = before;
            all.extend(c.layer_tensors(0));
            all.extend(c.layer_tensors(1));
            all.extend(after);
            check_description(&AXES, &all).unwrap();
            let per_layer = c.layer_tensors(0).len();
            assert_eq!(per_layer, if variant == Variant::Dinov2 { 18 } else { 16 });
            // Everything on the residual stream is indexed by the hidden axis: all but the
            // biases of projections out of it (Q, K, V, fc1) and the classifier's bias.
            for t in &all {
                let off_stream = t.dims.len() == 1
                    && (matches!(t.dims[0][0], Factor::Axis(Axis::Heads | Axis::Ffn))
                        || t.kind == TensorKind::Task);
                assert_eq!(
                    t.has_axis(Axis::Hidden),
                    !off_stream,
                    "{variant:?} {}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn names_keep_the_backbone_prefix_and_the_head() {
        let v = Variant::Dinov2;
        assert_eq!(
            to_canonical(v, "dinov2.encoder.layer.0.norm1.weight"),
            Some(("encoder.layer.0.norm1.weight".into(), true))
        );
        assert_eq!(
            to_canonical(v, "classifier.bias"),
            Some(("classifier.bias".into(), true))
        );
        assert_eq!(to_canonical(Variant::Vit, "pooler.dense.weight"), None);
        assert_eq!(
            from_canonical(v, "layernorm.bias", true),
            "dinov2.layernorm.bias"
        );
        assert_eq!(from_canonical(v, "layernorm.bias", false), "layernorm.bias");
        assert_eq!(
            from_canonical(v, "classifier.weight", true),
            "classifier.weight"
        );
    }
}
