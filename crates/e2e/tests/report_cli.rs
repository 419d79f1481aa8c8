//! `raffm-report` on a small hand-written run folder: two pipelines, two rounds of two
//! clients each, deploy and SPP summaries for one of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const PIPELINES: [&str; 2] = ["alpha", "beta"];
const ROUNDS: u64 = 2;
const CLIENTS: u64 = 2;
const FULL: u64 = 5_000_000;

/// The fixture's numbers: pipeline p (0, 1), round r (1, 2), client k (0, 1).
fn parameters(p: u64, r: u64, k: u64) -> u64 {
    1_000_000 * (p + 1) + 100_000 * r + 10_000 * k
}
fn downloaded(p: u64, r: u64, k: u64) -> u64 {
    4 * parameters(p, r, k)
}
fn uploaded(p: u64, r: u64, k: u64) -> u64 {
    4 * parameters(p, r, k) - 1000 * k
}

/// Closed form of the fixture's traffic up to round `r`: per round, two clients download
/// and upload 4 bytes per parameter (8 per client and parameter), client 1 uploads 1000
/// bytes less; sum over rounds 1..=r of 8 * (2e6 (p+1) + 2e5 r' + 1e4) - 1000.
fn cumulative(p: u64, r: u64) -> u64 {
    8 * (2_000_000 * (p + 1) * r + 100_000 * r * (r + 1) + 10_000 * r) - 1000 * r
}

/// A manifest as a stage writes it: the common fields around `record`.
fn manifest(record: Value) -> Value {
    let mut m = json!({"tool": "test", "tool_version": "0", "command": [], "parameters": null, "inputs": []});
    for (k, v) in record.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

fn write(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Writes `<root>/<pipeline>/` for every pipeline; returns their paths.
fn fixture(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for (p, name) in PIPELINES.iter().enumerate() {
        let p = p as u64;
        let dir = root.join(name);
        write(
            &dir.join("budgets.json"),
            &json!({"pipeline": name, "full_model": {"parameters": FULL, "layer_parameters": 3_000_000},
                    "clients": [{"client": "c0", "tier": "small"}, {"client": "c1", "tier": "large"}]}),
        );
        write(
            &dir.join("round-0/eval.json"),
            &json!({"metrics": {"examples": 100, "accuracy": 0.5, "macro_f1": 0.4, "mcc": 0.0}}),
        );
        for r in 1..=ROUNDS {
            let rd = dir.join(format!("round-{r}"));
            let clients: Vec<Value> = (0..CLIENTS)
                .map(|k| json!({"client": format!("c{k}"), "weight": 50.0, "parameters": parameters(p, r, k), "update_norm": 1.0}))
                .collect();
            let mean = (0..CLIENTS).map(|k| parameters(p, r, k)).sum::<u64>() as f64 / 2.0;
            let metrics = json!({
                "clients": CLIENTS, "mean_client_parameters": mean, "mean_client_bytes": 4.0 * mean, "updated_fraction": 1.0,
                "validation": {"examples": 100, "accuracy": 0.6 + 0.1 * r as f64 + 0.01 * p as f64,
                               "macro_f1": 0.55 + 0.1 * r as f64, "mcc": 0.2 * r as f64}
            });
            let global = manifest(
                json!({"stage": "aggregate", "metrics": metrics, "clients": clients,
                "skipped": [], "coverage": {"updated_elements": 1, "total_elements": 1}, "tensors": []}),
            );
            write(&rd.join("global/manifest.json"), &global);
            for k in 0..CLIENTS {
                let c = format!("c{k}");
                write(
                    &rd.join("extracted").join(&c).join("manifest.json"),
                    &json!({"parameter_count": parameters(p, r, k), "bytes_on_wire": downloaded(p, r, k)}),
                );
                write(
                    &rd.join("trained").join(&c).join("manifest.json"),
                    &manifest(
                        json!({"stage": "local-train", "client": c, "num_examples": 50, "parameter_count": parameters(p, r, k),
                            "metrics": {"bytes_downloaded": downloaded(p, r, k), "bytes_uploaded": uploaded(p, r, k),
                                        "wall_seconds": 1.5, "examples_seen": 50, "steps": 2, "final_loss": 0.5,
                                        "examples_per_second": 33.3, "step_losses": [0.7, 0.5]}}),
                    ),
                );
            }
        }
        if p == 0 {
            let model = |params: u64, acc: f64| {
                json!({"parameters": params, "bytes": 4 * params, "inference_memory_bytes": 1,
                       "architecture": [], "accuracy": acc, "macro_f1": acc})
            };
            write(
                &dir.join("round-2/deploy/summary.json"),
                &json!({"global": "alpha/round-2/global", "round": 2, "strategy": "salient", "memory_scale": 1.0,
                        "evaluation": {"split": "validation", "examples": 100},
                        "clients": [
                            {"client": "c0", "tier": "small", "inference_budget_bytes": 1, "train": model(1_200_000, 0.7), "deployed": model(FULL, 0.8)},
                            {"client": "c1", "tier": "large", "inference_budget_bytes": 1, "train": model(1_300_000, 0.75), "deployed": model(FULL, 0.8)}],
                        "tiers": [
                            {"tier": "small", "clients": 1, "train_parameters": 1_200_000, "train_accuracy": 0.7, "deployed_parameters": FULL, "deployed_accuracy": 0.8},
                            {"tier": "large", "clients": 1, "train_parameters": 1_300_000, "train_accuracy": 0.75, "deployed_parameters": FULL, "deployed_accuracy": 0.8}]}),
            );
            let row = |fraction: f64, kind: &str, sample: Option<u64>, with: f64, without: f64| {
                json!({"fraction": fraction, "kind": kind, "sample": sample, "parameters": 2_000_000,
                       "architecture": [], "accuracy_spp": with, "accuracy_no_spp": without})
            };
            write(
                &dir.join("round-2/spp.json"),
                &json!({"global": "alpha/round-2/global", "round": 2, "evaluation": {"split": "validation", "examples": 100},
                        "full_parameters": FULL, "layer_parameters": 3_000_000,
                        "rows": [row(0.25, "largest", None, 0.7, 0.55), row(0.25, "sample", Some(0), 0.68, 0.5),
                                 row(0.5, "largest", None, 0.75, 0.65), row(0.5, "sample", Some(0), 0.72, 0.6),
                                 row(1.0, "largest", None, 0.8, 0.8)]}),
            );
        }
        dirs.push(dir);
    }
    dirs
}

fn report(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(raffm_e2e::bin("raffm-report"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn metrics_has_a_line_per_round_with_cumulative_bytes_and_reruns_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    for (p, dir) in dirs.iter().enumerate() {
        let p = p as u64;
        let o = report(&["metrics".as_ref(), dir.as_os_str(), "--csv".as_ref()]);
        ok(&o);
        let path = dir.join("metrics.jsonl");
        let first = std::fs::read(&path).unwrap();
        let lines: Vec<Value> = std::str::from_utf8(&first)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), ROUNDS as usize + 1);
        for (r, line) in lines.iter().enumerate() {
            let r = r as u64;
            assert_eq!(line["pipeline"], PIPELINES[p as usize]);
            assert_eq!(line["round"], r);
            assert_eq!(
                line["cumulative_bytes"],
                cumulative(p, r),
                "round {r}: {line}"
            );
            if r == 0 {
                assert_eq!(line["accuracy"], 0.5);
                assert_eq!(line["round_bytes"], 0);
                for field in [
                    "clients",
                    "mean_client_parameters",
                    "bytes_down_per_client",
                    "local_train_seconds",
                ] {
                    assert!(line[field].is_null(), "{field}: {line}");
                }
            } else {
                assert_eq!(line["round_bytes"], cumulative(p, r) - cumulative(p, r - 1));
                assert_eq!(line["clients"], CLIENTS);
                let down = (downloaded(p, r, 0) + downloaded(p, r, 1)) as f64 / 2.0;
                assert_eq!(line["bytes_down_per_client"].as_f64().unwrap(), down);
                assert_eq!(line["bytes_up_per_client"].as_f64().unwrap(), down - 500.0);
                assert_eq!(line["local_train_seconds"].as_f64().unwrap(), 3.0);
                let acc = 0.6 + 0.1 * r as f64 + 0.01 * p as f64;
                assert!((line["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
                let mib =
                    4.0 * (parameters(p, r, 0) + parameters(p, r, 1)) as f64 / 2.0 / 1048576.0;
                assert!((line["mean_client_mib"].as_f64().unwrap() - mib).abs() < 1e-9);
            }
        }
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), ROUNDS as usize + 2, "{csv}");
        assert!(csv.starts_with("pipeline,round,accuracy,"), "{csv}");
        // Rewritten whole: a second run gives the same file, no duplicated lines.
        ok(&report(&["metrics".as_ref(), dir.as_os_str()]));
        assert_eq!(std::fs::read(&path).unwrap(), first);
    }
}

/// The relative image links of a Markdown text.
fn image_links(md: &str) -> Vec<String> {
    md.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &md[i + 2..];
            let link = &rest[..rest.find(')')?];
            link.ends_with(".svg").then(|| link.to_string())
        })
        .collect()
}

fn assert_valid_svg(path: &Path, names: &[&str]) {
    let svg = std::fs::read_to_string(path).unwrap();
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "{}",
        path.display()
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(
        ["<polyline", "<path", "<circle"]
            .iter()
            .any(|e| svg.contains(e)),
        "{}: no marks",
        path.display()
    );
    // The text of every <text> element, trimmed (plotters writes it on its own line).
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim())
        })
        .collect();
    for name in names {
        assert!(
            texts
                .iter()
                .any(|t| *t == *name || t.starts_with(&format!("{name}:"))),
            "{}: no text `{name}` in {texts:?}",
            path.display()
        );
    }
}

#[test]
fn build_writes_a_report_linking_valid_svgs_of_every_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    let out = tmp.path().join("report");
    let o = report(&[
        "build".as_ref(),
        "--runs".as_ref(),
        dirs[0].as_os_str(),
        dirs[1].as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    ok(&o);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in PIPELINES {
        assert!(md.contains(name), "{md}");
    }
    for dir in &dirs {
        assert!(
            md.contains(&dir.display().to_string()),
            "run folder not named:\n{md}"
        );
    }
    let links = image_links(&md);
    let expected = [
        "accuracy.svg",
        "client-sizes.svg",
        "communication.svg",
        "deploy-alpha.svg",
        "spp-alpha.svg",
    ];
    assert_eq!(links, expected, "{md}");
    for link in &links {
        let names: &[&str] = if link.contains("alpha") {
            &["alpha"]
        } else {
            &PIPELINES
        };
        assert_valid_svg(&out.join(link), names);
    }
    // beta has neither deploy nor SPP data: the sections say how to get them.
    assert!(md.contains("`make deploy N=2 PIPELINE=beta`"), "{md}");
    assert!(md.contains("`make ablation N=2 PIPELINE=beta`"), "{md}");
    // The tables carry the numbers: round 2 accuracy, the SPP difference at 25%.
    assert!(md.contains("| 2 | 0.8000 |"), "{md}");
    assert!(md.contains("| 25% |") && md.contains("+0.1500"), "{md}");
    // The same inputs give the same report.
    ok(&report(&[
        "build".as_ref(),
        "--runs".as_ref(),
        dirs[0].as_os_str(),
        dirs[1].as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]));
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), md);
}

#[test]
fn a_missing_run_folder_fails_with_exit_1_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    let missing = tmp.path().join("no-such-pipeline");
    let out = tmp.path().join("report");
    for o in [
        report(&["metrics".as_ref(), missing.as_os_str()]),
        report(&[
            "build".as_ref(),
            "--runs".as_ref(),
            dirs[0].as_os_str(),
            missing.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ]),
    ] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
    assert!(!out.join("report.md").exists());
}

#[test]
fn a_run_folder_without_rounds_or_with_a_bad_manifest_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = report(&["metrics".as_ref(), empty.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("no finished rounds"),
        "{err}"
    );

    let bad = dirs[1].join("round-2/trained/c1/manifest.json");
    std::fs::write(&bad, r#"{"metrics": {"bytes_downloaded": "many"}}"#).unwrap();
    let o = report(&["metrics".as_ref(), dirs[1].as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(!dirs[1].join("metrics.jsonl").exists());
}
