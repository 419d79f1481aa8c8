//! The vision family against HF transformers: tiny seeded `ViTForImageClassification` and
//! `Dinov2ForImageClassification` (random LayerNorms, LayerScales and biases), written with
//! their outputs by `scripts/reference/vit_tiny.py` (versions in the fixture), read from
//! their HF folders. At the pre-training size and at a smaller non-square one, where the
//! position embeddings are interpolated bicubically, the last hidden state and the logits
//! agree.

use std::path::PathBuf;

use raffm::burn::tensor::{Tensor, TensorData};
use raffm::models::families::vit::model::VitForImageClassification;
use raffm::{Checkpoint, CpuBackend};
use serde_json::Value;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vit-tiny")
}

fn floats(v: &Value) -> (Vec<usize>, Vec<f64>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (shape, data)
}

fn max_diff(ours: Vec<f32>, theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn vit_and_dinov2_match_hf_at_the_training_size_and_interpolated() {
    let reference: Value =
        serde_json::from_slice(&std::fs::read(data().join("reference.json")).unwrap()).unwrap();
    let device = Default::default();
    for layout in ["vit", "dinov2"] {
        let checkpoint = Checkpoint::load(data().join(layout)).unwrap();
        assert_eq!(checkpoint.config.label_names(), ["cat", "dog", "ship"]);
        let model =
            VitForImageClassification::<CpuBackend>::from_checkpoint(&checkpoint, &device).unwrap();
        for (size, input) in reference["inputs"].as_object().unwrap() {
            let (shape, pixels) = floats(input);
            let pixels: Vec<f32> = pixels.into_iter().map(|x| x as f32).collect();
            let pixels = Tensor::<CpuBackend, 4>::from_data(
                TensorData::new(pixels, [shape[0], shape[1], shape[2], shape[3]]),
                &device,
            );
            let expected = &reference["models"][layout][size];
            let hidden = model.backbone().forward(pixels.clone());
            let (hidden_shape, hidden_want) = floats(&expected["last_hidden_state"]);
            assert_eq!(hidden.dims().to_vec(), hidden_shape, "{layout} {size}");
            let d = max_diff(hidden.into_data().into_vec().unwrap(), &hidden_want);
            assert!(
                d < 1e-4,
                "{layout} {size}: last hidden state differs by {d}"
            );
            let logits = model.forward(pixels);
            let (_, logits_want) = floats(&expected["logits"]);
            let d = max_diff(logits.into_data().into_vec().unwrap(), &logits_want);
            assert!(d < 1e-4, "{layout} {size}: logits differ by {d}");
        }
    }
}
