//! Federated learning on elastic models: salience ordering ([`prioritize`]), what a
//! sub-model costs ([`cost`]) and which one a budget gets ([`search`]), sub-model and
//! adapter extraction ([`extract`], [`adapter`], [`vocab`]), aggregation with robust and
//! private rules ([`aggregate`], [`privacy`], [`attack`]), post-training scaling
//! ([`deploy`]), and the pipeline and its launchers ([`pipeline`], [`launch`]).

pub mod adapter;
pub mod aggregate;
pub mod attack;
pub mod cost;
pub mod deploy;
pub mod extract;
pub mod launch;
pub mod pipeline;
pub mod prioritize;
pub mod privacy;
pub mod search;
pub mod vocab;
