//! The elastic part every family's config holds alike: each layer's widths and which layer
//! of the global model it is. HF's fields describe a model whose layers are all alike and
//! all present; a sub-model whose layers are not keeps them in config.json's `"raffm"`
//! section, which HF ignores.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::elastic::{Axis, AxisSizes, Widths};

/// The key of raffm's section in `config.json`.
pub const ELASTIC_KEY: &str = "raffm";

/// A config's layers: the widths of each, and the global layer each one is.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStack {
    /// Per-layer widths, over the family's per-layer axes.
    pub layers: Vec<AxisSizes>,
    /// The global layer each layer is (`0..n` for a model with all its layers).
    pub global_layers: Vec<usize>,
}

/// The `"raffm"` section as it is written.
#[derive(Serialize, Deserialize)]
struct Section {
    /// Families whose heads narrow keep the full model's head dimension here: the
    /// attention scale of every sub-model is `1/sqrt` of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attention_scale_head_dim: Option<usize>,
    layers: Vec<AxisSizes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    global_layers: Option<Vec<usize>>,
}

impl LayerStack {
    /// `n` layers of widths `full`, each in its place.
    pub fn full(n: usize, full: AxisSizes) -> Self {
        Self {
            layers: vec![full; n],
            global_layers: (0..n).collect(),
        }
    }

    /// The layers of `raw`: its `"raffm"` section where it has one, else
    /// `num_hidden_layers` layers of `full()` (HF's reading). With the section's attention
    /// head dimension, where it gives one.
    pub fn read(
        raw: &Map<String, Value>,
        num_hidden_layers: usize,
        full: impl FnOnce() -> Result<AxisSizes, String>,
    ) -> Result<(Self, Option<usize>), String> {
        let Some(section) = raw.get(ELASTIC_KEY) else {
            return Ok((Self::full(num_hidden_layers, full()?), None));
        };
        let section: Section = serde_json::from_value(section.clone())
            .map_err(|e| format!("invalid `{ELASTIC_KEY}` section: {e}"))?;
        if section.layers.len() != num_hidden_layers {
            return Err(format!(
                "`{ELASTIC_KEY}.layers` has {} entries but num_hidden_layers is {num_hidden_layers}",
                section.layers.len()
            ));
        }
        let global_layers = section
            .global_layers
            .unwrap_or_else(|| (0..section.layers.len()).collect());
        let stack = Self {
            layers: section.layers,
            global_layers,
        };
        Ok((stack, section.attention_scale_head_dim))
    }

    /// Checks that there is a layer, one global index per layer, and that every layer
    /// has exactly the widths of `axes`, each at least 1.
    pub fn validate(&self, axes: &[Axis]) -> Result<(), String> {
        if self.layers.is_empty() {
            return Err("num_hidden_layers must be at least 1".into());
        }
        if self.global_layers.len() != self.layers.len() {
            return Err(format!(
                "`{ELASTIC_KEY}.global_layers` has {} entries for {} layers",
                self.global_layers.len(),
                self.layers.len()
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            for &axis in axes {
                match l.0.get(&axis) {
                    Some(&n) if n > 0 => {}
                    _ => return Err(format!("layer {i}: `{axis}` must be at least 1, got {l}")),
                }
            }
            if l.0.len() != axes.len() {
                return Err(format!("layer {i}: unknown widths in {l}"));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Whether every layer has widths `full` and is in its place: HF's fields then
    /// describe the model and no section is needed.
    pub fn is_full(&self, full: &AxisSizes) -> bool {
        self.layers.iter().all(|l| l == full)
            && self.global_layers.iter().enumerate().all(|(i, &g)| i == g)
    }

    /// The model's widths, with its global ones.
    pub fn widths(&self, global: AxisSizes) -> Widths {
        Widths {
            global,
            layers: self.layers.clone(),
            global_layers: self.global_layers.clone(),
        }
    }

    /// Takes the layers of `widths`. Returns the widths every layer has where all are
    /// alike, for the HF fields to say (HF tooling then loads the sub-model as it is).
    pub fn set(&mut self, widths: &Widths) -> Option<AxisSizes> {
        self.layers = widths.layers.clone();
        self.global_layers = widths.global_layers.clone();
        let first = self.layers.first()?;
        self.layers
            .iter()
            .all(|l| l == first)
            .then(|| first.clone())
    }

    /// Writes the section into `raw`, or removes it where `hf_describes` the model, with
    /// the attention head dimension where the family keeps one.
    pub fn write(
        &self,
        raw: &mut Map<String, Value>,
        hf_describes: bool,
        attention_scale_head_dim: Option<usize>,
    ) {
        if hf_describes {
            raw.remove(ELASTIC_KEY);
            return;
        }
        let in_place = self.global_layers.iter().enumerate().all(|(i, &g)| i == g);
        let section = Section {
            attention_scale_head_dim,
            layers: self.layers.clone(),
            global_layers: (!in_place).then(|| self.global_layers.clone()),
        };
        let section = serde_json::to_value(section).expect("plain struct serializes");
        raw.insert(ELASTIC_KEY.into(), section);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(heads: usize, ffn: usize) -> AxisSizes {
        AxisSizes::of(&[(Axis::Heads, heads), (Axis::Ffn, ffn)])
    }

    /// What is written reads back; a full stack writes no section; a wrong count, a
    /// missing or zero width and an unknown one are refused with what is wrong.
    #[test]
    fn a_stack_round_trips_through_its_section_and_bad_ones_are_refused() {
        let stack = LayerStack {
            layers: vec![layer(2, 8), layer(1, 4)],
            global_layers: vec![0, 3],
        };
        let mut raw = Map::new();
        stack.write(&mut raw, false, Some(16));
        assert_eq!(raw[ELASTIC_KEY]["global_layers"], json!([0, 3]));
        let (back, scale) = LayerStack::read(&raw, 2, || unreachable!()).unwrap();
        assert_eq!((back, scale), (stack.clone(), Some(16)));
        assert!(LayerStack::read(&raw, 3, || unreachable!())
            .unwrap_err()
            .contains("has 2 entries but num_hidden_layers is 3"));

        let full = LayerStack::full(2, layer(2, 8));
        assert!(full.is_full(&layer(2, 8)) && !stack.is_full(&layer(2, 8)));
        full.write(&mut raw, true, None);
        assert!(raw.get(ELASTIC_KEY).is_none());
        let (read, scale) = LayerStack::read(&raw, 2, || Ok(layer(2, 8))).unwrap();
        assert_eq!((read, scale), (full, None));

        let axes = [Axis::Heads, Axis::Ffn];
        assert!(stack.validate(&axes).is_ok());
        let mut zero = stack.clone();
        zero.layers[1].set(Axis::Ffn, 0);
        assert!(zero.validate(&axes).unwrap_err().contains("layer 1: `ffn`"));
        assert!(stack
            .validate(&[Axis::Heads])
            .unwrap_err()
            .contains("unknown widths"));
        let mut short = stack.clone();
        short.global_layers.pop();
        assert!(short.validate(&axes).unwrap_err().contains("global_layers"));
    }

    #[test]
    fn set_takes_the_widths_layers_and_says_whether_they_are_alike() {
        let mut stack = LayerStack::full(3, layer(2, 8));
        let mut widths = stack.widths(AxisSizes::of(&[(Axis::Hidden, 4)]));
        widths.layers.truncate(2);
        widths.global_layers = vec![0, 2];
        assert_eq!(stack.set(&widths), Some(layer(2, 8)));
        assert_eq!(stack.global_layers, vec![0, 2]);
        widths.layers[1] = layer(1, 8);
        assert_eq!(stack.set(&widths), None);
    }
}
