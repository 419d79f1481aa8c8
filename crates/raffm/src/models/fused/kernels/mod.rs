//! CPU kernels for the encoder's memory-bound steps, on plain `f32` slices.
//!
//! Each kernel does in one pass over memory what burn's composed ops do in several, and
//! splits its rows over rayon's threads. The math is written without branches or libm
//! calls so that the compiler vectorises it; `multiversion!` compiles each kernel for
//! AVX-512 and AVX2 besides the baseline and picks one at run time. Reductions keep 16
//! partial sums, since the compiler may not reorder float additions itself.
//!
//! Every parallel split is by a fixed number of rows, never by thread count or timing, so
//! results are bit-identical from run to run.

// Kernels take their inputs, outputs and saved state as separate slices: long argument
// lists are their shape, and index loops over rows that address several slices at once.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

// First: `multiversion!` is visible only to the modules declared after it.
#[macro_use]
mod simd;

mod adamw;
mod attention;
pub mod bf16;
mod dropout;
mod gelu;
mod layer_norm;
mod log_probs;
mod math;
mod matmul;
mod rms_norm;
mod rotary;
mod swiglu;

pub use adamw::{adamw, AdamWStep};
pub use attention::{attention, attention_backward, AttentionSaved, AttentionShape};
pub use dropout::{apply_dropout, DropoutMask};
pub use gelu::{gelu, gelu_backward};
pub use layer_norm::{add_layer_norm, add_layer_norm_backward, LayerNormSaved};
pub use log_probs::{target_log_probs, target_log_probs_backward};
pub use math::exp;
pub use matmul::{matmul_fp32, Strided};
pub use rms_norm::{rms_norm, rms_norm_backward};
pub use rotary::RotaryTables;
pub use swiglu::{swiglu, swiglu_backward};

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const TASK_ELEMENTS: usize = 32 * 1024;

/// Rows per task for row-wise kernels.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMENTS / width.max(1)).max(1)
}

#[cfg(test)]
mod test_support;
