//! `raffm-local-train` with `raffm-partition`, `raffm-init-head` and `raffm-evaluate` on a
//! tiny fixture: a small random BERT with its own WordPiece vocabulary and a JSONL dataset.

use std::path::Path;
use std::process::{Command, Output};

use raffm::core::device::DeviceChoice;
use raffm::core::elastic::TensorKind;
use raffm::core::fixtures::{tiny_reviews, tiny_text_model};
use raffm::models::fused::Precision;
use raffm::Checkpoint;

use raffm_e2e::bin;

fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = Command::new(bin(name))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    out
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tiny model folder (random weights, vocab.txt) and a JSONL dataset of 60 reviews.
fn fixture(dir: &Path) {
    tiny_text_model(&dir.join("model"));
    tiny_reviews(&dir.join("reviews.jsonl"), 60);
}

/// The fixture's reviews over two clients, written to `partition`.
fn two_client_partition(d: &Path, partition: &Path) {
    ok(run(
        "raffm-partition",
        &[
            &"--data",
            &d.join("reviews.jsonl"),
            &"--clients",
            &"2",
            &"--output",
            &partition,
        ],
    ));
}

/// The fixture model with a fresh neg/pos head, written to `head`.
fn init_head(d: &Path, head: &Path) {
    ok(run(
        "raffm-init-head",
        &[
            &"--model",
            &d.join("model"),
            &"--labels",
            &"neg,pos",
            &"--output",
            &head,
        ],
    ));
}

#[test]
fn partition_init_train_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let (data, partition, head, trained) = (
        d.join("reviews.jsonl"),
        d.join("partition.json"),
        d.join("head"),
        d.join("trained"),
    );
    let out = ok(run(
        "raffm-partition",
        &[
            &"--data",
            &data,
            &"--clients",
            &"3",
            &"--scheme",
            &"iid",
            &"--seed",
            &"1",
            &"--output",
            &partition,
            &"--summary",
        ],
    ));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(summary.lines().count(), 3, "{summary}");
    assert!(summary.contains("c000") && summary.contains("examples"));

    ok(run(
        "raffm-init-head",
        &[
            &"--model",
            &d.join("model"),
            &"--partition",
            &partition,
            &"--output",
            &head,
        ],
    ));
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"--model",
        &head,
        &"--partition",
        &partition,
        &"--client",
        &"c001",
        &"--output",
        &trained,
        &"--epochs",
        &"3",
        &"--batch-size",
        &"8",
        &"--lr",
        &"1e-3",
        &"--seed",
        &"4",
        &"--quiet",
    ];
    ok(run("raffm-local-train", &args));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["stage"], "local-train");
    assert_eq!(m["client"], "c001");
    let examples = m["num_examples"].as_u64().unwrap();
    assert_eq!(
        m["metrics"]["examples_seen"].as_u64().unwrap(),
        3 * examples
    );
    assert_eq!(
        m["metrics"]["step_losses"].as_array().unwrap().len() as u64,
        3 * examples.div_ceil(8)
    );
    assert!(m["metrics"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        m["metrics"]["bytes_downloaded"],
        m["metrics"]["bytes_uploaded"]
    );
    let head_sha = raffm::core::io::sha256_file(&head.join("model.safetensors"))
        .unwrap()
        .sha256;
    assert_eq!(m["inputs"][1]["sha256"], head_sha.as_str());

    // Same seed, same bytes.
    let again = d.join("again");
    let mut args2 = args.clone();
    args2[7] = &again;
    ok(run("raffm-local-train", &args2));
    assert_eq!(
        std::fs::read(trained.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );

    let metrics = d.join("metrics.json");
    let out = ok(run(
        "raffm-evaluate",
        &[
            &"--model",
            &trained,
            &"--partition",
            &partition,
            &"--output",
            &metrics,
            &"--quiet",
        ],
    ));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accuracy = printed["accuracy"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&accuracy)
            && printed["mcc"].is_number()
            && printed["macro_f1"].is_number()
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert_eq!(written["metrics"], printed);
}

#[test]
fn frozen_embeddings_are_not_uploaded_and_stay_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let (partition, head, trained) = (d.join("p.json"), d.join("head"), d.join("trained"));
    two_client_partition(d, &partition);
    init_head(d, &head);
    ok(run(
        "raffm-local-train",
        &[
            &"-m",
            &head,
            &"-p",
            &partition,
            &"-c",
            &"c000",
            &"-o",
            &trained,
            &"--freeze-embeddings",
            &"--max-steps",
            &"2",
            &"-q",
        ],
    ));
    let (before, after) = (
        Checkpoint::load(&head).unwrap(),
        Checkpoint::load(&trained).unwrap(),
    );
    let embedding: Vec<String> = before
        .config
        .tensors()
        .into_iter()
        .filter(|t| t.kind == TensorKind::Embedding)
        .map(|t| t.name)
        .collect();
    assert!(!embedding.is_empty());
    for (name, t) in &before.tensors {
        assert_eq!(
            t.bit_eq(&after.tensors[name]),
            embedding.contains(name),
            "{name}"
        );
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained.join("manifest.json")).unwrap())
            .unwrap();
    let embeddings: u64 = embedding
        .iter()
        .map(|n| 4 * before.tensors[n].numel() as u64)
        .sum();
    assert_eq!(
        m["metrics"]["bytes_downloaded"].as_u64().unwrap()
            - m["metrics"]["bytes_uploaded"].as_u64().unwrap(),
        embeddings
    );
}

/// `--precision bf16` trains (bit-identical for a seed, recorded in the manifest) and
/// differs from fp32; the default, auto, is one of the two (bf16 where the CPU has AMX)
/// and the manifest says which; where the products would silently stay fp32, bf16 is
/// refused.
#[test]
fn bf16_training_is_recorded_deterministic_and_refused_on_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let (partition, head) = (d.join("p.json"), d.join("head"));
    two_client_partition(d, &partition);
    init_head(d, &head);
    let train = |out: &str, extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"-m",
            &head,
            &"-p",
            &partition,
            &"-c",
            &"c000",
            &"--max-steps",
            &"3",
        ];
        let out = d.join(out);
        args.extend([&"-o" as &dyn AsRef<std::ffi::OsStr>, &out, &"-q"]);
        args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        (run("raffm-local-train", &args), out)
    };
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    let (a, a_dir) = train("a", &["--precision", "bf16"]);
    ok(a);
    let (b, b_dir) = train("b", &["--precision", "bf16"]);
    ok(b);
    let (c, c_dir) = train("c", &["--precision", "fp32"]);
    ok(c);
    let (auto, auto_dir) = train("auto", &[]);
    ok(auto);
    assert_eq!(weights(&a_dir), weights(&b_dir));
    assert_ne!(weights(&a_dir), weights(&c_dir));
    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
    };
    assert_eq!(
        manifest(&a_dir)["parameters"]["options"]["precision"],
        "bf16"
    );
    assert_eq!(
        manifest(&c_dir)["parameters"]["options"]["precision"],
        "fp32"
    );
    let resolved = Precision::Auto.resolve(&DeviceChoice::Cpu).unwrap();
    let same_as = if resolved == Precision::Bf16 {
        &a_dir
    } else {
        &c_dir
    };
    assert_eq!(weights(&auto_dir), weights(same_as));
    assert_eq!(
        manifest(&auto_dir)["parameters"]["options"]["precision"],
        resolved.to_string()
    );

    let (refused, out) = train("gpu", &["--precision", "bf16", "--device", "cuda"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--precision bf16"), "{err}");
    assert!(!out.exists());
}

#[test]
fn user_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    let partition = d.join("p.json");
    two_client_partition(d, &partition);
    let check = |out: Output, needles: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` not in {err}");
        }
    };
    // No classification head yet.
    check(
        run(
            "raffm-local-train",
            &[
                &"-m",
                &d.join("model"),
                &"-p",
                &partition,
                &"-c",
                &"c000",
                &"-o",
                &d.join("x"),
                &"-q",
            ],
        ),
        &["no classification head", "raffm-init-head"],
    );
    let head = d.join("head");
    init_head(d, &head);
    check(
        run(
            "raffm-local-train",
            &[
                &"-m",
                &head,
                &"-p",
                &partition,
                &"-c",
                &"c009",
                &"-o",
                &d.join("x"),
                &"-q",
            ],
        ),
        &["p.json", "no client `c009`"],
    );
    // Three labels in the data, two in the model.
    std::fs::write(
        d.join("three.jsonl"),
        "{\"text\": \"good\", \"label\": 2}\n{\"text\": \"bad\", \"label\": 0}\n",
    )
    .unwrap();
    ok(run(
        "raffm-partition",
        &[
            &"--data",
            &d.join("three.jsonl"),
            &"--clients",
            &"1",
            &"--validation-fraction",
            &"0",
            &"--output",
            &d.join("p3.json"),
        ],
    ));
    check(
        run(
            "raffm-local-train",
            &[
                &"-m",
                &head,
                &"-p",
                &d.join("p3.json"),
                &"-c",
                &"c000",
                &"-o",
                &d.join("x"),
                &"-q",
            ],
        ),
        &["out of range"],
    );
    check(
        run(
            "raffm-partition",
            &[
                &"--data",
                &d.join("nope.tsv"),
                &"--clients",
                &"2",
                &"--output",
                &d.join("q.json"),
            ],
        ),
        &["nope.tsv"],
    );
    assert!(!d.join("x").exists() && !d.join("q.json").exists());
}

/// The stage run in-process, from the same options, trains the same weights, bit for bit,
/// as its binary, and returns the record its manifest holds.
#[test]
fn the_stage_in_process_trains_what_the_binary_trains() {
    use clap::Parser;
    use raffm::core::manifest::{Manifest, StageRecord};
    use raffm::stages::local_train;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixture(d);
    two_client_partition(d, &d.join("partition.json"));
    init_head(d, &d.join("head"));
    let options = |out: &str| {
        let at = |p: &str| d.join(p).to_str().unwrap().to_string();
        let mut args = vec![
            "raffm-local-train".to_string(),
            "--model".into(),
            at("head"),
        ];
        args.extend(["--partition".into(), at("partition.json")]);
        args.extend(
            [
                "--client",
                "c001",
                "--max-steps",
                "3",
                "--batch-size",
                "4",
                "--seed",
                "7",
                "--quiet",
            ]
            .map(String::from),
        );
        args.extend(["--output".into(), at(out)]);
        args
    };
    let by_binary = options("binary");
    ok(Command::new(bin("raffm-local-train"))
        .args(&by_binary[1..])
        .output()
        .unwrap());
    let args = local_train::Args::try_parse_from(options("library")).unwrap();
    let record = local_train::run(&args).unwrap();
    let weights = |p: &str| std::fs::read(d.join(p).join("model.safetensors")).unwrap();
    assert_eq!(weights("binary"), weights("library"));
    let written = Manifest::load(&d.join("library/manifest.json")).unwrap();
    match (&record, &written.record) {
        (StageRecord::LocalTrain(r), StageRecord::LocalTrain(w)) => {
            assert_eq!(r.client, "c001");
            assert_eq!(r.metrics.steps, 3);
            assert_eq!(r.metrics.steps, w.metrics.steps);
        }
        other => panic!("{other:?}"),
    }
}
