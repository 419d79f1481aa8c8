//! What every stage stands on: the elastic description of a model ([`elastic`]), host
//! tensors ([`tensor`]), checkpoints ([`checkpoint`]) and their strict reading
//! ([`safetensors_header`]), atomic files ([`io`]), the manifests that stages write
//! ([`manifest`]) and the typed records they hand each other ([`contract`]), the seeded
//! generator ([`rng`]), the errors ([`error`]) and what a binary does with them ([`cli`]).

pub mod checkpoint;
pub mod cli;
pub mod contract;
pub mod device;
pub mod elastic;
pub mod error;
pub mod fixtures;
pub mod inspect;
pub mod io;
pub mod manifest;
pub mod rng;
pub mod safetensors_header;
pub mod sys;
pub mod tensor;
