//! Checkpoint inspection for ablations (`raffm-inspect`): per-tensor statistics
//! ([`stats`]), tensor-by-tensor differences between two checkpoints, a sub-model against
//! the slice of the global model it came from ([`diff`]), the lineage of a stage's output
//! through the manifests ([`lineage`]), and their text form ([`render`]).

pub mod diff;
pub mod lineage;
pub mod render;
pub mod stats;

pub use diff::{
    choose_index_map, diff, load_index_map, map_fits, Diff, IndexMapChoice, IndexMapping, Side,
};
pub use lineage::{lineage, InputStatus, Lineage, Origin};
pub use stats::{
    load_checkpoint, stats, tensor_report, tensor_stats, Architecture, CheckpointReport, Stats,
};
