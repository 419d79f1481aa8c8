//! The matrix products training runs, in fp32 (the `gemm` crate, what burn's flex backend
//! and our fused kernels call) and with bf16 operands (`fused::kernels::bf16`, on each
//! engine this CPU has), side by side: every repetition runs each variant once, in turn,
//! and the table gives medians. Prints the CPU, which bf16 engine `auto` picks, and the
//! steal time. With `RAFFM_TORCH_PYTHON` set to a Python with torch,
//! `scripts/bench/gemm_pytorch.py` then runs the same products in PyTorch, in fp32 and
//! under bf16 autocast. Run with `make bench` or `cargo bench -p raffm --bench gemm`.

use std::time::Instant;

use raffm::core::rng::SplitMix64;
use raffm::models::fused::kernels::bf16::{self, Engine};
use raffm::models::fused::kernels::Strided;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A product `[m, k] · [k, n]`, with either operand read transposed.
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
}

const fn shape(name: &'static str, m: usize, n: usize, k: usize, lt: bool, rt: bool) -> Shape {
    Shape {
        name,
        m,
        n,
        k,
        lhs_transposed: lt,
        rhs_transposed: rt,
    }
}

const SHAPES: [Shape; 7] = [
    shape("square 512", 512, 512, 512, false, false),
    shape("square 1024", 1024, 1024, 1024, false, false),
    shape("square 2048", 2048, 2048, 2048, false, false),
    // MiniLM training, batch 32 × 64 tokens: the FFN's up projection (x · Wᵀ), the
    // gradient of its input (dY · W) and of its weight (dYᵀ · x).
    shape("MiniLM FFN up, x·Wᵀ", 2048, 1536, 384, false, true),
    shape("MiniLM FFN up, dY·W", 2048, 384, 1536, false, false),
    shape("MiniLM FFN up, dYᵀ·x", 1536, 384, 2048, true, false),
    // SmolLM2 LoRA training, batch 8 × 128 tokens: the MLP's gate projection.
    shape("SmolLM2 gate, x·Wᵀ", 1024, 1536, 576, false, true),
];

fn view(rows: usize, cols: usize, transposed: bool) -> Strided {
    if transposed {
        Strided::rows(0, rows).transposed()
    } else {
        Strided::rows(0, cols)
    }
}

/// One product with `variant`: `None` is fp32.
fn run(variant: Option<Engine>, s: &Shape, a: &[f32], b: &[f32], out: &mut [f32]) -> f64 {
    let (l, r) = (
        view(s.m, s.k, s.lhs_transposed),
        view(s.k, s.n, s.rhs_transposed),
    );
    let d = Strided::rows(0, s.n);
    let start = Instant::now();
    match variant {
        Some(engine) => bf16::matmul(engine, (s.m, s.n, s.k), out, d, a, l, b, r, false),
        None => raffm::models::fused::kernels::matmul_fp32((s.m, s.n, s.k), out, d, a, l, b, r),
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let auto = bf16::engine().expect("a valid RAFFM_BF16_ENGINE");
    println!(
        "CPU: {cpu}; {} threads; auto: {}",
        rayon::current_num_threads(),
        auto.describe()
    );
    let mut variants: Vec<(&str, Option<Engine>)> = vec![("fp32", None)];
    for (name, choice) in [("bf16 amx", "amx"), ("bf16 avx512", "avx512bf16")] {
        if let Ok(engine) = Engine::select(choice) {
            variants.push((name, Some(engine)));
        }
    }
    variants.push(("bf16 emulated", Some(Engine::Emulated)));
    print!("{:<24}", "GFLOP/s (median)");
    for (name, _) in &variants {
        print!("{name:>15}");
    }
    println!("{:>10}", "steal %");
    let mut rng = SplitMix64::new(0);
    for s in &SHAPES {
        let a: Vec<f32> = (0..s.m * s.k)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let b: Vec<f32> = (0..s.k * s.n)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let mut out = vec![0f32; s.m * s.n];
        let flops = 2.0 * (s.m * s.n * s.k) as f64;
        let reps = ((2e10 / flops) as usize).clamp(5, 41);
        let mut times = vec![Vec::new(); variants.len()];
        let before = raffm::core::sys::cpu_jiffies();
        for rep in 0..=reps {
            for (v, (_, variant)) in variants.iter().enumerate() {
                let t = run(*variant, s, &a, &b, &mut out);
                if rep > 0 {
                    times[v].push(t);
                }
            }
        }
        let steal = match (before, raffm::core::sys::cpu_jiffies()) {
            (Some((s0, t0)), Some((s1, t1))) => 100.0 * (s1 - s0) as f64 / (t1 - t0).max(1) as f64,
            _ => f64::NAN,
        };
        print!("{:<24}", s.name);
        for t in times {
            print!("{:>15.0}", flops / median(t) / 1e9);
        }
        println!("{steal:>10.1}");
    }
    if let Ok(python) = std::env::var("RAFFM_TORCH_PYTHON") {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/bench/gemm_pytorch.py"
        );
        let status = std::process::Command::new(python)
            .arg(script)
            .env("OMP_NUM_THREADS", "2")
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("{script} failed: {status:?}");
        }
    }
}
