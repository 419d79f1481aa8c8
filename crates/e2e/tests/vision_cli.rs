//! Vision on generated image folders: `raffm-vision probe` with the tiny DINOv2 fixture
//! (from files to accuracy, bad inputs refused in one line), and the federated stages
//! training and evaluating a vision model.

use std::path::{Path, PathBuf};

use raffm_e2e::{ok, run};

fn tiny_dinov2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../raffm/tests/data/vit-tiny/dinov2")
}

fn folder(root: &Path) {
    raffm::core::fixtures::tiny_image_folder(root, 6);
}

#[test]
fn a_probe_runs_from_image_files_to_an_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    folder(&data);
    let out = tmp.path().join("probe.json");
    let model = tiny_dinov2();
    let args = [
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--image-folder",
        data.to_str().unwrap(),
        "--size",
        "16",
        "--train",
        "8",
        "--test",
        "4",
        "--k",
        "3",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ];
    ok("raffm-vision", &args);
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        result["classes"],
        serde_json::json!(["blue", "green", "red"])
    );
    let accuracy = result["accuracy"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&accuracy) && result["test"] == 4,
        "{result}"
    );
    assert_eq!(
        result["data_sha256"].as_str().map(str::len),
        Some(64),
        "a folder's hash is that of its files"
    );
}

/// With a partition, the references are its training examples and the queries its
/// validation examples: here an IDX training file and its own test split.
#[test]
fn a_probe_reads_a_partition_with_a_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let labels: Vec<u8> = (0..12).map(|i| i % 3).collect();
    raffm::core::fixtures::tiny_idx(
        Path::new(&file("train-images-idx3-ubyte")),
        Path::new(&file("train-labels-idx1-ubyte")),
        6,
        6,
        &labels,
    );
    raffm::core::fixtures::tiny_idx(
        Path::new(&file("t10k-images-idx3-ubyte")),
        Path::new(&file("t10k-labels-idx1-ubyte")),
        6,
        6,
        &labels[..5],
    );
    ok(
        "raffm-partition",
        &[
            "--data",
            &file("train-images-idx3-ubyte"),
            "--labels-file",
            &file("train-labels-idx1-ubyte"),
            "--validation-data",
            &file("t10k-images-idx3-ubyte"),
            "--validation-labels-file",
            &file("t10k-labels-idx1-ubyte"),
            "--clients",
            "2",
            "--output",
            &file("partition.json"),
        ],
    );
    let (model, partition) = (tiny_dinov2(), file("partition.json"));
    let probe = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "probe",
            "--model",
            model.to_str().unwrap(),
            "--partition",
            &partition,
            "--size",
            "16",
            "--k",
            "3",
            "--quiet",
        ];
        args.extend(extra);
        let out = run("raffm-vision", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = probe(&[]);
    assert_eq!(
        (all["train"].as_u64(), all["test"].as_u64()),
        (Some(12), Some(5)),
        "{all}"
    );
    let capped = probe(&["--train", "6", "--test", "2"]);
    assert_eq!(
        (capped["train"].as_u64(), capped["test"].as_u64()),
        (Some(6), Some(2))
    );
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    folder(&data);
    let model = tiny_dinov2();
    let probe = |extra: &[&str]| {
        let mut args = vec![
            "probe",
            "--model",
            model.to_str().unwrap(),
            "--image-folder",
            data.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = run("raffm-vision", &args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let err = probe(&["--train", "10", "--test", "10"]);
    assert!(
        err.contains("need 20 images") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::create_dir(data.join("empty")).unwrap();
    let err = probe(&["--train", "2", "--test", "2"]);
    assert!(
        err.contains("empty") && err.contains("without images"),
        "{err}"
    );
}

/// The federated stages take images as they take text: a k-shot partition of an image
/// folder, a head and an input size, local training, evaluation.
#[test]
fn the_stages_train_and_evaluate_a_vision_model_on_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    raffm::core::fixtures::tiny_image_folder(&tmp.path().join("images"), 10);
    raffm::core::fixtures::tiny_vision_model(&tmp.path().join("backbone"));
    ok(
        "raffm-partition",
        &[
            "--data",
            &p("images"),
            "--clients",
            "2",
            "--scheme",
            "kshot",
            "--k",
            "2",
            "--validation-fraction",
            "0.2",
            "--output",
            &p("partition.json"),
        ],
    );
    let partition: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("partition.json")).unwrap()).unwrap();
    assert_eq!(partition["data"]["format"], "image-folder");
    assert_eq!(
        partition["label_names"],
        serde_json::json!(["blue", "green", "red"])
    );

    // A text model refuses an input size; a vision model gets it in its preprocessor file.
    let text_model = raffm::core::fixtures::tiny_text_model(&tmp.path().join("bert"));
    let out = run(
        "raffm-init-head",
        &[
            "--model",
            text_model.to_str().unwrap(),
            "--partition",
            &p("partition.json"),
            "--image-size",
            "12",
            "--output",
            &p("bad"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--image-size") && err.contains("takes text"),
        "{err}"
    );
    assert!(!tmp.path().join("bad").exists());
    ok(
        "raffm-init-head",
        &[
            "--model",
            &p("backbone"),
            "--partition",
            &p("partition.json"),
            "--image-size",
            "12",
            "--output",
            &p("global"),
        ],
    );
    let processor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("global/preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        processor["size"],
        serde_json::json!({"height": 12, "width": 12})
    );

    ok(
        "raffm-local-train",
        &[
            "--model",
            &p("global"),
            "--partition",
            &p("partition.json"),
            "--client",
            "c001",
            "--epochs",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "0.003",
            "--mu",
            "0.01",
            "--quiet",
            "--output",
            &p("trained"),
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("trained/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["metrics"]["examples_seen"], 18, "{manifest}");
    assert!(tmp
        .path()
        .join("trained/preprocessor_config.json")
        .is_file());
    ok(
        "raffm-evaluate",
        &[
            "--model",
            &p("trained"),
            "--partition",
            &p("partition.json"),
            "--quiet",
            "--output",
            &p("eval.json"),
        ],
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("eval.json")).unwrap()).unwrap();
    // Three colours a tiny model tells apart after a few steps: well above chance (1/3).
    let metrics = &eval["metrics"];
    assert!(
        metrics["examples"] == 6 && metrics["accuracy"].as_f64().unwrap() > 0.5,
        "{eval}"
    );

    // Text data on a vision model: one clear line, nothing written.
    raffm::core::fixtures::tiny_reviews(&tmp.path().join("reviews.jsonl"), 20);
    ok(
        "raffm-partition",
        &[
            "--data",
            &p("reviews.jsonl"),
            "--clients",
            "2",
            "--output",
            &p("text.json"),
        ],
    );
    let out = run(
        "raffm-local-train",
        &[
            "--model",
            &p("global"),
            "--partition",
            &p("text.json"),
            "--client",
            "c000",
            "--output",
            &p("wrong"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(!tmp.path().join("wrong").exists());
}
