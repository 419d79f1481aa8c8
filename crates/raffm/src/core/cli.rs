//! What every binary does with its result: an error is one line on stderr, naming the
//! tool, with its causes joined by `: `; the exit code says whether it worked.

use std::path::Path;
use std::process::ExitCode;

use crate::core::device::DeviceChoice;
use crate::core::elastic::{Axis, AxisSpec};
use crate::core::error::{Error, Result};
use crate::data::partition::Partition;
use crate::fl::search::SearchSpace;

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

/// One axis of the search space on the command line: `AXIS=F,F,...` (`heads=0.5,1`).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisFractions(pub Axis, pub Vec<f64>);

impl std::str::FromStr for AxisFractions {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (axis, fractions) = s
            .split_once('=')
            .ok_or_else(|| format!("expected AXIS=F,F,... (like heads=0.5,1), got `{s}`"))?;
        let fractions = fractions
            .split(',')
            .map(|f| {
                f.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{f}` in `{s}` is not a number"))
            })
            .collect::<std::result::Result<Vec<f64>, String>>()?;
        Ok(AxisFractions(axis.trim().parse()?, fractions))
    }
}

/// The sub-model search space as options, shared by the binaries that search it.
#[derive(clap::Args, Debug, Clone)]
pub struct SpaceArgs {
    /// Search space of one axis, as fractions of the global width: AXIS=F,F,... Repeat for
    /// more axes (--space hidden=0.5,0.75,1 --space layers=0.5,1). Axes not given keep the
    /// space of budgets.json where there is one, else the built-in default.
    #[arg(long = "space", value_name = "AXIS=F,F,...")]
    pub space: Vec<AxisFractions>,
}

impl SpaceArgs {
    /// `base` with the axes given on the command line replaced, checked for `axes`.
    pub fn space(&self, base: &SearchSpace, axes: &[AxisSpec]) -> Result<SearchSpace> {
        let mut space = base.clone();
        for AxisFractions(axis, fractions) in &self.space {
            space.0.insert(*axis, fractions.clone());
        }
        space.validate(axes)?;
        Ok(space)
    }
}

/// Evaluation on a partition's validation split as options, shared by the binaries that
/// evaluate the models they write.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Evaluate on at most this many validation examples, spread evenly over the split.
    #[arg(long)]
    pub eval_max_examples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Tokens per example (default: 64, or the model's positions if fewer).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
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
        let ids = match self.eval_max_examples {
            Some(max) => crate::data::spread_subset(&partition.validation, max),
            None => partition.validation.clone(),
        };
        if ids.is_empty() {
            return Err(Error::format(
                partition_path,
                "no validation examples to evaluate on",
            ));
        }
        Ok(ids)
    }
}
