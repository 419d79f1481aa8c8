//! `raffm-budgets` from a pipeline file.

use std::process::Command;

use raffm::core::checkpoint::Checkpoint;
use raffm::fl::pipeline::Budgets;
use raffm::models::families::bert::{tiny_model, Variant};

#[test]
fn same_seed_same_file_and_every_client_has_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    Checkpoint::random(&tiny_model(Variant::Bert, 2, 16, 4, 24, false), 0)
        .save(&model)
        .unwrap();
    let pipeline = dir.path().join("p.json");
    let text = serde_json::json!({
        "name": "t", "model": model, "clients": 20,
        "tiers": [{"name": "s", "share": 1, "parameter_fraction": 0.7},
                  {"name": "l", "share": 1, "memory_bytes": 123456789}],
        "search_space": {"hidden": [0.5, 1.0]}
    });
    std::fs::write(&pipeline, text.to_string()).unwrap();
    let run = |seed: &str, out: &str| {
        let o = Command::new(raffm_e2e::bin("raffm-budgets"))
            .args([
                "--pipeline".as_ref(),
                pipeline.as_os_str(),
                "--seed".as_ref(),
                seed.as_ref(),
            ])
            .arg("--output")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(dir.path().join(out)).unwrap()
    };
    assert_eq!(run("3", "a.json"), run("3", "b.json"));
    assert_ne!(run("3", "a.json"), run("4", "c.json"));
    let budgets = Budgets::load(&dir.path().join("a.json")).unwrap();
    assert_eq!(budgets.clients.len(), 20);
    assert_eq!(budgets.clients.iter().filter(|c| c.tier == "s").count(), 10);
    let l = budgets.clients.iter().find(|c| c.tier == "l").unwrap();
    assert_eq!(l.train.max_train_memory_bytes, Some(123456789));
    assert_eq!(l.device_memory_bytes, Some(123456789));
    assert_eq!(
        budgets.search_space.fractions(raffm::Axis::Hidden),
        [0.5, 1.0]
    );
}

#[test]
fn a_search_space_axis_the_family_lacks_is_an_error_naming_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    Checkpoint::random(&tiny_model(Variant::Bert, 2, 16, 4, 24, false), 0)
        .save(&model)
        .unwrap();
    let pipeline = dir.path().join("p.json");
    let text = serde_json::json!({
        "name": "t", "model": model, "clients": 2,
        "tiers": [{"name": "s", "share": 1, "parameter_fraction": 0.7}],
        "search_space": {"value_dim": [0.5, 1.0]}
    });
    std::fs::write(&pipeline, text.to_string()).unwrap();
    let o = Command::new(raffm_e2e::bin("raffm-budgets"))
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--output")
        .arg(dir.path().join("b.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("p.json") && err.contains("value_dim"), "{err}");
    assert!(!dir.path().join("b.json").exists());
}

#[test]
fn a_bad_pipeline_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.json");
    std::fs::write(
        &pipeline,
        r#"{"name": "t", "model": "m", "clients": 3, "tiers": [{"name": "x", "share": 1}]}"#,
    )
    .unwrap();
    let o = Command::new(raffm_e2e::bin("raffm-budgets"))
        .args([
            "--pipeline".as_ref(),
            pipeline.as_os_str(),
            "--output".as_ref(),
            dir.path().join("b.json").as_os_str(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("p.json") && err.contains("tier `x`"), "{err}");
    assert!(!dir.path().join("b.json").exists());
}
