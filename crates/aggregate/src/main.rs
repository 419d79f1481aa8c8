//! `raffm-aggregate`: the stage [`raffm::stages::aggregate`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::aggregate::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-aggregate", run(&Args::parse()).map(drop))
}
