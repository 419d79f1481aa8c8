//! Rounds through Slurm on a real single-node cluster that the test starts and stops
//! (`scripts/slurm_cluster.sh`): bit-identical to a local run, one job per client sized by
//! its sub-model, a cancelled client job redone by the re-run, a sweep as one job array.
//!
//! Needs root and Debian's slurm-wlm and munge, which `make test` installs; set
//! RAFFM_SKIP_SLURM=1 to leave it out where neither is possible.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raffm_e2e::*;

/// Local epochs of the client whose job is cancelled: a few seconds of training.
const LONG_EPOCHS: u64 = 3000;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/slurm_cluster.sh"
);

/// A running cluster; dropping it stops its daemons by PID and removes its folder.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(SCRIPT)
            .args(["start", dir.to_str().unwrap(), "2", "8000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the cluster did not start (root and slurm-wlm + munge are needed; RAFFM_SKIP_SLURM=1 skips this test): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Daemon PIDs, to check they are gone afterwards.
    fn pids(&self) -> Vec<u32> {
        ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(self.dir.join(f))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

fn slurm_make(
    cluster: &Cluster,
    args: &[&str],
    pipeline: &Path,
    artifacts: &Path,
    n: usize,
) -> (bool, String) {
    let mut all = vec!["LAUNCHER=slurm", "NO_BUILD=1"];
    all.extend_from_slice(args);
    make_env(
        &all,
        &[("SLURM_CONF", &cluster.conf)],
        pipeline,
        artifacts,
        n,
    )
}

/// A job cancelled while it waits ends CANCELLED with exit code 0, and `sbatch --wait`
/// returns 0 for it: the launcher must still fail. A drained node keeps the job pending.
fn cancelled_before_it_starts_is_a_failure(cluster: &Cluster, dir: &Path) {
    let node = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    let set_node = |state: &str| {
        let mut c = cluster.command("scontrol");
        c.args([
            "update",
            &format!("nodename={}", node.trim()),
            &format!("state={state}"),
        ]);
        if state == "drain" {
            c.arg("reason=raffm-test");
        }
        assert!(c.status().unwrap().success(), "scontrol state={state}");
    };
    set_node("drain");
    let marker = dir.join("ran");
    let launch = cluster
        .command(bin_dir().join("raffm-launch").to_str().unwrap())
        .args([
            "--launcher",
            "slurm",
            "--memory-mib",
            "64",
            "--job-name",
            "raffm-held",
        ])
        .arg("--log-dir")
        .arg(dir.join("held-logs"))
        .args(["--", "touch"])
        .arg(&marker)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        assert!(Instant::now() < deadline, "the held job never queued");
        let out = cluster
            .command("squeue")
            .args(["-h", "-t", "PENDING", "-n", "raffm-held", "-o", "%i"])
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !id.is_empty() {
            break id;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(cluster
        .command("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    let out = launch.wait_with_output().unwrap();
    set_node("resume");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a cancelled job was reported done:\n{text}"
    );
    assert!(
        text.contains(&format!("Slurm job {job} (raffm-held) ended CANCELLED")),
        "{text}"
    );
    assert!(!marker.exists(), "the cancelled job ran");
}

fn globals_equal(a: &Path, b: &Path, rounds: usize) {
    for r in 1..=rounds {
        let file = format!("tiny/round-{r}/global/model.safetensors");
        assert_eq!(
            read(a.join(&file)),
            read(b.join(&file)),
            "round {r}: Slurm and local differ"
        );
    }
}

#[test]
fn rounds_through_slurm_equal_local_ones_with_a_job_per_client_sized_to_it() {
    if std::env::var_os("RAFFM_SKIP_SLURM").is_some() {
        eprintln!("RAFFM_SKIP_SLURM is set: the Slurm test does not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&dir.path().join("cluster"));
    let pids = cluster.pids();
    let pipeline = fixture(dir.path());
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    let started = Instant::now();
    make_round(&pipeline, &local, 2);
    let local_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (ok, out) = slurm_make(&cluster, &["round"], &pipeline, &slurm, 2);
    assert!(ok, "{out}");
    let seconds = started.elapsed().as_secs_f64();
    globals_equal(&local, &slurm, 2);

    // One job per client, each asking for its own sub-model's estimate plus the margin.
    let mut jobs = std::collections::BTreeSet::new();
    let mut requests = std::collections::BTreeSet::new();
    for r in 1..=2 {
        let round = slurm.join(format!("tiny/round-{r}"));
        let clients = std::fs::read_to_string(round.join("participants.txt")).unwrap();
        for c in clients.trim().split(',') {
            let trained = json(round.join(format!("trained/{c}/manifest.json")));
            let extracted = json(round.join(format!("extracted/{c}/manifest.json")));
            let estimate = extracted["metrics"]["train_memory_bytes"].as_u64().unwrap();
            let slurm = &trained["slurm"];
            assert!(
                jobs.insert(slurm["job_id"].as_str().unwrap().to_string()),
                "a job ran two clients"
            );
            let asked = slurm["mem_per_node_mib"].as_u64().unwrap();
            assert_eq!(asked, estimate.div_ceil(1 << 20) + 192, "{c} in round {r}");
            requests.insert(asked);
            assert!(round.join("logs").read_dir().unwrap().count() > 0);
        }
    }
    assert_eq!(jobs.len(), 6, "3 clients in each of 2 rounds");
    assert!(
        requests.len() > 1,
        "every tier asked for the same memory: {requests:?}"
    );
    eprintln!("2 rounds, 6 client jobs: {seconds:.1} s through Slurm, {local_seconds:.1} s here");

    // A client job cancelled while it trains fails the round naming the job; the re-run
    // redoes that client only, and the result is still bit-identical. Local training long
    // enough to be cancelled in the middle.
    let long_dir = dir.path().join("long");
    std::fs::create_dir_all(&long_dir).unwrap();
    let long = fixture_with(&long_dir, |p| p["local"]["epochs"] = LONG_EPOCHS.into());
    let long_local = long_dir.join("local");
    make_round(&long, &long_local, 1);
    let wall = json(long_local.join("tiny/round-1/trained/c000/manifest.json"))["metrics"]
        ["wall_seconds"]
        .clone();
    eprintln!("a client trains {LONG_EPOCHS} epochs in {wall} s");
    let again = long_dir.join("again");
    let run = make_command(
        &[
            "round",
            "N=1",
            "PIPELINE=tiny",
            "LAUNCHER=slurm",
            "NO_BUILD=1",
        ],
        &again,
    )
    .env("SLURM_CONF", &cluster.conf)
    .arg(format!("PIPELINE_FILE={}", long.display()))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let cancelled = loop {
        assert!(Instant::now() < deadline, "no client job started");
        let out = cluster
            .command("squeue")
            .args(["-h", "-t", "RUNNING", "-o", "%i %j"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains("-r1-")) {
            std::thread::sleep(Duration::from_millis(1000)); // into its training
            let (id, name) = line.split_once(' ').unwrap();
            assert!(cluster
                .command("scancel")
                .arg(id)
                .status()
                .unwrap()
                .success());
            break (id.to_string(), name.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = run.wait_with_output().unwrap();
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "the round finished despite the cancelled job:\n{text}"
    );
    assert!(
        text.contains(&format!("Slurm job {}", cancelled.0)) && text.contains("CANCELLED"),
        "{text}"
    );
    let client = cancelled.1.rsplit('-').next().unwrap().to_string();
    assert!(!again
        .join(format!("tiny/round-1/trained/{client}/manifest.json"))
        .exists());
    let (ok, rerun) = slurm_make(&cluster, &["round"], &long, &again, 1);
    assert!(ok, "{rerun}");
    globals_equal(&long_local, &again, 1);
    let retrained = rerun.matches("raffm-local-train").count();
    assert_eq!(
        retrained, 1,
        "the re-run trains the cancelled client only:\n{rerun}"
    );

    // A sweep of 2 pipelines x 2 seeds as one job array, and one report of them.
    let other = dir.path().join("other.json");
    let mut settings = json(pipeline.clone());
    settings["name"] = "other".into();
    settings["local"]["epochs"] = 1.into();
    std::fs::write(&other, settings.to_string()).unwrap();
    let sweep = dir.path().join("sweep");
    std::fs::create_dir_all(sweep.join("pipelines")).unwrap();
    let mut tiny = json(pipeline.clone());
    tiny["local"]["epochs"] = 1.into();
    std::fs::write(sweep.join("pipelines/tiny.json"), tiny.to_string()).unwrap();
    std::fs::copy(&other, sweep.join("pipelines/other.json")).unwrap();
    let pipelines = format!("PIPELINE_DIR={}", sweep.join("pipelines").display());
    let out = make_command(
        &[
            "sweep",
            "N=1",
            "LAUNCHER=slurm",
            "NO_BUILD=1",
            "SWEEP_PIPELINES=tiny other",
            "SWEEP_SEEDS=0 1",
            "SWEEP_MEM_MIB=1024",
            &pipelines,
        ],
        &sweep,
    )
    .env("SLURM_CONF", &cluster.conf)
    .output()
    .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("4 array tasks"), "{text}");
    let mut arrays = std::collections::BTreeSet::new();
    for run in ["tiny-seed0", "tiny-seed1", "other-seed0", "other-seed1"] {
        let m = json(sweep.join(format!("{run}/round-1/global/manifest.json")));
        arrays.insert(m["slurm"]["job_id"].as_str().unwrap().to_string());
        assert!(m["slurm"]["array_task_id"].is_u64(), "{run}: {m}");
    }
    assert_eq!(arrays.len(), 4, "every run its own array task");
    let report = std::fs::read_to_string(sweep.join("sweep/report/report.md")).unwrap();
    assert!(report.contains("other-seed1") && report.contains("tiny-seed0"));

    cancelled_before_it_starts_is_a_failure(&cluster, dir.path());

    drop(cluster);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} still runs"
        );
    }
    assert!(
        !dir.path().join("cluster").exists(),
        "the cluster left its folder"
    );
}
