//! The binary's interface; deployment on a real (fixture) run is tested with the round in
//! crates/aggregate/tests/round.rs.

use std::process::Command;

fn deploy_scale() -> Command {
    Command::new(raffm_e2e::bin("raffm-deploy-scale"))
}

#[test]
fn help_describes_the_stage() {
    let out = deploy_scale().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("device memory") && text.contains("--memory-scale"));
}

#[test]
fn a_missing_global_model_is_one_line_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("deploy");
    let out = deploy_scale()
        .args(["--global", "/no/such/global", "--budgets", "b.json"])
        .args(["--partition", "p.json", "--output"])
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/no/such/global"), "{stderr}");
    assert!(!output.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "staging left behind"
    );
}
