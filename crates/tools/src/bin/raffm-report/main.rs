//! `raffm-report`: per-pipeline metrics files and a Markdown report with SVG charts, from
//! the manifests of pipeline run folders.

mod charts;
mod data;
mod markdown;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use raffm::core::io::write_file_atomic;

use data::{load_run, Row, COLUMNS};

/// Summarises pipeline run folders (artifacts/<pipeline>/, as `make round` writes them)
/// from their manifests; a pipeline is named after its folder.
///
///   raffm-report metrics artifacts/default [--csv]
///       writes artifacts/default/metrics.jsonl (and metrics.csv): one line per finished
///       round, 0 (the pre-trained model) to the last, with validation accuracy, macro-F1,
///       MCC, client sub-model sizes, bytes down/up per client, cumulative bytes and local
///       training time. Rewritten whole each time, so re-running never duplicates lines;
///       pandas.read_json(path, lines=True) reads it.
///
///   raffm-report build --runs artifacts/default artifacts/fl --output report
///       writes report/report.md with SVG charts beside it: validation accuracy per round,
///       client sub-model sizes, communication per round and cumulative, deployment
///       (<run>/round-R/deploy/summary.json, from `make deploy`) and the SPP ablation
///       (<run>/round-R/spp.json, from `make ablation`) where those exist.
///
/// Every file is written atomically. A missing run folder, one without a finished round,
/// or a malformed file is an error naming it.
#[derive(Parser, Debug)]
#[command(name = "raffm-report", version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes <run-dir>/metrics.jsonl, one JSON object per finished round.
    Metrics {
        /// A pipeline run folder (artifacts/<pipeline>).
        run_dir: PathBuf,
        /// Also write <run-dir>/metrics.csv with the same columns.
        #[arg(long)]
        csv: bool,
    },
    /// Writes <output>/report.md and its SVG charts for one or more runs.
    Build {
        /// Pipeline run folders, in the order of the legends (colours follow it).
        #[arg(long, required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Folder for report.md and the SVG files (created if missing).
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn json_line(row: &Row) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string(row)?))
}

fn csv_field(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) if s.contains([',', '"', '\n']) => {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv(rows: &[Row]) -> anyhow::Result<String> {
    let mut out = format!("{}\n", COLUMNS.join(","));
    for row in rows {
        let value = serde_json::to_value(row)?;
        let fields: Vec<String> = COLUMNS.iter().map(|c| csv_field(&value[*c])).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn metrics(run_dir: &Path, with_csv: bool) -> anyhow::Result<()> {
    let run = load_run(run_dir)?;
    let mut text = String::new();
    for row in &run.rows {
        text.push_str(&json_line(row)?);
    }
    let path = run_dir.join("metrics.jsonl");
    write_file_atomic(&path, text.as_bytes())?;
    eprintln!(
        "{}: rounds 0 to {} -> {}",
        run.name,
        run.last_round(),
        path.display()
    );
    if with_csv {
        let path = run_dir.join("metrics.csv");
        write_file_atomic(&path, csv(&run.rows)?.as_bytes())?;
        eprintln!("{}: -> {}", run.name, path.display());
    }
    Ok(())
}

fn build(run_dirs: &[PathBuf], output: &Path) -> anyhow::Result<()> {
    let mut runs = run_dirs
        .iter()
        .map(|d| load_run(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Two folders of the same name (a/default, b/default): name them by their paths.
    for i in 0..runs.len() {
        let clash = runs
            .iter()
            .enumerate()
            .any(|(j, r)| j != i && r.name == runs[i].name);
        if clash {
            let label = runs[i].dir.display().to_string();
            let label = label.trim_end_matches('/').to_string();
            runs[i].name = label.clone();
            for row in &mut runs[i].rows {
                row.pipeline = label.clone();
            }
        }
    }
    for i in 0..runs.len() {
        if let Some(j) = (0..i).find(|&j| runs[j].name == runs[i].name) {
            bail!(
                "{} and {}: the same run given twice",
                runs[j].dir.display(),
                runs[i].dir.display()
            );
        }
    }
    let (md, figures) = markdown::build(&runs)?;
    std::fs::create_dir_all(output)
        .with_context(|| format!("{}: cannot create", output.display()))?;
    for figure in &figures {
        write_file_atomic(&output.join(&figure.file), figure.svg.as_bytes())?;
    }
    let report = output.join("report.md");
    write_file_atomic(&report, md.as_bytes())?;
    for run in &runs {
        print_table(run);
    }
    eprintln!(
        "report of {} with {} charts -> {}",
        runs.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        figures.len(),
        report.display()
    );
    Ok(())
}

/// The per-round numbers of a run, for the terminal.
fn print_table(run: &data::Run) {
    let f = |v: Option<f64>, scale: f64, digits: usize| {
        v.map_or("-".to_string(), |v| format!("{:.digits$}", v / scale))
    };
    let private = run.rows.iter().any(|r| r.epsilon.is_some());
    println!(
        "{}: round  accuracy  macro-F1  clients  mean client params  MiB/client  cumulative GiB{}",
        run.name,
        if private { "   epsilon" } else { "" }
    );
    for row in &run.rows {
        println!(
            "{:>w$}  {:>5}  {:>8}  {:>8}  {:>7}  {:>18}  {:>10}  {:>14}{}",
            "",
            row.round,
            f(row.accuracy, 1.0, 4),
            f(row.macro_f1, 1.0, 4),
            row.clients.map_or("-".to_string(), |c| c.to_string()),
            row.mean_client_parameters
                .map_or("-".to_string(), |p| format!("{:.2}M", p / 1e6)),
            f(row.mean_client_mib, 1.0, 1),
            f(Some(row.cumulative_bytes as f64), (1u64 << 30) as f64, 2),
            if private {
                format!("  {:>8}", f(row.epsilon, 1.0, 3))
            } else {
                String::new()
            },
            w = run.name.len()
        );
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Metrics { run_dir, csv } => metrics(&run_dir, csv),
        Command::Build { runs, output } => build(&runs, &output),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-report", run(Args::parse()))
}
