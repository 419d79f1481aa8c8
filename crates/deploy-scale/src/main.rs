//! `raffm-deploy-scale`: the stage [`raffm::stages::deploy_scale`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::deploy_scale::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-deploy-scale", run(&Args::parse()).map(drop))
}
