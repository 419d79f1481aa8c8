//! `raffm-sample-clients`: the participants of a round.

use std::path::PathBuf;

use crate::core::error::{Error, Result};
use crate::core::io::{check_output_apart, write_file_atomic};
use crate::core::rng::SplitMix64;
use crate::fl::pipeline::Budgets;

/// Draws a round's participants from the clients of budgets.json, seeded by --seed and
/// --round (same inputs, same clients; another round, another draw): --per-round N of them
/// uniformly without replacement, or with --sample-rate q each client independently with
/// probability q (Poisson sampling, what DP-FedAvg's accountant assumes; a round may then
/// draw no one). Writes them comma-separated, in client order, to --output (or stdout).
/// With --verify FILE it checks instead that FILE holds exactly that draw.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "raffm-sample-clients", version, allow_negative_numbers = true)]
pub struct Args {
    #[arg(short, long)]
    pub budgets: PathBuf,
    #[arg(short, long)]
    pub round: u64,
    /// Clients per round.
    #[arg(
        short = 'n',
        long,
        required_unless_present = "sample_rate",
        conflicts_with = "sample_rate"
    )]
    pub per_round: Option<usize>,
    /// Poisson sampling: each client's probability of taking part, in (0, 1].
    #[arg(long)]
    pub sample_rate: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(short, long, conflicts_with = "verify")]
    pub output: Option<PathBuf>,
    /// Check that this participants file holds the draw, instead of writing one.
    #[arg(long)]
    pub verify: Option<PathBuf>,
}

/// Draws the participants, writes or verifies them, and returns their ids in client order.
pub fn run(args: &Args) -> Result<Vec<String>> {
    if let Some(out) = &args.output {
        check_output_apart(("--output", out), &[("--budgets", &args.budgets)])?;
    }
    let budgets = Budgets::load(&args.budgets)?;
    let chosen = draw(args, &budgets)?;
    let participants: Vec<String> = chosen
        .iter()
        .map(|&i| budgets.clients[i].client.clone())
        .collect();
    let line = participants.join(",");
    if let Some(path) = &args.verify {
        let found = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if found.trim() != line {
            let found: String = found.trim().chars().take(80).collect();
            return Err(Error::format(
                path,
                format!(
                    "not the seeded draw of round {} (expected `{line}`, found `{found}`); remove it to draw again",
                    args.round
                ),
            ));
        }
        return Ok(participants);
    }
    match &args.output {
        Some(path) => {
            write_file_atomic(path, format!("{line}\n").as_bytes())?;
        }
        None => println!("{line}"),
    }
    Ok(participants)
}

/// The indices of the drawn clients in budgets.json, ascending.
fn draw(args: &Args, budgets: &Budgets) -> Result<Vec<usize>> {
    let n = budgets.clients.len();
    match (args.per_round, args.sample_rate) {
        (Some(per_round), _) => {
            if per_round == 0 || per_round > n {
                return Err(Error::Invalid(format!(
                    "--per-round must be between 1 and the {n} clients of {}",
                    args.budgets.display()
                )));
            }
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix64::derive(args.seed, &format!("participants/{}", args.round))
                .shuffle(&mut order);
            let mut chosen = order[..per_round].to_vec();
            chosen.sort_unstable();
            Ok(chosen)
        }
        (None, Some(q)) => {
            if !(q > 0.0 && q <= 1.0) {
                return Err(Error::Invalid(format!(
                    "--sample-rate must be in (0, 1], got {q}"
                )));
            }
            let mut coin = SplitMix64::derive(args.seed, &format!("poisson/{}", args.round));
            Ok((0..n).filter(|_| coin.next_f64() < q).collect())
        }
        (None, None) => Err(Error::Invalid(
            "give --per-round or --sample-rate".to_string(),
        )),
    }
}
