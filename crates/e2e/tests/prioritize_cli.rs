//! `raffm-prioritize` as a user runs it: results, manifest, and one-line errors.

use std::path::Path;
use std::process::{Command, Output};

use raffm::core::checkpoint::Checkpoint;
use raffm::core::elastic::index::Kept;
use raffm::core::tensor::Norm;
use raffm::fl::prioritize::{is_prioritized, salience};
use raffm::models::families::bert::{tiny_model, Variant};

fn prioritize(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(raffm_e2e::bin("raffm-prioritize"))
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap()
}

fn run(input: &Path, output: &Path) -> Output {
    prioritize(&[
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ])
}

fn tiny(dir: &Path) {
    let config = tiny_model(Variant::Bert, 2, 16, 4, 24, false);
    Checkpoint::random(&config, 4).save(dir).unwrap();
    raffm::core::fixtures::write_vocabulary(dir);
}

/// A failed run: non-zero exit, exactly one line on stderr mentioning every `needle`,
/// and no output folder (nor a staging folder) left behind.
fn assert_clean_failure(out: &Output, output: &Path, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!output.exists(), "output left behind");
    let parent = output.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging folder left behind: {leftovers:?}"
    );
}

#[test]
fn writes_a_prioritized_checkpoint_with_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    tiny(&input);
    let out = prioritize(&[
        "-i".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        output.as_os_str(),
        "--norm".as_ref(),
        "l2".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = Checkpoint::load(&output).unwrap();
    assert!(is_prioritized(&salience(&result, Norm::L2)));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["stage"], "prioritize");
    assert_eq!(manifest["parameters"]["norm"], "l2");
    let input_sha = raffm::core::io::sha256_file(&input.join("model.safetensors"))
        .unwrap()
        .sha256;
    assert_eq!(manifest["inputs"][1]["sha256"], input_sha.as_str());
    let output_sha = raffm::core::io::sha256_file(&output.join("model.safetensors"))
        .unwrap()
        .sha256;
    assert!(manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["sha256"] == output_sha.as_str()));
    // Hidden channels, then per layer heads, Q/K and V channels per head, FFN neurons.
    let perms = manifest["permutations"].as_array().unwrap();
    assert_eq!(perms.len(), 1 + 2 * 4);
    let kept = |i: usize| serde_json::from_value::<Kept>(perms[i]["order"].clone()).unwrap();
    assert_eq!(
        (perms[0]["axis"].as_str(), kept(0).len()),
        (Some("hidden"), 16)
    );
    assert_eq!(
        (perms[1]["axis"].as_str(), perms[1]["layer"].as_u64()),
        (Some("heads"), Some(0))
    );
    assert_eq!(kept(1).len(), 4);
    assert!(matches!(kept(2), Kept::PerParent(p) if p.len() == 4));
    assert_eq!(
        (perms[4]["axis"].as_str(), kept(4).len()),
        (Some("ffn"), 24)
    );
    assert_eq!(manifest["parameter_count"], result.parameter_count());
}

#[test]
fn help_documents_every_option() {
    let out = prioritize(&["--help".as_ref()]);
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--input", "--output", "--norm", "--quiet", "salience"] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[test]
fn missing_input_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("nope"), dir.path().join("out"));
    assert_clean_failure(
        &run(&input, &output),
        &output,
        &["nope", "no such checkpoint folder"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    tiny(&input);
    let weights = input.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(
        &run(&input, &output),
        &output,
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn config_and_weights_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    tiny(&input);
    let config_path = input.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["intermediate_size"] = serde_json::json!(32);
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert_clean_failure(
        &run(&input, &output),
        &output,
        &["model.safetensors", "layer.0", "[24, 16]", "[32, 16]"],
    );
}

#[test]
fn unknown_model_type() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    tiny(&input);
    let config_path = input.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"bert\"", "\"gpt2\"");
    std::fs::write(&config_path, text).unwrap();
    assert_clean_failure(
        &run(&input, &output),
        &output,
        &["config.json", "unknown model_type `gpt2`"],
    );
}

#[test]
fn a_failed_run_keeps_an_existing_output() {
    // Nothing is lost: a failure leaves the previous result in place.
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    tiny(&input);
    assert!(run(&input, &output).status.success());
    let before = std::fs::read(output.join("model.safetensors")).unwrap();
    std::fs::write(input.join("model.safetensors"), b"garbage").unwrap();
    assert!(!run(&input, &output).status.success());
    assert_eq!(
        std::fs::read(output.join("model.safetensors")).unwrap(),
        before
    );
}

/// The stage run in-process writes what its binary writes (the same weights, byte for
/// byte) and returns the record its manifest holds.
#[test]
fn the_stage_in_process_writes_what_the_binary_writes() {
    use raffm::core::manifest::{Manifest, StageRecord};
    use raffm::stages::prioritize;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    tiny(&input);
    let by_binary = dir.path().join("binary");
    assert!(run(&input, &by_binary).status.success());
    let args = prioritize::Args {
        input: input.clone(),
        output: dir.path().join("library"),
        norm: Norm::L1,
        quiet: true,
    };
    let record = prioritize::run(&args).unwrap();
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&by_binary), weights(&args.output));
    let manifest = Manifest::load(&args.output.join("manifest.json")).unwrap();
    let (StageRecord::Prioritize(returned), StageRecord::Prioritize(written)) =
        (&record, &manifest.record)
    else {
        panic!("{record:?}");
    };
    assert!(returned.metrics.axes_reordered > 0);
    assert_eq!(
        returned.metrics.axes_reordered,
        written.metrics.axes_reordered
    );
    // The orders as written; the scores too, but serde_json reads a float back to within
    // an ulp, not always to the bit.
    let orders = |p: &raffm::core::manifest::Prioritized| {
        let mut v = serde_json::to_value(&p.permutations).unwrap();
        for p in v.as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("salience");
        }
        v
    };
    assert_eq!(orders(returned), orders(written));

    // Bad input is the library's typed error, naming the file.
    let missing = prioritize::Args {
        input: dir.path().join("nowhere"),
        output: dir.path().join("out2"),
        ..args
    };
    let err = prioritize::run(&missing).unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
    assert!(!missing.output.exists());
}
