//! Images for the vision family: datasets and preprocessing ([`data`]), local training and
//! predictions of a classifier ([`train`]), and a k-nearest-neighbour probe of a backbone's
//! CLS features ([`probe`]), the quickest check that a backbone and the data path work
//! together.

pub mod data;
pub mod probe;
pub mod train;

pub use data::{cifar10_bigbench, cifar10_binary, decode, image_folder, LabeledImages, Preprocess};

/// Refuses a vision model where text comes in, before a text model's loader would.
pub(crate) fn check_not_vision(checkpoint: &crate::Checkpoint) -> crate::core::error::Result<()> {
    match checkpoint.config.vit() {
        Some(_) => Err(crate::core::error::Error::Invalid(format!(
            "a `{}` model takes images, and these examples are text",
            checkpoint.config.model_type()
        ))),
        None => Ok(()),
    }
}
