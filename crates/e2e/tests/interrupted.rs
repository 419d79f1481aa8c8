//! Writers that are killed (`kill -9`) at any point leave nothing a re-run would take as
//! done, and the re-run's output is bit-identical to an uninterrupted run's; two writers of
//! the same output end in one result, or in one clear refusal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use raffm_e2e::{bin, snapshot, Fixture};

/// The bytes of an output that do not record timings: a folder's files but its manifest,
/// or a file; for an evaluation report, its metrics.
fn stable_bytes(output: &Path) -> Vec<(String, Vec<u8>)> {
    if output.is_dir() {
        return snapshot(output)
            .into_iter()
            .filter(|(p, _)| !p.ends_with("manifest.json"))
            .map(|(p, b)| (p.strip_prefix(output).unwrap().display().to_string(), b))
            .collect();
    }
    let bytes = std::fs::read(output).unwrap();
    // raffm-evaluate's report: the time it took is no part of the result.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if v.get("seconds").is_some() {
            return vec![("metrics".into(), v["metrics"].to_string().into_bytes())];
        }
    }
    vec![(String::new(), bytes)]
}

/// Hidden entries (staging folders, locks) in `folder`.
fn hidden(folder: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Every command that writes, as `(binary, args with OUT for the output)`.
fn writers(f: &Fixture) -> Vec<(&'static str, Vec<String>)> {
    let p = |s: &str| f.p(s);
    let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        (
            "raffm-partition",
            cmd(&[
                "--data",
                &p("reviews.jsonl"),
                "--clients",
                "3",
                "--output",
                "OUT",
            ]),
        ),
        (
            "raffm-budgets",
            cmd(&["--pipeline", &p("pipeline.json"), "--output", "OUT"]),
        ),
        (
            "raffm-init-head",
            cmd(&[
                "--model",
                &p("model"),
                "--partition",
                &p("run/partition.json"),
                "--output",
                "OUT",
            ]),
        ),
        (
            "raffm-evaluate",
            cmd(&[
                "-m",
                &p("run/global"),
                "-p",
                &p("run/partition.json"),
                "-q",
                "--output",
                "OUT",
            ]),
        ),
        (
            "raffm-prioritize",
            cmd(&["-i", &p("run/global"), "-q", "-o", "OUT"]),
        ),
        (
            "raffm-extract",
            cmd(&[
                "-g",
                &p("run/prioritized"),
                "--budgets",
                &p("run/budgets.json"),
                "--clients",
                "c000",
                "-q",
                "-o",
                "OUT",
            ]),
        ),
        (
            "raffm-local-train",
            cmd(&[
                "-m",
                &p("run/extracted/c000"),
                "-p",
                &p("run/partition.json"),
                "-c",
                "c000",
                "--max-steps",
                "3",
                "--batch-size",
                "4",
                "-q",
                "-o",
                "OUT",
            ]),
        ),
        (
            "raffm-aggregate",
            cmd(&[
                "-g",
                &p("run/prioritized"),
                "-u",
                &p("run/trained/c000"),
                "-q",
                "-o",
                "OUT",
            ]),
        ),
    ]
}

fn command(binary: &str, args: &[String], out: &Path) -> Command {
    let mut c = Command::new(bin(binary));
    c.args(
        args.iter()
            .map(|a| if a == "OUT" { out.to_str().unwrap() } else { a }),
    );
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// Starts `binary` and kills it (SIGKILL: no chance to clean up) as soon as a hidden entry
/// (its lock or staging folder) appears beside `out` or, for writers of several folders,
/// inside it, so the kill lands mid-write. Returns whether it did; `false` when the writer
/// finished before it was seen.
fn kill_on_first_write(binary: &str, args: &[String], out: &Path) -> bool {
    let parent = out.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let debris = || !hidden(parent).is_empty() || !hidden(out).is_empty();
    let mut child = command(binary, args, out).spawn().unwrap();
    loop {
        if debris() {
            child.kill().unwrap();
            child.wait().unwrap();
            return debris();
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn a_killed_writer_leaves_nothing_and_a_rerun_gives_the_same_output() {
    let f = Fixture::build();
    for (binary, args) in writers(&f) {
        let reference = f.root.join(format!("reference/{binary}"));
        assert!(
            command(binary, &args, &reference)
                .status()
                .unwrap()
                .success(),
            "{binary}"
        );
        // extract writes OUT/<client>: compare that folder.
        let part = |out: &Path| {
            if binary == "raffm-extract" {
                out.join("c000")
            } else {
                out.to_path_buf()
            }
        };
        let want = stable_bytes(&part(&reference));
        // Kills at fixed delays land anywhere (before, during or after the write); kills on
        // the first lock or staging entry land mid-write. Tiny writes can finish before the
        // poll sees them, so those are retried a few times.
        let mut caught_mid_write = false;
        for k in 0..12 {
            let out = f.root.join(format!("killed/{binary}-{k}"));
            let parent = out.parent().unwrap();
            match [0u64, 2, 5, 10, 20, 40, 80, 160].get(k) {
                Some(&delay_ms) => {
                    let mut child = command(binary, &args, &out).spawn().unwrap();
                    std::thread::sleep(Duration::from_millis(delay_ms));
                    child.kill().unwrap();
                    child.wait().unwrap();
                }
                None if caught_mid_write => break,
                None => caught_mid_write = kill_on_first_write(binary, &args, &out),
            }
            // Whatever is there is either nothing or complete.
            if part(&out).exists() && !binary.ends_with("extract") {
                assert_eq!(
                    stable_bytes(&part(&out)),
                    want,
                    "{binary} (kill {k}) left a partial output"
                );
            }
            assert!(
                command(binary, &args, &out).status().unwrap().success(),
                "{binary}: re-run failed"
            );
            assert_eq!(stable_bytes(&part(&out)), want, "{binary}: re-run differs");
            assert!(
                hidden(parent).is_empty(),
                "{binary}: left {:?}",
                hidden(parent)
            );
            if binary == "raffm-extract" {
                assert!(hidden(&out).is_empty(), "{binary}: left {:?}", hidden(&out));
            }
        }
        // A writer of a model has milliseconds of writing to catch; without a catch the
        // test would prove little.
        let writes_a_model = !matches!(
            binary,
            "raffm-partition" | "raffm-budgets" | "raffm-evaluate"
        );
        assert!(
            caught_mid_write || !writes_a_model,
            "no kill of {binary} caught it mid-write"
        );
    }
}

#[test]
fn two_writers_of_one_output_end_in_one_result_or_a_clear_refusal() {
    let f = Fixture::build();
    let (_, args) = writers(&f)
        .into_iter()
        .find(|(b, _)| *b == "raffm-prioritize")
        .unwrap();
    let reference = f.root.join("reference");
    assert!(command("raffm-prioritize", &args, &reference)
        .status()
        .unwrap()
        .success());
    let want = stable_bytes(&reference);
    let (mut refused, mut succeeded) = (0, 0);
    for trial in 0..12 {
        let out = f.root.join(format!("race/{trial}"));
        let spawn = || {
            let mut c = command("raffm-prioritize", &args, &out);
            c.stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() {
                succeeded += 1;
            } else {
                assert_eq!(err.trim_end().lines().count(), 1, "{err}");
                assert!(err.contains("another process is writing it"), "{err}");
                refused += 1;
            }
        }
        assert_eq!(stable_bytes(&out), want, "trial {trial}");
        assert!(
            hidden(out.parent().unwrap()).is_empty(),
            "trial {trial}: {:?}",
            hidden(out.parent().unwrap())
        );
    }
    eprintln!("24 writers: {succeeded} succeeded, {refused} refused");
    assert!(succeeded >= 12);
}
