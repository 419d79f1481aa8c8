//! Weights that arrive in other formats, read once and imported as HF folders: GGUF
//! ([`gguf`]) and ONNX ([`onnx`]).

pub mod gguf;
pub mod onnx;
