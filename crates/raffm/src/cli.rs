//! What every binary does with its result: an error is one line on stderr, naming the
//! tool, with its causes joined by `: `; the exit code says whether it worked.

use std::path::Path;
use std::process::ExitCode;

use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::search::SearchSpace;

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

/// The sub-model search space as options, shared by the binaries that search it.
#[derive(clap::Args, Debug, Clone)]
pub struct SpaceArgs {
    /// Search space: fractions of the global heads per layer.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1")]
    pub heads: Vec<f64>,
    /// Search space: fractions of the global head dimension.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.75,1")]
    pub head_dim: Vec<f64>,
    /// Search space: fractions of the global FFN width.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1")]
    pub ffn: Vec<f64>,
}

impl SpaceArgs {
    /// The search space, checked.
    pub fn space(&self) -> Result<SearchSpace> {
        let space = SearchSpace {
            heads: self.heads.clone(),
            head_dim: self.head_dim.clone(),
            ffn: self.ffn.clone(),
        };
        space.validate()?;
        Ok(space)
    }
}

/// Evaluation on a partition's validation split as options, shared by the binaries that
/// evaluate the models they write.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Evaluate on at most this many validation examples (the first ones).
    #[arg(long)]
    pub eval_max_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 64)]
    pub max_seq_len: usize,
    /// Device for the evaluation: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

impl EvalArgs {
    /// The validation examples to evaluate on; none is an error naming `partition_path`.
    pub fn validation_ids(
        &self,
        partition: &Partition,
        partition_path: &Path,
    ) -> Result<Vec<usize>> {
        let mut ids = partition.validation.clone();
        if let Some(max) = self.eval_max_examples {
            ids.truncate(max);
        }
        if ids.is_empty() {
            return Err(Error::format(
                partition_path,
                "no validation examples to evaluate on",
            ));
        }
        Ok(ids)
    }
}
