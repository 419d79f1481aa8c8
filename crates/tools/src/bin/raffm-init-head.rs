//! `raffm-init-head`: the stage [`raffm::stages::init_head`] as a command.

use std::process::ExitCode;

use clap::Parser;

use raffm::stages::init_head::{run, Args};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-init-head", run(&Args::parse()).map(drop))
}
