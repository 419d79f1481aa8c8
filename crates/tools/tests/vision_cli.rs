//! `raffm-vision probe` on a generated folder of images with the tiny DINOv2 fixture: the
//! whole path from files to accuracy, and bad inputs refused in one line.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, run};

fn tiny_dinov2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../raffm/tests/data/vit-tiny/dinov2")
}

/// Two classes of plain images: reddish and bluish, six each, 20 x 20 px.
fn folder(root: &Path) {
    for (class, colour) in [("blue", [20u8, 40, 220]), ("red", [220, 30, 20])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..6u8 {
            let image = image::RgbImage::from_fn(20, 20, |x, y| {
                let shade = (x as u8 + y as u8 + 3 * i) % 30;
                image::Rgb(colour.map(|c| c.saturating_add(shade)))
            });
            image
                .save(root.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
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
    assert_eq!(result["classes"], serde_json::json!(["blue", "red"]));
    let accuracy = result["accuracy"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&accuracy) && result["test"] == 4,
        "{result}"
    );
    assert_eq!(
        result["data_sha256"].as_str().map(str::len),
        None,
        "a folder has no single hash"
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
