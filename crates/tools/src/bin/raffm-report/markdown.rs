//! report.md: one section per chart, each with the picture and a table of its numbers,
//! and where the numbers came from.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::charts;
use crate::data::{DeploySummary, Run, SppRow, SppSummary, GIB, MIB};

/// A chart to write next to report.md.
pub struct Figure {
    pub file: String,
    pub svg: String,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

fn millions(p: f64) -> String {
    format!("{:.2}M", p / 1e6)
}

fn with_share(p: f64, full: Option<u64>) -> String {
    match full {
        Some(f) if f > 0 => format!("{} ({:.1}%)", millions(p), 100.0 * p / f as f64),
        _ => millions(p),
    }
}

/// A file name for a pipeline's own chart.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `make` command that produces a run's missing optional data.
fn make_hint(goal: &str, run: &Run) -> String {
    make_command(goal, &run.name, run.last_round().max(1))
}

/// `make GOAL N=n` for the run folder `name`, which is `<pipeline>` or, for a seeded run,
/// `<pipeline>-seed<S>`.
fn make_command(goal: &str, name: &str, n: u32) -> String {
    let (pipeline, seed) = match name.rsplit_once("-seed") {
        Some((p, s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => (p, Some(s)),
        _ => (name, None),
    };
    let mut hint = format!("make {goal} N={n}");
    if pipeline != "default" {
        hint += &format!(" PIPELINE={pipeline}");
    }
    if let Some(seed) = seed {
        hint += &format!(" SEED={seed}");
    }
    format!("`{hint}`")
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// The report's text and its charts: the overview, then one section per chart.
pub fn build(runs: &[Run]) -> anyhow::Result<(String, Vec<Figure>)> {
    let mut md = String::new();
    let mut figures = Vec::new();
    overview(&mut md, runs);
    accuracy(&mut md, &mut figures, runs)?;
    client_sizes(&mut md, &mut figures, runs)?;
    communication(&mut md, &mut figures, runs)?;
    deployment(&mut md, &mut figures, runs)?;
    spp_ablation(&mut md, &mut figures, runs)?;
    Ok((md, figures))
}

/// The last round any of the runs finished.
fn max_round(runs: &[Run]) -> u32 {
    runs.iter().map(|r| r.last_round()).max().unwrap_or(0)
}

/// The title, where the numbers come from, and a table with a line per pipeline.
fn overview(md: &mut String, runs: &[Run]) {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let folders: Vec<String> = runs
        .iter()
        .map(|r| format!("`{}`", r.dir.display()))
        .collect();
    let _ = writeln!(md, "# RaFFM report: {}\n", names.join(", "));
    let _ = writeln!(
        md,
        "Built by `raffm-report build` from the manifests in the run folders {} (a pipeline \
         is named after its folder). Every number is read from the files named under its \
         table; the per-round numbers are also in `<run folder>/metrics.jsonl` \
         (`raffm-report metrics <run folder>`).\n",
        folders.join(", ")
    );
    let overview: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let last = r.rows.last();
            vec![
                r.name.clone(),
                format!("`{}`", r.dir.display()),
                r.last_round().to_string(),
                opt(last.and_then(|l| l.accuracy), 4),
                format!(
                    "{:.2}",
                    r.rows.last().map_or(0, |l| l.cumulative_bytes) as f64 / GIB
                ),
                r.full_parameters.map_or("-".into(), |p| millions(p as f64)),
            ]
        })
        .collect();
    table(
        md,
        &[
            "pipeline",
            "run folder",
            "finished rounds",
            "final accuracy",
            "total traffic (GiB)",
            "full model parameters",
        ]
        .map(String::from),
        &overview,
    );
}

/// "Validation accuracy per round": the chart, and per round each pipeline's accuracy,
/// macro-F1 and, for a DP run, its privacy loss.
fn accuracy(md: &mut String, figures: &mut Vec<Figure>, runs: &[Run]) -> anyhow::Result<()> {
    figures.push(Figure {
        file: "accuracy.svg".into(),
        svg: charts::accuracy(runs)?,
    });
    let _ = writeln!(md, "## Validation accuracy per round\n");
    let _ = writeln!(md, "![Validation accuracy per round](accuracy.svg)\n");
    let mut header = vec!["round".to_string()];
    // A DP run gets a column with its cumulative privacy loss.
    let private = |r: &Run| r.rows.iter().any(|x| x.epsilon.is_some());
    for r in runs {
        header.push(format!("{} accuracy", r.name));
        header.push(format!("{} macro-F1", r.name));
        if private(r) {
            header.push(format!("{} ε", r.name));
        }
    }
    let rows: Vec<Vec<String>> = (0..=max_round(runs))
        .map(|round| {
            let mut row = vec![round.to_string()];
            for r in runs {
                let x = r.rows.iter().find(|x| x.round == round);
                row.push(opt(x.and_then(|x| x.accuracy), 4));
                row.push(opt(x.and_then(|x| x.macro_f1), 4));
                if private(r) {
                    row.push(opt(x.and_then(|x| x.epsilon), 3));
                }
            }
            row
        })
        .collect();
    table(md, &header, &rows);
    let examples: Vec<String> = runs
        .iter()
        .filter_map(|r| r.validation_examples.map(|n| format!("{}: {n}", r.name)))
        .collect();
    let _ = writeln!(
        md,
        "Source: round 0 from `<run folder>/round-0/eval.json` (`metrics`), round R from \
         `<run folder>/round-R/global/manifest.json` (`metrics.validation`), the aggregated \
         global model on the held-out validation examples{}.\n",
        if examples.is_empty() {
            String::new()
        } else {
            format!(" ({})", examples.join(", "))
        }
    );
    Ok(())
}

/// "Client sub-model sizes": the chart, and per pipeline the smallest, mean and largest
/// client sub-model.
fn client_sizes(md: &mut String, figures: &mut Vec<Figure>, runs: &[Run]) -> anyhow::Result<()> {
    let _ = writeln!(md, "## Client sub-model sizes\n");
    if runs.iter().all(|r| r.client_parameters.is_empty()) {
        let _ = writeln!(md, "No finished federated round yet (`make round N=5`).\n");
        return Ok(());
    }
    figures.push(Figure {
        file: "client-sizes.svg".into(),
        svg: charts::sizes(runs)?,
    });
    let _ = writeln!(md, "![Client sub-model sizes](client-sizes.svg)\n");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let p: Vec<f64> = r.client_parameters.iter().map(|&p| p as f64).collect();
            if p.is_empty() {
                return vec![
                    r.name.clone(),
                    "0".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            let min = p.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mean = p.iter().sum::<f64>() / p.len() as f64;
            vec![
                r.name.clone(),
                format!("{} in {} rounds", p.len(), r.last_round()),
                with_share(min, r.full_parameters),
                with_share(mean, r.full_parameters),
                with_share(max, r.full_parameters),
            ]
        })
        .collect();
    table(
        md,
        &["pipeline", "client sub-models", "min", "mean", "max"].map(String::from),
        &rows,
    );
    let _ = writeln!(
        md,
        "Parameters of every client sub-model aggregated in every round: \
         `<run folder>/round-R/global/manifest.json` (`clients[].parameters`). \
         Percentages are of the full model, `full_model.parameters` in \
         `<run folder>/budgets.json`.\n"
    );
    Ok(())
}

/// "Communication": the chart, and per round each pipeline's traffic per client and
/// cumulative traffic.
fn communication(md: &mut String, figures: &mut Vec<Figure>, runs: &[Run]) -> anyhow::Result<()> {
    let _ = writeln!(md, "## Communication\n");
    let max_round = max_round(runs);
    if max_round == 0 {
        let _ = writeln!(md, "No finished federated round yet (`make round N=5`).\n");
        return Ok(());
    }
    figures.push(Figure {
        file: "communication.svg".into(),
        svg: charts::communication(runs)?,
    });
    let _ = writeln!(md, "![Communication](communication.svg)\n");
    let mut header = vec!["round".to_string()];
    for r in runs {
        header.push(format!("{} MiB per client", r.name));
        header.push(format!("{} cumulative GiB", r.name));
    }
    let rows: Vec<Vec<String>> = (0..=max_round)
        .map(|round| {
            let mut row = vec![round.to_string()];
            for r in runs {
                let x = r.rows.iter().find(|x| x.round == round);
                let per_client =
                    x.and_then(|x| Some((x.bytes_down_per_client? + x.bytes_up_per_client?) / MIB));
                row.push(opt(per_client, 1));
                row.push(opt(x.map(|x| x.cumulative_bytes as f64 / GIB), 3));
            }
            row
        })
        .collect();
    table(md, &header, &rows);
    let _ = writeln!(
        md,
        "Per client: the mean over the round's trained clients of `metrics.bytes_downloaded \
         + metrics.bytes_uploaded` in `<run folder>/round-R/trained/<client>/manifest.json` \
         (float32 weights; MiB = 2^20 bytes). Cumulative: the sum over all clients of \
         rounds 1 to R (GiB = 2^30 bytes).\n"
    );
    Ok(())
}

/// "Deployment": what the chart shows, then a subsection per pipeline.
fn deployment(md: &mut String, figures: &mut Vec<Figure>, runs: &[Run]) -> anyhow::Result<()> {
    let _ = writeln!(md, "## Deployment\n");
    let _ = writeln!(
        md,
        "Each tier's training-time sub-model (hollow) against the largest model whose \
         inference cost fits the same device memory (filled), from \
         `<run folder>/round-R/deploy/summary.json` (raffm-deploy-scale). `train/inference` \
         is the training sub-model's training memory over its inference memory.\n"
    );
    for r in runs {
        let _ = writeln!(md, "### {}\n", r.name);
        let Some(d) = &r.deploy else {
            let _ = writeln!(md, "Not run yet: {}.\n", make_hint("deploy", r));
            continue;
        };
        deployment_of_run(md, figures, r, d)?;
    }
    Ok(())
}

/// One pipeline's deployment: its chart, a line per tier, and the summary it came from.
fn deployment_of_run(
    md: &mut String,
    figures: &mut Vec<Figure>,
    r: &Run,
    d: &DeploySummary,
) -> anyhow::Result<()> {
    let file = format!("deploy-{}.svg", file_stem(&r.name));
    figures.push(Figure {
        file: file.clone(),
        svg: charts::deployment(&r.name, d)?,
    });
    let _ = writeln!(md, "![{}: deploy-time scaling]({file})\n", r.name);
    let mut tiers: Vec<_> = d.tiers.iter().collect();
    tiers.sort_by(|a, b| a.train_parameters.total_cmp(&b.train_parameters));
    let rows: Vec<Vec<String>> = tiers
        .iter()
        .map(|t| {
            vec![
                t.tier.clone(),
                t.clients.map_or("-".into(), |n| n.to_string()),
                t.device_memory_bytes.map_or("unlimited".into(), |m| {
                    format!("{:.0} MiB", m as f64 / (1 << 20) as f64)
                }),
                t.train_to_inference_memory
                    .map_or("-".into(), |x| format!("{x:.1}x")),
                with_share(t.train_parameters, r.full_parameters),
                opt(t.train_accuracy, 4),
                with_share(t.deployed_parameters, r.full_parameters),
                opt(t.deployed_accuracy, 4),
                match (t.train_accuracy, t.deployed_accuracy) {
                    (Some(a), Some(b)) => format!("{:+.4}", b - a),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    table(
        md,
        &[
            "tier",
            "clients",
            "device memory",
            "train/inference",
            "training sub-model",
            "training accuracy",
            "deployed model",
            "deployed accuracy",
            "change",
        ]
        .map(String::from),
        &rows,
    );
    let mut facts = Vec::new();
    if let Some(round) = d.round {
        facts.push(format!("global model of round {round}"));
    }
    if let Some(s) = &d.strategy {
        facts.push(format!("strategy {s}"));
    }
    if let Some(m) = d.memory_scale.filter(|m| *m != 1.0) {
        facts.push(format!("device memory scaled by {m}"));
    }
    if let Some(n) = d.evaluation.examples {
        facts.push(format!(
            "{n} {} examples",
            d.evaluation.split.as_deref().unwrap_or("validation")
        ));
    }
    let _ = writeln!(
        md,
        "Source: `{}` (`tiers`: per-tier means over its clients){}.\n",
        r.deploy_path.as_deref().unwrap_or(&r.dir).display(),
        if facts.is_empty() {
            String::new()
        } else {
            format!("; {}", facts.join(", "))
        }
    );
    Ok(())
}

/// "SPP ablation": what the chart shows, then a subsection per pipeline.
fn spp_ablation(md: &mut String, figures: &mut Vec<Figure>, runs: &[Run]) -> anyhow::Result<()> {
    let _ = writeln!(md, "## SPP ablation\n");
    let _ = writeln!(
        md,
        "Accuracy of sub-models keeping a share of the layer parameters (embeddings \
         stay whole), extracted with salient parameter prioritization (SPP) and without it \
         (the same widths with their indices drawn at random): \
         lines for the largest sub-model per share, dots for sampled ones. From \
         `<run folder>/round-R/spp.json`.\n"
    );
    for r in runs {
        let _ = writeln!(md, "### {}\n", r.name);
        let Some(s) = &r.spp else {
            let _ = writeln!(md, "Not run yet: {}.\n", make_hint("ablation", r));
            continue;
        };
        spp_ablation_of_run(md, figures, r, s)?;
    }
    Ok(())
}

/// One pipeline's SPP ablation: its chart, a line per share of layer parameters kept, and
/// the file it came from.
fn spp_ablation_of_run(
    md: &mut String,
    figures: &mut Vec<Figure>,
    r: &Run,
    s: &SppSummary,
) -> anyhow::Result<()> {
    let file = format!("spp-{}.svg", file_stem(&r.name));
    figures.push(Figure {
        file: file.clone(),
        svg: charts::spp(&r.name, s)?,
    });
    let _ = writeln!(md, "![{}: SPP ablation]({file})\n", r.name);
    // fraction (as text, so equal fractions group) -> (largest row, samples)
    let mut by_fraction: BTreeMap<String, (f64, Vec<&SppRow>)> = BTreeMap::new();
    for row in &s.rows {
        by_fraction
            .entry(format!("{:012.6}", row.fraction))
            .or_insert((row.fraction, Vec::new()))
            .1
            .push(row);
    }
    let full_parameters = s.full_parameters.or(r.full_parameters);
    let rows: Vec<Vec<String>> = by_fraction
        .values()
        .map(|(fraction, rows)| spp_share_row(*fraction, rows, full_parameters))
        .collect();
    table(
        md,
        &[
            "layer parameters kept",
            "largest sub-model",
            "with SPP",
            "without SPP",
            "difference",
            "sampled sub-models",
            "sampled: with SPP (mean)",
            "sampled: without SPP (mean)",
            "sampled: difference",
        ]
        .map(String::from),
        &rows,
    );
    let mut facts = Vec::new();
    if let Some(round) = s.round {
        facts.push(format!("global model of round {round}"));
    }
    if let Some(n) = s.evaluation.examples {
        facts.push(format!(
            "{n} {} examples",
            s.evaluation.split.as_deref().unwrap_or("validation")
        ));
    }
    if let Some(e) = s.layer_parameters {
        facts.push(format!(
            "{} layer parameters in the full model",
            millions(e as f64)
        ));
    }
    let _ = writeln!(
        md,
        "Source: `{}` (`rows`){}.\n",
        r.spp_path.as_deref().unwrap_or(&r.dir).display(),
        if facts.is_empty() {
            String::new()
        } else {
            format!("; {}", facts.join(", "))
        }
    );
    Ok(())
}

/// The SPP table's line for one share of layer parameters kept: the largest sub-model with
/// and without SPP, and the means over the sampled ones.
fn spp_share_row(fraction: f64, rows: &[&SppRow], full_parameters: Option<u64>) -> Vec<String> {
    let largest = rows.iter().find(|r| r.kind == "largest");
    let samples: Vec<_> = rows.iter().filter(|r| r.kind != "largest").collect();
    let mean = |f: fn(&SppRow) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (with, without) = (
        largest.and_then(|r| r.accuracy_spp),
        largest.and_then(|r| r.accuracy_no_spp),
    );
    let (s_with, s_without) = (mean(|r| r.accuracy_spp), mean(|r| r.accuracy_no_spp));
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.4}", a - b),
        _ => "-".into(),
    };
    vec![
        format!("{:.0}%", 100.0 * fraction),
        largest
            .and_then(|r| r.parameters)
            .map_or("-".into(), |p| with_share(p as f64, full_parameters)),
        opt(with, 4),
        opt(without, 4),
        diff(with, without),
        samples.len().to_string(),
        opt(s_with, 4),
        opt(s_without, 4),
        diff(s_with, s_without),
    ]
}

#[cfg(test)]
mod tests {
    use super::make_command;

    #[test]
    fn the_make_hint_names_the_pipeline_and_seed_of_a_run_folder() {
        assert_eq!(make_command("deploy", "default", 5), "`make deploy N=5`");
        assert_eq!(
            make_command("deploy", "fl-seed2", 3),
            "`make deploy N=3 PIPELINE=fl SEED=2`"
        );
        assert_eq!(
            make_command("ablation", "default-seed0", 1),
            "`make ablation N=1 SEED=0`"
        );
        // `-seed` not followed by a number is part of the pipeline's name.
        assert_eq!(
            make_command("deploy", "robustness/no-seedx", 2),
            "`make deploy N=2 PIPELINE=robustness/no-seedx`"
        );
    }
}
