//! A federated LoRA round through the stages, by hand, on the real SmolLM2-135M-Instruct
//! (`make test` imports it): partition a decoder task, init a global adapter, extract a
//! rank-4 client on the whole base and a rank-2 client on a half-width base sub-model,
//! train both, aggregate under FedAvg, the median, FlexLoRA and DP-FedAvg, evaluate,
//! merge.

use std::path::{Path, PathBuf};

use raffm::core::manifest::{Manifest, StageRecord};
use raffm::fl::adapter::{factor_name, factors, AdapterFolder};
use raffm::models::families::llama::lora::LoraAdapter;
use raffm::Checkpoint;
use raffm_e2e::{ok, run};

fn smollm2() -> PathBuf {
    let assets = raffm_e2e::assets();
    let dir = assets.join("smollm2-135m-instruct");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run `make assets-llm` (or `make test`)"
    );
    dir
}

/// 24 sentiment questions as multiple-choice JSON lines.
fn task(dir: &Path) -> PathBuf {
    let reviews = [
        ("a warm, funny and moving film", 1),
        ("dull, overlong and badly acted", 0),
        ("one of the best films of the year", 1),
        ("a tedious mess from start to finish", 0),
    ];
    let mut lines = String::new();
    for i in 0..24 {
        let (text, label) = reviews[i % reviews.len()];
        lines += &serde_json::json!({
            "prompt": format!("Review: {text} ({i})\nSentiment:"),
            "options": [" negative", " positive"],
            "answer": label,
        })
        .to_string();
        lines.push('\n');
    }
    let path = dir.join("task.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// `dir/name` as a string that lives as long as the test.
fn path_in(dir: &Path, name: &str) -> &'static str {
    Box::leak(
        dir.join(name)
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The partition, budgets and round-0 adapter of a two-client pipeline: c000 rank 4 on
/// the whole base, c001 rank 2 on half the query heads and FFN neurons.
fn set_up(tmp: &Path) {
    let (model, data) = (smollm2(), task(tmp));
    let at = |name: &str| path_in(tmp, name);
    ok(
        "raffm-partition",
        &[
            "--data",
            s(&data),
            "--format",
            "llm:jsonl",
            "--clients",
            "2",
            "--validation-fraction",
            "0.25",
            "--seed",
            "0",
            "--output",
            at("partition.json"),
        ],
    );
    let pipeline = serde_json::json!({
        "kind": "llm-lora", "name": "t", "model": s(&model), "clients": 2,
        "data": {"path": s(&data), "format": "jsonl"},
        "lora": {"ranks": [4, 2]}, "local": {"batch_size": 4},
        "submodels": [{}, {"width": 0.5, "hidden": 1}]
    });
    std::fs::write(at("pipeline.json"), pipeline.to_string()).unwrap();
    ok(
        "raffm-budgets",
        &[
            "--pipeline",
            at("pipeline.json"),
            "--output",
            at("budgets.json"),
        ],
    );
    ok(
        "raffm-init-head",
        &[
            "--model",
            s(&model),
            "--lora-r",
            "4",
            "--seed",
            "3",
            "--output",
            at("global"),
        ],
    );
    ok(
        "raffm-extract",
        &[
            "--global",
            at("global"),
            "--budgets",
            at("budgets.json"),
            "--round",
            "1",
            "--bases",
            at("bases"),
            "--out-dir",
            at("extracted"),
            "--quiet",
        ],
    );
    for client in ["c000", "c001"] {
        ok(
            "raffm-local-train",
            &[
                "--model",
                at(&format!("extracted/{client}")),
                "--partition",
                at("partition.json"),
                "--client",
                client,
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "1e-3",
                "--seed",
                "1",
                "--quiet",
                "--output",
                at(&format!("trained/{client}")),
            ],
        );
    }
}

fn aggregate(tmp: &Path, rule: &str, out: &str) {
    let at = |name: &str| path_in(tmp, name);
    ok(
        "raffm-aggregate",
        &[
            "--global",
            at("global"),
            "--updates",
            at("trained/c000"),
            at("trained/c001"),
            "--rule",
            rule,
            "--weighting",
            "uniform",
            "--round",
            "1",
            "--partition",
            at("partition.json"),
            "--eval-max-examples",
            "6",
            "--quiet",
            "--output",
            at(out),
        ],
    );
}

#[test]
fn a_lora_round_through_the_stages_places_each_client_by_rank_and_block() {
    let tmp = tempfile::tempdir().unwrap();
    set_up(tmp.path());
    let at = |name: &str| path_in(tmp.path(), name);
    let model = smollm2();

    // The half-width client trains on a base sub-model written once into bases/; the
    // whole-base client on the base itself. Each manifest names its base.
    let extracted =
        |c: &str| AdapterFolder::load(Path::new(at(&format!("extracted/{c}")))).unwrap();
    let (e0, e1) = (extracted("c000"), extracted("c001"));
    assert_eq!(e0.base.path, model);
    assert!(e1.base.path.starts_with(at("bases")), "{:?}", e1.base.path);
    assert_eq!((e0.adapter.config.r, e1.adapter.config.r), (4, 2));
    // r 2 on q [384, 576], k, v [192, 576], o [576, 384] of 30 layers.
    assert_eq!(e1.adapter.parameter_count(), 30 * 2 * (960 + 2 * 768 + 960));
    let memory = |e: &AdapterFolder| match &e.manifest.record {
        StageRecord::Extract(x) => x.metrics.train_memory_bytes,
        other => panic!("{other:?}"),
    };
    assert!(memory(&e1) < memory(&e0));

    let trained = |c: &str| AdapterFolder::load(Path::new(at(&format!("trained/{c}")))).unwrap();
    let (t0, t1) = (trained("c000"), trained("c001"));
    assert_ne!(t0.adapter, e0.adapter, "training moved the adapter");
    assert_eq!(t0.manifest.num_examples, Some(9));
    assert_eq!(
        t1.manifest.placement, e1.manifest.placement,
        "the placement is carried over"
    );

    aggregate(tmp.path(), "fedavg", "fedavg");
    let global = LoraAdapter::read(Path::new(at("global"))).unwrap();
    let next = AdapterFolder::load(Path::new(at("fedavg"))).unwrap();
    assert_eq!(next.adapter.config, global.config);
    let (g, n) = (factors(&global), factors(&next.adapter));
    let (c0, c1) = (factors(&t0.adapter), factors(&t1.adapter));
    // The rank-2 client's factors are placed at the global scaling: s B A keeps its value.
    let k = (t1.adapter.config.scaling() / global.config.scaling()).sqrt() as f32;
    let module = "model.layers.3.self_attn.q_proj";
    let map = &t1.manifest.placement.as_ref().unwrap().index_map;
    let held_rows = map[&factor_name(module, 'B')].dims[0].clone().unwrap().0;
    assert_eq!(held_rows.len(), 384);
    let (a, b) = (factor_name(module, 'A'), factor_name(module, 'B'));
    let inp = g[&a].shape[1];
    for col in 0..inp {
        // Row 0 of A: both clients (same columns: the hidden size is whole). Row 3:
        // the rank-4 client alone.
        let both = (c0[&a].data[col] as f64 + (c1[&a].data[col] * k) as f64) / 2.0;
        assert!((n[&a].data[col] - both as f32).abs() < 1e-6, "A[0,{col}]");
        assert_eq!(
            n[&a].data[3 * inp + col],
            c0[&a].data[3 * inp + col],
            "A[3,{col}]"
        );
    }
    for o in 0..576 {
        let want = match held_rows.iter().position(|&h| h == o) {
            Some(j) => ((c0[&b].data[o * 4] as f64 + (c1[&b].data[j * 2] * k) as f64) / 2.0) as f32,
            None => c0[&b].data[o * 4],
        };
        assert!((n[&b].data[o * 4] - want).abs() < 1e-6, "B[{o},0]");
    }
    let aggregated = |f: &AdapterFolder| match &f.manifest.record {
        StageRecord::Aggregate(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    let accuracy = aggregated(&next)
        .metrics
        .validation
        .unwrap()
        .accuracy
        .unwrap();
    assert!((0.0..=1.0).contains(&accuracy));

    // Every rule runs on adapters; FlexLoRA combines the products instead.
    aggregate(tmp.path(), "median", "median");
    aggregate(tmp.path(), "flexlora", "flexlora");
    let flex = AdapterFolder::load(Path::new(at("flexlora"))).unwrap();
    assert_eq!(flex.adapter.config.r, 4);
    assert_ne!(flex.adapter, next.adapter);

    // DP-FedAvg on adapters: clipped, noised, and the accountant's epsilon recorded.
    ok(
        "raffm-aggregate",
        &[
            "--global",
            at("global"),
            "--updates",
            at("trained/c000"),
            at("trained/c001"),
            "--round",
            "1",
            "--dp-noise-multiplier",
            "1.0",
            "--dp-clip-norm",
            "0.5",
            "--dp-sample-rate",
            "0.5",
            "--dp-expected-clients",
            "1",
            "--dp-seed",
            "3",
            "--quiet",
            "--output",
            at("dp"),
        ],
    );
    let dp = AdapterFolder::load(Path::new(at("dp"))).unwrap();
    let dp_record = aggregated(&dp);
    let epsilon = dp_record.metrics.epsilon.unwrap();
    assert!(epsilon > 0.0 && epsilon.is_finite(), "{epsilon}");
    assert_eq!(dp_record.privacy.unwrap().epsilon, epsilon);
    assert!(dp_record
        .clients
        .iter()
        .all(|c| c.clip_scale.unwrap() <= 1.0));
    assert_ne!(dp.adapter, next.adapter);

    // raffm-evaluate scores the adapter on its base; merged, it is a plain HF folder
    // whose adapted projections alone moved.
    ok(
        "raffm-evaluate",
        &[
            "--model",
            at("fedavg"),
            "--partition",
            at("partition.json"),
            "--quiet",
            "--output",
            at("eval.json"),
        ],
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(at("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["metrics"]["examples"], 6);
    ok(
        "raffm-llm",
        &[
            "merge",
            "--model",
            s(&model),
            "--adapter",
            at("fedavg"),
            "--output",
            at("merged"),
        ],
    );
    let (base, merged) = (
        Checkpoint::load(&model).unwrap(),
        Checkpoint::load(at("merged")).unwrap(),
    );
    for (name, t) in &base.tensors {
        let adapted = ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .any(|m| name.contains(m));
        assert_eq!(merged.tensors[name].bit_eq(t), !adapted, "{name}");
    }

    deploy(tmp.path(), &eval, &merged);
}

/// raffm-deploy-scale after the LoRA round: with unlimited memory both clients run the
/// whole base with the global adapter merged (the same weights as raffm-llm merge, one
/// copy linked into both folders, scored as raffm-evaluate scores the adapter); a device
/// between the half-width client's trained model and the whole base gets the largest
/// sub-model that fits, larger than what it trained on.
fn deploy(tmp: &Path, eval: &serde_json::Value, merged: &Checkpoint) {
    let at = |name: &str| path_in(tmp, name);
    let deploy_scale = |budgets: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "--global",
            at("fedavg"),
            "--budgets",
            at(budgets),
            "--partition",
            at("partition.json"),
            "--round",
            "1",
            "--quiet",
            "--output",
            at(out),
        ];
        args.extend_from_slice(extra);
        ok("raffm-deploy-scale", &args);
        let summary = std::fs::read(Path::new(at(out)).join("summary.json")).unwrap();
        serde_json::from_slice::<serde_json::Value>(&summary).unwrap()
    };
    let summary = deploy_scale("budgets.json", "deploy", &[]);
    let clients = summary["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let whole = Checkpoint::load(at("deploy/c001")).unwrap();
    for (name, t) in &merged.tensors {
        assert!(whole.tensors[name].bit_eq(t), "{name}");
    }
    let weights = |dir: &str| Path::new(at(dir)).join("model.safetensors");
    assert_eq!(
        raffm::core::io::sha256_file(&weights("deploy/c000"))
            .unwrap()
            .sha256,
        raffm::core::io::sha256_file(&weights("merged"))
            .unwrap()
            .sha256
    );
    let manifest = Manifest::load(&Path::new(at("deploy")).join("manifest.json")).unwrap();
    match manifest.record {
        StageRecord::DeployScale(d) => assert_eq!(d.metrics.distinct_models, 1),
        other => panic!("{other:?}"),
    }
    let (c0, c1) = (&clients[0], &clients[1]);
    assert_eq!(c0["deployed"]["accuracy"], eval["metrics"]["accuracy"]);
    assert_eq!(
        (
            c0["train"]["adapter_rank"].as_u64(),
            c1["train"]["adapter_rank"].as_u64()
        ),
        (Some(4), Some(2))
    );
    assert_eq!(
        c1["deployed"]["adapter_rank"], 4,
        "the global adapter, merged at its rank"
    );
    let params = |c: &serde_json::Value, model: &str| c[model]["parameters"].as_u64().unwrap();
    assert!(params(c1, "train") < params(c1, "deployed"));
    assert_eq!(params(c0, "deployed"), params(c1, "deployed"));

    // A device between the two: the largest base sub-model whose inference fits.
    let inference =
        |c: &serde_json::Value, model: &str| c[model]["inference_memory_bytes"].as_u64().unwrap();
    let device = (inference(c1, "train") + inference(c1, "deployed")) / 2;
    let mut budgets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(at("budgets.json")).unwrap()).unwrap();
    budgets["clients"][1]["device_memory_bytes"] = device.into();
    std::fs::write(at("budgets-device.json"), budgets.to_string()).unwrap();
    let summary = deploy_scale(
        "budgets-device.json",
        "deploy-device",
        &["--clients", "c001"],
    );
    let c1 = &summary["clients"][0];
    assert!(inference(c1, "deployed") <= device);
    assert!(params(c1, "train") < params(c1, "deployed"));
    assert!(params(c1, "deployed") < params(c0, "deployed"));
    let client =
        Manifest::load(&Path::new(at("deploy-device/c001")).join("manifest.json")).unwrap();
    assert!(
        client.placement.is_some(),
        "a sub-model records its rows of the base"
    );
    let sub = Checkpoint::load(at("deploy-device/c001")).unwrap();
    assert_eq!(sub.parameter_count(), params(c1, "deployed"));
}

#[test]
fn bad_lora_inputs_are_one_line_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    set_up(tmp.path());
    let at = |name: &str| path_in(tmp.path(), name);
    let out = at("out");
    let model = smollm2();
    let manifest_of =
        |dir: &str| Manifest::load(&Path::new(at(dir)).join("manifest.json")).unwrap();
    // An update from another round's global adapter.
    ok(
        "raffm-init-head",
        &[
            "--model",
            s(&model),
            "--lora-r",
            "4",
            "--seed",
            "9",
            "--output",
            at("other"),
        ],
    );
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "raffm-aggregate",
            vec![
                "--global",
                at("other"),
                "--updates",
                at("trained/c000"),
                "--output",
                out,
            ],
            "another round",
        ),
        (
            "raffm-aggregate",
            vec![
                "--global",
                at("global"),
                "--updates",
                at("trained/c000"),
                "--rule",
                "flexlora",
                "--clip-norm",
                "1",
                "--output",
                out,
            ],
            "takes no --trim-fraction, --clip-norm or DP",
        ),
        (
            "raffm-local-train",
            vec![
                "--model",
                at("extracted/c000"),
                "--partition",
                at("partition.json"),
                "--client",
                "c001",
                "--output",
                out,
            ],
            "was extracted for client c000",
        ),
        (
            "raffm-local-train",
            vec![
                "--model",
                at("extracted/c000"),
                "--partition",
                at("partition.json"),
                "--client",
                "c000",
                "--mu",
                "0.1",
                "--output",
                out,
            ],
            "do not apply to an adapter",
        ),
        (
            "raffm-extract",
            vec![
                "--global",
                at("global"),
                "--budgets",
                at("budgets.json"),
                "--out-dir",
                out,
            ],
            "--bases",
        ),
        (
            "raffm-init-head",
            vec!["--model", s(&model), "--labels", "neg,pos", "--output", out],
            "takes a LoRA adapter, not a classification head",
        ),
        (
            "raffm-init-head",
            vec![
                "--model",
                s(&model),
                "--lora-targets",
                "q_proj,lm_head",
                "--output",
                out,
            ],
            "unknown LoRA target module `lm_head`",
        ),
    ];
    for (binary, args, message) in cases {
        let o = run(binary, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{binary} {args:?} succeeded");
        assert!(err.contains(message), "{binary} {args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{binary} {args:?}: {err}"
        );
        assert!(!Path::new(out).exists(), "{binary} {args:?} wrote {out}");
    }
    // A trained adapter whose weights changed after its manifest was written is refused.
    let weights = Path::new(at("trained/c001/adapter_model.safetensors"));
    let mut bytes = std::fs::read(weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(weights, bytes).unwrap();
    let o = run(
        "raffm-aggregate",
        &[
            "--global",
            at("global"),
            "--updates",
            at("trained/c001"),
            "--output",
            out,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("adapter_model.safetensors"),
        "{err}"
    );
    assert!(!Path::new(out).exists());
    assert_eq!(manifest_of("trained/c000").stage(), "local-train");
}
