//! raffm: Resource-aware Federated Foundation Models.
//!
//! The library behind the stage binaries. Model families live in [`families`], each with
//! its elastic description ([`elastic`]): which tensor dimensions every elastic axis
//! indexes. Every stage derives its work from it: checkpoints ([`checkpoint`]) check their
//! shapes, [`prioritize`] permutes, [`extract`] gathers, [`aggregate`] scatters, [`cost`]
//! counts and [`search`] chooses widths. Every random choice goes through [`rng`], seeded.
//!
//! The binaries choose the global allocator; the library leaves it to them.

pub mod adapter;
pub mod aggregate;
pub mod attack;
pub mod checkpoint;
pub mod cli;
pub mod contract;
pub mod cost;
pub mod data;
pub mod deploy;
pub mod device;
pub mod elastic;
pub mod error;
pub mod evaluate;
pub mod extract;
pub mod families;
pub mod fit;
pub mod fixtures;
pub mod fused;
pub mod gguf;
pub mod inspect;
pub mod io;
pub mod launch;
pub mod llm;
pub mod manifest;
pub mod onnx;
pub mod partition;
pub mod pipeline;
pub mod prioritize;
pub mod privacy;
pub mod rng;
pub mod safetensors_header;
pub mod search;
pub mod stages;
pub mod sys;
pub mod tensor;
pub mod tokenizer;
pub mod train;
pub mod vision;
pub mod vocab;

pub use burn;
pub use checkpoint::Checkpoint;
pub use elastic::{Axis, AxisSizes, Widths};
pub use error::{Error, Result};
pub use families::ModelConfig;
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
