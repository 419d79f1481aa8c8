//! The stages as library functions: each takes its binary's options and returns the
//! record it wrote into its output's manifest, so a test or a driver runs a stage
//! in-process the way its binary runs it. A binary is a short `main` around one of these.

pub mod deploy_scale;
pub mod extract;
pub mod local_train;
pub mod prioritize;
