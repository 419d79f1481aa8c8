//! The family's HF name table. Inside the library every tensor of the family goes by its
//! canonical name: BERT's HF name without the `bert.` prefix
//! (`encoder.layer.3.attention.self.query.weight`). This module maps the names of each
//! variant's HF checkpoints to and from it.

use super::config::Variant;

/// Which of the two task-head names a RoBERTa checkpoint uses for the dense layer on the
/// first token: `pooler.dense` (RobertaModel) or `classifier.dense`
/// (RobertaForSequenceClassification). Both are the same computation, our pooler.
const ROBERTA_HEAD: [(&str, &str); 2] = [
    ("pooler.dense.", "classifier.dense."),
    ("classifier.", "classifier.out_proj."),
];

/// Per-layer sub-module names of DistilBERT, canonical name first.
const DISTILBERT_LAYER: [(&str, &str); 8] = [
    ("attention.self.query.", "attention.q_lin."),
    ("attention.self.key.", "attention.k_lin."),
    ("attention.self.value.", "attention.v_lin."),
    ("attention.output.dense.", "attention.out_lin."),
    ("attention.output.LayerNorm.", "sa_layer_norm."),
    ("intermediate.dense.", "ffn.lin1."),
    ("output.dense.", "ffn.lin2."),
    ("output.LayerNorm.", "output_layer_norm."),
];

/// Canonical name of one encoder-layer tensor.
pub fn layer_tensor(layer: usize, suffix: &str) -> String {
    format!("encoder.layer.{layer}.{suffix}")
}

fn replace_prefix(name: &str, from: &str, to: &str) -> Option<String> {
    name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
}

/// TF-converted BERT checkpoints call LayerNorm parameters gamma/beta.
fn normalize_layer_norm(name: String) -> String {
    if let Some(stem) = name.strip_suffix("LayerNorm.gamma") {
        format!("{stem}LayerNorm.weight")
    } else if let Some(stem) = name.strip_suffix("LayerNorm.beta") {
        format!("{stem}LayerNorm.bias")
    } else {
        name
    }
}

/// Maps an HF tensor name to its canonical name; `None` for tensors that are not part of
/// the encoder or its classification head (an MLM head, `position_ids` buffers, ...).
/// The second value says whether the name carried the variant's base prefix.
pub fn to_canonical(variant: Variant, hf_name: &str) -> Option<(String, bool)> {
    let (name, prefixed) = match hf_name.strip_prefix(variant.base_prefix()) {
        Some(rest) => (rest, true),
        None => (hf_name, false),
    };
    if name.ends_with("position_ids") || name.ends_with("token_type_ids") {
        return None;
    }
    let canonical = match variant {
        Variant::Bert => name.to_string(),
        Variant::Roberta => ROBERTA_HEAD
            .iter()
            .find_map(|(canon, hf)| replace_prefix(name, hf, canon))
            .unwrap_or_else(|| name.to_string()),
        Variant::DistilBert => {
            if let Some(rest) = name.strip_prefix("transformer.layer.") {
                let (index, suffix) = rest.split_once('.')?;
                let suffix = DISTILBERT_LAYER
                    .iter()
                    .find_map(|(canon, hf)| replace_prefix(suffix, hf, canon))?;
                format!("encoder.layer.{index}.{suffix}")
            } else if let Some(rest) = name.strip_prefix("pre_classifier.") {
                format!("pooler.dense.{rest}")
            } else {
                name.to_string()
            }
        }
    };
    let canonical = normalize_layer_norm(canonical);
    let known = canonical.starts_with("embeddings.")
        || canonical.starts_with("encoder.layer.")
        || canonical.starts_with("pooler.dense.")
        || canonical == "classifier.weight"
        || canonical == "classifier.bias";
    known.then_some((canonical, prefixed))
}

/// Maps a canonical name to the variant's HF name. `prefixed`: write the base prefix on the
/// encoder's tensors (HF task-head layout); `with_head`: the checkpoint has a
/// classification head (decides RoBERTa's head names).
pub fn from_canonical(
    variant: Variant,
    canonical: &str,
    prefixed: bool,
    with_head: bool,
) -> String {
    let is_head = canonical.starts_with("classifier.")
        || (canonical.starts_with("pooler.") && variant != Variant::Bert && with_head);
    let name = match variant {
        Variant::Bert => canonical.to_string(),
        Variant::Roberta if with_head => ROBERTA_HEAD
            .iter()
            .find_map(|(canon, hf)| replace_prefix(canonical, canon, hf))
            .unwrap_or_else(|| canonical.to_string()),
        Variant::Roberta => canonical.to_string(),
        Variant::DistilBert => {
            if let Some(rest) = canonical.strip_prefix("encoder.layer.") {
                let (index, suffix) = rest.split_once('.').expect("canonical layer name");
                let suffix = DISTILBERT_LAYER
                    .iter()
                    .find_map(|(canon, hf)| replace_prefix(suffix, canon, hf))
                    .expect("every canonical layer tensor has a DistilBERT name");
                format!("transformer.layer.{index}.{suffix}")
            } else if let Some(rest) = canonical.strip_prefix("pooler.dense.") {
                format!("pre_classifier.{rest}")
            } else {
                canonical.to_string()
            }
        }
    };
    if prefixed && !is_head {
        format!("{}{name}", variant.base_prefix())
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_every_variant() {
        let names = [
            "embeddings.word_embeddings.weight",
            "encoder.layer.4.attention.self.value.bias",
            "encoder.layer.4.attention.output.LayerNorm.weight",
            "encoder.layer.11.output.dense.weight",
            "pooler.dense.weight",
            "classifier.bias",
        ];
        for variant in [Variant::Bert, Variant::Roberta, Variant::DistilBert] {
            for prefixed in [false, true] {
                for name in names {
                    let hf = from_canonical(variant, name, prefixed, true);
                    let (back, _) = to_canonical(variant, &hf).unwrap_or_else(|| panic!("{hf}"));
                    assert_eq!(back, name, "{variant:?} {hf}");
                }
            }
        }
    }

    #[test]
    fn variant_specific_names() {
        assert_eq!(
            from_canonical(
                Variant::DistilBert,
                "encoder.layer.2.intermediate.dense.weight",
                true,
                true
            ),
            "distilbert.transformer.layer.2.ffn.lin1.weight"
        );
        assert_eq!(
            from_canonical(Variant::Roberta, "classifier.weight", true, true),
            "classifier.out_proj.weight"
        );
        assert_eq!(
            from_canonical(Variant::Roberta, "pooler.dense.bias", true, true),
            "classifier.dense.bias"
        );
        assert_eq!(
            from_canonical(Variant::Roberta, "pooler.dense.bias", true, false),
            "roberta.pooler.dense.bias"
        );
        assert_eq!(
            from_canonical(Variant::Bert, "pooler.dense.bias", true, true),
            "bert.pooler.dense.bias"
        );
        assert_eq!(
            to_canonical(Variant::Bert, "bert.encoder.layer.0.output.LayerNorm.gamma"),
            Some(("encoder.layer.0.output.LayerNorm.weight".into(), true))
        );
        assert_eq!(to_canonical(Variant::Bert, "embeddings.position_ids"), None);
        assert_eq!(to_canonical(Variant::Bert, "cls.predictions.bias"), None);
    }
}
