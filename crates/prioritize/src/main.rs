//! `raffm-prioritize`: the stage [`raffm::stages::prioritize`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::prioritize::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-prioritize", run(&Args::parse()).map(drop))
}
