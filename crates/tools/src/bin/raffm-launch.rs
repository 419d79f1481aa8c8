//! `raffm-launch`: one client's stage command, run here or as a Slurm job sized to it.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::Parser;

use raffm::fl::launch::{
    memory_request_mib, training_memory_estimate, JobOutcome, Launch, Launcher, Resources,
};

/// Runs COMMAND through a launcher. local: here, as it is (what `make round` does by
/// default). slurm: as a Slurm batch job (`sbatch --wait`), which blocks until the job
/// ends and fails when it fails, naming the job id, its state and its log.
///
/// The job's memory request is the training-memory estimate of the client's sub-model
/// (--memory-from: the folder raffm-extract wrote; its manifest records the estimate)
/// plus --memory-margin-mib for the process around the model, or --memory-mib as given.
/// The command runs in the current directory on the node: artifacts must live on a
/// filesystem every node shares.
///
///     raffm-launch --launcher slurm --memory-from round-1/extracted/c003 --cpus 2 \
///         --job-name raffm-c003 --log-dir round-1/logs -- raffm-local-train ...
#[derive(Parser, Debug)]
#[command(name = "raffm-launch", version, verbatim_doc_comment)]
struct Args {
    /// local or slurm.
    #[arg(long, default_value = "local")]
    launcher: Launcher,
    #[arg(long, required = true)]
    job_name: String,
    /// Folder of the client's sub-model: its manifest's training-memory estimate sizes the
    /// job.
    #[arg(long, conflicts_with = "memory_mib")]
    memory_from: Option<PathBuf>,
    /// Memory to request, MiB (instead of --memory-from).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Added to the estimate of --memory-from, MiB.
    #[arg(long, default_value_t = 192)]
    memory_margin_mib: u64,
    /// CPUs per task.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// GPUs per job (`--gres=gpu:N`).
    #[arg(long)]
    gpus: Option<u32>,
    #[arg(long)]
    partition: Option<String>,
    #[arg(long)]
    account: Option<String>,
    /// Time limit, in Slurm's format (`30`, `2:00:00`).
    #[arg(long)]
    time: Option<String>,
    /// A job array of N tasks (SLURM_ARRAY_TASK_ID 0..N), each running COMMAND.
    #[arg(long)]
    array: Option<u32>,
    /// Where the job logs go (slurm).
    #[arg(long, default_value = ".")]
    log_dir: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let memory_mib = match (&args.memory_from, args.memory_mib) {
        (Some(dir), _) => {
            memory_request_mib(training_memory_estimate(dir)?, args.memory_margin_mib)
        }
        (None, Some(m)) if m > 0 => m,
        (None, Some(_)) => bail!("--memory-mib must be positive"),
        (None, None) if args.launcher == Launcher::Local => 0,
        (None, None) => bail!("--launcher slurm needs --memory-from or --memory-mib"),
    };
    if args.cpus == 0 {
        bail!("--cpus must be 1 or more");
    }
    if args.array == Some(0) {
        bail!("--array must be 1 or more");
    }
    let launch = Launch {
        launcher: args.launcher,
        job_name: args.job_name.clone(),
        resources: Resources {
            memory_mib,
            cpus: args.cpus,
            gpus: args.gpus,
            partition: args.partition.clone(),
            account: args.account.clone(),
            time: args.time.clone(),
            array: args.array,
        },
        log_dir: args.log_dir.clone(),
        command: args.command.clone(),
    };
    match args.launcher {
        Launcher::Local => {
            let status = launch
                .command()
                .status()
                .with_context(|| format!("cannot run `{}`", args.command[0]))?;
            if !status.success() {
                bail!("`{}` failed ({status})", args.command[0]);
            }
            Ok(())
        }
        Launcher::Slurm => slurm(&launch),
    }
}

/// Submits, says which job it is, waits, and reports how it ended.
fn slurm(launch: &Launch) -> anyhow::Result<()> {
    std::fs::create_dir_all(&launch.log_dir)
        .with_context(|| format!("--log-dir {}", launch.log_dir.display()))?;
    let mut child = launch
        .command()
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sbatch: is Slurm installed, and SLURM_CONF set where needed?")?;
    // --parsable prints `id` or `id;cluster` on submission, before --wait waits.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first)?;
    let job = first.trim().split(';').next().unwrap_or("").to_string();
    if !job.is_empty() {
        eprintln!(
            "{}: Slurm job {job}, {} MiB, {} CPUs{}",
            launch.job_name,
            launch.resources.memory_mib,
            launch.resources.cpus,
            launch
                .resources
                .array
                .map_or(String::new(), |n| format!(", {n} array tasks"))
        );
    }
    let status = child.wait()?;
    if job.is_empty() {
        bail!("sbatch failed ({status}) before a job was submitted");
    }
    // sbatch's status alone can say 0 for a job cancelled before its script started.
    match settled_outcome(&job) {
        JobOutcome::Failed { state, exit } => bail!(
            "Slurm job {job} ({}) ended {state} (exit code {exit}); its log: {}; run the same command (or make) again to redo it",
            launch.job_name,
            launch.log_path(&job).display()
        ),
        _ if !status.success() => bail!(
            "Slurm job {job} ({}) failed ({status}); its log: {}; run the same command (or make) again to redo it",
            launch.job_name,
            launch.log_path(&job).display()
        ),
        _ => {}
    }
    if launch.resources.array.is_none() {
        // The command's own last line (local-train's summary) for the terminal.
        if let Ok(text) = std::fs::read_to_string(launch.log_path(&job)) {
            if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                eprintln!("{line}");
            }
        }
    }
    Ok(())
}

/// The job's outcome once it has left COMPLETING (at most ~30 s after sbatch returns).
fn settled_outcome(job: &str) -> JobOutcome {
    for _ in 0..150 {
        let text = std::process::Command::new("scontrol")
            .args(["show", "job", "-o", job])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        match JobOutcome::from_scontrol(&text) {
            JobOutcome::Ending => std::thread::sleep(std::time::Duration::from_millis(200)),
            outcome => return outcome,
        }
    }
    JobOutcome::Ending
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-launch", run(Args::parse()))
}
