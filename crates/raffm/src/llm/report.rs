//! A federated LoRA run's metrics, read back from what its steps wrote
//! (`round-R/eval.json`, `round-R/clients/<client>/train.json`), per round and per client,
//! and a comparison of runs in the shape of the paper's Table 5.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One client's part in one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRound {
    pub client: String,
    pub rank: u64,
    /// Parameters of the (frozen) base it trains on: the whole base, or its sub-model.
    pub base_parameters: u64,
    pub trainable_parameters: u64,
    /// Its adapter, one way (it receives as many bytes as it sends).
    pub adapter_bytes: u64,
    pub peak_rss_bytes: u64,
    pub memory_estimate_bytes: u64,
    pub train_seconds: f64,
}

/// One finished round: the global adapter's accuracy and what each client did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundMetrics {
    pub round: usize,
    pub accuracy: f64,
    pub examples: u64,
    pub eval_seconds: f64,
    pub clients: Vec<ClientRound>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn number(value: &Value, path: &Path, key: &str) -> Result<f64> {
    key.split('.')
        .fold(value, |v, k| &v[k])
        .as_f64()
        .ok_or_else(|| Error::format(path, format!("no number at `{key}`")))
}

fn client_round(dir: &Path) -> Result<ClientRound> {
    let path = dir.join("train.json");
    let t = read_json(&path)?;
    let whole = |key: &str| number(&t, &path, key).map(|x| x as u64);
    Ok(ClientRound {
        client: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rank: whole("lora.r")?,
        // Runs written before sub-models were counted trained on the whole base.
        base_parameters: whole("base_parameters").unwrap_or(0),
        trainable_parameters: whole("report.trainable_parameters")?,
        adapter_bytes: whole("bytes_per_round")?,
        peak_rss_bytes: whole("peak_rss_bytes").unwrap_or(0),
        memory_estimate_bytes: whole("memory_estimate.total_bytes").unwrap_or(0),
        train_seconds: number(&t, &path, "report.wall_seconds")?,
    })
}

/// Every finished round of the run in `run` (round 0 is the starting adapter).
pub fn read_run(run: &Path) -> Result<Vec<RoundMetrics>> {
    let mut rounds = Vec::new();
    for round in 0.. {
        let dir = run.join(format!("round-{round}"));
        let eval_path = dir.join("eval.json");
        if !eval_path.exists() {
            break;
        }
        let eval = read_json(&eval_path)?;
        // The clients in their order (c000, c001, ...): client i is tier i.
        let mut client_dirs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("clients")) {
            for entry in entries {
                client_dirs.push(entry.map_err(|e| Error::io(&dir, e))?.path());
            }
        }
        client_dirs.sort();
        rounds.push(RoundMetrics {
            round,
            accuracy: number(&eval, &eval_path, "accuracy")?,
            examples: number(&eval, &eval_path, "examples")? as u64,
            eval_seconds: number(&eval, &eval_path, "seconds").unwrap_or(f64::NAN),
            clients: client_dirs
                .iter()
                .map(|d| client_round(d))
                .collect::<Result<_>>()?,
        });
    }
    if rounds.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no round-0/eval.json; is this a federated LoRA run?",
            run.display()
        )));
    }
    Ok(rounds)
}

impl RoundMetrics {
    /// The round as one line of metrics.jsonl (lists are per client, in client order).
    pub fn to_json(&self) -> Value {
        let per = |f: fn(&ClientRound) -> u64| self.clients.iter().map(f).collect::<Vec<_>>();
        json!({
            "round": self.round,
            "accuracy": self.accuracy,
            "examples": self.examples,
            "clients": self.clients.len(),
            "ranks": per(|c| c.rank),
            "base_parameters_per_client": per(|c| c.base_parameters),
            "trainable_parameters_per_client": per(|c| c.trainable_parameters),
            "bytes_per_client_per_round": per(|c| c.adapter_bytes),
            "peak_rss_bytes_per_client": per(|c| c.peak_rss_bytes),
            "memory_estimate_bytes_per_client": per(|c| c.memory_estimate_bytes),
            "max_client_train_seconds": self.slowest_client_seconds(),
            "eval_seconds": self.eval_seconds,
        })
    }

    /// The round's wall time in a federation, where clients train at once.
    pub fn slowest_client_seconds(&self) -> f64 {
        self.clients
            .iter()
            .map(|c| c.train_seconds)
            .fold(0.0, f64::max)
    }
}

/// `a-b` for a range of values, `a` when they agree.
fn range(values: impl IntoIterator<Item = u64>, unit: f64, decimals: usize) -> String {
    let v: Vec<u64> = values.into_iter().collect();
    let (Some(lo), Some(hi)) = (v.iter().min(), v.iter().max()) else {
        return "-".into();
    };
    let show = |x: u64| format!("{:.*}", decimals, x as f64 / unit);
    if lo == hi {
        show(*lo)
    } else {
        format!("{}-{}", show(*lo), show(*hi))
    }
}

/// The per-round table of one run.
pub fn round_table(rounds: &[RoundMetrics]) -> String {
    let mut out = String::from(
        "round  accuracy  clients  rank   trainable/client  MB/client/round (up + down)  train s (slowest client)\n",
    );
    for r in rounds {
        out += &format!(
            "{:>5}  {:>8.3}  {:>7}  {:>5}  {:>16}  {:>27}  {:>8.0}\n",
            r.round,
            r.accuracy,
            r.clients.len(),
            range(r.clients.iter().map(|c| c.rank), 1.0, 0),
            range(r.clients.iter().map(|c| c.trainable_parameters), 1.0, 0),
            range(r.clients.iter().map(|c| 2 * c.adapter_bytes), 1e6, 1),
            r.slowest_client_seconds(),
        );
    }
    out
}

/// Runs side by side, one row each, in the shape of the paper's Table 5: accuracy per
/// round, and per client (in client order, `/`-separated) its rank, base and trainable
/// parameters and peak memory (the largest over rounds), the bytes it exchanges per round,
/// and the mean round time of the slowest client. Markdown.
pub fn comparison_table(runs: &[(String, Vec<RoundMetrics>)]) -> String {
    let mut out = String::from(
        "| pipeline | accuracy by round | rank per client | base params per client (M) | trainable per client (M) | peak RSS per client (MiB) | MB per client per round | round time (s, slowest client) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (name, rounds) in runs {
        let accuracy: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.3}", r.accuracy))
            .collect();
        let trained: Vec<&RoundMetrics> = rounds.iter().filter(|r| !r.clients.is_empty()).collect();
        let clients = trained.first().map_or(0, |r| r.clients.len());
        let per_client = |f: &dyn Fn(&ClientRound) -> String| -> String {
            let Some(first) = trained.first() else {
                return "-".into();
            };
            first.clients.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let peak = (0..clients)
            .map(|i| {
                let most = trained
                    .iter()
                    .filter_map(|r| r.clients.get(i))
                    .map(|c| c.peak_rss_bytes)
                    .max()
                    .unwrap_or(0);
                // Runs from before train.json recorded it.
                if most == 0 {
                    "-".to_string()
                } else {
                    format!("{:.0}", most as f64 / (1 << 20) as f64)
                }
            })
            .collect::<Vec<_>>()
            .join(" / ");
        let mean_round = if trained.is_empty() {
            f64::NAN
        } else {
            trained
                .iter()
                .map(|r| r.slowest_client_seconds())
                .sum::<f64>()
                / trained.len() as f64
        };
        out += &format!(
            "| {name} | {} | {} | {} | {} | {peak} | {} | {mean_round:.0} |\n",
            accuracy.join(" → "),
            per_client(&|c| c.rank.to_string()),
            per_client(&|c| match c.base_parameters {
                0 => "-".to_string(),
                n => format!("{:.1}", n as f64 / 1e6),
            }),
            per_client(&|c| format!("{:.2}", c.trainable_parameters as f64 / 1e6)),
            per_client(&|c| format!("{:.1}", 2.0 * c.adapter_bytes as f64 / 1e6)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, value: Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value.to_string()).unwrap();
    }

    #[test]
    fn a_run_reads_back_per_round_and_per_client() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        write(
            &run.join("round-0/eval.json"),
            json!({"accuracy": 0.5, "examples": 10, "seconds": 1.0}),
        );
        write(
            &run.join("round-1/eval.json"),
            json!({"accuracy": 0.75, "examples": 10, "seconds": 1.0}),
        );
        for (client, r, base, rss, secs) in [
            ("c001", 4, 50, 2 << 20, 3.0),
            ("c000", 8, 100, 4 << 20, 5.0),
        ] {
            write(
                &run.join(format!("round-1/clients/{client}/train.json")),
                json!({"lora": {"r": r}, "base_parameters": base, "bytes_per_round": 40 * r,
                       "peak_rss_bytes": rss, "memory_estimate": {"total_bytes": 7},
                       "report": {"trainable_parameters": 10 * r, "wall_seconds": secs}}),
            );
        }
        let rounds = read_run(run).unwrap();
        assert_eq!(rounds.len(), 2);
        let r1 = &rounds[1];
        assert_eq!(
            r1.clients
                .iter()
                .map(|c| c.client.as_str())
                .collect::<Vec<_>>(),
            ["c000", "c001"]
        );
        assert_eq!(r1.slowest_client_seconds(), 5.0);
        let line = r1.to_json();
        assert_eq!(line["ranks"], json!([8, 4]));
        assert_eq!(line["bytes_per_client_per_round"], json!([320, 160]));
        let table = comparison_table(&[("run".into(), rounds)]);
        assert!(
            table.contains("| run | 0.500 → 0.750 | 8 / 4 | 0.0 / 0.0 | 0.00 / 0.00 | 4 / 2 |"),
            "{table}"
        );
        let err = read_run(&run.join("round-1")).unwrap_err().to_string();
        assert!(err.contains("no round-0/eval.json"), "{err}");
    }
}
