//! `raffm-export` on sub-models of the tiny fixture: the padded export has the global
//! model's tensors, names and shapes; a sub-model without such a form is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use raffm::core::fixtures::tiny_text_model;
use raffm::Checkpoint;

fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(raffm_e2e::bin(name))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

/// A global model with a classification head, and a sub-model of it cut on `space`.
fn setup(dir: &Path, space: &str) -> (PathBuf, PathBuf) {
    let global = dir.join("global");
    let labels = vec!["a".to_string(), "b".to_string()];
    Checkpoint::load(tiny_text_model(&dir.join("model")))
        .unwrap()
        .with_classification_head(&labels, 1)
        .save(&global)
        .unwrap();
    let out = run(
        "raffm-extract",
        &[
            &"--global",
            &global,
            &"--out-dir",
            &dir.join("clients"),
            &"--clients",
            &"c",
            &"--strategy",
            &"random",
            &"--space",
            &space,
            &"--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (global, dir.join("clients/c"))
}

#[test]
fn a_padded_export_has_the_global_models_names_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (global, sub) = setup(dir.path(), "heads=0.5");
    let output = dir.path().join("export");
    let out = run(
        "raffm-export",
        &[&"--model", &sub, &"--global", &global, &"--output", &output],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (g, e, s) = (
        Checkpoint::load(&global).unwrap(),
        Checkpoint::load(&output).unwrap(),
        Checkpoint::load(&sub).unwrap(),
    );
    assert!(s.parameter_count() < g.parameter_count());
    assert_eq!(e.config.widths(), g.config.widths());
    assert!(e.tensors.keys().eq(g.tensors.keys()));
    for (name, t) in &g.tensors {
        assert_eq!(e.tensors[name].shape, t.shape, "{name}");
    }
    // Exactly the sub-model's values are non-zero somewhere; the rest is zero.
    let nonzero: usize = e
        .tensors
        .values()
        .map(|t| t.data.iter().filter(|v| **v != 0.0).count())
        .sum();
    assert!(nonzero as u64 <= s.parameter_count() && nonzero as u64 > s.parameter_count() / 2);
    let manifest = std::fs::read_to_string(output.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"stage\": \"export\""));
}

#[test]
fn a_sub_model_without_a_padded_form_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (global, sub) = setup(dir.path(), "layers=0.5");
    let output = dir.path().join("export");
    let out = run(
        "raffm-export",
        &[&"--model", &sub, &"--global", &global, &"--output", &output],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("layers") && err.contains("no zero-padded equivalent"),
        "{err}"
    );
    assert!(!output.exists());
}
