//! ViT-S training and evaluation throughput and peak memory: the imported DINOv2 ViT-S/14
//! (`make assets-vit`) with a 10-class `Dinov2ForImageClassification` head, batch 32 of
//! random images at 112 px (65 tokens) and 224 px (257 tokens), cross-entropy and AdamW,
//! 2 threads. The reference (PyTorch 2.15 + transformers 5.23, this shape, same machine):
//! 16.7-18.6 images/s training and 53-57 evaluating at 112 px with 1.9 GiB peak; 3.7 and
//! 13.7 at 224 px with 4.1 GiB. With `RAFFM_TORCH_PYTHON` set to a Python with torch and
//! transformers, `scripts/bench/vit_pytorch.py` runs in between, side by side, in fp32 and under bf16
//! autocast. Each
//! measurement is its own process, so its peak resident memory is its own; throughput is
//! the median over steps after the first; `steal` is the share of CPU time the hypervisor
//! gave to other guests meanwhile. Run with `make bench`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use raffm::burn::backend::Autodiff;
use raffm::burn::nn::loss::CrossEntropyLossConfig;
use raffm::burn::optim::adaptor::OptimizerAdaptor;
use raffm::burn::optim::{GradientsParams, Optimizer};
use raffm::burn::tensor::{Int, Tensor, TensorData};
use raffm::core::rng::SplitMix64;
use raffm::core::sys::peak_rss_bytes;
use raffm::models::families::vit::model::VitForImageClassification;
use raffm::models::fused::FusedAdamW;
use raffm::models::fused::{set_precision, Precision};
use raffm::{Checkpoint, CpuBackend};

const BATCH: usize = 32;
const STEPS: usize = 4;

fn model_dir() -> PathBuf {
    let assets = std::env::var("RAFFM_ASSETS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets").into());
    PathBuf::from(assets).join("dinov2-vits14")
}

fn checkpoint() -> Checkpoint {
    let labels: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    Checkpoint::load(model_dir())
        .expect("run `make assets-vit` first")
        .with_classification_head(&labels, 0)
}

fn pixels<B: raffm::burn::tensor::backend::Backend>(
    size: usize,
    rng: &mut SplitMix64,
    device: &B::Device,
) -> Tensor<B, 4> {
    let data: Vec<f32> = (0..BATCH * 3 * size * size)
        .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, [BATCH, 3, size, size]), device)
}

/// Seconds per step of training (`train`) or evaluation (`eval`) at `size` px.
fn measure(mode: &str, size: usize, precision: Precision) {
    set_precision(precision).unwrap();
    let checkpoint = checkpoint();
    let mut rng = SplitMix64::new(1);
    let mut seconds = Vec::new();
    if mode == "train" {
        type B = Autodiff<CpuBackend>;
        let device = Default::default();
        let mut model =
            VitForImageClassification::<B>::from_checkpoint(&checkpoint, &device).unwrap();
        let mut optimizer = OptimizerAdaptor::from(FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        });
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        for _ in 0..=STEPS {
            let x = pixels::<B>(size, &mut rng, &device);
            let labels: Vec<i64> = (0..BATCH).map(|_| (rng.next_u64() % 10) as i64).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [BATCH]), &device);
            let start = Instant::now();
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-5, model, grads);
            seconds.push(start.elapsed().as_secs_f64());
        }
    } else {
        let device = Default::default();
        let model =
            VitForImageClassification::<CpuBackend>::from_checkpoint(&checkpoint, &device).unwrap();
        for _ in 0..=STEPS {
            let x = pixels::<CpuBackend>(size, &mut rng, &device);
            let start = Instant::now();
            let logits = model.forward(x);
            let _ = logits.into_data();
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let mut steady = seconds[1..].to_vec();
    steady.sort_by(f64::total_cmp);
    println!(
        "{{\"images_per_second\": {:.2}, \"peak_rss_mib\": {:.0}}}",
        BATCH as f64 / steady[steady.len() / 2],
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
    if let [mode, size, precision] = &args[..] {
        raffm::core::sys::keep_freed_memory();
        return measure(
            mode,
            size.parse().expect("a size in pixels"),
            precision.parse().unwrap(),
        );
    }
    let torch = std::env::var("RAFFM_TORCH_PYTHON").ok();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench/vit_pytorch.py"
    );
    println!("ViT-S/14 (DINOv2, 10-class head), batch {BATCH}, 2 threads; reference PyTorch at 112 px 16.7-18.6 images/s training, 53-57 eval, 1.9 GiB; at 224 px 3.7 and 13.7, 4.1 GiB");
    // Interleaved: ours, then PyTorch, per size and mode, so the machine's noise falls on both.
    for size in ["112", "224"] {
        for mode in ["train", "eval"] {
            // fp32 and bf16 products side by side.
            for precision in ["fp32", "bf16"] {
                let mut cmd = Command::new(std::env::current_exe().unwrap());
                cmd.args([mode, size, precision]);
                if let Some(v) = common::run(&mut cmd) {
                    println!("{size} px {mode:<5} raffm {precision} {v}");
                }
            }
            // PyTorch in fp32 and under bf16 autocast.
            for precision in ["fp32", "bf16"] {
                let Some(python) = &torch else { break };
                let mut cmd = Command::new(python);
                cmd.arg(script)
                    .arg(model_dir())
                    .args([mode, size, precision])
                    .env("OMP_NUM_THREADS", "2");
                if let Some(v) = common::run(&mut cmd) {
                    println!("{size} px {mode:<5} pytorch {precision} {v}");
                }
            }
        }
    }
}
