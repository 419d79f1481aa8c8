//! raffm: Resource-aware Federated Foundation Models.
//!
//! The library behind the stage binaries, by concern:
//! * [`core`]: the elastic description of a model (which tensor dimensions every elastic
//!   axis indexes), checkpoints, atomic files, manifests and the records stages exchange;
//! * [`models`]: the families, their fused kernels, the one training loop and each
//!   family's task;
//! * [`fl`]: everything federated, derived from the elastic description:
//!   [`fl::prioritize`] permutes, [`fl::extract`] gathers, [`fl::aggregate`] scatters,
//!   [`fl::cost`] counts and [`fl::search`] chooses widths;
//! * [`data`]: datasets, tokenizers and the partition of examples across clients;
//! * [`formats`]: GGUF and ONNX imports;
//! * [`stages`]: each stage binary's work as a function, `run(&Args) -> Result<StageRecord>`.
//!
//! Every random choice goes through [`core::rng`], seeded.
//!
//! The binaries choose the global allocator; the library leaves it to them.

pub mod core;
pub mod data;
pub mod fl;
pub mod formats;
pub mod models;
pub mod stages;

pub use crate::core::checkpoint::Checkpoint;
pub use crate::core::elastic::{Axis, AxisSizes, Widths};
pub use crate::core::error::{Error, Result};
pub use crate::models::families::ModelConfig;
pub use burn;
pub use image;

/// The CPU backend selected by cargo features: flex (default) or ndarray.
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type CpuBackend = burn::backend::NdArray;
#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("enable a CPU backend: feature `flex` (default) or `ndarray`");

#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
