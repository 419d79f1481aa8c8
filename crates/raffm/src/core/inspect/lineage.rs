//! The lineage of a stage's output: its manifest, and in turn those of its inputs' folders,
//! every input checked against the hash recorded for it.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::core::error::{Error, Result};
use crate::core::io::{sha256_file, FileRecord};
use crate::core::manifest::{Manifest, MANIFEST_FILE};

/// Whether an input file is still what the manifest recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputStatus {
    Ok,
    Changed,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputCheck {
    #[serde(flatten)]
    pub recorded: FileRecord,
    pub status: InputStatus,
}

/// What a stage's manifest says, less the bulky records, with the folders of its inputs.
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub tool: String,
    pub tool_version: String,
    pub parameters: Value,
    pub seeds: Map<String, Value>,
    pub metrics: Map<String, Value>,
    pub parameter_count: Option<u64>,
    /// Names of the stage-specific records (permutations, index maps, ...).
    pub details: Vec<String>,
    pub inputs: Vec<InputCheck>,
    pub parents: Vec<Lineage>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Stage(Box<StageSummary>),
    /// A folder without a manifest: the pre-trained model, the data's folder.
    External,
    /// Listed before in this lineage (an input shared by several stages, or a cycle).
    ShownAbove,
    /// Deeper than the depth asked for.
    NotFollowed,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    /// As the manifest that names it records it (as given, for the first).
    pub folder: String,
    #[serde(flatten)]
    pub origin: Origin,
}

/// A folder's manifest and, in turn, those of its inputs' folders, every input checked
/// against its recorded hash; `max_depth` generations of inputs (`None`: all).
pub fn lineage(dir: &Path, max_depth: Option<usize>) -> Result<Lineage> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "no such folder"));
    }
    let mut walk = LineageWalk {
        max_depth: max_depth.unwrap_or(usize::MAX),
        seen: HashSet::new(),
        statuses: HashMap::new(),
    };
    walk.node(dir, dir.display().to_string(), 0)
}

struct LineageWalk {
    max_depth: usize,
    /// Stage folders listed so far, canonical.
    seen: HashSet<PathBuf>,
    /// Input files checked so far: a model is the input of several stages.
    statuses: HashMap<PathBuf, InputStatus>,
}

impl LineageWalk {
    fn node(&mut self, dir: &Path, folder: String, depth: usize) -> Result<Lineage> {
        let origin = if !dir.is_dir() {
            Origin::Missing
        } else if !dir.join(MANIFEST_FILE).is_file() {
            Origin::External
        } else if depth > self.max_depth {
            Origin::NotFollowed
        } else if !self
            .seen
            .insert(dir.canonicalize().map_err(|e| Error::io(dir, e))?)
        {
            Origin::ShownAbove
        } else {
            Origin::Stage(Box::new(self.stage(dir, depth)?))
        };
        Ok(Lineage { folder, origin })
    }

    fn stage(&mut self, dir: &Path, depth: usize) -> Result<StageSummary> {
        let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
        let root = recorded_root(dir, &manifest);
        let mut inputs = Vec::new();
        let mut folders: Vec<(PathBuf, String)> = Vec::new();
        for record in &manifest.inputs {
            let path = root.join(&record.path);
            let status = self.check(&path, record)?;
            inputs.push(InputCheck {
                recorded: record.clone(),
                status,
            });
            let folder = path.parent().unwrap_or(Path::new("")).to_path_buf();
            if !folders.iter().any(|(f, _)| *f == folder) {
                folders.push((folder, recorded_folder(&record.path)));
            }
        }
        let parents = folders
            .into_iter()
            .map(|(folder, name)| self.node(&folder, name, depth + 1))
            .collect::<Result<_>>()?;
        let mut fields = manifest.record.fields();
        let stage = manifest.stage().to_string();
        let metrics = match fields.remove("metrics") {
            Some(Value::Object(metrics)) => metrics,
            _ => Map::new(),
        };
        fields.remove("stage");
        let slurm = manifest.slurm.is_some().then(|| "slurm".to_string());
        Ok(StageSummary {
            stage,
            tool: manifest.tool,
            tool_version: manifest.tool_version,
            parameters: manifest.parameters,
            seeds: manifest.seeds,
            metrics,
            parameter_count: manifest.parameter_count,
            details: fields.keys().cloned().chain(slurm).collect(),
            inputs,
            parents,
        })
    }

    fn check(&mut self, path: &Path, record: &FileRecord) -> Result<InputStatus> {
        if let Some(&status) = self.statuses.get(path) {
            return Ok(status);
        }
        let status = match std::fs::metadata(path) {
            Err(_) => InputStatus::Missing,
            // A new size needs no hashing.
            Ok(m) if m.len() != record.bytes => InputStatus::Changed,
            Ok(_) if sha256_file(path)?.sha256 == record.sha256 => InputStatus::Ok,
            Ok(_) => InputStatus::Changed,
        };
        self.statuses.insert(path.to_path_buf(), status);
        Ok(status)
    }
}

pub(crate) fn recorded_folder(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What a manifest's relative paths are relative to (the working directory of the run
/// that wrote it): the manifest's folder less the recorded name of that folder, read off
/// its outputs. Falls back to the current directory.
fn recorded_root(dir: &Path, manifest: &Manifest) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    let here = dir.canonicalize().unwrap_or_else(|_| cwd.join(dir));
    for output in &manifest.outputs {
        let Some(recorded) = Path::new(&output.path).parent() else {
            continue;
        };
        let mut root = here.clone();
        let stripped = recorded.components().rev().all(|c| match c {
            Component::Normal(name) if root.file_name() == Some(name) => root.pop(),
            Component::CurDir => true,
            _ => false,
        });
        if stripped {
            return root;
        }
    }
    cwd
}

// Text: aligned columns, numbers short enough to scan.
