//! `raffm-extract` as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

use raffm::core::checkpoint::Checkpoint;
use raffm::core::elastic::index::IndexMap;
use raffm::fl::cost::{CostModel, TrainingShape};
use raffm::fl::pipeline::{make_budgets, Pipeline};
use raffm::models::families::bert::{tiny_model, Variant};

fn extract(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(raffm_e2e::bin("raffm-extract"));
    cmd.args(args).arg("--quiet");
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    cmd.output().unwrap()
}

fn global(dir: &Path) -> Checkpoint {
    let config = tiny_model(Variant::Bert, 3, 24, 4, 40, false);
    let labels = vec!["a".to_string(), "b".to_string()];
    let c = Checkpoint::random(&config, 1).with_classification_head(&labels, 2);
    c.save(dir).unwrap();
    raffm::core::fixtures::write_vocabulary(dir);
    Checkpoint::load(dir).unwrap()
}

#[test]
fn a_full_budget_gives_a_bit_identical_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("global");
    global(&g);
    let out = dir.path().join("clients");
    for strategy in ["salient", "static", "rolling", "random"] {
        let o = extract(
            &[
                "--param-fraction",
                "1",
                "--clients",
                strategy,
                "--strategy",
                strategy,
                "--round",
                "5",
            ],
            &[("--global", &g), ("--out-dir", &out)],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(g.join("model.safetensors")).unwrap(),
            std::fs::read(out.join(strategy).join("model.safetensors")).unwrap(),
            "{strategy}: full budget changed the weights"
        );
    }
}

#[test]
fn a_round_of_clients_from_budgets_json_with_manifests_and_index_maps() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("global");
    let global = global(&g);
    let pipeline: Pipeline = serde_json::from_value(serde_json::json!({
        "name": "t", "model": g, "clients": 6,
        "tiers": [{"name": "s", "share": 1, "parameter_fraction": 0.6}, {"name": "l", "share": 1, "parameter_fraction": 0.95}],
        "search_space": {"heads": [0.5, 1.0], "head_dim": [0.5, 1.0], "ffn": [0.5, 1.0],
                         "hidden": [0.5, 0.75, 1.0], "layers": [0.67, 1.0]},
        "depth_policy": "top"
    }))
    .unwrap();
    let full =
        CostModel::for_checkpoint(&global, TrainingShape::default()).cost(&global.config.widths());
    let budgets = make_budgets(&pipeline, full, 0);
    let budgets_path = dir.path().join("budgets.json");
    std::fs::write(&budgets_path, serde_json::to_string(&budgets).unwrap()).unwrap();
    let out = dir.path().join("round-1");
    let o = extract(
        &[
            "--clients",
            "c001,c004",
            "--round",
            "1",
            "--policy",
            "sample",
            "--seed",
            "9",
        ],
        &[
            ("--global", &g),
            ("--out-dir", &out),
            ("--budgets", &budgets_path),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for id in ["c001", "c004"] {
        let sub = Checkpoint::load(out.join(id)).unwrap();
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(id).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let budget = budgets.client(id).unwrap().train.max_parameters.unwrap();
        assert!(sub.parameter_count() <= budget);
        assert_eq!(m["parameter_count"], sub.parameter_count());
        assert_eq!(sub.parameter_count(), sub.config.parameter_count());
        assert_eq!(m["placement"]["client"], id);
        assert_eq!(
            m["placement"]["global_sha256"],
            global.weights_sha256().unwrap()
        );
        assert_eq!(m["budget"]["max_parameters"], budget);
        assert_eq!(m["depth_policy"], "top");
        // The index map gathers exactly this sub-model out of the global one.
        let map: IndexMap = serde_json::from_value(m["placement"]["index_map"].clone()).unwrap();
        assert_eq!(map.len(), sub.tensors.len());
        for (name, index) in &map {
            assert!(
                index
                    .gather(&global.tensors[index.source(name)])
                    .bit_eq(&sub.tensors[name]),
                "{id} {name}"
            );
        }
    }
}

#[test]
fn an_infeasible_budget_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("global");
    global(&g);
    let out = dir.path().join("clients");
    let o = extract(
        &[
            "--max-params",
            "10",
            "--clients",
            "tiny",
            "--strategy",
            "static",
        ],
        &[("--global", &g), ("--out-dir", &out)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("client tiny") && err.contains("infeasible budget (at most 10 parameters)"),
        "{err}"
    );
    assert!(!out.join("tiny").exists());
}

/// Without budgets.json the search space is the default pipeline's, hidden size and depth
/// included: 30% of MiniLM fits (with the per-layer axes alone the smallest sub-model is
/// about 63% of it, and the budget was infeasible).
#[test]
fn thirty_percent_of_minilm_fits_the_built_in_space() {
    let assets = raffm_e2e::assets();
    let minilm = assets.join("minilm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clients");
    let o = extract(
        &["--param-fraction", "0.30", "--strategy", "static"],
        &[("--global", &minilm), ("--out-dir", &out)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sub = Checkpoint::load(out.join("client")).unwrap();
    let full = Checkpoint::load(&minilm).unwrap().parameter_count();
    let fraction = sub.parameter_count() as f64 / full as f64;
    assert!((0.25..=0.30).contains(&fraction), "{fraction}");
    let widths = sub.config.widths();
    assert!(widths.global.get(raffm::Axis::Hidden) < 384 || widths.layers.len() < 6);
}

/// The stage run in-process, from the same options, writes the binary's sub-models byte
/// for byte and returns one extract record per client, in client order.
#[test]
fn the_stage_in_process_extracts_what_the_binary_extracts() {
    use clap::Parser;
    use raffm::core::manifest::StageRecord;
    use raffm::stages::extract;
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("global");
    global(&g);
    let options = |out: &str| {
        let (g, out) = (g.to_str().unwrap(), dir.path().join(out));
        let mut args = vec!["raffm-extract", "--global", g, "--clients", "a,b"];
        args.extend(["--param-fraction", "0.5", "--round", "2", "--quiet"]);
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.extend(["--out-dir".to_string(), out.to_str().unwrap().to_string()]);
        args
    };
    let by_binary = options("binary");
    let o = Command::new(raffm_e2e::bin("raffm-extract"))
        .args(&by_binary[1..])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = extract::Args::try_parse_from(options("library")).unwrap();
    let records = extract::run(&args).unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| matches!(r, StageRecord::Extract(_))));
    for client in ["a", "b"] {
        let weights = |out: &str| {
            let path = dir.path().join(out).join(client).join("model.safetensors");
            std::fs::read(path).unwrap()
        };
        assert_eq!(weights("binary"), weights("library"), "{client}");
    }
}
