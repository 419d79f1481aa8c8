//! Training (batch 32) and evaluation (batch 64) throughput of the real MiniLM on this
//! machine, sequences padded to 64, AdamW, dropout on: the full model, half its heads and
//! FFN, and an FFN of 768; each with fp32 and with bf16 products.
//!
//! With `RAFFM_TORCH_PYTHON` set to a Python with torch and transformers,
//! `scripts/bench/minilm_pytorch.py` runs the full model's training and evaluation right
//! after ours, in fp32 and under bf16 autocast, side by side.
//!
//! Each configuration runs in its own process so its peak resident memory is its own.
//! Throughput is the median over steps after the first; `steal` is the share of CPU time
//! the hypervisor gave to other guests meanwhile (a shared VM's noise).
//! Run with `make bench`.

mod common;

use std::process::Command;
use std::time::Instant;

use raffm::burn::backend::Autodiff;
use raffm::core::rng::SplitMix64;
use raffm::core::sys::peak_rss_bytes;
use raffm::data::tokenizer::{collate, TokenizedRow};
use raffm::fl::extract::{extract, select, selection_map, Strategy};
use raffm::models::families::bert::model::BertForSequenceClassification;
use raffm::models::fused::{describe_precision, set_precision, Precision};
use raffm::models::train::{train_encoder, TrainData, TrainOptions};
use raffm::Axis;
use raffm::{Checkpoint, CpuBackend};

const SEQ: usize = 64;

fn model(config: &str) -> Checkpoint {
    let assets = std::env::var("RAFFM_ASSETS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets").into());
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let full = Checkpoint::load(std::path::Path::new(&assets).join("minilm"))
        .unwrap_or_else(|e| panic!("{e} (run `make assets`)"))
        .with_classification_head(&labels, 0);
    let mut widths = full.config.widths();
    for layer in &mut widths.layers {
        match config {
            "half" => {
                layer.set(Axis::Heads, layer.get(Axis::Heads) / 2);
                layer.set(Axis::Ffn, layer.get(Axis::Ffn) / 2);
            }
            "ffn768" => layer.set(Axis::Ffn, 768),
            _ => return full,
        }
    }
    let global = full.config.widths();
    let selection = select(
        &full.config,
        Strategy::Static,
        &global,
        &widths,
        0,
        0,
        "bench",
    );
    extract(
        &full,
        &widths,
        &selection_map(&full.config, &widths, &selection),
    )
    .unwrap()
}

/// Rows of 16 to SEQ tokens, every fourth one SEQ long: batches are padded to SEQ (a
/// shuffled batch of 32 lacks a full row with probability 1e-4), with the padding masked,
/// as the reference pads to 64.
fn rows(n: usize) -> (Vec<TokenizedRow>, Vec<f32>) {
    let mut rng = SplitMix64::new(0);
    let rows = (0..n)
        .map(|i| {
            let len = if i % 4 == 0 {
                SEQ
            } else {
                16 + rng.below(SEQ - 15)
            };
            let mut ids: Vec<i64> = (0..len).map(|_| 1000 + rng.below(20_000) as i64).collect();
            (ids[0], ids[len - 1]) = (101, 102);
            TokenizedRow {
                input_ids: ids,
                token_type_ids: vec![0; len],
            }
        })
        .collect();
    (rows, (0..n).map(|i| (i % 2) as f32).collect())
}

fn measure(config: &str, mode: &str, precision: Precision) {
    let jiffies_before = raffm::core::sys::cpu_jiffies();
    let checkpoint = model(config);
    let device = Default::default();
    let (line, throughput) = if mode == "train" {
        let (batch, steps) = (32, 8);
        let (rows, labels) = rows(batch * (steps + 1));
        let data = TrainData {
            rows: &rows,
            labels: &labels,
            pad_id: 0,
            regression: false,
        };
        let options = TrainOptions {
            batch_size: batch,
            max_steps: Some(steps + 1),
            precision,
            ..Default::default()
        };
        // Step times after the first (which warms up); the median resists the noise of a
        // shared machine better than the mean.
        let mut ends = Vec::new();
        train_encoder::<Autodiff<CpuBackend>>(&checkpoint, &data, &options, &device, |_| {
            ends.push(Instant::now())
        })
        .unwrap();
        let mut seconds: Vec<f64> = ends
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        seconds.sort_by(f64::total_cmp);
        (
            format!("train    batch {batch} x seq {SEQ}"),
            batch as f64 / seconds[seconds.len() / 2],
        )
    } else {
        set_precision(precision).unwrap();
        let (batch, batches) = (64, 9);
        let (rows, _) = rows(batch * batches);
        let model =
            BertForSequenceClassification::<CpuBackend>::from_checkpoint(&checkpoint, &device)
                .unwrap();
        // Batches in row order, not sorted by length as `predict` does: each is padded to SEQ.
        let mut seconds: Vec<f64> = rows
            .chunks(batch)
            .map(|chunk| {
                let start = Instant::now();
                let refs: Vec<&TokenizedRow> = chunk.iter().collect();
                let logits = model.forward(&collate(&refs, 0).to_tensors::<CpuBackend>(&device));
                let _ = logits.into_data();
                start.elapsed().as_secs_f64()
            })
            .skip(1) // the first batch warms up
            .collect();
        seconds.sort_by(f64::total_cmp);
        (
            format!("evaluate batch {batch} x seq {SEQ}"),
            batch as f64 / seconds[seconds.len() / 2],
        )
    };
    let steal = match (jiffies_before, raffm::core::sys::cpu_jiffies()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            format!(
                "  steal {:.0}%",
                100.0 * (s1 - s0) as f64 / (t1 - t0) as f64
            )
        }
        _ => String::new(),
    };
    println!(
        "{line}  {config:>6} {precision} ({:>5.2}M params): {throughput:>6.1} examples/s  peak RSS {:>5.0} MiB{steal}",
        checkpoint.parameter_count() as f64 / 1e6,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
    );
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [config, mode, precision] = &args[..] {
        raffm::core::sys::keep_freed_memory();
        return measure(config, mode, precision.parse().unwrap());
    }
    let torch = std::env::var("RAFFM_TORCH_PYTHON").ok();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench/minilm_pytorch.py"
    );
    let assets = std::env::var("RAFFM_ASSETS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets").into());
    println!(
        "machine: {} threads; bf16: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        describe_precision(Precision::Bf16)
    );
    for (config, mode) in [
        ("full", "train"),
        ("half", "train"),
        ("ffn768", "train"),
        ("full", "eval"),
    ] {
        // fp32 and bf16 side by side, one after the other.
        for precision in ["fp32", "bf16"] {
            let status = Command::new(std::env::current_exe().unwrap())
                .args([config, mode, precision])
                .status()
                .unwrap();
            assert!(status.success(), "{config} {mode} {precision} failed");
        }
        // PyTorch on the full model, in fp32 and under bf16 autocast.
        for precision in ["fp32", "bf16"] {
            let (Some(python), "full") = (&torch, config) else {
                break;
            };
            let mut cmd = Command::new(python);
            cmd.arg(script)
                .arg(std::path::Path::new(&assets).join("minilm"))
                .args([mode, precision])
                .env("OMP_NUM_THREADS", "2");
            if let Some(v) = common::run(&mut cmd) {
                println!("{mode:<8} {config:>6} pytorch {precision} {v}");
            }
        }
    }
}
