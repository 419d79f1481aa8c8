//! The elastic-architecture description: which tensor dimensions each elastic axis
//! indexes and which slices move together.
//!
//! Each model family writes it once, as data (see [`crate::models::families`]): its [`AxisSpec`]s
//! and, for every tensor under the family's own HF name, a [`TensorSpec`] whose dimensions
//! are products of axes and fixed sizes. A model's [`Widths`] give every axis a size.
//! From these the stages derive their work: shapes and parameter counts (a sum over
//! tensors), prioritization (a permutable axis permutes every slot it indexes), index maps
//! ([`index`]), aggregation (a scatter by index map), the search's per-layer costs and the
//! text `raffm-inspect` prints. No stage names a family's tensors.

pub mod index;
pub mod norms;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An elastic axis. Families use the subset that applies to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Channels of the residual stream (global).
    Hidden,
    /// Which layers a model keeps (global); its width is the depth.
    Layers,
    /// Key/value heads of a layer: each with its group of query heads (grouped-query
    /// attention).
    KvHeads,
    /// Attention heads of a layer (query heads within their KV group, where there are
    /// groups).
    Heads,
    /// Query/key channels inside a head; its width is the head dimension.
    HeadDim,
    /// Value channels inside a head; as wide as [`Axis::HeadDim`].
    ValueDim,
    /// Feed-forward neurons of a layer.
    Ffn,
    /// Rows of the token embedding (global): a client keeps the tokens its data uses.
    Vocab,
}

impl Axis {
    pub const ALL: [Axis; 8] = [
        Axis::Hidden,
        Axis::Layers,
        Axis::KvHeads,
        Axis::Heads,
        Axis::HeadDim,
        Axis::ValueDim,
        Axis::Ffn,
        Axis::Vocab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Axis::Hidden => "hidden",
            Axis::Layers => "layers",
            Axis::KvHeads => "kv_heads",
            Axis::Heads => "heads",
            Axis::HeadDim => "head_dim",
            Axis::ValueDim => "value_dim",
            Axis::Ffn => "ffn",
            Axis::Vocab => "vocab",
        }
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Axis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Axis::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Axis::ALL.iter().map(|a| a.name()).collect();
                format!("unknown axis `{s}` (expected one of {})", names.join(", "))
            })
    }
}

/// Where an axis lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One instance for the whole model.
    Global,
    /// One instance per layer, each with its own width.
    Layer,
}

/// How the salience of an axis index is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Salience {
    /// The mean, over the weight matrices the axis indexes, of the L1 or L2 norm of the
    /// slice at that index (paper eq. 1; for Q/K channels, which Q and K share, eq. 5).
    CoupledSlices,
    /// For layers: the mean absolute weight of the layer's weight matrices.
    LayerMagnitude,
    /// Not scored: the axis's indices are given (a client's tokens).
    None,
}

/// One elastic axis of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AxisSpec {
    pub axis: Axis,
    pub scope: Scope,
    /// The axis each of whose indices holds its own copy of this one: Q/K channels inside a
    /// head. In a tensor dimension a nested axis directly follows its parent.
    pub nested_in: Option<Axis>,
    /// The axis whose width this one takes (value channels are as wide as Q/K channels).
    pub width_of: Axis,
    /// Whether reordering the axis, every slot it indexes alike, keeps the function.
    pub permutable: bool,
    /// Whether a model cut on this axis computes what the uncut model computes with the
    /// cut slices set to zero (so a zero-padded copy at the full shapes is equivalent).
    pub masked_equivalent: bool,
    /// Whether the search chooses its width from the search space. A tied axis takes
    /// another's width, and a vocabulary's width comes from the client's data.
    pub searchable: bool,
    pub salience: Salience,
}

/// One factor of a tensor dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Axis(Axis),
    Fixed(usize),
}

/// A tensor dimension: the product of its factors, outer first (`[heads, head_dim]` is the
/// `heads * head_dim` rows of a query projection, head by head).
pub type Dim = Vec<Factor>;

/// What part of the model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// Input embeddings: frozen by `--freeze-embeddings`.
    Embedding,
    Layer,
    /// Between the layers and the task's output (a pooler).
    Head,
    /// The task's output layer (a classifier): made afresh for a new task.
    Task,
}

/// How a fresh tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// N(0, 0.02²), as HF initialises weights.
    Weight,
    Bias,
    NormScale,
    NormShift,
}

/// One tensor of a family: its name and what indexes each dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The family's canonical name.
    pub name: String,
    /// The layer it belongs to (its position among the model's layers).
    pub layer: Option<usize>,
    /// Its name inside its layer (the whole name for tensors outside the layers): the
    /// tensor of another model that plays the same part has the same key.
    pub key: String,
    pub dims: Vec<Dim>,
    pub kind: TensorKind,
    pub init: Init,
}

impl TensorSpec {
    /// A tensor outside the layers; its key is its name.
    pub fn outer(name: &str, dims: &[&[Factor]], kind: TensorKind, init: Init) -> Self {
        Self {
            name: name.to_string(),
            layer: None,
            key: name.to_string(),
            dims: dims.iter().map(|d| d.to_vec()).collect(),
            kind,
            init,
        }
    }

    /// Tensor `key` of layer `layer`, named `name`.
    pub fn in_layer(name: String, layer: usize, key: &str, dims: &[&[Factor]], init: Init) -> Self {
        Self {
            name,
            layer: Some(layer),
            key: key.to_string(),
            dims: dims.iter().map(|d| d.to_vec()).collect(),
            kind: TensorKind::Layer,
            init,
        }
    }

    /// A weight matrix (two or more dimensions): what salience scores.
    pub fn is_matrix(&self) -> bool {
        self.dims.len() >= 2
    }

    /// Whether `axis` indexes any of its dimensions.
    pub fn has_axis(&self, axis: Axis) -> bool {
        self.dims.iter().flatten().any(|f| *f == Factor::Axis(axis))
    }
}

/// The size of each axis of one scope: the global sizes, or one layer's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AxisSizes(pub BTreeMap<Axis, usize>);

impl AxisSizes {
    pub fn of(entries: &[(Axis, usize)]) -> Self {
        Self(entries.iter().copied().collect())
    }

    /// The size of `axis`; a family's widths always hold every axis of their scope.
    pub fn get(&self, axis: Axis) -> usize {
        *self
            .0
            .get(&axis)
            .unwrap_or_else(|| panic!("widths have no `{axis}`"))
    }

    pub fn set(&mut self, axis: Axis, size: usize) {
        self.0.insert(axis, size);
    }
}

impl std::fmt::Display for AxisSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(a, n)| format!("{a} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// A model's elastic widths: global sizes, per-layer sizes, and which global layer each of
/// its layers is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Widths {
    pub global: AxisSizes,
    pub layers: Vec<AxisSizes>,
    pub global_layers: Vec<usize>,
}

impl Widths {
    /// The size of one factor of a tensor of layer `layer`.
    pub fn factor_size(&self, axes: &[AxisSpec], factor: Factor, layer: Option<usize>) -> usize {
        match factor {
            Factor::Fixed(n) => n,
            Factor::Axis(axis) => {
                let spec = axis_spec(axes, axis);
                match spec.scope {
                    Scope::Global => self.global.get(spec.width_of),
                    Scope::Layer => {
                        let layer = layer.expect("a per-layer axis in a tensor outside the layers");
                        self.layers[layer].get(spec.width_of)
                    }
                }
            }
        }
    }

    /// The shape a tensor has under these widths.
    pub fn shape(&self, axes: &[AxisSpec], spec: &TensorSpec) -> Vec<usize> {
        spec.dims
            .iter()
            .map(|dim| {
                dim.iter()
                    .map(|f| self.factor_size(axes, *f, spec.layer))
                    .product()
            })
            .collect()
    }

    /// Parameters of a model with these widths: a sum over its tensors.
    pub fn parameter_count(&self, axes: &[AxisSpec], tensors: &[TensorSpec]) -> u64 {
        tensors
            .iter()
            .map(|t| self.shape(axes, t).iter().product::<usize>() as u64)
            .sum()
    }

    /// True when the layers are the first ones in order (no layer was dropped or moved).
    pub fn has_all_layers_of(&self, global_depth: usize) -> bool {
        self.global_layers.len() == global_depth
            && self.global_layers.iter().enumerate().all(|(i, &g)| i == g)
    }

    /// A one-line description: `hidden 384; layers 0-5: heads 12, head_dim 32, ffn 1536`.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.global.to_string()];
        let mut start = 0;
        for end in 1..=self.layers.len() {
            if end < self.layers.len() && self.layers[end] == self.layers[start] {
                continue;
            }
            let which: Vec<String> = self.global_layers[start..end]
                .iter()
                .map(usize::to_string)
                .collect();
            parts.push(format!(
                "layers {}: {}",
                which.join(","),
                self.layers[start]
            ));
            start = end;
        }
        parts.join("; ")
    }
}

/// The spec of `axis` in a family's axes.
pub fn axis_spec(axes: &[AxisSpec], axis: Axis) -> &AxisSpec {
    axes.iter()
        .find(|s| s.axis == axis)
        .unwrap_or_else(|| panic!("the family has no axis `{axis}`"))
}

/// Checks a family's description for the rules the stages rely on: every axis in a tensor
/// is declared, a nested axis directly follows its parent, and a width is taken from an
/// axis of the same scope. Families call it from a test.
pub fn check_description(axes: &[AxisSpec], tensors: &[TensorSpec]) -> Result<(), String> {
    for spec in axes {
        let owner = axes
            .iter()
            .find(|s| s.axis == spec.width_of)
            .ok_or_else(|| format!("{}: width of undeclared axis {}", spec.axis, spec.width_of))?;
        if owner.scope != spec.scope {
            return Err(format!("{}: takes its width across scopes", spec.axis));
        }
    }
    for t in tensors {
        for dim in &t.dims {
            for (i, factor) in dim.iter().enumerate() {
                let Factor::Axis(axis) = *factor else {
                    continue;
                };
                let spec = axes
                    .iter()
                    .find(|s| s.axis == axis)
                    .ok_or_else(|| format!("{}: undeclared axis {axis}", t.name))?;
                if spec.scope == Scope::Layer && t.layer.is_none() {
                    return Err(format!("{}: per-layer axis {axis} outside a layer", t.name));
                }
                if let Some(parent) = spec.nested_in {
                    if i == 0 || dim[i - 1] != Factor::Axis(parent) {
                        return Err(format!("{}: {axis} does not follow {parent}", t.name));
                    }
                }
            }
        }
    }
    Ok(())
}
