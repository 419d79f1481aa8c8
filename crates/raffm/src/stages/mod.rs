//! The stages as library functions: each takes its binary's options and returns what it
//! produced (the five federated stages: the record they wrote into their output's
//! manifest, extract one per client), so a test or a driver runs a stage in-process the
//! way its binary runs it. Each binary is a short `main` around one of these.
//!
//! The round: [`prioritize`], [`extract`], [`local_train`], [`aggregate`], and after the
//! last round [`deploy_scale`]. Around it: [`partition`] (the data across clients),
//! [`budgets`] (every client's budget), [`init_head`] (round 0's global model),
//! [`sample_clients`] (a round's participants) and [`evaluate`] (metrics of a model).

pub mod aggregate;
pub mod budgets;
pub mod deploy_scale;
pub mod evaluate;
pub mod extract;
pub mod init_head;
pub mod local_train;
pub mod partition;
pub mod prioritize;
pub mod sample_clients;
