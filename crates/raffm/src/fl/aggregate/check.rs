//! Validation of a client update against the round's global model, before anything of it
//! is added.

use std::collections::BTreeSet;

use super::update::ClientUpdate;
use crate::core::checkpoint::Checkpoint;
use crate::core::tensor::first_non_finite;

impl ClientUpdate {
    /// Why this update cannot be aggregated into `global`, if it cannot: it came from
    /// another global model, its index map does not fit the global tensors or its own, it
    /// places two tensors onto one global tensor, or a value is not finite.
    pub fn check(&self, global: &Checkpoint) -> Result<(), String> {
        let expected = global.weights_sha256();
        match (&self.global_sha256, expected) {
            (Some(got), Some(want)) if got != want => {
                return Err(format!(
                    "was extracted from global weights {} but this round's global is {} (an update from another round?)",
                    crate::core::io::short_hash(got),
                    crate::core::io::short_hash(want)
                ))
            }
            (None, Some(_)) => {
                return Err("its manifest does not say which global model it came from".into())
            }
            _ => {}
        }
        if self.index_map.len() != self.weights.len() {
            return Err(format!(
                "index map has {} tensors, the checkpoint {}",
                self.index_map.len(),
                self.weights.len()
            ));
        }
        let mut targets = BTreeSet::new();
        for (name, index) in &self.index_map {
            let source = index.source(name);
            let g = global
                .tensors
                .get(source)
                .ok_or_else(|| format!("tensor `{source}` is not in the global model"))?;
            if !targets.insert(source) {
                return Err(format!(
                    "two of its tensors are placed onto the global `{source}`"
                ));
            }
            let (shape, data) = self
                .weights
                .get(name)
                .ok_or_else(|| format!("index map names `{name}`, which the update lacks"))?;
            index
                .check_against(&g.shape)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            let want = index.sub_shape(&g.shape);
            if shape != want {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?} but its index map places {want:?} into {:?}",
                    g.shape
                ));
            }
            if let Some(i) = first_non_finite(data) {
                return Err(format!(
                    "tensor `{name}` has a non-finite value ({}) at element {i}",
                    data[i]
                ));
            }
        }
        Ok(())
    }
}
