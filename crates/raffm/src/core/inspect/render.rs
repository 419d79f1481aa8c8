//! The text form of the inspections: aligned tables and an indented lineage tree.

use std::path::Path;

use serde_json::Value;

use super::diff::{Diff, Side};
use super::lineage::{recorded_folder, InputCheck, InputStatus, Lineage, Origin};
use super::stats::CheckpointReport;

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

impl CheckpointReport {
    pub fn to_text(&self) -> String {
        let a = &self.architecture;
        let mut model = format!("{}, {}", a.model_type, a.widths.global);
        // The global widths already name the vocabulary.
        model += &format!(", {} layers", a.widths.layers.len());
        if let Some(labels) = a.classifier_labels {
            model += &format!(", classifier with {labels} labels");
        }
        let mut rows = vec![
            vec!["checkpoint".into(), self.checkpoint.clone()],
            vec!["model".into(), model],
            vec!["parameters".into(), thousands(a.parameter_count)],
        ];
        // Runs of equal layers share a line: a full model's are all equal. Layers are
        // numbered as this model has them, with the global layer where it differs.
        let w = &a.widths;
        let mut start = 0;
        for end in 1..=w.layers.len() {
            if end < w.layers.len() && w.layers[end] == w.layers[start] {
                continue;
            }
            let which = match end - start {
                1 => format!("layer {start}"),
                _ => format!("layers {start}-{}", end - 1),
            };
            let global: Vec<String> = w.global_layers[start..end]
                .iter()
                .map(usize::to_string)
                .collect();
            let moved = w.global_layers[start..end]
                .iter()
                .zip(start..end)
                .any(|(g, i)| *g != i);
            let widths = match moved {
                true => format!("{} (global layers {})", w.layers[start], global.join(", ")),
                false => w.layers[start].to_string(),
            };
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
            let name = match &t.global_name {
                Some(g) => format!("{} (global {g})", t.name),
                None => t.name.clone(),
            };
            let shown = match &t.sliced_from {
                Some(global) => format!("{} of {}", shape(&t.shape), shape(global)),
                None => shape(&t.shape),
            };
            let max_abs = format!("{:.3e}", t.max_abs_diff);
            let identical = if t.bit_identical { "yes" } else { "no" };
            let relative = format!("{:.3e}", t.relative_change);
            rows.push(vec![name, shown, max_abs, relative, identical.into()]);
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
