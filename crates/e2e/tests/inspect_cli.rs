//! `raffm-inspect` on a tiny model and on what the real `raffm-prioritize` makes of it.

use std::path::Path;
use std::process::{Command, Output};

use raffm::core::fixtures::tiny_text_model;
use raffm::Checkpoint;
use serde_json::{json, Value};

fn inspect(args: &[&str]) -> Output {
    let binary = raffm_e2e::bin("raffm-inspect");
    Command::new(binary).args(args).output().unwrap()
}

/// Stdout of a run that must succeed.
fn stdout(args: &[&str]) -> String {
    let o = inspect(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn report(args: &[&str]) -> Value {
    serde_json::from_str(&stdout(&[args, &["--json"]].concat())).expect("stdout is JSON")
}

/// The tiny fixture model in `dir/model`, and its path as a string.
fn tiny_model(dir: &Path) -> String {
    let model = tiny_text_model(&dir.join("model"));
    model
        .to_str()
        .expect("temporary paths are UTF-8")
        .to_string()
}

#[test]
fn tensors_lists_the_architecture_and_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let checkpoint = Checkpoint::load(&model).unwrap();
    let r = report(&["tensors", &model]);
    let arch = &r["architecture"];
    assert_eq!(
        (&arch["model_type"], &arch["widths"]["global"]["hidden"]),
        (&json!("bert"), &json!(32))
    );
    assert_eq!(arch["parameter_count"], checkpoint.parameter_count());
    let layer = json!({"heads": 4, "head_dim": 8, "ffn": 64});
    assert_eq!(arch["widths"]["layers"], json!([layer, layer]));
    assert_eq!(arch["widths"]["global_layers"], json!([0, 1]));
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), checkpoint.tensors.len());
    for t in tensors {
        assert_eq!(t["dtype"], "F32");
        assert!(t["std"].as_f64().unwrap() > 0.0 && t["max_abs"].as_f64().unwrap() > 0.0);
    }
    let text = stdout(&["tensors", &model]);
    assert!(
        text.contains("layers 0-1  heads 4, head_dim 8, ffn 64"),
        "{text}"
    );
    let last_of_layer_1 = checkpoint.config.layer_tensors(1).pop().unwrap().name;
    assert!(text.contains(&last_of_layer_1), "{text}");
}

#[test]
fn a_model_diffed_with_itself_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let n = Checkpoint::load(&model).unwrap().tensors.len();
    let d = report(&["diff", &model, &model]);
    assert_eq!(d["summary"]["compared"], n);
    assert_eq!(d["summary"]["identical"], n);
    assert_eq!(d["index_map"], Value::Null);
    let text = stdout(&["diff", &model, &model]);
    assert!(text.ends_with(&format!(
        "{n} tensors compared, {n} bit-identical, no change\n"
    )));
}

#[test]
fn lineage_of_a_prioritized_model_reaches_its_external_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let prioritized = dir.path().join("prioritized").to_str().unwrap().to_string();
    // Another crate's binary: it sits next to ours once the workspace's binaries are built.
    let tool = raffm_e2e::bin("raffm-prioritize");
    let hint = "build it first: cargo build --release -p raffm-prioritize";
    assert!(tool.exists(), "{} is missing; {hint}", tool.display());
    let o = Command::new(tool)
        .args(["--input", &model, "--output", &prioritized, "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let statuses = |l: &Value| -> Vec<String> {
        let inputs = l["inputs"].as_array().unwrap();
        inputs
            .iter()
            .map(|i| i["status"].as_str().unwrap().to_string())
            .collect()
    };
    let l = report(&["lineage", &prioritized]);
    assert_eq!(
        (&l["kind"], &l["stage"]),
        (&json!("stage"), &json!("prioritize"))
    );
    assert_eq!(statuses(&l), ["ok", "ok"]);
    assert_eq!(l["parents"][0]["kind"], "external");
    let text = stdout(&["lineage", &prioritized]);
    assert!(
        text.contains("stage prioritize by raffm-prioritize"),
        "{text}"
    );
    assert!(text.contains("no manifest (external input)"), "{text}");

    // Differences are a report, not a failure.
    let d = report(&["diff", &model, &prioritized]);
    assert!(d["summary"]["identical"].as_u64() < d["summary"]["compared"].as_u64());

    // The input changes in place (same size: caught by its hash), then disappears.
    let weights = Path::new(&model).join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    std::fs::remove_file(Path::new(&model).join("config.json")).unwrap();
    assert_eq!(
        statuses(&report(&["lineage", &prioritized])),
        ["missing", "changed"]
    );
}

#[test]
fn a_missing_folder_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-checkpoint");
    let m = missing.to_str().unwrap();
    for args in [&["tensors", m][..], &["lineage", m], &["diff", m, m]] {
        let o = inspect(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("raffm-inspect: error: ") && err.contains(m),
            "{err}"
        );
    }
}
