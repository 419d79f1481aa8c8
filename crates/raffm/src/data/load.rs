//! Reading each format a dataset can come in into a [`Dataset`].

use std::path::Path;

use super::{Dataset, Example, Format, Input, Task};
use crate::core::error::{Error, Result};

/// One file (or folder) of a dataset.
pub(super) fn load_file(format: Format, path: &Path, labels: Option<&Path>) -> Result<Dataset> {
    let dataset = match format {
        Format::RottenTomatoes => load_rotten_tomatoes(path)?,
        Format::Tsv => load_table(path, b'\t')?,
        Format::Jsonl => load_jsonl(path)?,
        Format::Idx => {
            let labels = labels
                .ok_or_else(|| Error::format(path, "an IDX dataset needs its labels file too"))?;
            load_idx(path, labels)?
        }
        Format::Cifar10Bigbench => images_dataset(
            path,
            crate::models::vision::data::cifar10_bigbench(path, 32)?,
        ),
        Format::Cifar10Binary => {
            images_dataset(path, crate::models::vision::data::cifar10_binary(path)?)
        }
        Format::ImageFolder => {
            images_dataset(path, crate::models::vision::data::image_folder(path)?)
        }
        Format::Llm(task) => prompts_dataset(path, crate::models::llm::task::load(task, path)?),
    };
    if dataset.examples.is_empty() {
        return Err(Error::format(path, "no examples"));
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        ..dataset
    })
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::format(path, format!("line {line} is not valid UTF-8"))
    })?;
    if text.trim().is_empty() {
        return Err(Error::format(path, "the file is empty"));
    }
    Ok(text)
}

/// Turns raw label strings into a task and label values; `lines` are the examples' source
/// lines, for messages.
fn resolve_labels(path: &Path, raw: &[String], lines: &[usize]) -> Result<(Task, Vec<f32>)> {
    let as_int: Option<Vec<i64>> = raw.iter().map(|s| s.trim().parse::<i64>().ok()).collect();
    if let Some(ints) = as_int {
        if let Some((row, bad)) = ints.iter().enumerate().find(|(_, v)| **v < 0) {
            return Err(Error::format(
                path,
                format!("line {}: label {bad} is negative", lines[row]),
            ));
        }
        let n = *ints.iter().max().unwrap_or(&0) as usize + 1;
        let labels = (0..n).map(|i| i.to_string()).collect();
        return Ok((
            Task::Classification { labels },
            ints.iter().map(|&v| v as f32).collect(),
        ));
    }
    let as_float: Option<Vec<f32>> = raw.iter().map(|s| s.trim().parse::<f32>().ok()).collect();
    if let Some(values) = as_float {
        if let Some(row) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(
                path,
                format!("line {}: label is not finite", lines[row]),
            ));
        }
        return Ok((Task::Regression, values));
    }
    let mut names: Vec<String> = raw.iter().map(|s| s.trim().to_string()).collect();
    names.sort();
    names.dedup();
    let values = raw
        .iter()
        .map(|s| names.binary_search(&s.trim().to_string()).unwrap() as f32)
        .collect();
    Ok((Task::Classification { labels: names }, values))
}

fn assemble(path: &Path, rows: Vec<(Input, String, usize)>) -> Result<Dataset> {
    if rows.is_empty() {
        return Err(Error::format(path, "no examples"));
    }
    let raw: Vec<String> = rows.iter().map(|(_, l, _)| l.clone()).collect();
    let lines: Vec<usize> = rows.iter().map(|(_, _, line)| *line).collect();
    let (task, values) = resolve_labels(path, &raw, &lines)?;
    let examples = rows
        .into_iter()
        .zip(values)
        .enumerate()
        .map(|(id, ((input, _, line), label))| Example {
            id,
            input,
            label,
            line: Some(line),
            group: None,
        })
        .collect();
    Ok(Dataset {
        task,
        examples,
        path: path.to_path_buf(),
        held_out: None,
    })
}

fn load_rotten_tomatoes(path: &Path) -> Result<Dataset> {
    let text = read_text(path)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::format(path, format!("bad CSV header: {e}")))?
        .clone();
    let column = |name: &str| csv_column(path, &headers, name);
    let (category, text_col) = (column("category")?, column("text")?);
    let mut examples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::format(path, format!("{e}")))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let label = match &record[category] {
            "fresh" => 1.0,
            "rotten" => 0.0,
            "plot" => continue,
            other => {
                return Err(Error::format(
                    path,
                    format!("line {line}: unknown category `{other}`"),
                ))
            }
        };
        examples.push(Example {
            id: examples.len(),
            input: Input::Text(record[text_col].to_string()),
            label,
            line: Some(line),
            group: None,
        });
    }
    if examples.is_empty() {
        return Err(Error::format(path, "no fresh or rotten reviews"));
    }
    Ok(Dataset {
        task: Task::Classification {
            labels: vec!["rotten".into(), "fresh".into()],
        },
        examples,
        path: path.to_path_buf(),
        held_out: None,
    })
}

/// The index of column `name` in a CSV header; the error lists the columns there are.
pub(crate) fn csv_column(path: &Path, headers: &csv::StringRecord, name: &str) -> Result<usize> {
    headers.iter().position(|h| h == name).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "no `{name}` column (columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

const TEXT_COLUMNS: [&str; 5] = ["sentence", "text", "sentence1", "question", "question1"];
const PAIR_COLUMNS: [&str; 4] = ["sentence2", "question2", "text_pair", "hypothesis"];

fn load_table(path: &Path, delimiter: u8) -> Result<Dataset> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(false) // GLUE files contain bare quotes
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::format(path, format!("bad header: {e}")))?
        .clone();
    let find = |names: &[&str]| headers.iter().position(|h| names.contains(&h));
    let columns = || headers.iter().collect::<Vec<_>>().join(", ");
    let text_col = find(&TEXT_COLUMNS).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "no text column (expected one of {TEXT_COLUMNS:?}; found: {})",
                columns()
            ),
        )
    })?;
    let pair_col = find(&PAIR_COLUMNS);
    let label_col = find(&["label"])
        .ok_or_else(|| Error::format(path, format!("no `label` column (found: {})", columns())))?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::format(path, format!("{e}")))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let input = match pair_col {
            Some(p) => Input::Pair(record[text_col].to_string(), record[p].to_string()),
            None => Input::Text(record[text_col].to_string()),
        };
        rows.push((input, record[label_col].to_string(), line));
    }
    assemble(path, rows)
}

fn load_jsonl(path: &Path) -> Result<Dataset> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |m: String| Error::format(path, format!("line {}: {m}", line_no + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| at("no string field `text`".into()))?;
        let label = match v.get("label") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(at("no `label` (a number or a string)".into())),
        };
        let input = match v.get("text_pair").and_then(|t| t.as_str()) {
            Some(pair) => Input::Pair(text.to_string(), pair.to_string()),
            None => Input::Text(text.to_string()),
        };
        rows.push((input, label, line_no + 1));
    }
    assemble(path, rows)
}

/// IDX: big-endian magic `0x0000 08 <ndim>` (unsigned bytes), then the dimensions.
fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(Error::format(path, "not an IDX file of unsigned bytes"));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::format(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(Error::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {n} bytes of data, the file has {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (dims, pixels) = read_idx(images)?;
    let (label_dims, label_bytes) = read_idx(labels)?;
    if dims.len() != 3 || label_dims.len() != 1 {
        return Err(Error::format(
            images,
            format!(
                "expected images [n, rows, cols] and labels [n], got {dims:?} and {label_dims:?}"
            ),
        ));
    }
    if dims[0] != label_dims[0] {
        return Err(Error::format(
            labels,
            format!("{} labels for {} images", label_dims[0], dims[0]),
        ));
    }
    let (rows, cols) = (dims[1] as u32, dims[2] as u32);
    let examples = pixels
        .chunks_exact((rows * cols) as usize)
        .zip(&label_bytes)
        .enumerate()
        .map(|(id, (p, &l))| {
            let gray = image::GrayImage::from_raw(cols, rows, p.to_vec()).expect("rows x cols");
            Example {
                id,
                input: Input::Image(image::DynamicImage::ImageLuma8(gray).to_rgb8()),
                label: l as f32,
                line: None,
                group: None,
            }
        })
        .collect();
    let n_classes = *label_bytes.iter().max().unwrap_or(&0) as usize + 1;
    Ok(Dataset {
        task: Task::Classification {
            labels: (0..n_classes).map(|i| i.to_string()).collect(),
        },
        examples,
        path: images.to_path_buf(),
        held_out: None,
    })
}

/// A dataset of labelled images, their ids in the loader's order.
fn images_dataset(path: &Path, loaded: crate::models::vision::data::LabeledImages) -> Dataset {
    let examples = loaded
        .images
        .into_iter()
        .zip(loaded.labels)
        .enumerate()
        .map(|(id, (image, label))| Example {
            id,
            input: Input::Image(image),
            label: label as f32,
            line: None,
            group: None,
        })
        .collect();
    Dataset {
        task: Task::Classification {
            labels: loaded.classes,
        },
        examples,
        path: path.to_path_buf(),
        held_out: None,
    }
}

/// A decoder task's examples as a dataset: the prompt is the input, the right option's
/// index the label. The classes are the options where every example has the same ones
/// (sentiment, party), and option numbers otherwise (MathQA's per-question answers).
fn prompts_dataset(path: &Path, loaded: Vec<crate::models::llm::task::ChoiceExample>) -> Dataset {
    let first = &loaded
        .first()
        .map(|e| e.options.clone())
        .unwrap_or_default();
    let labels = if loaded.iter().all(|e| &e.options == first) {
        first.iter().map(|o| o.trim().to_string()).collect()
    } else {
        let most = loaded.iter().map(|e| e.options.len()).max().unwrap_or(0);
        (0..most).map(|k| format!("option {k}")).collect()
    };
    let examples = loaded
        .into_iter()
        .enumerate()
        .map(|(id, e)| Example {
            id,
            input: Input::Text(e.prompt),
            label: e.answer as f32,
            line: None,
            group: e.group,
        })
        .collect();
    Dataset {
        task: Task::Classification { labels },
        examples,
        path: path.to_path_buf(),
        held_out: None,
    }
}
