//! The stages as library functions: each takes its binary's options and returns the
//! record it wrote into its output's manifest (extract: one per client), so a test or a
//! driver runs a stage in-process the way its binary runs it. Each of the five stage
//! binaries is a short `main` around one of these.

pub mod aggregate;
pub mod deploy_scale;
pub mod extract;
pub mod local_train;
pub mod prioritize;
