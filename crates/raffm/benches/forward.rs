//! Inference throughput of the real MiniLM encoder with a classification head:
//! batch 64 x sequence 64, as the reference figures in the issues are measured.
//! Run with `make bench`; prints examples/s and peak resident memory.

use std::time::Instant;

use raffm::core::rng::SplitMix64;
use raffm::data::tokenizer::EncodedBatch;
use raffm::models::families::bert::model::BertForSequenceClassification;
use raffm::{Checkpoint, CpuBackend};

fn peak_rss_mib() -> f64 {
    raffm::core::sys::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64)
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let assets = std::env::var("RAFFM_ASSETS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets").into());
    let dir = std::path::Path::new(&assets).join("minilm");
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let checkpoint = Checkpoint::load(&dir)
        .unwrap_or_else(|e| panic!("{e} (run `make assets`)"))
        .with_classification_head(&labels, 0);
    let (batch, seq) = (64, 64);
    let mut rng = SplitMix64::new(0);
    let encoded = EncodedBatch {
        batch,
        seq,
        input_ids: (0..batch * seq)
            .map(|_| 1000 + rng.below(20_000) as i64)
            .collect(),
        token_type_ids: vec![0; batch * seq],
        attention_mask: vec![1; batch * seq],
    };
    let device = Default::default();
    let model =
        BertForSequenceClassification::<CpuBackend>::from_checkpoint(&checkpoint, &device).unwrap();
    let tensors = encoded.to_tensors::<CpuBackend>(&device);
    let _ = model.forward(&tensors).into_data(); // warm-up
    let iterations = 5;
    let start = Instant::now();
    for _ in 0..iterations {
        let _ = model.forward(&tensors).into_data();
    }
    let seconds = start.elapsed().as_secs_f64();
    let throughput = (iterations * batch) as f64 / seconds;
    println!(
        "forward  MiniLM batch {batch} seq {seq}: {throughput:.1} examples/s ({:.3} s/batch), peak RSS {:.0} MiB, threads {}",
        seconds / iterations as f64,
        peak_rss_mib(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
}
