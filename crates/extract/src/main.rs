//! `raffm-extract`: the stage [`raffm::stages::extract`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::extract::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-extract", run(&Args::parse()).map(drop))
}
