//! `manifest.json`: what a stage did, from what, to what. It makes every ablation
//! inspectable and lets later stages check where their inputs came from.

mod record;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use record::*;

use crate::core::contract::Placement;
use crate::core::elastic::Widths;
use crate::core::error::{Error, Result};
use crate::core::io::{FileRecord, StagingDir};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    pub tool_version: String,
    /// The command line as it was given.
    pub command: Vec<String>,
    /// The parsed options, defaults included.
    pub parameters: Value,
    #[serde(default)]
    pub seeds: Map<String, Value>,
    pub inputs: Vec<FileRecord>,
    #[serde(default)]
    pub outputs: Vec<FileRecord>,
    /// Elastic widths of the output model, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Widths>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_count: Option<u64>,
    /// Bytes a client would download for this model (its float32 weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_on_wire: Option<u64>,
    /// Where a sub-model sits in its global model (extract, carried by local-train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Examples a client update was trained on (local-train), its weight in FedAvg.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "example_count"
    )]
    pub num_examples: Option<u64>,
    /// The frozen base model of an adapter (LoRA rounds, see [`crate::fl::adapter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::fl::adapter::BaseModel>,
    /// The Slurm job the stage ran in, where it ran as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmJob>,
    /// What this stage records: its `stage` name, its metrics and the rest.
    #[serde(flatten)]
    pub record: StageRecord,
}

/// A count of examples: a whole number no larger than any dataset could be, or a clear
/// error (serde's own would not name the field).
fn example_count<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    match v.as_u64().filter(|&n| n < 1 << 53) {
        Some(n) => Ok(Some(n)),
        None if v.is_null() => Ok(None),
        None => Err(serde::de::Error::custom(format!(
            "`num_examples` must be a whole number of examples, got {v}"
        ))),
    }
}

/// Where a stage ran as a Slurm job, and what the job was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlurmJob {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_task_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_per_node_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<u64>,
}

impl SlurmJob {
    /// The job this process runs in, from its environment; `None` outside Slurm.
    fn from_environment() -> Option<Self> {
        let variable = |name: &str| std::env::var(name).ok();
        let number = |name: &str| variable(name).and_then(|v| v.parse().ok());
        Some(Self {
            job_id: variable("SLURM_JOB_ID")?,
            array_task_id: number("SLURM_ARRAY_TASK_ID"),
            node: variable("SLURMD_NODENAME"),
            mem_per_node_mib: number("SLURM_MEM_PER_NODE"),
            cpus_per_task: number("SLURM_CPUS_PER_TASK"),
        })
    }
}

impl Manifest {
    /// A manifest of `record`'s stage, run by `tool`, with the process's command line.
    pub fn new(record: StageRecord, tool: &str, parameters: Value) -> Self {
        Self {
            tool: tool.into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            command: std::env::args().collect(),
            parameters,
            seeds: Map::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            architecture: None,
            parameter_count: None,
            bytes_on_wire: None,
            placement: None,
            num_examples: None,
            base: None,
            slurm: SlurmJob::from_environment(),
            record,
        }
    }

    /// The stage's name, as `manifest.json` spells it.
    pub fn stage(&self) -> &'static str {
        self.record.name()
    }

    /// Whether raffm-prioritize wrote the model.
    pub fn is_prioritized(&self) -> bool {
        matches!(self.record, StageRecord::Prioritize(_))
    }

    /// Writes the manifest as the last file of an output folder, listing every file
    /// written before it.
    pub fn write_into(&mut self, staging: &mut StagingDir) -> Result<FileRecord> {
        self.outputs = staging.records().to_vec();
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        staging.write(MANIFEST_FILE, format!("{text}\n").as_bytes())
    }

    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self::load_recorded(path)?.0)
    }

    /// The manifest with the record of the file (hash, size), read once.
    pub fn load_recorded(path: &Path) -> Result<(Self, FileRecord)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(path, format!("invalid manifest: {e}")))?;
        let record = FileRecord {
            path: path.display().to_string(),
            sha256: crate::core::io::sha256_bytes(&bytes),
            bytes: bytes.len() as u64,
        };
        Ok((manifest, record))
    }
}
