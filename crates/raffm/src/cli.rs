//! What every binary does with its result: an error is one line on stderr, naming the
//! tool, with its causes joined by `: `; the exit code says whether it worked.

use std::process::ExitCode;

pub fn exit_code<E: std::fmt::Display>(tool: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` makes anyhow print the whole chain on one line.
            eprintln!("{tool}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
