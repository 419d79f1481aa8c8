//! The whole round through the Makefile, on a fixture-sized pipeline: a tiny random BERT
//! with its own vocabulary and a JSONL dataset.

use std::path::{Path, PathBuf};
use std::process::Command;

use raffm_e2e::*;

#[test]
fn two_rounds_are_deterministic_resumable_and_a_rerun_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture(dir.path());
    let (a, b) = two_deterministic_rounds(&pipeline, dir.path());

    // The global model's manifest carries the round's evaluation and client sizes.
    let m: serde_json::Value =
        serde_json::from_slice(&read(a.join("tiny/round-2/global/manifest.json"))).unwrap();
    assert!(m["metrics"]["validation"]["accuracy"].is_number(), "{m}");
    assert_eq!(m["metrics"]["clients"], 3);
    let metrics = String::from_utf8(read(a.join("tiny/metrics.jsonl"))).unwrap();
    assert_eq!(metrics.lines().count(), 3, "rounds 0 to 2:\n{metrics}");

    // Every checkpoint the round wrote has the parameter count its description gives,
    // and its manifest records it; the search space reached narrower hidden sizes and
    // fewer layers.
    let mut checkpoints = 0;
    let mut cut = (false, false);
    for dir in walk(&a.join("tiny")) {
        if !dir.join("config.json").is_file() {
            continue;
        }
        let c = raffm::Checkpoint::load(&dir).unwrap();
        assert_eq!(
            c.parameter_count(),
            c.config.parameter_count(),
            "{}",
            dir.display()
        );
        let m: serde_json::Value =
            serde_json::from_slice(&read(dir.join("manifest.json"))).unwrap();
        assert_eq!(
            m["parameter_count"],
            c.parameter_count(),
            "{}",
            dir.display()
        );
        let (w, g) = (c.config.widths(), c.config.widths().global_layers.len());
        cut.0 |= w.global.get(raffm::Axis::Hidden) < 32;
        cut.1 |= g < 2;
        checkpoints += 1;
    }
    assert!(checkpoints >= 2 * (1 + 3 + 3 + 1), "{checkpoints}");
    assert_eq!(
        cut,
        (true, true),
        "no sub-model cut the hidden size and depth"
    );

    // A second call does nothing.
    let stamp = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(global_weights(&a, 2));
    let again = make_round(&pipeline, &a, 2);
    assert!(
        !again.contains("raffm-local-train") && !again.contains("raffm-aggregate"),
        "{again}"
    );
    assert_eq!(stamp(global_weights(&a, 2)), before);

    // Lose one client's training and the round's result (as after `kill -9`): the re-run
    // trains only that client and reproduces the same global model.
    let participants = String::from_utf8(read(a.join("tiny/round-2/participants.txt"))).unwrap();
    let clients: Vec<&str> = participants.trim().split(',').collect();
    let kept = a.join(format!("tiny/round-2/trained/{}/manifest.json", clients[1]));
    let kept_time = stamp(kept.clone());
    std::fs::remove_dir_all(a.join(format!("tiny/round-2/trained/{}", clients[0]))).unwrap();
    std::fs::remove_dir_all(a.join("tiny/round-2/global")).unwrap();
    let resumed = make_round(&pipeline, &a, 2);
    assert_eq!(resumed.matches("raffm-local-train").count(), 1, "{resumed}");
    assert_eq!(stamp(kept), kept_time);
    assert_eq!(read(global_weights(&a, 2)), read(global_weights(&b, 2)));

    // A dry run of a finished run builds once and does nothing else; of the next round, it
    // shows the clients the seeded draw will pick, and their commands.
    let (ok, dry) = make_with(&["-n", "round"], &pipeline, &a, 2);
    assert!(ok, "{dry}");
    assert_eq!(dry.matches("cargo build").count(), 1, "{dry}");
    assert!(
        !dry.contains("raffm-local-train") && !dry.contains("raffm-aggregate"),
        "{dry}"
    );
    let (ok, dry) = make_with(&["-n", "round", "NO_BUILD=1"], &pipeline, &a, 3);
    assert!(ok, "{dry}");
    assert_eq!(dry.matches("raffm-local-train").count(), 3, "{dry}");
    assert!(dry.contains("round-3/trained/c0"), "{dry}");
    assert!(
        !a.join("tiny/round-3").exists(),
        "a dry run wrote something"
    );

    // A participants file that is not the seeded draw is refused, naming it.
    std::fs::create_dir_all(a.join("tiny/round-3")).unwrap();
    std::fs::write(a.join("tiny/round-3/participants.txt"), "c000,c001\n").unwrap();
    let (ok, text) = make_with(&["round", "NO_BUILD=1"], &pipeline, &a, 3);
    assert!(
        !ok && text.contains("participants.txt") && text.contains("not the seeded draw"),
        "{text}"
    );
    std::fs::remove_dir_all(a.join("tiny/round-3")).unwrap();

    // A pipeline file that changed since the run was made is refused, not silently redone.
    let changed = dir.path().join("changed.json");
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("\"seed\":3", "\"seed\":4");
    std::fs::write(&changed, text).unwrap();
    let (ok, text) = make_with(&["round", "NO_BUILD=1"], &changed, &a, 2);
    assert!(!ok && text.contains("differs from the pipeline"), "{text}");
    // A fresh copy of the same pipeline (newer file times) redoes nothing.
    let same = dir.path().join("same.json");
    std::fs::copy(&pipeline, &same).unwrap();
    let again = make_round(&same, &a, 2);
    assert!(
        !again.contains("raffm-partition") && !again.contains("raffm-local-train"),
        "{again}"
    );

    // Clients got their own vocabularies: fewer token rows, a tokenizer to match, and a
    // manifest that says how many tokens came from the data and how many are decoys.
    let extracted = a.join("tiny/round-2/extracted");
    for client in &clients {
        let sub = raffm::Checkpoint::load(extracted.join(client)).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&read(extracted.join(client).join("manifest.json"))).unwrap();
        let v = &m["vocabulary"];
        assert_eq!(v["decoys"], 3, "{m}");
        let tokens = v["tokens"].as_u64().unwrap() as usize;
        assert_eq!(sub.config.vocab_size(), tokens);
        assert!(tokens < 64, "{tokens}");
        let vocab_txt = String::from_utf8(read(extracted.join(client).join("vocab.txt"))).unwrap();
        assert_eq!(vocab_txt.lines().count(), tokens);
    }
}

/// A picture the report links: an SVG with something drawn in it.
fn assert_valid_svg(path: &Path) {
    let text = String::from_utf8(read(path.to_path_buf())).unwrap();
    assert!(
        text.trim_start().starts_with("<svg") || text.trim_start().starts_with("<?xml"),
        "{} is not SVG",
        path.display()
    );
    assert!(
        text.trim_end().ends_with("</svg>"),
        "{} is cut short",
        path.display()
    );
    assert!(
        ["<polyline", "<path", "<circle", "<rect"]
            .iter()
            .any(|e| text.contains(e)),
        "{} draws nothing",
        path.display()
    );
}

#[test]
fn deploy_ablation_and_report_after_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture(dir.path());
    let a = dir.path().join("a");
    make("deploy", &pipeline, &a, 1);
    make("ablation", &pipeline, &a, 1);

    // Every client gets a deployed model no smaller than its training sub-model, within
    // its device memory, written as a checkpoint of exactly that size; clients with the
    // same model share its file.
    let summary = json(a.join("tiny/round-1/deploy/summary.json"));
    let clients = summary["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 6);
    let fits = |c: &serde_json::Value, m: &serde_json::Value, cost: &str| {
        c["device_memory_bytes"]
            .as_u64()
            .is_none_or(|d| m[cost].as_u64().unwrap() <= d)
    };
    let mut by_size: std::collections::BTreeMap<u64, Vec<PathBuf>> = Default::default();
    for c in clients {
        let (train, deployed) = (&c["train"], &c["deployed"]);
        let p = |m: &serde_json::Value| m["parameters"].as_u64().unwrap();
        assert!(p(deployed) >= p(train), "{c}");
        assert!(fits(c, train, "train_memory_bytes"), "{c}");
        assert!(fits(c, deployed, "inference_memory_bytes"), "{c}");
        let path = PathBuf::from(deployed["path"].as_str().unwrap());
        let model = raffm::Checkpoint::load(&path).unwrap();
        assert_eq!(model.parameter_count(), p(deployed));
        assert!(deployed["accuracy"].is_number() && train["accuracy"].is_number());
        by_size
            .entry(p(deployed))
            .or_default()
            .push(path.join("model.safetensors"));
    }
    {
        use std::os::unix::fs::MetadataExt;
        let shared = by_size
            .values()
            .find(|paths| paths.len() > 1)
            .expect("two clients share a model");
        let inode = |p: &PathBuf| std::fs::metadata(p).unwrap().ino();
        assert!(
            shared.iter().all(|p| inode(p) == inode(&shared[0])),
            "copies, not links"
        );
    }
    let csv = String::from_utf8(read(a.join("tiny/round-1/deploy/summary.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 7);

    // A tight device memory: clients keep at least what they trained, and a larger model
    // is deployed only where it fits.
    let tight = dir.path().join("tight");
    let out = Command::new(bin_dir().join("raffm-deploy-scale"))
        .args(["--global", a.join("tiny/round-1/global").to_str().unwrap()])
        .args(["--budgets", a.join("tiny/budgets.json").to_str().unwrap()])
        .args([
            "--partition",
            a.join("tiny/partition.json").to_str().unwrap(),
        ])
        .args(["--memory-scale", "0.3", "--quiet"])
        .args(["--output", tight.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in json(tight.join("summary.json"))["clients"]
        .as_array()
        .unwrap()
    {
        let (t, d) = (&c["train"]["parameters"], &c["deployed"]["parameters"]);
        assert!(
            d == t || fits(c, &c["deployed"], "inference_memory_bytes"),
            "{c}"
        );
    }

    // The ablation evaluates every configuration with and without prioritization.
    let spp = json(a.join("tiny/round-1/spp.json"));
    let rows = spp["rows"].as_array().unwrap();
    // Fractions below the smallest sub-model of the space are skipped and recorded.
    let skipped = spp["skipped"].as_array().unwrap().len();
    assert_eq!(
        rows.len(),
        (3 - skipped) * 3,
        "feasible fractions x (largest + 2 samples)"
    );
    assert!(skipped < 3);
    assert!(rows
        .iter()
        .all(|r| r["accuracy_spp"].is_number() && r["accuracy_no_spp"].is_number()));

    // The report names the pipeline and links pictures that exist and are drawn.
    let report_dir = a.join("tiny/report");
    let report = String::from_utf8(read(report_dir.join("report.md"))).unwrap();
    assert!(report.contains("tiny"));
    let linked: Vec<&str> = report
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|link| link.ends_with(".svg"))
        .collect();
    assert!(linked.len() >= 5, "expected five charts, found {linked:?}");
    for link in linked {
        assert_valid_svg(&report_dir.join(link));
    }
}

#[test]
fn dp_rounds_record_their_epsilon_and_a_round_past_the_target_does_not_start() {
    use raffm::fl::privacy::accountant::epsilon;
    let (q, sigma, delta) = (0.5, 1.0, 1e-5);
    // A target between the loss after two rounds and after three.
    let target = (epsilon(q, sigma, 2, delta).epsilon + epsilon(q, sigma, 3, delta).epsilon) / 2.0;
    let dir = tempfile::tempdir().unwrap();
    let dp = serde_json::json!({"noise_multiplier": sigma, "clip_norm": 0.5, "sample_rate": q,
                                "delta": delta, "target_epsilon": target, "seed": 11});
    let pipeline = fixture_with(dir.path(), |p| {
        p["server"] = serde_json::json!({"dp": dp.clone()});
    });
    // A client vocabulary tells the server which tokens a client's data holds: refused.
    let a = dir.path().join("a");
    let (ok, text) = make_with(&["round", "NO_BUILD=1"], &pipeline, &a, 1);
    assert!(
        !ok && text.contains("vocabulary: client") && text.contains("server.dp"),
        "{text}"
    );
    std::fs::remove_dir_all(&a).unwrap();
    let pipeline = fixture_with(dir.path(), |p| {
        p["server"] = serde_json::json!({"dp": dp.clone()});
        p["vocabulary"] = "full".into();
    });
    let out = make_round(&pipeline, &a, 2);
    assert!(
        out.contains("--sample-rate 0.5") && out.contains("--dp-expected-clients 3"),
        "{out}"
    );
    for r in 1..=2u64 {
        let m = json(a.join(format!("tiny/round-{r}/global/manifest.json")));
        let want = epsilon(q, sigma, r, delta).epsilon;
        let got = m["privacy"]["epsilon"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-12,
            "round {r}: {got} against {want}"
        );
        assert_eq!(m["metrics"]["epsilon"], m["privacy"]["epsilon"]);
        assert_eq!(m["privacy"]["noise_seed"]["seed"], 11);
        // Every element got noise, held or not.
        assert_eq!(
            m["coverage"]["updated_elements"],
            m["coverage"]["total_elements"]
        );
        assert!(m["tensors"][0]["noise_std"].as_f64().unwrap() > 0.0, "{m}");
    }
    let metrics = String::from_utf8(read(a.join("tiny/metrics.jsonl"))).unwrap();
    assert!(
        metrics.lines().nth(2).unwrap().contains("\"epsilon\":"),
        "{metrics}"
    );
    let (ok, text) = make_with(&["round", "NO_BUILD=1"], &pipeline, &a, 3);
    assert!(
        !ok && text.contains("past the target epsilon") && text.contains("rounds 1-2"),
        "{text}"
    );
    assert!(
        !a.join("tiny/round-3/participants.txt").exists(),
        "round 3 started"
    );
}

#[test]
fn an_attacker_is_recorded_in_its_manifest_and_the_median_rule_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture_with(dir.path(), |p| {
        p["server"] = serde_json::json!({"rule": "median"});
        p["attack"] = serde_json::json!({"kind": "scale", "factor": 100, "per_round": 1});
    });
    let a = dir.path().join("a");
    make_round(&pipeline, &a, 1);
    let round = a.join("tiny/round-1");
    let drawn = std::fs::read_to_string(round.join("participants.txt")).unwrap();
    let clients: Vec<&str> = drawn.trim().split(',').collect();
    for (i, c) in clients.iter().enumerate() {
        let m = json(round.join(format!("trained/{c}/manifest.json")));
        match i {
            0 => assert_eq!(
                m["attack"],
                serde_json::json!({"kind": "scale", "factor": 100.0})
            ),
            _ => assert!(m.get("attack").is_none(), "{c} attacked"),
        }
    }
    let global = json(round.join("global/manifest.json"));
    assert_eq!(global["parameters"]["rule"]["rule"], "median");
    assert_eq!(global["parameters"]["weighting"], "uniform");
    let aggregated = global["clients"].as_array().unwrap();
    assert_eq!(aggregated[0]["attack"]["kind"], "scale");
    // The attacker's update is a hundred times an honest one's size.
    let norm = |i: usize| aggregated[i]["update_norm"].as_f64().unwrap();
    assert!(norm(0) > 10.0 * norm(1).max(norm(2)), "{aggregated:?}");
    assert!(global["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["single_holder"].as_u64() > Some(0)));
}
