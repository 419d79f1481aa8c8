//! `raffm-aggregate` rejects bad updates with a message naming the client.

use std::path::Path;
use std::process::{Command, Output};

use raffm::core::checkpoint::Checkpoint;
use raffm::core::fixtures::tiny_text_model;

fn aggregate(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(raffm_e2e::bin("raffm-aggregate"))
        .args(args.iter().map(|a| a.as_ref()))
        .arg("--quiet")
        .output()
        .unwrap()
}

/// A global model and a client update folder extracted from it, as local-train leaves it.
fn setup(dir: &Path) {
    let labels = vec!["a".to_string(), "b".to_string()];
    let global = Checkpoint::load(tiny_text_model(&dir.join("model")))
        .unwrap()
        .with_classification_head(&labels, 0);
    global.save(dir.join("global")).unwrap();
    let extract = Command::new(raffm_e2e::bin("raffm-extract"))
        .args([
            "--global".as_ref(),
            dir.join("global").as_os_str(),
            "--out-dir".as_ref(),
            dir.join("clients").as_os_str(),
        ])
        .args([
            "--clients",
            "c001",
            "--param-fraction",
            "0.8",
            "--strategy",
            "static",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    // "Train" it: move every weight a little, keep the manifest.
    let mut trained = Checkpoint::load(dir.join("clients/c001")).unwrap();
    trained
        .tensors
        .values_mut()
        .for_each(|t| t.data.iter_mut().for_each(|v| *v += 0.01));
    trained.save(dir.join("trained/c001")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("clients/c001/manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["num_examples"] = serde_json::json!(10);
    // The weights changed: the extract manifest's record of them no longer holds.
    manifest["outputs"] = serde_json::json!([]);
    std::fs::write(dir.join("trained/c001/manifest.json"), manifest.to_string()).unwrap();
}

fn one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in {err}");
    }
}

/// Writes NaN over element `index` of the F32 tensor whose name ends with `name` in a
/// safetensors file.
fn put_nan(file: &Path, name: &str, index: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (_, entry) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with(name))
        .unwrap();
    let at = 8 + header_len + entry["data_offsets"][0].as_u64().unwrap() as usize + 4 * index;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn good_update_aggregates_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let (global, client, out) = (d.join("global"), d.join("trained/c001"), d.join("next"));
    let ok = aggregate(&[
        &"--global",
        &global,
        &"--updates",
        &client,
        &"--output",
        &out,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["metrics"]["clients"], 1);
    assert!(m["metrics"]["updated_fraction"].as_f64().unwrap() < 1.0);

    // An update from another round: the next global is not what it was extracted from.
    let stale = aggregate(&[
        &"--global",
        &out,
        &"--updates",
        &client,
        &"--output",
        &d.join("x"),
    ]);
    one_line_error(&stale, &["client c001", "another round"]);

    // A NaN in the update, in the last tensor of the model.
    // No stage writes a NaN (`write_into` refuses it), so it goes into the file's bytes.
    let sub = Checkpoint::load(&client).unwrap();
    let last = sub.config.tensors().pop().unwrap().name;
    let nan_dir = d.join("nan");
    sub.save(&nan_dir).unwrap();
    put_nan(&nan_dir.join("model.safetensors"), &last, 1);
    std::fs::copy(client.join("manifest.json"), nan_dir.join("manifest.json")).unwrap();
    one_line_error(
        &aggregate(&[
            &"--global",
            &global,
            &"--updates",
            &nan_dir,
            &"--output",
            &d.join("x"),
        ]),
        &["client c001", "non-finite", &last],
    );

    // A shape that its index map does not describe.
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(client.join("manifest.json")).unwrap())
            .unwrap();
    let matrix = sub.config.tensors()[0].name.clone();
    manifest["placement"]["index_map"][&matrix]["dims"][0] = serde_json::json!([[0, 3]]);
    let shape_dir = d.join("shape");
    Checkpoint::load(&client).unwrap().save(&shape_dir).unwrap();
    std::fs::write(shape_dir.join("manifest.json"), manifest.to_string()).unwrap();
    one_line_error(
        &aggregate(&[
            &"--global",
            &global,
            &"--updates",
            &shape_dir,
            &"--output",
            &d.join("x"),
        ]),
        &["client c001", &matrix],
    );

    // The same client twice.
    one_line_error(
        &aggregate(&[
            &"--global",
            &global,
            &"--updates",
            &client,
            &client,
            &"--output",
            &d.join("x"),
        ]),
        &["client c001", "given twice"],
    );

    // --skip-bad leaves them out and records why.
    let skipped = aggregate(&[
        &"--global",
        &global,
        &"--updates",
        &client,
        &nan_dir,
        &"--skip-bad",
        &"--output",
        &d.join("y"),
    ]);
    assert!(skipped.status.success());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("y/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["skipped"].as_array().unwrap().len(), 1);
    assert!(!d.join("x").exists());
}

/// The stage run in-process, from the same options, writes the binary's next global model
/// byte for byte and returns the record its manifest holds.
#[test]
fn the_stage_in_process_aggregates_what_the_binary_aggregates() {
    use clap::Parser;
    use raffm::core::manifest::StageRecord;
    use raffm::stages::aggregate as stage;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let options = |out: &str| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["raffm-aggregate".into()];
        args.extend(["--global".into(), d.join("global").into_os_string()]);
        args.extend(["--updates".into(), d.join("trained/c001").into_os_string()]);
        args.extend(["--rule".into(), "median".into(), "--quiet".into()]);
        args.extend(["--output".into(), d.join(out).into_os_string()]);
        args
    };
    let by_binary = options("binary");
    let o = Command::new(raffm_e2e::bin("raffm-aggregate"))
        .args(&by_binary[1..])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = stage::Args::try_parse_from(options("library")).unwrap();
    let record = stage::run(&args).unwrap();
    let weights = |out: &str| std::fs::read(d.join(out).join("model.safetensors")).unwrap();
    assert_eq!(weights("binary"), weights("library"));
    match record {
        StageRecord::Aggregate(a) => {
            assert_eq!(a.metrics.clients, 1);
            assert_eq!(a.clients[0].client, "c001");
        }
        other => panic!("{other:?}"),
    }
}
