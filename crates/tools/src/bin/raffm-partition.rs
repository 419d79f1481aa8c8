//! `raffm-partition`: the stage [`raffm::stages::partition`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::partition::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-partition", run(&Args::parse()).map(drop))
}
