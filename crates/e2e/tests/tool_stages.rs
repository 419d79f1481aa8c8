//! The supporting stages (partition, budgets, init-head, sample-clients, evaluate) run
//! in-process from the same options as their binaries: the same files, byte for byte, and
//! the value each returns is what the binary wrote or printed.

use clap::Parser;

use raffm::data::partition::Partition;
use raffm::fl::pipeline::Budgets;
use raffm::stages::{budgets, evaluate, init_head, partition, sample_clients};
use raffm_e2e::stages::{run, Fixture};

/// Runs the binary `name` with `args` and the library stage with the same options, the
/// output option `flag` pointing at `binary` and `library` respectively.
fn both<T>(
    name: &str,
    args: &[&str],
    flag: &str,
    (binary, library): (&str, &str),
    stage: impl Fn(&[String]) -> raffm::Result<T>,
) -> (String, T) {
    let out = run(name, &[args, &[flag, binary]].concat());
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut options: Vec<String> = std::iter::once(name)
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    options.extend([flag.to_string(), library.to_string()]);
    let value = stage(&options).unwrap();
    (String::from_utf8(out.stdout).unwrap(), value)
}

#[test]
fn each_supporting_stage_in_process_writes_and_returns_what_its_binary_writes() {
    let f = Fixture::build();
    let bytes = |p: &str| std::fs::read(f.root.join(p)).unwrap();

    // Partition: the same partition.json; the returned partition is the file's.
    let data = f.p("reviews.jsonl");
    let args = ["--data", &data, "--clients", "3", "--scheme", "dirichlet"];
    let (_, returned) = both(
        "raffm-partition",
        &args,
        "--output",
        (&f.p("bin/partition.json"), &f.p("lib/partition.json")),
        |o| partition::run(&partition::Args::parse_from(o)),
    );
    assert_eq!(bytes("bin/partition.json"), bytes("lib/partition.json"));
    let written = Partition::load(&f.root.join("lib/partition.json")).unwrap();
    assert_eq!(returned.clients, written.clients);
    assert_eq!(returned.validation, written.validation);

    // Budgets.
    let pipeline = f.p("pipeline.json");
    let (_, returned) = both(
        "raffm-budgets",
        &["--pipeline", &pipeline, "--seed", "5"],
        "--output",
        (&f.p("bin/budgets.json"), &f.p("lib/budgets.json")),
        |o| budgets::run(&budgets::Args::parse_from(o)),
    );
    assert_eq!(bytes("bin/budgets.json"), bytes("lib/budgets.json"));
    let written = Budgets::load(&f.root.join("lib/budgets.json")).unwrap();
    assert_eq!(
        serde_json::to_value(&returned).unwrap(),
        serde_json::to_value(&written).unwrap()
    );

    // Init-head: the same weights and config; the record is the manifest's.
    let (model, part) = (f.p("model"), f.p("run/partition.json"));
    let (_, record) = both(
        "raffm-init-head",
        &["--model", &model, "--partition", &part, "--seed", "3"],
        "--output",
        (&f.p("bin/global"), &f.p("lib/global")),
        |o| init_head::run(&init_head::Args::parse_from(o)),
    );
    for file in ["model.safetensors", "config.json"] {
        assert_eq!(
            bytes(&format!("bin/global/{file}")),
            bytes(&format!("lib/global/{file}")),
            "{file}"
        );
    }
    let manifest =
        raffm::core::manifest::Manifest::load(&f.root.join("lib/global/manifest.json")).unwrap();
    assert_eq!(
        serde_json::to_value(&record).unwrap(),
        serde_json::to_value(&manifest.record).unwrap()
    );

    // Sample-clients: the participants the binary prints, written as the binary writes them.
    let budgets = f.p("bin/budgets.json");
    let args = [
        "--budgets",
        &budgets,
        "--round",
        "4",
        "-n",
        "2",
        "--seed",
        "9",
    ];
    let (_, chosen) = both(
        "raffm-sample-clients",
        &args,
        "--output",
        (&f.p("bin/participants"), &f.p("lib/participants")),
        |o| sample_clients::run(&sample_clients::Args::parse_from(o)),
    );
    assert_eq!(chosen.len(), 2);
    assert_eq!(bytes("bin/participants"), bytes("lib/participants"));
    assert_eq!(
        String::from_utf8(bytes("lib/participants")).unwrap(),
        format!("{}\n", chosen.join(","))
    );

    // Evaluate: the metrics the binary prints.
    let (global, part) = (f.p("run/global"), f.p("run/partition.json"));
    let (printed, metrics) = both(
        "raffm-evaluate",
        &["--model", &global, "--partition", &part, "--quiet"],
        "--output",
        (&f.p("bin/metrics.json"), &f.p("lib/metrics.json")),
        |o| evaluate::run(&evaluate::Args::parse_from(o)),
    );
    // Compared as text: serde_json reads a float back to within an ulp, not always exactly.
    assert_eq!(printed.trim(), serde_json::to_string(&metrics).unwrap());
    assert!(metrics.accuracy.is_some());

    // Bad input is the library's typed error, in the binary's words, and writes nothing.
    let too_many = sample_clients::Args::parse_from([
        "raffm-sample-clients",
        "--budgets",
        &budgets,
        "--round",
        "1",
        "-n",
        "4",
        "--output",
        &f.p("lib/none"),
    ]);
    let err = sample_clients::run(&too_many).unwrap_err().to_string();
    assert!(
        err.contains("--per-round") && err.contains("budgets.json"),
        "{err}"
    );
    assert!(!f.root.join("lib/none").exists());
}
