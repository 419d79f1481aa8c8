//! Checkpoint inspection for ablations (`raffm-inspect`): per-tensor statistics, the
//! lineage of a stage's output through the manifests, and tensor-by-tensor differences
//! between two checkpoints, a sub-model against the slice of the global model it came from.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::checkpoint::{expected_shapes, map_file, Checkpoint, CONFIG_FILE, WEIGHTS_FILE};
use crate::config::{Family, LayerArch};
use crate::error::{Error, Result};
use crate::extract::{IndexMap, TensorIndex};
use crate::io::{sha256_file, FileRecord};
use crate::layout::to_canonical;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::tensor::HostTensor;

/// Summary statistics of a tensor's values, accumulated in f64; `std` is the population
/// standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub numel: usize,
    pub mean: f64,
    pub std: f64,
    pub l1: f64,
    pub zero_fraction: f64,
    pub max_abs: f64,
    /// NaN or infinite values (a diverged run); they make `mean` and `std` NaN.
    pub non_finite: usize,
}

pub fn stats(values: &[f32]) -> Stats {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    // Two passes: the spread about the mean does not cancel catastrophically.
    let variance = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    Stats {
        numel: values.len(),
        mean,
        std: variance.sqrt(),
        l1: values.iter().map(|&v| (v as f64).abs()).sum(),
        zero_fraction: values.iter().filter(|&&v| v == 0.0).count() as f64 / n,
        max_abs: values.iter().map(|&v| (v as f64).abs()).fold(0.0, f64::max),
        non_finite: values.iter().filter(|v| !v.is_finite()).count(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorStats {
    pub name: String,
    pub shape: Vec<usize>,
    /// As stored in `model.safetensors`; the values were widened to f32 on load.
    pub dtype: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Architecture {
    pub model_type: String,
    pub family: Family,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub vocab_size: usize,
    pub layers: Vec<LayerArch>,
    pub pooler: bool,
    /// Labels of the classification head, if there is one.
    pub classifier_labels: Option<usize>,
    pub parameter_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub checkpoint: String,
    pub architecture: Architecture,
    pub tensors: Vec<TensorStats>,
}

/// Tensors in model order (embeddings, layers by number, pooler, classifier) rather than
/// the map's alphabetical one, which puts layer 10 before layer 2.
fn model_order(c: &Checkpoint) -> Vec<(&String, &HostTensor)> {
    let expected = expected_shapes(&c.config, c.has_pooler(), c.has_classifier());
    let position: HashMap<String, usize> = expected
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| (name, i))
        .collect();
    let mut tensors: Vec<_> = c.tensors.iter().collect();
    tensors.sort_by_key(|(name, _)| position.get(*name).copied().unwrap_or(usize::MAX));
    tensors
}

/// Statistics of every tensor, by canonical name; `dtype` is F32, what they are in memory
/// ([`tensor_report`] reads what the file stores).
pub fn tensor_stats(checkpoint: &Checkpoint) -> Vec<TensorStats> {
    let stats_of = |(name, t): (&String, &HostTensor)| TensorStats {
        name: name.clone(),
        shape: t.shape.clone(),
        dtype: "F32".into(),
        stats: stats(&t.data),
    };
    model_order(checkpoint).into_iter().map(stats_of).collect()
}

/// Loads a checkpoint folder without hashing it; a folder that is not a checkpoint at all
/// gets an error saying so.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    if dir.is_dir() && !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::format(
            dir,
            "not a checkpoint folder (no config.json)",
        ));
    }
    Checkpoint::load_with(dir, false)
}

/// The architecture and every tensor's statistics of a checkpoint folder.
pub fn tensor_report(dir: &Path) -> Result<TensorReport> {
    let checkpoint = load_checkpoint(dir)?;
    let config = &checkpoint.config;
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = map_file(&weights)?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(&weights, format!("bad safetensors header: {e}")))?;
    let dtypes: HashMap<String, String> = header
        .tensors()
        .into_iter()
        .filter_map(|(hf_name, info)| Some((to_canonical(config.family, &hf_name)?.0, info)))
        .map(|(name, info)| (name, info.dtype.to_string()))
        .collect();
    let mut tensors = tensor_stats(&checkpoint);
    for t in &mut tensors {
        if let Some(dtype) = dtypes.get(&t.name) {
            t.dtype.clone_from(dtype);
        }
    }
    let model_type = config.to_json(false)["model_type"]
        .as_str()
        .map(String::from);
    let architecture = Architecture {
        model_type: model_type.unwrap_or_default(),
        family: config.family,
        hidden_size: config.hidden_size,
        num_hidden_layers: config.num_hidden_layers,
        vocab_size: config.vocab_size,
        layers: config.layers.clone(),
        pooler: checkpoint.has_pooler(),
        classifier_labels: checkpoint.has_classifier().then_some(config.num_labels),
        parameter_count: checkpoint.parameter_count(),
    };
    let checkpoint = dir.display().to_string();
    Ok(TensorReport {
        checkpoint,
        architecture,
        tensors,
    })
}

/// A side of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// Where `diff` gets an index map: the sub-model's manifest when shapes differ, a given
/// manifest, or nowhere.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexMapChoice {
    Auto,
    None,
    Manifest(PathBuf),
}

impl std::str::FromStr for IndexMapChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => IndexMapChoice::Auto,
            "none" => IndexMapChoice::None,
            path => IndexMapChoice::Manifest(path.into()),
        })
    }
}

/// An index map, the manifest it came from, and the side whose tensors it describes as
/// slices of the other side's.
#[derive(Debug, Clone, Serialize)]
pub struct IndexMapping {
    #[serde(skip)]
    pub map: IndexMap,
    pub manifest: String,
    pub sub_model: Side,
}

/// The `index_map` record of a manifest (given as the file or its folder), if it has one.
pub fn load_index_map(path: &Path) -> Result<Option<IndexMap>> {
    let path = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    if !path.is_file() {
        return Err(Error::format(&path, "no such manifest"));
    }
    let index_map = Manifest::load(&path)?.details.remove("index_map");
    index_map
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::format(&path, format!("invalid index_map: {e}")))
}

/// The shape `index` cuts out of `global`, or `None` where it does not apply (an index
/// out of range, columns of a vector), where `TensorIndex::gather` would panic.
fn gathered_shape(index: &TensorIndex, global: &HostTensor) -> Option<Vec<usize>> {
    let fits = |indices: &Option<crate::extract::Indices>, axis: usize| match indices {
        None => true,
        Some(i) => global.shape.len() > axis && i.0.iter().all(|&j| j < global.shape[axis]),
    };
    let cols_of_matrix = index.cols.is_none() || global.shape.len() == 2;
    (fits(&index.rows, 0) && fits(&index.cols, 1) && cols_of_matrix)
        .then(|| index.sub_shape(&global.shape))
}

/// True when every tensor of `sub` has the shape of the slice of `global`'s that `map`
/// names (or `global`'s shape, where the map says nothing).
pub fn map_fits(map: &IndexMap, global: &Checkpoint, sub: &Checkpoint) -> bool {
    sub.tensors.iter().all(
        |(name, s)| match (global.tensors.get(name), map.get(name)) {
            (Some(g), Some(index)) => gathered_shape(index, g).as_ref() == Some(&s.shape),
            (Some(g), None) => g.shape == s.shape,
            (None, _) => true,
        },
    )
}

/// The index map for `diff(a, b)`. `Auto` reads the manifests of b, then a, when some
/// shapes differ; an explicit manifest must fit one side (b preferred when both fit).
pub fn choose_index_map(
    a: &Checkpoint,
    b: &Checkpoint,
    choice: &IndexMapChoice,
) -> Result<Option<IndexMapping>> {
    let shapes_differ = a
        .tensors
        .iter()
        .any(|(name, t)| b.tensors.get(name).is_some_and(|u| u.shape != t.shape));
    let candidates: Vec<PathBuf> = match choice {
        IndexMapChoice::None => return Ok(None),
        IndexMapChoice::Auto if !shapes_differ => return Ok(None),
        IndexMapChoice::Auto => [b, a]
            .iter()
            .filter_map(|c| Some(c.source.as_ref()?.join(MANIFEST_FILE)))
            .filter(|p| p.is_file())
            .collect(),
        IndexMapChoice::Manifest(path) => vec![path.clone()],
    };
    for path in candidates {
        let Some(map) = load_index_map(&path)? else {
            continue;
        };
        let sub_model = match (map_fits(&map, a, b), map_fits(&map, b, a)) {
            (true, _) => Side::B,
            (false, true) => Side::A,
            (false, false) => continue,
        };
        let manifest = path.display().to_string();
        return Ok(Some(IndexMapping {
            map,
            manifest,
            sub_model,
        }));
    }
    match choice {
        IndexMapChoice::Manifest(path) => Err(Error::format(
            path,
            "has no index_map (written by raffm-extract) that fits either checkpoint",
        )),
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorDiff {
    pub name: String,
    /// The shape compared: the sub-model's, when sliced through an index map.
    pub shape: Vec<usize>,
    /// The global tensor's shape, where a slice of it was compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliced_from: Option<Vec<usize>>,
    pub max_abs_diff: f64,
    /// ‖a−b‖₂/‖a‖₂; infinite (null in JSON) when a is zero and b is not.
    pub relative_change: f64,
    pub bit_identical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeMismatch {
    pub name: String,
    pub shape_a: Vec<usize>,
    pub shape_b: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LargestChange {
    pub tensor: String,
    pub relative_change: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffSummary {
    pub compared: usize,
    pub identical: usize,
    pub largest_change: Option<LargestChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    pub index_map: Option<IndexMapping>,
    pub tensors: Vec<TensorDiff>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub summary: DiffSummary,
}

fn compare(name: &str, a: &HostTensor, b: &HostTensor) -> TensorDiff {
    let (mut max_abs, mut diff_sq, mut a_sq) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let d = x as f64 - y as f64;
        max_abs = max_abs.max(d.abs());
        diff_sq += d * d;
        a_sq += x as f64 * x as f64;
    }
    let relative_change = match (diff_sq, a_sq) {
        (d, _) if d == 0.0 => 0.0,
        (_, n) if n == 0.0 => f64::INFINITY,
        (d, n) => (d / n).sqrt(),
    };
    TensorDiff {
        name: name.to_string(),
        shape: b.shape.clone(),
        sliced_from: None,
        max_abs_diff: max_abs,
        relative_change,
        bit_identical: a.bit_eq(b),
    }
}

/// Tensor-by-tensor comparison of `a` and `b`. With a mapping, the sub-model's tensors
/// are compared with the slices of the other side's that they came from.
pub fn diff(a: &Checkpoint, b: &Checkpoint, mapping: Option<&IndexMapping>) -> Diff {
    let mut tensors = Vec::new();
    let mut shape_mismatches = Vec::new();
    for (name, ta) in model_order(a) {
        let Some(tb) = b.tensors.get(name) else {
            continue;
        };
        let index = mapping.and_then(|m| Some((m.map.get(name)?, m.sub_model)));
        // (a's values, b's values, the global shape) of a slice that fits.
        let sliced = match index {
            Some((i, Side::B)) if gathered_shape(i, ta).as_ref() == Some(&tb.shape) => {
                Some((i.gather(ta), tb.clone(), &ta.shape))
            }
            Some((i, Side::A)) if gathered_shape(i, tb).as_ref() == Some(&ta.shape) => {
                Some((ta.clone(), i.gather(tb), &tb.shape))
            }
            _ => None,
        };
        tensors.push(match sliced {
            Some((x, y, global)) => TensorDiff {
                sliced_from: (*global != x.shape).then(|| global.clone()),
                ..compare(name, &x, &y)
            },
            None if ta.shape == tb.shape => compare(name, ta, tb),
            None => {
                let (shape_a, shape_b) = (ta.shape.clone(), tb.shape.clone());
                shape_mismatches.push(ShapeMismatch {
                    name: name.clone(),
                    shape_a,
                    shape_b,
                });
                continue;
            }
        });
    }
    let largest_change = tensors
        .iter()
        .filter(|t| t.max_abs_diff > 0.0)
        .max_by(|x, y| x.relative_change.total_cmp(&y.relative_change))
        .map(|t| LargestChange {
            tensor: t.name.clone(),
            relative_change: t.relative_change,
        });
    let summary = DiffSummary {
        compared: tensors.len(),
        identical: tensors.iter().filter(|t| t.bit_identical).count(),
        largest_change,
    };
    let only = |x: &Checkpoint, y: &Checkpoint| -> Vec<String> {
        x.tensors
            .keys()
            .filter(|n| !y.tensors.contains_key(*n))
            .cloned()
            .collect()
    };
    let label = |c: &Checkpoint| c.source.as_ref().map(|p| p.display().to_string());
    Diff {
        a: label(a).unwrap_or_else(|| "a".into()),
        b: label(b).unwrap_or_else(|| "b".into()),
        index_map: mapping.cloned(),
        tensors,
        shape_mismatches,
        only_in_a: only(a, b),
        only_in_b: only(b, a),
        summary,
    }
}

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
pub struct StageRecord {
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
    Stage(Box<StageRecord>),
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

    fn stage(&mut self, dir: &Path, depth: usize) -> Result<StageRecord> {
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
        Ok(StageRecord {
            stage: manifest.stage,
            tool: manifest.tool,
            tool_version: manifest.tool_version,
            parameters: manifest.parameters,
            seeds: manifest.seeds,
            metrics: manifest.metrics,
            parameter_count: manifest.parameter_count,
            details: manifest.details.keys().cloned().collect(),
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

fn recorded_folder(path: &str) -> String {
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

/// Rows padded to each column's widest cell; the first `left` columns are left-aligned,
/// the rest (numbers) right-aligned.
fn table(rows: &[Vec<String>], left: usize) -> String {
    let mut widths = Vec::<usize>::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells = row.iter().zip(&widths).enumerate().map(|(c, (s, &w))| {
            if c < left {
                format!("{s:<w$}")
            } else {
                format!("{s:>w$}")
            }
        });
        out += cells.collect::<Vec<_>>().join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = (0..digits.len())
        .rev()
        .step_by(3)
        .map(|end| &digits[end.saturating_sub(2)..=end])
        .collect();
    groups.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if (1e-3..1e6).contains(&x.abs()) {
        format!("{x:.4}").trim_end_matches('0').to_string()
    } else {
        format!("{x:.3e}")
    }
}

/// A JSON value as `key=value` items: nested objects by dotted keys, long lists counted.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.as_f64().map_or(n.to_string(), number)),
        Value::Bool(_) | Value::Null => Some(v.to_string()),
        _ => None,
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) => match items.iter().map(scalar).collect::<Option<Vec<_>>>() {
            Some(shown) if shown.len() <= 4 => out.push(format!("{prefix}=[{}]", shown.join(", "))),
            _ => out.push(format!("{prefix}=[{} items]", items.len())),
        },
        v => out.push(format!("{prefix}={}", scalar(v).unwrap_or_default())),
    }
}

/// `label` and the items, wrapped at about 100 columns under the first item.
fn labelled(indent: &str, label: &str, items: &[String]) -> String {
    let lead = format!("{indent}{label:<12}");
    let (mut out, mut line) = (String::new(), lead.clone());
    for item in items {
        if line.len() > lead.len() && line.len() + item.len() > 100 {
            out = out + line.trim_end() + "\n";
            line = " ".repeat(lead.len());
        }
        line = line + item + "  ";
    }
    if items.is_empty() {
        line += "-";
    }
    out + line.trim_end() + "\n"
}

fn shape(s: &[usize]) -> String {
    format!("{s:?}")
}

impl TensorReport {
    pub fn to_text(&self) -> String {
        let a = &self.architecture;
        let family = format!("{:?}", a.family).to_lowercase();
        let mut model = format!(
            "{} (family {family}), hidden {}",
            a.model_type, a.hidden_size
        );
        model += &format!(", {} layers, vocab {}", a.num_hidden_layers, a.vocab_size);
        model += if a.pooler { ", pooler" } else { ", no pooler" };
        if let Some(labels) = a.classifier_labels {
            model += &format!(", classifier with {labels} labels");
        }
        let mut rows = vec![
            vec!["checkpoint".into(), self.checkpoint.clone()],
            vec!["model".into(), model],
            vec!["parameters".into(), thousands(a.parameter_count)],
        ];
        // Runs of equal layers share a line: a full model's are all equal.
        let mut start = 0;
        for end in 1..=a.layers.len() {
            if end < a.layers.len() && a.layers[end] == a.layers[start] {
                continue;
            }
            let l = a.layers[start];
            let which = match end - start {
                1 => format!("layer {start}"),
                _ => format!("layers {start}-{}", end - 1),
            };
            let (heads, dim, width) = (l.num_heads, l.head_dim, l.attention_width());
            let widths = format!(
                "{heads} heads x {dim} head_dim = {width}, FFN {}",
                l.intermediate_size
            );
            rows.push(vec![which, widths]);
            start = end;
        }
        let header = [
            "tensor", "shape", "dtype", "mean", "std", "L1", "zeros", "max |x|",
        ];
        let mut tensor_rows = vec![header.map(String::from).to_vec()];
        for t in &self.tensors {
            let s = &t.stats;
            let mut row = vec![t.name.clone(), shape(&t.shape), t.dtype.clone()];
            row.extend([
                format!("{:+.3e}", s.mean),
                format!("{:.3e}", s.std),
                format!("{:.4e}", s.l1),
                format!("{:.2}%", 100.0 * s.zero_fraction),
                format!("{:.3e}", s.max_abs),
            ]);
            if s.non_finite > 0 {
                row.push(format!("{} non-finite", s.non_finite));
            }
            tensor_rows.push(row);
        }
        table(&rows, 2) + "\n" + &table(&tensor_rows, 3)
    }
}

impl Diff {
    pub fn to_text(&self) -> String {
        let mut out = format!("a  {}\nb  {}\n", self.a, self.b);
        if let Some(m) = &self.index_map {
            let (sub, global) = if m.sub_model == Side::B {
                ("b", "a")
            } else {
                ("a", "b")
            };
            out += &format!("{sub} is compared with its slice of {global}, by the index map in ");
            out += &format!("{}\n", m.manifest);
        }
        let header = ["tensor", "shape", "max |a-b|", "|a-b|/|a|", "identical"];
        let mut rows = vec![header.map(String::from).to_vec()];
        for t in &self.tensors {
            let shown = match &t.sliced_from {
                Some(global) => format!("{} of {}", shape(&t.shape), shape(global)),
                None => shape(&t.shape),
            };
            let max_abs = format!("{:.3e}", t.max_abs_diff);
            let identical = if t.bit_identical { "yes" } else { "no" };
            let relative = format!("{:.3e}", t.relative_change);
            rows.push(vec![
                t.name.clone(),
                shown,
                max_abs,
                relative,
                identical.into(),
            ]);
        }
        out += &("\n".to_string() + &table(&rows, 2));
        for m in &self.shape_mismatches {
            let (a, b) = (shape(&m.shape_a), shape(&m.shape_b));
            out += &format!("shapes differ: {}  a {a}  b {b}\n", m.name);
        }
        for (side, names) in [("a", &self.only_in_a), ("b", &self.only_in_b)] {
            out += &names
                .iter()
                .map(|n| format!("only in {side}: {n}\n"))
                .collect::<String>();
        }
        let s = &self.summary;
        out += &format!(
            "\n{} tensors compared, {} bit-identical",
            s.compared, s.identical
        );
        if !self.shape_mismatches.is_empty() {
            out += &format!(", {} with different shapes", self.shape_mismatches.len());
        }
        out + &match &s.largest_change {
            Some(c) => format!(
                ", largest change {:.3e} ({})\n",
                c.relative_change, c.tensor
            ),
            None => ", no change\n".into(),
        }
    }
}

impl Lineage {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.render(0, "", &mut out);
        out
    }

    /// This node, under `depth` levels of indentation, after the summary of the files
    /// its child read from it.
    fn render(&self, depth: usize, files: &str, out: &mut String) {
        let indent = "    ".repeat(depth);
        let arrow = if depth == 0 { "" } else { "<- " };
        let note = match &self.origin {
            Origin::Stage(_) => "",
            Origin::External => "no manifest (external input)",
            Origin::ShownAbove => "shown above",
            Origin::NotFollowed => "not followed (--depth)",
            Origin::Missing => "folder missing",
        };
        *out += format!("{indent}{arrow}{}  {files}  {note}", self.folder).trim_end();
        out.push('\n');
        let Origin::Stage(stage) = &self.origin else {
            return;
        };
        let inner = format!("{indent}   ");
        let (name, tool, version) = (&stage.stage, &stage.tool, &stage.tool_version);
        *out += &format!("{inner}stage {name} by {tool} {version}");
        if let Some(n) = stage.parameter_count {
            *out += &format!(", {} parameters", thousands(n));
        }
        out.push('\n');
        for (label, value) in [
            ("parameters", stage.parameters.clone()),
            ("seeds", Value::Object(stage.seeds.clone())),
            ("metrics", Value::Object(stage.metrics.clone())),
        ] {
            let mut items = Vec::new();
            flatten("", &value, &mut items);
            *out += &labelled(&inner, label, &items);
        }
        *out += &labelled(&inner, "details", &stage.details);
        for parent in &stage.parents {
            let files = stage
                .inputs
                .iter()
                .filter(|i| recorded_folder(&i.recorded.path) == parent.folder);
            parent.render(depth + 1, &file_summary(files.collect()), out);
        }
    }
}

/// A folder's input files by status, `[ok: config.json, model.safetensors]`; more than
/// three unchanged files are only counted.
fn file_summary(files: Vec<&InputCheck>) -> String {
    let mut groups = Vec::new();
    for status in [InputStatus::Ok, InputStatus::Changed, InputStatus::Missing] {
        let names: Vec<&str> = files
            .iter()
            .filter(|i| i.status == status)
            .filter_map(|i| Path::new(&i.recorded.path).file_name()?.to_str())
            .collect();
        let label = format!("{status:?}").to_lowercase();
        match names.len() {
            0 => {}
            n if n > 3 && status == InputStatus::Ok => groups.push(format!("{label}: {n} files")),
            _ => groups.push(format!("{label}: {}", names.join(", "))),
        }
    }
    format!("[{}]", groups.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::extract::{extract, index_map, select, Strategy};
    use crate::prioritize::prioritize;
    use crate::tensor::Norm;

    fn model(seed: u64) -> Checkpoint {
        Checkpoint::random(&tiny_config(Family::Bert, 2, 16, 4, 24), seed, true, true)
    }

    /// A global model (head_dim 4) and a sub-model of it with `arch` in every layer.
    fn sub_model(strategy: Strategy, arch: LayerArch) -> (Checkpoint, Checkpoint, IndexMap) {
        let global = model(5);
        let layers = vec![arch; global.config.layers.len()];
        let selection = select(strategy, &global.config.layers, &layers, 1, 9, "c");
        let map = index_map(&global, &selection);
        let sub = extract(&global, &layers, &map).unwrap();
        (global, sub, map)
    }

    #[test]
    fn stats_of_a_small_tensor_match_hand_computed_values() {
        let s = stats(&[1.0, -2.0, 0.0, 3.0]);
        assert_eq!((s.numel, s.mean), (4, 0.5));
        // Deviations 0.5, 2.5, 0.5, 2.5: variance 13/4.
        assert!((s.std - 3.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            (s.l1, s.zero_fraction, s.max_abs, s.non_finite),
            (6.0, 0.25, 3.0, 0)
        );
        assert_eq!(stats(&[f32::NAN, 1.0]).non_finite, 1);
    }

    #[test]
    fn a_checkpoint_equals_itself() {
        let c = model(3);
        let d = diff(&c, &c, None);
        let n = c.tensors.len();
        assert_eq!((d.summary.compared, d.summary.identical), (n, n));
        assert!(d.summary.largest_change.is_none());
        assert!(d
            .tensors
            .iter()
            .all(|t| t.max_abs_diff == 0.0 && t.relative_change == 0.0));
        assert!(d.only_in_a.is_empty() && d.only_in_b.is_empty() && d.shape_mismatches.is_empty());
    }

    #[test]
    fn prioritizing_changes_exactly_the_permuted_layer_tensors() {
        let c = model(4);
        let (p, permutations) = prioritize(&c, Norm::L1, |_| {});
        let moved = |p: &[usize]| p.iter().enumerate().any(|(i, &j)| i != j);
        assert!(
            permutations.iter().any(|p| moved(&p.heads)),
            "no head moved: pick another seed"
        );
        let d = diff(&c, &p, None);
        assert_eq!(d.summary.compared, c.tensors.len());
        for t in &d.tensors {
            let Some((layer, suffix)) = t
                .name
                .strip_prefix("encoder.layer.")
                .and_then(|rest| rest.split_once('.'))
            else {
                assert!(t.bit_identical, "{} is outside the encoder layers", t.name);
                continue;
            };
            let perm = &permutations[layer.parse::<usize>().unwrap()];
            let heads = moved(&perm.heads);
            let permuted = match suffix {
                s if s.starts_with("attention.self.query")
                    || s.starts_with("attention.self.key") =>
                {
                    heads || perm.qk_channels.iter().any(|c| moved(c))
                }
                s if s.starts_with("attention.self.value")
                    || s == "attention.output.dense.weight" =>
                {
                    heads || perm.v_channels.iter().any(|c| moved(c))
                }
                "intermediate.dense.weight" | "intermediate.dense.bias" | "output.dense.weight" => {
                    moved(&perm.ffn_neurons)
                }
                _ => false,
            };
            assert_eq!(!t.bit_identical, permuted, "{}", t.name);
            assert_eq!(t.relative_change > 0.0, permuted, "{}", t.name);
        }
    }

    #[test]
    fn a_sub_model_equals_its_slice_of_the_global_model() {
        let arch = LayerArch {
            num_heads: 2,
            head_dim: 3,
            intermediate_size: 12,
        };
        let (global, sub, map) = sub_model(Strategy::Random, arch);
        assert!(map_fits(&map, &global, &sub) && !map_fits(&map, &sub, &global));
        assert!(!diff(&global, &sub, None).shape_mismatches.is_empty());
        let n = sub.tensors.len();
        for sub_model in [Side::A, Side::B] {
            let mapping = IndexMapping {
                map: map.clone(),
                manifest: "m".into(),
                sub_model,
            };
            let d = match sub_model {
                Side::A => diff(&sub, &global, Some(&mapping)),
                Side::B => diff(&global, &sub, Some(&mapping)),
            };
            assert!(d.shape_mismatches.is_empty());
            assert_eq!((d.summary.compared, d.summary.identical), (n, n));
            assert!(d.tensors.iter().any(|t| t.sliced_from.is_some()));
        }
    }

    #[test]
    fn the_index_map_is_found_in_the_sub_models_manifest() {
        let arch = LayerArch {
            num_heads: 3,
            head_dim: 4,
            intermediate_size: 8,
        };
        let (global, sub, map) = sub_model(Strategy::Static, arch);
        let dir = tempfile::tempdir().unwrap();
        let (global_dir, sub_dir) = (dir.path().join("global"), dir.path().join("sub"));
        global.save(&global_dir).unwrap();
        sub.save(&sub_dir).unwrap();
        let mut manifest = Manifest::new("extract", "test", Value::Null);
        manifest
            .details
            .insert("index_map".into(), serde_json::to_value(&map).unwrap());
        let text = serde_json::to_string(&manifest).unwrap();
        std::fs::write(sub_dir.join(MANIFEST_FILE), text).unwrap();

        let (g, s) = (
            load_checkpoint(&global_dir).unwrap(),
            load_checkpoint(&sub_dir).unwrap(),
        );
        let auto = |a, b| choose_index_map(a, b, &IndexMapChoice::Auto).unwrap();
        assert_eq!(auto(&g, &s).unwrap().sub_model, Side::B);
        assert_eq!(auto(&s, &g).unwrap().sub_model, Side::A);
        assert!(auto(&g, &g).is_none());
        let explicit = IndexMapChoice::Manifest(sub_dir.clone());
        let mapping = choose_index_map(&g, &s, &explicit).unwrap().unwrap();
        assert_eq!(
            diff(&g, &s, Some(&mapping)).summary.identical,
            s.tensors.len()
        );
        assert!(choose_index_map(&g, &s, &IndexMapChoice::Manifest(global_dir)).is_err());
    }
}
