//! `raffm-llm` on the real SmolLM2-135M-Instruct (`make test` imports it): one federated
//! LoRA round by hand (init, train two clients, average, evaluate, merge), and bad inputs
//! refused in one line with nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, run};
use raffm::families::llama::lora::LoraAdapter;
use raffm::Checkpoint;

fn smollm2() -> PathBuf {
    let assets = std::env::var_os("RAFFM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets"));
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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

#[test]
fn a_federated_lora_round_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (smollm2(), task(tmp.path()));
    let at = |name: &str| path_in(tmp.path(), name);
    let common = [
        "--task",
        "jsonl",
        "--data",
        s(&data),
        "--validation-fraction",
        "0.25",
    ];
    ok(
        "raffm-llm",
        &[
            "init",
            "--model",
            s(&model),
            "--r",
            "4",
            "--output",
            at("global"),
        ],
    );
    for i in 0..2 {
        let shard = format!("{i}/2");
        let out = path_in(tmp.path(), &format!("c{i}"));
        let mut args = vec![
            "train",
            "--model",
            s(&model),
            "--adapter",
            at("global"),
            "--shard",
            &shard,
        ];
        args.extend(common);
        args.extend([
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
            out,
        ]);
        ok("raffm-llm", &args);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(out).join("train.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["report"]["steps"], 2);
        // r 4 on q, k, v, o of 30 layers: 30 * 4 * (2 * (576 + 576) + 2 * (576 + 192)).
        assert_eq!(manifest["report"]["trainable_parameters"], 460_800);
        assert_eq!(manifest["bytes_per_round"], 4 * 460_800);
    }
    let config = Checkpoint::load(&model)
        .unwrap()
        .config
        .llama()
        .unwrap()
        .clone();
    let load = |name: &str| LoraAdapter::load(Path::new(at(name)), &config).unwrap();
    let (c0, c1) = (load("c0"), load("c1"));
    assert_ne!(c0, load("global"), "training moved the adapter");
    assert!(c0
        .modules
        .values()
        .any(|p| p.b.data.iter().any(|&b| b != 0.0)));

    ok(
        "raffm-llm",
        &[
            "average",
            "--model",
            s(&model),
            "--adapter",
            at("c0"),
            at("c1"),
            "--output",
            at("mean"),
        ],
    );
    let mean = load("mean");
    for (module, pair) in &mean.modules {
        let (a0, a1) = (&c0.modules[module].a.data, &c1.modules[module].a.data);
        for (j, &v) in pair.a.data.iter().enumerate() {
            assert_eq!(
                v,
                ((a0[j] as f64 + a1[j] as f64) / 2.0) as f32,
                "{module} A[{j}]"
            );
        }
    }

    let mut args = vec!["eval", "--model", s(&model), "--adapter", at("mean")];
    args.extend(common);
    args.extend(["--quiet", "--output", at("eval.json")]);
    ok("raffm-llm", &args);
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(at("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["examples"], 6);
    assert!((0.0..=1.0).contains(&eval["accuracy"].as_f64().unwrap()));

    // The merged folder is a plain HF checkpoint: the adapted projections moved, nothing
    // else did (the base was frozen).
    ok(
        "raffm-llm",
        &[
            "merge",
            "--model",
            s(&model),
            "--adapter",
            at("mean"),
            "--output",
            at("merged"),
        ],
    );
    let (base, merged) = (
        Checkpoint::load(&model).unwrap(),
        Checkpoint::load(at("merged")).unwrap(),
    );
    for (name, t) in &base.tensors {
        let same = merged.tensors[name].bit_eq(t);
        let adapted = ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .any(|m| name.contains(m));
        assert_eq!(same, !adapted, "{name}");
    }
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (smollm2(), task(tmp.path()));
    let at = |name: &str| path_in(tmp.path(), name);
    ok(
        "raffm-llm",
        &[
            "init",
            "--model",
            s(&model),
            "--r",
            "4",
            "--output",
            at("a"),
        ],
    );
    ok(
        "raffm-llm",
        &[
            "init",
            "--model",
            s(&model),
            "--r",
            "4",
            "--target-modules",
            "q_proj,v_proj",
            "--output",
            at("qv"),
        ],
    );
    // An adapter whose config gives another rank than its tensors.
    std::fs::create_dir(at("bad")).unwrap();
    std::fs::copy(
        at("a/adapter_model.safetensors"),
        at("bad/adapter_model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(at("a/adapter_config.json"))
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(at("bad/adapter_config.json"), config).unwrap();

    let out = Path::new(at("out"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "merge",
                "--model",
                s(&model),
                "--adapter",
                at("bad"),
                "--output",
                s(out),
            ],
            "r = 8",
        ),
        (
            vec![
                "average",
                "--model",
                s(&model),
                "--adapter",
                at("a"),
                at("qv"),
                "--output",
                s(out),
            ],
            "differ in rank or targets",
        ),
        (
            vec![
                "train",
                "--model",
                s(&model),
                "--task",
                "jsonl",
                "--data",
                s(&data),
                "--shard",
                "2/2",
                "--output",
                s(out),
            ],
            "--shard 2/2",
        ),
        (
            vec![
                "init",
                "--model",
                s(&model),
                "--target-modules",
                "q_proj,lm_head",
                "--output",
                s(out),
            ],
            "unknown LoRA target module `lm_head`",
        ),
        (
            vec![
                "eval",
                "--model",
                s(&model),
                "--task",
                "bigbench",
                "--data",
                s(&data),
            ],
            "invalid JSON",
        ),
    ];
    for (args, message) in cases {
        let o = run("raffm-llm", &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // The encoder is not a decoder.
    let minilm = model.with_file_name("minilm");
    let o = run(
        "raffm-llm",
        &["init", "--model", s(&minilm), "--output", s(out)],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("a llama model was expected"));
    // A decoder takes a LoRA adapter, not a classification head.
    let o = run(
        "raffm-init-head",
        &[
            "--model",
            s(&model),
            "--labels",
            "neg,pos",
            "--output",
            s(out),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("takes a LoRA adapter, not a classification head"),
        "{err}"
    );
    assert!(!out.exists());
    for sub in ["init", "eval", "train", "average", "merge", "report"] {
        ok("raffm-llm", &[sub, "--help"]);
    }
}

/// RaFFM + LoRA by hand: a client on a half-width base sub-model trains its block of the
/// global adapter, and the server places it back through the sub-model's index map.
#[test]
fn a_sub_model_client_trains_its_block_and_is_placed_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (smollm2(), task(tmp.path()));
    let at = |name: &str| path_in(tmp.path(), name);
    ok(
        "raffm-llm",
        &[
            "init",
            "--model",
            s(&model),
            "--r",
            "4",
            "--output",
            at("global"),
        ],
    );
    ok(
        "raffm-llm",
        &[
            "extract",
            "--model",
            s(&model),
            "--width",
            "0.5",
            "--hidden",
            "1",
            "--output",
            at("sub"),
        ],
    );
    for (client, base) in [("c0", at("sub")), ("c1", s(&model))] {
        let mut args = vec!["train", "--model", base, "--adapter", at("global")];
        args.extend(["--task", "jsonl", "--data", s(&data), "--max-steps", "2"]);
        args.extend([
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--quiet",
            "--output",
            at(client),
        ]);
        ok("raffm-llm", &args);
    }
    let manifest = |client: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(Path::new(at(client)).join("train.json")).unwrap())
            .unwrap()
    };
    let (m0, m1) = (manifest("c0"), manifest("c1"));
    // 2 of 3 query heads per KV group: q_proj and o_proj lose a third of their heads.
    assert_eq!(m1["base_parameters"], 134_515_008);
    assert!(
        m0["base_parameters"].as_u64().unwrap() < 100_000_000,
        "{m0}"
    );
    // r 4 on q [384, 576], k, v [192, 576], o [576, 384] of 30 layers.
    assert_eq!(
        m0["report"]["trainable_parameters"],
        30 * 4 * (960 + 2 * 768 + 960)
    );
    assert!(Path::new(at("c0")).join("placement.json").is_file());

    // Without the round's global adapter the server cannot place the block.
    let mut args = vec![
        "average",
        "--model",
        s(&model),
        "--adapter",
        at("c0"),
        at("c1"),
    ];
    args.extend(["--rule", "padded", "--output", at("mean")]);
    let out = run("raffm-llm", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("global adapter"),
        "{err}"
    );
    assert!(!Path::new(at("mean")).exists());
    args.extend(["--previous", at("global")]);
    ok("raffm-llm", &args);

    let config = Checkpoint::load(&model)
        .unwrap()
        .config
        .llama()
        .unwrap()
        .clone();
    let (mean, c1) = (
        LoraAdapter::load(Path::new(at("mean")), &config).unwrap(),
        LoraAdapter::load(Path::new(at("c1")), &config).unwrap(),
    );
    let c0 = LoraAdapter::read(Path::new(at("c0"))).unwrap();
    let placement = raffm::families::llama::placement::Placement::load(Path::new(at("c0")), None)
        .unwrap()
        .unwrap();
    let module = "model.layers.3.self_attn.q_proj";
    let held = placement.index_map[&format!("{module}.weight")].dims[0]
        .clone()
        .unwrap()
        .0;
    assert_eq!(held.len(), 384);
    let (got, full, sub) = (
        &mean.modules[module].b,
        &c1.modules[module].b,
        &c0.modules[module].b,
    );
    for o in 0..576 {
        for k in 0..4 {
            let want = match held.iter().position(|&h| h == o) {
                // Held by both clients: their mean.
                Some(j) => {
                    ((full.data[o * 4 + k] as f64 + sub.data[j * 4 + k] as f64) / 2.0) as f32
                }
                // Only the whole-base client holds the rows of the dropped heads.
                None => full.data[o * 4 + k],
            };
            // The rule works on √s-scaled factors: equal up to rounding.
            let g = got.data[o * 4 + k];
            assert!(
                (g - want).abs() <= 1e-6 * want.abs(),
                "B[{o},{k}]: {g} vs {want}"
            );
        }
    }

    // A placement is refused for another global model.
    let mut args = vec!["average", "--model", at("sub"), "--adapter", at("c0")];
    args.extend([
        "--previous",
        at("global"),
        "--rule",
        "padded",
        "--output",
        at("wrong"),
    ]);
    let out = run("raffm-llm", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("placement.json"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
