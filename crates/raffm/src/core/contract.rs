//! The typed records that stages hand to each other through `manifest.json`.
//!
//! `raffm-extract` writes a [`Placement`] into every sub-model's manifest;
//! `raffm-local-train` carries it over and adds the number of examples it trained on;
//! `raffm-aggregate` reads both back to place and weight the update.

use serde::{Deserialize, Serialize};

use crate::core::elastic::index::IndexMap;
use crate::fl::extract::Strategy;

/// Where a sub-model's tensors sit in the global model it was extracted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub client: String,
    pub round: u64,
    /// sha256 of the global model's weights: an update from another round is refused.
    pub global_sha256: String,
    pub strategy: Strategy,
    /// For every tensor of the sub-model: the global tensor and indices it came from.
    pub index_map: IndexMap,
    /// For a LoRA adapter: the global adapter's scaling `alpha / r`. A client's factors,
    /// trained at its own rank's scaling, are rescaled to it when placed, so that `s B A`
    /// keeps its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_scaling: Option<f64>,
}
