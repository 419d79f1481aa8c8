//! `raffm-evaluate`: the stage [`raffm::stages::evaluate`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::evaluate::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-evaluate", run(&Args::parse()).map(drop))
}
