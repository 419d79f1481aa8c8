//! Where a client's work runs: here, or as a job of a cluster scheduler sized to that
//! client's sub-model. The one seam for schedulers: another one is a variant of
//! [`Launcher`] and its arm in [`Launch::command`].
//!
//! Slurm: every client's training is a job whose memory request is the cost model's
//! training-memory estimate of its sub-model (recorded by raffm-extract in the sub-model's
//! manifest) plus a margin for the process itself, so a 30% client asks for a third of
//! what a full-model client asks for and the scheduler packs them accordingly. `sbatch
//! --wait` blocks until the job ends and returns its exit status, but not always a
//! failing one: a job cancelled before its script starts ends CANCELLED with exit code 0,
//! and sbatch returns 0. So the launcher reads the job's state after it ([`JobOutcome`]).
//! The stage's atomic outputs make a failed or cancelled job safe to redo.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::error::{Error, Result};
use crate::core::manifest::{Manifest, StageRecord, MANIFEST_FILE};

/// MiB.
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// The command runs here, as it is.
    Local,
    /// The command runs as a Slurm batch job (`sbatch --wait`).
    Slurm,
}

impl std::str::FromStr for Launcher {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "local" => Ok(Launcher::Local),
            "slurm" => Ok(Launcher::Slurm),
            _ => Err(format!("unknown launcher `{s}` (expected local or slurm)")),
        }
    }
}

/// What a job asks the scheduler for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub memory_mib: u64,
    pub cpus: u32,
    pub gpus: Option<u32>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Slurm's time format (`30`, `1:00:00`).
    pub time: Option<String>,
    /// A job array of this many tasks (indices 0..n), each running the command.
    pub array: Option<u32>,
}

/// One command to launch.
#[derive(Debug, Clone)]
pub struct Launch {
    pub launcher: Launcher,
    pub job_name: String,
    pub resources: Resources,
    /// Where the job's output goes (`<job name>-<job id>.out`; arrays add the task index).
    pub log_dir: PathBuf,
    pub command: Vec<String>,
}

/// How a Slurm job ended, read from `scontrol show job -o` (one line per array task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every task is COMPLETED with exit code 0:0.
    Completed,
    /// Some task is still running or completing: ask again.
    Ending,
    /// The first task that did not complete: its JobState and ExitCode.
    Failed { state: String, exit: String },
    /// scontrol said nothing we can read (the job was purged, or no scontrol).
    Unknown,
}

impl JobOutcome {
    pub fn from_scontrol(text: &str) -> JobOutcome {
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let mut outcome = JobOutcome::Unknown;
        for line in text.lines() {
            let Some(state) = field(line, "JobState=") else {
                continue;
            };
            let exit = field(line, "ExitCode=").unwrap_or_else(|| "unknown".into());
            match state.as_str() {
                "COMPLETED" if exit == "0:0" => {
                    if outcome == JobOutcome::Unknown {
                        outcome = JobOutcome::Completed;
                    }
                }
                "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING" | "SUSPENDED" => {
                    if !matches!(outcome, JobOutcome::Failed { .. }) {
                        outcome = JobOutcome::Ending;
                    }
                }
                _ => return JobOutcome::Failed { state, exit },
            }
        }
        outcome
    }
}

/// The training-memory estimate raffm-extract recorded for the sub-model in `dir`, in
/// bytes.
pub fn training_memory_estimate(dir: &Path) -> Result<u64> {
    let path = dir.join(MANIFEST_FILE);
    match Manifest::load(&path)?.record {
        StageRecord::Extract(extracted) => Ok(extracted.metrics.train_memory_bytes),
        other => Err(Error::format(
            &path,
            format!(
                "written by stage `{}`, not raffm-extract: it has no training-memory estimate",
                other.name()
            ),
        )),
    }
}

/// The memory to request for an estimate of `bytes`: rounded up to MiB, plus `margin_mib`
/// for the process around the model (binary, tokenizer, dataset; 107-123 MiB on MiniLM).
pub fn memory_request_mib(bytes: u64, margin_mib: u64) -> u64 {
    bytes.div_ceil(MIB) + margin_mib
}

/// `arg` quoted for a POSIX shell: kept as it is when it is plain, single-quoted otherwise.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Launch {
    /// The process that launches the command: the command itself, or its submission.
    pub fn command(&self) -> Command {
        match self.launcher {
            Launcher::Local => {
                let mut c = Command::new(&self.command[0]);
                c.args(&self.command[1..]);
                c
            }
            Launcher::Slurm => {
                let mut c = Command::new("sbatch");
                c.args(self.sbatch_args());
                c
            }
        }
    }

    /// Where Slurm writes the log of job `job` (`--output` in [`Self::sbatch_args`]); for
    /// an array, with `<task>` standing for the task id.
    pub fn log_path(&self, job: &str) -> PathBuf {
        let task = if self.resources.array.is_some() {
            "_<task>"
        } else {
            ""
        };
        self.log_dir
            .join(format!("{}-{job}{task}.out", self.job_name))
    }

    /// sbatch's arguments: wait for the end, print the job id, the resources, the log, the
    /// working directory, and the command as a one-line script.
    pub fn sbatch_args(&self) -> Vec<String> {
        let r = &self.resources;
        let log = match r.array {
            Some(_) => format!("{}/%x-%A_%a.out", self.log_dir.display()),
            None => format!("{}/%x-%j.out", self.log_dir.display()),
        };
        let mut args = vec![
            "--parsable".to_string(),
            "--wait".to_string(),
            format!("--job-name={}", self.job_name),
            format!("--mem={}M", r.memory_mib),
            format!("--cpus-per-task={}", r.cpus),
            "--ntasks=1".to_string(),
            format!("--output={log}"),
        ];
        if let Ok(dir) = std::env::current_dir() {
            args.push(format!("--chdir={}", dir.display()));
        }
        args.extend(r.gpus.map(|g| format!("--gres=gpu:{g}")));
        args.extend(r.partition.as_ref().map(|p| format!("--partition={p}")));
        args.extend(r.account.as_ref().map(|a| format!("--account={a}")));
        args.extend(r.time.as_ref().map(|t| format!("--time={t}")));
        args.extend(
            r.array
                .map(|n| format!("--array=0-{}", n.saturating_sub(1))),
        );
        let script: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        args.push(format!("--wrap={}", script.join(" ")));
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        for arg in [
            "plain",
            "two words",
            "it's",
            "",
            "$HOME",
            "a\"b",
            "--lr=1e-3",
        ] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(arg)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), arg);
        }
        assert_eq!(
            shell_quote("artifacts/default/round-1"),
            "artifacts/default/round-1"
        );
    }

    #[test]
    fn a_job_is_done_only_when_every_task_completed_with_code_zero() {
        let line = |state: &str, exit: &str| {
            format!("JobId=7 JobName=raffm-c000 JobState={state} Reason=None ExitCode={exit} Restarts=0\n")
        };
        let outcome = |t: &str| JobOutcome::from_scontrol(t);
        assert_eq!(outcome(&line("COMPLETED", "0:0")), JobOutcome::Completed);
        // Cancelled before its script ran: the code is 0, the job did not complete.
        assert_eq!(
            outcome(&line("CANCELLED", "0:0")),
            JobOutcome::Failed {
                state: "CANCELLED".into(),
                exit: "0:0".into()
            }
        );
        assert_eq!(
            outcome(&line("COMPLETED", "1:0")),
            JobOutcome::Failed {
                state: "COMPLETED".into(),
                exit: "1:0".into()
            }
        );
        assert_eq!(outcome(&line("COMPLETING", "0:0")), JobOutcome::Ending);
        // An array: one failed task fails the job, wherever it is.
        let array = line("COMPLETED", "0:0") + &line("OUT_OF_MEMORY", "0:125");
        assert!(
            matches!(outcome(&array), JobOutcome::Failed { state, .. } if state == "OUT_OF_MEMORY")
        );
        let array = line("COMPLETING", "0:0") + &line("COMPLETED", "0:0");
        assert_eq!(outcome(&array), JobOutcome::Ending);
        assert_eq!(outcome(""), JobOutcome::Unknown);
        assert_eq!(
            outcome("slurm_load_jobs error: Invalid job id specified"),
            JobOutcome::Unknown
        );
    }

    #[test]
    fn a_job_asks_for_its_estimate_plus_the_margin() {
        assert_eq!(memory_request_mib(201_819_680, 192), 193 + 192);
        assert_eq!(memory_request_mib(2 * MIB, 0), 2);
        let launch = Launch {
            launcher: Launcher::Slurm,
            job_name: "raffm-c003".into(),
            resources: Resources {
                memory_mib: 385,
                cpus: 2,
                gpus: Some(1),
                partition: Some("gpu".into()),
                time: Some("30".into()),
                ..Default::default()
            },
            log_dir: "logs".into(),
            command: vec!["raffm-local-train".into(), "--client".into(), "c 3".into()],
        };
        let args = launch.sbatch_args();
        for want in [
            "--wait",
            "--mem=385M",
            "--cpus-per-task=2",
            "--gres=gpu:1",
            "--partition=gpu",
            "--time=30",
            "--output=logs/%x-%j.out",
            "--wrap=raffm-local-train --client 'c 3'",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--account")));
        // The log path named to the user is the one `--output` asks Slurm for.
        assert_eq!(launch.log_path("42"), Path::new("logs/raffm-c003-42.out"));
        let array = Launch {
            resources: Resources {
                array: Some(4),
                ..launch.resources.clone()
            },
            ..launch
        };
        assert!(array
            .sbatch_args()
            .iter()
            .any(|a| a == "--output=logs/%x-%A_%a.out"));
        assert_eq!(
            array.log_path("7"),
            Path::new("logs/raffm-c003-7_<task>.out")
        );
    }
}
