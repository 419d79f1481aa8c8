//! The catalogue of bad inputs: every case a skeptical user found, each refused with one
//! line that names the file or option and the problem, with no output and no leftover, and
//! with every input byte for byte as it was. Two audits on a small generated run, and the
//! importers' cases on the real GGUF and ONNX files.

use std::path::{Path, PathBuf};
use std::process::Command;

use raffm::core::fixtures::tiny_reviews;
use raffm_e2e::{bin, gguf_path, import_refused, ok, run, snapshot, Fixture};

/// Overwrites `bytes.len()` bytes of `file` at `offset`.
fn overwrite(file: &str, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(file).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(file, data).unwrap();
}

/// The byte offset of tensor data in a safetensors file (past the header).
fn data_start(file: &str) -> usize {
    let bytes = std::fs::read(file).unwrap();
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Puts a NaN into the first weight of a checkpoint folder and drops its manifest, so the
/// hash check cannot be what catches it.
fn poison(folder: &str) {
    let file = format!("{folder}/model.safetensors");
    overwrite(&file, data_start(&file), &f32::NAN.to_le_bytes());
    let _ = std::fs::remove_file(format!("{folder}/manifest.json"));
}

fn edit_json(file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(file, v.to_string()).unwrap();
}

struct Case {
    name: &'static str,
    binary: &'static str,
    args: Vec<String>,
    /// Words the one-line error must hold.
    needles: Vec<String>,
    /// What must not exist afterwards.
    output: String,
}

fn case(
    name: &'static str,
    binary: &'static str,
    args: &[&str],
    needles: &[&str],
    output: &str,
) -> Case {
    Case {
        name,
        binary,
        args: args.iter().map(|s| s.to_string()).collect(),
        needles: needles.iter().map(|s| s.to_string()).collect(),
        output: output.to_string(),
    }
}

#[test]
fn every_bad_input_of_the_catalogue_is_refused_cleanly() {
    let f = Fixture::build();
    let p = |s: &str| f.p(s);
    let out = |s: &str| f.p(&format!("out/{s}"));
    std::fs::create_dir_all(f.root.join("out")).unwrap();

    // DP-FedAvg's options on a good update.
    let (global, update) = (p("run/prioritized"), p("run/trained/c000"));
    let dp = [
        "-g",
        &global,
        "-u",
        &update,
        "--dp-noise-multiplier",
        "1",
        "--dp-clip-norm",
        "1",
        "--dp-sample-rate",
        "0.2",
        "--dp-expected-clients",
        "4",
    ];

    // Inputs made bad for one case each.
    let corrupt = f.copy("run/prioritized", "bad/corrupt");
    let weights = format!("{corrupt}/model.safetensors");
    overwrite(&weights, data_start(&weights) + 256, &[0x5a; 4096]);
    let corrupt_update = f.copy("run/trained/c000", "bad/corrupt-update");
    let weights = format!("{corrupt_update}/model.safetensors");
    overwrite(
        &weights,
        data_start(&weights),
        &[1000.0f32; 1024].map(f32::to_le_bytes).concat(),
    );
    let nan = f.copy("run/global", "bad/nan");
    poison(&nan);
    let no_tokenizer = f.copy("run/global", "bad/no-tokenizer");
    std::fs::remove_file(format!("{no_tokenizer}/vocab.txt")).unwrap();
    std::fs::remove_file(format!("{no_tokenizer}/manifest.json")).unwrap();
    let flipped = f.copy("reviews.jsonl", "bad/reviews.jsonl");
    let flipped_partition = f.copy("run/partition.json", "bad/partition.json");
    edit_json(&flipped_partition, |p| {
        p["data"]["path"] = "reviews.jsonl".into()
    });
    std::fs::write(
        &flipped,
        std::fs::read_to_string(&flipped)
            .unwrap()
            .replace("\"label\": 1", "\"label\": 0"),
    )
    .unwrap();
    let mut bad_counts = Vec::new();
    for (k, count) in [
        ("zero", serde_json::json!(0)),
        ("negative", serde_json::json!(-577)),
        ("huge", serde_json::json!(1e30)),
    ] {
        let update = f.copy("run/trained/c000", &format!("bad/count-{k}"));
        edit_json(&format!("{update}/manifest.json"), |m| {
            m["num_examples"] = count
        });
        bad_counts.push(update);
    }
    let labels3 = f.copy("reviews.jsonl", "bad/labels3.jsonl");
    std::fs::write(
        &labels3,
        std::fs::read_to_string(&labels3).unwrap()
            + "{\"text\": \"the film was odd\", \"label\": 2}\n",
    )
    .unwrap();
    ok(
        "raffm-partition",
        &[
            "--data",
            &labels3,
            "--clients",
            "1",
            "--validation-fraction",
            "0",
            "--output",
            &p("bad/labels3-partition.json"),
        ],
    );
    let latin1 = f.p("bad/latin1.jsonl");
    std::fs::write(&latin1, b"{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 0}\n{\"text\": \"caf\xe9\", \"label\": 1}\n").unwrap();
    let eleven = f.p("bad/eleven.jsonl");
    tiny_reviews(Path::new(&eleven), 11);
    let garbled = f.p("bad/participants.txt");
    std::fs::write(&garbled, "c00x,,\n").unwrap();

    let cases = vec![
        case(
            "corrupted bytes, prioritize",
            "raffm-prioritize",
            &["-i", &corrupt, "-o", &out("a")],
            &["model.safetensors", "changed after it was written"],
            &out("a"),
        ),
        case(
            "corrupted bytes, extract",
            "raffm-extract",
            &["-g", &corrupt, "-o", &out("b"), "--clients", "c0"],
            &["model.safetensors", "changed after it was written"],
            &out("b"),
        ),
        case(
            "corrupted bytes, evaluate",
            "raffm-evaluate",
            &[
                "-m",
                &corrupt,
                "-p",
                &p("run/partition.json"),
                "-o",
                &out("c.json"),
            ],
            &["model.safetensors", "changed after it was written"],
            &out("c.json"),
        ),
        case(
            "corrupted bytes, inspect",
            "raffm-inspect",
            &["tensors", &corrupt],
            &["model.safetensors", "changed after it was written"],
            &out("none"),
        ),
        case(
            "corrupted update, aggregate",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &corrupt_update,
                "-o",
                &out("d"),
            ],
            &["model.safetensors", "changed after it was written"],
            &out("d"),
        ),
        case(
            "NaN weight, prioritize",
            "raffm-prioritize",
            &["-i", &nan, "-o", &out("e")],
            &["model.safetensors", "non-finite"],
            &out("e"),
        ),
        case(
            "NaN weight, extract",
            "raffm-extract",
            &["-g", &nan, "-o", &out("f"), "--clients", "c0"],
            &["model.safetensors", "non-finite"],
            &out("f"),
        ),
        case(
            "NaN weight, evaluate",
            "raffm-evaluate",
            &["-m", &nan, "-p", &p("run/partition.json")],
            &["model.safetensors", "non-finite"],
            &out("none"),
        ),
        case(
            "data changed after partitioning, local-train",
            "raffm-local-train",
            &[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &flipped_partition,
                "-c",
                "c000",
                "-o",
                &out("g"),
            ],
            &["reviews.jsonl", "changed since"],
            &out("g"),
        ),
        case(
            "data changed after partitioning, evaluate",
            "raffm-evaluate",
            &["-m", &p("run/global"), "-p", &flipped_partition],
            &["reviews.jsonl", "changed since"],
            &out("none"),
        ),
        case(
            "num_examples 0",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &bad_counts[0],
                "-o",
                &out("h"),
            ],
            &["client c000", "0 examples"],
            &out("h"),
        ),
        case(
            "num_examples -577",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &bad_counts[1],
                "-o",
                &out("i"),
            ],
            &["manifest.json", "num_examples"],
            &out("i"),
        ),
        case(
            "num_examples 1e30",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &bad_counts[2],
                "-o",
                &out("j"),
            ],
            &["manifest.json", "num_examples"],
            &out("j"),
        ),
    ];
    let train = |extra: &[&str], output: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "-m",
            &p("run/extracted/c000"),
            "-p",
            &p("run/partition.json"),
            "-c",
            "c000",
            "-o",
            output,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut cases = cases;
    for (k, (flag, value, needle)) in [
        ("--lr", "NaN", "--lr"),
        ("--lr", "inf", "--lr"),
        ("--lr", "-0.001", "--lr"),
        ("--warmup-ratio", "2", "--warmup-ratio"),
        ("--max-grad-norm", "NaN", "--max-grad-norm"),
        ("--max-steps", "0", "--max-steps"),
        ("--max-seq-len", "1000", "--max-seq-len"),
    ]
    .into_iter()
    .enumerate()
    {
        let o = out(&format!("train{k}"));
        cases.push(Case {
            name: "bad training option",
            binary: "raffm-local-train",
            args: train(&[flag, value], &o),
            needles: vec![needle.to_string()],
            output: o,
        });
    }
    cases.extend([
        case(
            "--max-seq-len beyond the positions, evaluate",
            "raffm-evaluate",
            &[
                "-m",
                &p("run/global"),
                "-p",
                &p("run/partition.json"),
                "--max-seq-len",
                "1000",
            ],
            &["--max-seq-len", "positions"],
            &out("none"),
        ),
        case(
            "--param-fraction 1.5",
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "-o",
                &out("k"),
                "--param-fraction",
                "1.5",
            ],
            &["--param-fraction", "1.5"],
            &out("k"),
        ),
        case(
            "aggregate output = global",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "-o",
                &p("run/prioritized"),
            ],
            &["--output", "--global", "destroy"],
            &out("none"),
        ),
        case(
            "aggregate output = update",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "-o",
                &p("run/trained/c000"),
            ],
            &["--output", "--updates", "destroy"],
            &out("none"),
        ),
        case(
            "local-train output = model",
            "raffm-local-train",
            &[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &p("run/partition.json"),
                "-c",
                "c000",
                "-o",
                &p("run/extracted/c000"),
            ],
            &["--output", "--model"],
            &out("none"),
        ),
        case(
            "evaluate output inside the model",
            "raffm-evaluate",
            &[
                "-m",
                &p("run/global"),
                "-p",
                &p("run/partition.json"),
                "-o",
                &p("run/global/model.safetensors"),
            ],
            &["--output", "lies inside", "--model"],
            &out("none"),
        ),
        case(
            "prioritize -i X -o X",
            "raffm-prioritize",
            &["-i", &p("run/global"), "-o", &p("run/global")],
            &["--output", "--input", "same path"],
            &out("none"),
        ),
        case(
            "client id that escapes",
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "-o",
                &out("l"),
                "--clients",
                "../../escape",
            ],
            &["../../escape", "not a plain name"],
            &out("l"),
        ),
        case(
            "a client twice",
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "-o",
                &out("m"),
                "--clients",
                "c005,c005",
            ],
            &["c005", "twice"],
            &out("m"),
        ),
        case(
            "label out of range, named by file and line",
            "raffm-local-train",
            &[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &p("bad/labels3-partition.json"),
                "-c",
                "c000",
                "-o",
                &out("n"),
            ],
            &["labels3.jsonl line 61", "label 2 is out of range"],
            &out("n"),
        ),
        case(
            "non-UTF-8 data, named by line",
            "raffm-partition",
            &[
                "--data",
                &latin1,
                "--clients",
                "1",
                "--output",
                &out("o.json"),
            ],
            &["latin1.jsonl", "line 3", "UTF-8"],
            &out("o.json"),
        ),
        case(
            "more clients than examples",
            "raffm-partition",
            &[
                "--data",
                &eleven,
                "--clients",
                "20",
                "--output",
                &out("p.json"),
            ],
            &["clients would get no example"],
            &out("p.json"),
        ),
        case(
            "--lr -0.001 is a number, not a flag",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "--server-lr",
                "-0.5",
                "-o",
                &out("q"),
            ],
            &["--server-lr", "-0.5"],
            &out("q"),
        ),
        case(
            "median weighted by examples",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "--rule",
                "median",
                "--weighting",
                "examples",
                "-o",
                &out("r"),
            ],
            &["--weighting examples", "median"],
            &out("r"),
        ),
        case(
            "trimmed mean without its fraction",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "--rule",
                "trimmed-mean",
                "-o",
                &out("r"),
            ],
            &["--trim-fraction"],
            &out("r"),
        ),
        case(
            "DP options half given",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "--dp-noise-multiplier",
                "1",
                "--dp-clip-norm",
                "1",
                "-o",
                &out("r"),
            ],
            &["--dp-sample-rate", "--dp-expected-clients"],
            &out("r"),
        ),
        case(
            "DP without a noise seed",
            "raffm-aggregate",
            &[&dp[..], &["--round", "1", "-o", &out("r")]].concat(),
            &["RAFFM_DP_SEED", "--dp-seed"],
            &out("r"),
        ),
        case(
            "DP past its target epsilon",
            "raffm-aggregate",
            &[
                &dp[..],
                &[
                    "--dp-seed",
                    "1",
                    "--round",
                    "9",
                    "--dp-target-epsilon",
                    "3",
                    "-o",
                    &out("r"),
                ],
            ]
            .concat(),
            &["round 9", "past the target epsilon 3"],
            &out("r"),
        ),
        case(
            "an unknown attack",
            "raffm-local-train",
            &[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &p("run/partition.json"),
                "-c",
                "c000",
                "--attack",
                "boost:2",
                "-o",
                &out("t"),
            ],
            &["--attack", "boost:2"],
            &out("t"),
        ),
        case(
            "a Poisson rate above 1",
            "raffm-sample-clients",
            &[
                "-b",
                &p("run/budgets.json"),
                "-r",
                "1",
                "--sample-rate",
                "1.5",
            ],
            &["--sample-rate", "1.5"],
            &out("none"),
        ),
        case(
            "global without a tokenizer, prioritize",
            "raffm-prioritize",
            &["-i", &no_tokenizer, "-o", &out("r")],
            &["no-tokenizer", "no tokenizer"],
            &out("r"),
        ),
        case(
            "global without a tokenizer, extract",
            "raffm-extract",
            &["-g", &no_tokenizer, "-o", &out("s"), "--clients", "c0"],
            &["no-tokenizer", "no tokenizer"],
            &out("s"),
        ),
        case(
            "garbled participants",
            "raffm-sample-clients",
            &[
                "--budgets",
                &p("run/budgets.json"),
                "--round",
                "1",
                "--per-round",
                "2",
                "--verify",
                &garbled,
            ],
            &["participants.txt", "not the seeded draw"],
            &out("none"),
        ),
    ]);

    check_cases(&f, &cases);
}

/// Runs every case against the fixture: each must exit non-zero with one line holding its
/// needles and write nothing; afterwards no hidden staging file or lock is left and no
/// input has changed.
fn check_cases(f: &Fixture, cases: &[Case]) {
    let inputs = snapshot(&f.root);
    let mut failures = Vec::new();
    for c in cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = run(c.binary, &args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        // The catalogue as a table, for `cargo test -- --nocapture`.
        eprintln!("| {} | {} |", c.name, err.trim_end().replace('|', "/"));
        let mut why = Vec::new();
        if o.status.success() {
            why.push("exit 0".to_string());
        }
        if err.trim_end().lines().count() != 1 {
            why.push(format!("{} lines", err.trim_end().lines().count()));
        }
        why.extend(
            c.needles
                .iter()
                .filter(|n| !err.contains(n.as_str()))
                .map(|n| format!("no `{n}`")),
        );
        if Path::new(&c.output).exists() {
            why.push("output written".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {} -- {}",
                c.name,
                why.join(", "),
                err.trim_end()
            ));
        }
    }
    // No case left hidden staging files or locks, and no input changed.
    let hidden: Vec<PathBuf> = snapshot(&f.root)
        .into_keys()
        .filter(|p| {
            let inside = p.strip_prefix(&f.root).unwrap();
            inside
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
    assert_eq!(snapshot(&f.root), inputs, "an input changed");
}

#[test]
fn a_run_reads_its_partition_from_any_working_directory() {
    let f = Fixture::build();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(bin("raffm-evaluate"))
        .current_dir(elsewhere.path())
        .args(["-m", &f.p("run/global"), "-p", &f.p("run/partition.json")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewrites the JSON header of a safetensors file through `edit` (text in, text out),
/// keeping the data, and drops the folder's manifest so its hashes cannot be what objects.
fn rewrite_header(folder: &str, edit: impl FnOnce(&str) -> String) {
    let file = format!("{folder}/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let start = data_start(&file);
    let header = edit(std::str::from_utf8(&bytes[8..start]).unwrap());
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(&bytes[start..]);
    std::fs::write(&file, out).unwrap();
    let _ = std::fs::remove_file(format!("{folder}/manifest.json"));
}

/// The first tensor entry of a safetensors header: its name and its JSON object.
fn first_entry(header: &str) -> (String, serde_json::Value) {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header).unwrap();
    v.into_iter().find(|(k, _)| k != "__metadata__").unwrap()
}

/// The second audit: what a folder without a manifest, or a re-hashed one, could slip past
/// the stages. Every case is refused in one line naming the file and the problem.
#[test]
fn the_second_audit_is_refused_cleanly() {
    let f = Fixture::build();
    let p = |s: &str| f.p(s);
    let out = |s: &str| f.p(&format!("out/{s}"));
    std::fs::create_dir_all(f.root.join("out")).unwrap();

    // Data leakage: a validation example in a client's training set, one example in two
    // clients' sets.
    let partition: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("run/partition.json")).unwrap()).unwrap();
    let held_out = partition["validation"][0].clone();
    let leaky = f.copy("run/partition.json", "bad/leaky-partition.json");
    edit_json(&leaky, |p| {
        p["clients"][0]["examples"]
            .as_array_mut()
            .unwrap()
            .push(held_out.clone())
    });
    let shared = f.copy("run/partition.json", "bad/shared-partition.json");
    let of_c001 = partition["clients"][1]["examples"][0].clone();
    edit_json(&shared, |p| {
        p["clients"][0]["examples"]
            .as_array_mut()
            .unwrap()
            .push(of_c001.clone())
    });

    // A manifest that is JSON but not a manifest (its stage a number): before, extract
    // took it for "not prioritized" and went on.
    let torn_manifest = f.copy("run/prioritized", "bad/torn-manifest");
    edit_json(&format!("{torn_manifest}/manifest.json"), |m| {
        m["stage"] = 7.into()
    });

    // Header trust: one tensor listed twice (the second entry reads the same bytes as
    // F16); an entry whose offsets do not fit its shape.
    let twice = f.copy("run/global", "bad/twice");
    rewrite_header(&twice, |h| {
        let (name, mut entry) = first_entry(h);
        let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap());
        entry["dtype"] = "F16".into();
        entry["data_offsets"] = serde_json::json!([start, start + (end - start) / 2]);
        format!("{{\"{name}\":{entry},{}", &h[1..])
    });
    let offsets = f.copy("run/global", "bad/offsets");
    let offsets_tensor = std::cell::RefCell::new(String::new());
    rewrite_header(&offsets, |h| {
        let (name, entry) = first_entry(h);
        let end = entry["data_offsets"][1].as_u64().unwrap();
        *offsets_tensor.borrow_mut() = name;
        // The first entry's end, moved four bytes on: its shape no longer fits.
        let from = format!("{end}]");
        h.replacen(&from, &format!("{}]", end + 4), 1)
    });
    let offsets_tensor = offsets_tensor.into_inner();

    // A truncated tokenizer.json in a folder without a manifest.
    let torn = f.copy("run/global", "bad/torn-tokenizer");
    std::fs::write(
        format!("{torn}/tokenizer.json"),
        "{\"version\": \"1.0\", \"mod",
    )
    .unwrap();
    std::fs::remove_file(format!("{torn}/manifest.json")).unwrap();

    // A consistent model without layers: config and tensors agree on none.
    let no_layers = p("bad/no-layers");
    let one_layer = raffm::Checkpoint::random(
        &raffm::models::families::bert::tiny_model(
            raffm::models::families::bert::Variant::Bert,
            1,
            32,
            4,
            64,
            false,
        ),
        1,
    );
    std::fs::create_dir_all(&no_layers).unwrap();
    let mut config = one_layer.config.to_json();
    config["num_hidden_layers"] = 0.into();
    config.as_object_mut().unwrap().remove("raffm");
    std::fs::write(format!("{no_layers}/config.json"), config.to_string()).unwrap();
    let outer: Vec<(String, &raffm::core::tensor::HostTensor)> = one_layer
        .tensors
        .iter()
        .filter(|(name, _)| !name.contains("layer."))
        .map(|(name, t)| (one_layer.config.hf_name(name, false), t))
        .collect();
    let mut weights = std::fs::File::create(format!("{no_layers}/model.safetensors")).unwrap();
    raffm::core::checkpoint::write_safetensors(&mut weights, &outer).unwrap();
    std::fs::copy(p("model/vocab.txt"), format!("{no_layers}/vocab.txt")).unwrap();

    // budgets.json: a device of 0 bytes; two clients of one tier with different limits.
    let zero_device = f.copy("run/budgets.json", "bad/zero-device.json");
    edit_json(&zero_device, |b| {
        b["clients"][0]["device_memory_bytes"] = 0.into()
    });
    let split_tier = f.copy("run/budgets.json", "bad/split-tier.json");
    edit_json(&split_tier, |b| {
        b["clients"][1]["train"]["max_parameters"] = 12345.into()
    });

    // An update whose config.json disagrees with its tensors, its manifest re-hashed to
    // match.
    let rehashed = f.copy("run/trained/c000", "bad/rehashed");
    let config = format!("{rehashed}/config.json");
    edit_json(&config, |c| c["hidden_size"] = 24.into());
    let digest = raffm::core::io::sha256_file(Path::new(&config))
        .unwrap()
        .sha256;
    edit_json(&format!("{rehashed}/manifest.json"), |m| {
        for o in m["outputs"].as_array_mut().unwrap() {
            if o["path"].as_str().unwrap().ends_with("config.json") {
                o["sha256"] = digest.clone().into();
            }
        }
    });

    let train = |partition: &str, o: &str| {
        vec![
            "-m".to_string(),
            p("run/extracted/c000"),
            "-p".into(),
            partition.into(),
            "-c".into(),
            "c000".into(),
            "-o".into(),
            o.into(),
        ]
    };
    let mut cases = vec![
        Case {
            name: "validation example in a client's training set, local-train",
            binary: "raffm-local-train",
            args: train(&leaky, &out("a")),
            needles: vec![
                "leaky-partition.json".into(),
                format!("example {held_out} is in client c000's training data and in the validation set"),
            ],
            output: out("a"),
        },
        Case {
            name: "one example in two clients, local-train",
            binary: "raffm-local-train",
            args: train(&shared, &out("b")),
            needles: vec![
                "shared-partition.json".into(),
                format!("example {of_c001} is in the training data of both client c000 and client c001"),
            ],
            output: out("b"),
        },
    ];
    cases.extend([
        case(
            "validation example in a client's training set, aggregate --partition",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "--partition",
                &leaky,
                "-o",
                &out("c"),
            ],
            &["leaky-partition.json", "validation set"],
            &out("c"),
        ),
        case(
            "validation example in a client's training set, extract --vocabulary client",
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "--budgets",
                &p("run/budgets.json"),
                "--partition",
                &leaky,
                "--vocabulary",
                "client",
                "--clients",
                "c000",
                "-o",
                &out("d"),
            ],
            &["leaky-partition.json", "validation set"],
            &out("d"),
        ),
        case(
            "a tensor listed twice in the header",
            "raffm-prioritize",
            &["-i", &twice, "-o", &out("e")],
            &["twice/model.safetensors", "is listed twice"],
            &out("e"),
        ),
        case(
            "a tensor listed twice in the header, evaluate",
            "raffm-evaluate",
            &["-m", &twice, "-p", &p("run/partition.json")],
            &["twice/model.safetensors", "is listed twice"],
            &out("none"),
        ),
    ]);
    cases.push(Case {
        name: "data_offsets that do not fit the shape",
        binary: "raffm-prioritize",
        args: vec!["-i".into(), offsets.clone(), "-o".into(), out("f")],
        needles: vec![
            "offsets/model.safetensors".into(),
            format!("tensor `{offsets_tensor}`"),
            "data_offsets".into(),
        ],
        output: out("f"),
    });
    for (binary, args, o) in [
        (
            "raffm-prioritize",
            vec!["-i", &torn, "-o", &out("g")],
            out("g"),
        ),
        (
            "raffm-extract",
            vec!["-g", &torn, "--clients", "c0", "-o", &out("h")],
            out("h"),
        ),
    ] {
        cases.push(case(
            "a truncated tokenizer.json without a manifest",
            binary,
            &args,
            &["torn-tokenizer/tokenizer.json", "cannot load tokenizer"],
            &o,
        ));
    }
    for (binary, args, o) in [
        (
            "raffm-prioritize",
            vec!["-i", &no_layers, "-o", &out("i")],
            out("i"),
        ),
        (
            "raffm-extract",
            vec!["-g", &no_layers, "--clients", "c0", "-o", &out("j")],
            out("j"),
        ),
        (
            "raffm-deploy-scale",
            vec![
                "-g",
                &no_layers,
                "--budgets",
                &p("run/budgets.json"),
                "--partition",
                &p("run/partition.json"),
                "-o",
                &out("k"),
            ],
            out("k"),
        ),
        (
            "raffm-evaluate",
            vec!["-m", &no_layers, "-p", &p("run/partition.json")],
            out("none"),
        ),
        (
            "raffm-local-train",
            vec![
                "-m",
                &no_layers,
                "-p",
                &p("run/partition.json"),
                "-c",
                "c000",
                "-o",
                &out("l"),
            ],
            out("l"),
        ),
    ] {
        cases.push(case(
            "num_hidden_layers 0, config and tensors agreeing",
            binary,
            &args,
            &[
                "no-layers/config.json",
                "num_hidden_layers must be at least 1",
            ],
            &o,
        ));
    }
    cases.extend([
        case(
            "a device of 0 bytes",
            "raffm-deploy-scale",
            &[
                "-g",
                &p("run/global"),
                "--budgets",
                &zero_device,
                "--partition",
                &p("run/partition.json"),
                "-o",
                &out("m"),
            ],
            &[
                "zero-device.json",
                "client `c000`: device_memory_bytes is 0",
            ],
            &out("m"),
        ),
        case(
            "two clients of one tier with different limits",
            "raffm-extract",
            &[
                "-g",
                &p("run/prioritized"),
                "--budgets",
                &split_tier,
                "--clients",
                "c000",
                "-o",
                &out("n"),
            ],
            &[
                "split-tier.json",
                "both of tier `s` but have different limits",
            ],
            &out("n"),
        ),
        case(
            "an update whose config disagrees with its tensors, re-hashed",
            "raffm-aggregate",
            &[
                "-g",
                &p("run/prioritized"),
                "-u",
                &rehashed,
                "-o",
                &out("o"),
            ],
            &["rehashed/model.safetensors", "config.json implies"],
            &out("o"),
        ),
        case(
            "a prioritized model whose manifest does not read",
            "raffm-extract",
            &[
                "-g",
                &torn_manifest,
                "--budgets",
                &p("run/budgets.json"),
                "--clients",
                "c000",
                "-o",
                &out("p"),
            ],
            &["torn-manifest/manifest.json", "invalid manifest"],
            &out("p"),
        ),
    ]);
    check_cases(&f, &cases);
}

/// A tier name is a label for a budget: `budgets.json` defines none, and one the pipeline
/// never named ("galactic") is accepted, its clients getting the limits written beside it.
#[test]
fn a_tier_name_is_a_label_for_the_limits_beside_it() {
    let f = Fixture::build();
    let budgets = f.copy("run/budgets.json", "galactic.json");
    edit_json(&budgets, |b| {
        for c in b["clients"].as_array_mut().unwrap() {
            c["tier"] = "galactic".into();
        }
    });
    let o = f.p("out");
    ok(
        "raffm-extract",
        &[
            "-g",
            &f.p("run/prioritized"),
            "--budgets",
            &budgets,
            "--clients",
            "c000",
            "-o",
            &o,
            "-q",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{o}/c000/manifest.json")).unwrap())
            .unwrap();
    let want = raffm::fl::pipeline::Budgets::load(Path::new(&budgets))
        .unwrap()
        .clients[0]
        .train
        .max_parameters;
    assert_eq!(manifest["budget"]["max_parameters"].as_u64(), want);
}

/// Two writers of one output: the second is refused at once, while the first still runs,
/// instead of training too and silently replacing the first's result.
#[test]
fn a_second_local_train_into_the_same_output_is_refused_while_the_first_runs() {
    let f = Fixture::build();
    let o = f.p("out/c000");
    let args = |seed: &str| -> Vec<String> {
        [
            "-m",
            &f.p("run/extracted/c000"),
            "-p",
            &f.p("run/partition.json"),
            "-c",
            "c000",
            // 2,000 steps whatever the shard's size: long enough to be caught running.
            "--epochs",
            "2000",
            "--max-steps",
            "2000",
            "--batch-size",
            "4",
            "--seed",
            seed,
            "-q",
            "-o",
            &o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut first = Command::new(bin("raffm-local-train"))
        .args(args("1"))
        .spawn()
        .unwrap();
    // The first holds the output's lock from its start.
    let lock = f.root.join("out/.c000.lock");
    let started = std::time::Instant::now();
    while !lock.exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first writer ended before its lock was seen"
        );
        assert!(
            started.elapsed().as_secs() < 60,
            "the first writer never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = run(
        "raffm-local-train",
        &args("2").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "both writers succeeded");
    assert!(err.contains("another process is writing it"), "{err}");
    assert!(first.wait().unwrap().success());
    let manifest = std::fs::read_to_string(format!("{o}/manifest.json")).unwrap();
    assert!(
        manifest.contains("\"seed\": 1") || manifest.contains("\"seed\":1"),
        "{manifest}"
    );
}

// ---- the importers, on the real files (`make assets-llm assets-vit`; `make test` fetches
// them): an input changed in place is refused, naming what is wrong, and nothing is
// written or replaced.

/// The storage type of tensor `name` in a GGUF file's header, and where it is written.
fn type_field(bytes: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the tensor is in the header")
        + needle.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * dims
}

#[test]
fn a_tensor_whose_type_was_changed_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf_path()).unwrap();
    let field = type_field(&bytes, "blk.0.ffn_down.weight");
    assert_eq!(
        u32::from_le_bytes(bytes[field..field + 4].try_into().unwrap()),
        3,
        "stored as Q4_1"
    );
    // Q4_0 (type 2) reads Q4_1's blocks with the wrong stride; F32 (type 0) reads its
    // bytes as floats.
    for new_type in [2u32, 0] {
        let mut changed = bytes.clone();
        changed[field..field + 4].copy_from_slice(&new_type.to_le_bytes());
        let input = dir.path().join("changed.gguf");
        std::fs::write(&input, &changed).unwrap();
        let out = dir.path().join("out");
        let err = import_refused("raffm-import-gguf", &input, &out);
        assert!(err.contains("decodes to a non-finite value"), "{err}");
        assert!(!out.exists(), "type {new_type}: an output was written");
        std::fs::remove_file(&input).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

fn onnx_path() -> PathBuf {
    raffm_e2e::asset("onnx/vit_s_focus.onnx", "assets-vit")
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
        let err = import_refused("raffm-import-onnx", &input, &output);
        assert!(
            err.contains(&format!("no initializer `{missing}`")),
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
