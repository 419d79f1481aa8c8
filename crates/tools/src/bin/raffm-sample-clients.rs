//! `raffm-sample-clients`: the participants of a round.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;

use raffm::io::write_file_atomic;
use raffm::pipeline::Budgets;
use raffm::rng::SplitMix64;

/// Draws a round's participants uniformly without replacement from the clients of
/// budgets.json, seeded by --seed and --round (same inputs, same clients; another round,
/// another draw). Writes them comma-separated, in client order, to --output (or stdout).
/// With --verify FILE it checks instead that FILE holds exactly that draw.
#[derive(Parser, Debug)]
#[command(name = "raffm-sample-clients", version, allow_negative_numbers = true)]
struct Args {
    #[arg(short, long)]
    budgets: PathBuf,
    #[arg(short, long)]
    round: u64,
    /// Clients per round.
    #[arg(short = 'n', long)]
    per_round: usize,
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
    if args.per_round == 0 || args.per_round > n {
        bail!(
            "--per-round must be between 1 and the {n} clients of {}",
            args.budgets.display()
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::derive(args.seed, &format!("participants/{}", args.round)).shuffle(&mut order);
    let mut chosen = order[..args.per_round].to_vec();
    chosen.sort_unstable();
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
