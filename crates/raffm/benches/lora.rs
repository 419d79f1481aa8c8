//! LoRA training throughput and peak memory of the real SmolLM2-135M, in the shape of the
//! reference figure (PyTorch 2.15 + transformers 5.23 + peft 0.21.2, 2 threads, batch 8 x
//! seq 128 random token ids, rank 16 alpha 32 on q/k/v/o, AdamW: 195-201 tokens/s, peak
//! RSS 5.1-5.3 GiB, 1.84M trainable parameters).
//!
//! `lm` takes the loss on every position, as the reference does; `answer` on the last 8
//! tokens of each sequence only, as the instruction tasks do; `half` is `lm` on a RaFFM
//! sub-model of half the width (2 of 3 query heads per KV group rounded up, half the FFN
//! neurons and half the hidden channels, the leading ones of the prioritized model),
//! the paper's RaFFM + LoRA. Each run is its own process,
//! so its peak resident memory is its own. With `RAFFM_TORCH_PYTHON` set to a Python with
//! torch, transformers and peft, `scripts/bench/lora_pytorch.py` runs in between, side by
//! side, in fp32 and under bf16 autocast. Throughput is the median over steps after the first; `steal` is the share of CPU
//! time the hypervisor gave to other guests meanwhile. Run with `make bench`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use raffm::burn::backend::Autodiff;
use raffm::core::rng::SplitMix64;
use raffm::core::sys::peak_rss_bytes;
use raffm::fl::extract::{extract, select, selection_map, Strategy};
use raffm::models::families::llama::lora::{LoraAdapter, LoraConfig, DEFAULT_TARGETS};
use raffm::models::fused::Precision;
use raffm::models::llm::{train::train_lora, EncodedExample};
use raffm::models::train::TrainOptions;
use raffm::{Axis, Checkpoint, CpuBackend};

const BATCH: usize = 8;
const SEQ: usize = 128;
const STEPS: usize = 6;

fn model_dir() -> PathBuf {
    let assets = std::env::var("RAFFM_ASSETS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets").into());
    PathBuf::from(assets).join("smollm2-135m-instruct")
}

/// The real model, or its half-width RaFFM sub-model.
fn model(mode: &str) -> Checkpoint {
    let full = Checkpoint::load(model_dir()).expect("run `make assets-llm` first");
    if mode != "half" {
        return full;
    }
    let (prioritized, _) =
        raffm::fl::prioritize::prioritize(&full, raffm::core::tensor::Norm::L1, |_| {});
    let global = prioritized.config.widths();
    let mut widths = global.clone();
    widths
        .global
        .set(Axis::Hidden, global.global.get(Axis::Hidden) / 2);
    for layer in &mut widths.layers {
        layer.set(Axis::Heads, layer.get(Axis::Heads).div_ceil(2));
        layer.set(Axis::Ffn, layer.get(Axis::Ffn) / 2);
    }
    let config = &prioritized.config;
    let selection = select(config, Strategy::Salient, &global, &widths, 0, 0, "bench");
    extract(
        &prioritized,
        &widths,
        &selection_map(config, &widths, &selection),
    )
    .unwrap()
}

fn measure(mode: &str, precision: Precision) {
    let checkpoint = model(mode);
    let config = checkpoint.config.llama().unwrap();
    let targets: Vec<String> = DEFAULT_TARGETS.map(String::from).to_vec();
    let lora = LoraConfig::new(16, 32.0, 0.05, &targets).unwrap();
    let adapter = LoraAdapter::init(&lora, config, 0);
    let answer = if mode == "answer" { 8 } else { SEQ - 1 };
    let mut rng = SplitMix64::new(1);
    let examples: Vec<EncodedExample> = (0..BATCH * (STEPS + 1))
        .map(|_| {
            let ids: Vec<u32> = (0..SEQ)
                .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
                .collect();
            EncodedExample {
                prompt: ids[..SEQ - answer].to_vec(),
                options: vec![ids[SEQ - answer..].to_vec()],
                answer: 0,
            }
        })
        .collect();
    let options = TrainOptions {
        batch_size: BATCH,
        max_steps: Some(STEPS + 1),
        learning_rate: 2e-4,
        max_grad_norm: None,
        precision,
        ..Default::default()
    };
    let mut ends = vec![Instant::now()];
    let (_, report) = train_lora::<Autodiff<CpuBackend>>(
        &checkpoint,
        &adapter,
        &examples,
        &options,
        0,
        &Default::default(),
        |_| ends.push(Instant::now()),
    )
    .unwrap();
    let mut seconds: Vec<f64> = ends
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    seconds.sort_by(f64::total_cmp);
    println!(
        "{{\"tokens_per_second\": {:.1}, \"peak_rss_mib\": {:.0}, \"trainable\": {}, \"base_parameters\": {}}}",
        (BATCH * SEQ) as f64 / seconds[seconds.len() / 2],
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
        report.trainable_parameters,
        checkpoint.parameter_count()
    );
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [mode, precision] = &args[..] {
        raffm::core::sys::keep_freed_memory();
        return measure(mode, precision.parse().unwrap());
    }
    let torch = std::env::var("RAFFM_TORCH_PYTHON").ok();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench/lora_pytorch.py"
    );
    println!("LoRA training, SmolLM2-135M, batch {BATCH} x seq {SEQ}, r 16 on q/k/v/o, 2 threads; reference PyTorch 195-201 tokens/s, 5.1-5.3 GiB");
    // Interleaved, twice: ours (each mode), then PyTorch, so the machine's noise falls on both.
    for round in 0..2 {
        for mode in ["lm", "answer", "half"] {
            // fp32 and bf16 products side by side.
            for precision in ["fp32", "bf16"] {
                let mut cmd = Command::new(std::env::current_exe().unwrap());
                cmd.args([mode, precision]);
                if let Some(v) = common::run(&mut cmd) {
                    let what = match mode {
                        "lm" => "every token",
                        "answer" => "8 answer tokens",
                        _ => "every token, half-width RaFFM sub-model",
                    };
                    println!("round {round}  raffm {precision} loss on {what:<14} {v}");
                }
            }
        }
        // PyTorch in fp32 and under bf16 autocast.
        for precision in ["fp32", "bf16"] {
            let Some(python) = &torch else { break };
            let mut cmd = Command::new(python);
            cmd.arg(script).arg(model_dir()).arg(precision);
            cmd.env("OMP_NUM_THREADS", "2");
            if let Some(v) = common::run(&mut cmd) {
                println!(
                    "round {round}  pytorch {precision} loss on {:<14} {v}",
                    "every token"
                );
            }
        }
    }
}
