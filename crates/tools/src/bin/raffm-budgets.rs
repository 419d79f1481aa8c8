//! `raffm-budgets`: the stage [`raffm::stages::budgets`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::budgets::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-budgets", run(&Args::parse()).map(drop))
}
