//! `raffm-sample-clients`: the participants of a round.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;

use raffm::io::write_file_atomic;
use raffm::pipeline::Budgets;
use raffm::rng::SplitMix64;

/// Draws a round's participants from the clients of budgets.json, seeded by --seed and
/// --round (same inputs, same clients; another round, another draw): --per-round N of them
/// uniformly without replacement, or with --sample-rate q each client independently with
/// probability q (Poisson sampling, what DP-FedAvg's accountant assumes; a round may then
/// draw no one). Writes them comma-separated, in client order, to --output (or stdout).
/// With --verify FILE it checks instead that FILE holds exactly that draw.
#[derive(Parser, Debug)]
#[command(name = "raffm-sample-clients", version, allow_negative_numbers = true)]
struct Args {
    #[arg(short, long)]
    budgets: PathBuf,
    #[arg(short, long)]
    round: u64,
    /// Clients per round.
    #[arg(
        short = 'n',
        long,
        required_unless_present = "sample_rate",
        conflicts_with = "sample_rate"
    )]
    per_round: Option<usize>,
    /// Poisson sampling: each client's probability of taking part, in (0, 1].
    #[arg(long)]
    sample_rate: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(short, long, conflicts_with = "verify")]
    output: Option<PathBuf>,
    /// Check that this participants file holds the draw, instead of writing one.
    #[arg(long)]
    verify: Option<PathBuf>,
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.output {
        raffm::io::check_output_apart(("--output", out), &[("--budgets", &args.budgets)])?;
    }
    let budgets = Budgets::load(&args.budgets)?;
    let n = budgets.clients.len();
    let chosen: Vec<usize> = match (args.per_round, args.sample_rate) {
        (Some(per_round), _) => {
            if per_round == 0 || per_round > n {
                bail!(
                    "--per-round must be between 1 and the {n} clients of {}",
                    args.budgets.display()
                );
            }
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix64::derive(args.seed, &format!("participants/{}", args.round))
                .shuffle(&mut order);
            let mut chosen = order[..per_round].to_vec();
            chosen.sort_unstable();
            chosen
        }
        (None, Some(q)) => {
            if !(q > 0.0 && q <= 1.0) {
                bail!("--sample-rate must be in (0, 1], got {q}");
            }
            let mut coin = SplitMix64::derive(args.seed, &format!("poisson/{}", args.round));
            (0..n).filter(|_| coin.next_f64() < q).collect()
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let line = chosen
        .iter()
        .map(|&i| budgets.clients[i].client.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if let Some(path) = &args.verify {
        let found = std::fs::read_to_string(path).map_err(|e| raffm::Error::io(path, e))?;
        if found.trim() != line {
            bail!(
                "{}: not the seeded draw of round {} (expected `{line}`, found `{}`); remove it to draw again",
                path.display(),
                args.round,
                found.trim().chars().take(80).collect::<String>()
            );
        }
        return Ok(());
    }
    match &args.output {
        Some(path) => {
            write_file_atomic(path, format!("{line}\n").as_bytes())?;
        }
        None => println!("{line}"),
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::cli::exit_code("raffm-sample-clients", run(Args::parse()))
}
