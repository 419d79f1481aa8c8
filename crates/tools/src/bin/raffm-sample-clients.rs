//! `raffm-sample-clients`: the stage [`raffm::stages::sample_clients`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::sample_clients::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-sample-clients", run(&Args::parse()).map(drop))
}
