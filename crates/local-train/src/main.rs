//! `raffm-local-train`: the stage [`raffm::stages::local_train`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::local_train::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-local-train", run(&Args::parse()).map(drop))
}
