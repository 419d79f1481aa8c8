//! `raffm-privacy`: the privacy loss of DP-FedAvg rounds, from the RDP accountant.

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use serde_json::json;

use raffm::fl::privacy::DpFedAvg;

/// Prints the cumulative (ε, δ) of DP-FedAvg after each of --rounds rounds, each the
/// sampled Gaussian mechanism with sample rate q and noise multiplier σ, from the RDP
/// accountant raffm-aggregate uses (Opacus's orders and conversion). With
/// --target-epsilon it fails, naming the last round within the target, when round
/// --rounds would pass it: the pipeline runs it before drawing a round's clients.
#[derive(Parser, Debug)]
#[command(
    name = "raffm-privacy",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Args {
    /// q: each client's probability of taking part in a round.
    #[arg(long)]
    sample_rate: f64,
    /// σ: the noise's standard deviation over the clip norm.
    #[arg(long)]
    noise_multiplier: f64,
    /// Rounds to account for.
    #[arg(long)]
    rounds: u64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Fail when round --rounds takes ε past this.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// One JSON object per round instead of a table.
    #[arg(long)]
    json: bool,
    /// Print nothing (with --target-epsilon: only check).
    #[arg(short, long)]
    quiet: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be 1 or more");
    }
    let dp = DpFedAvg {
        noise_multiplier: args.noise_multiplier,
        // The clip norm and denominator scale the noise, not the privacy loss.
        clip_norm: 1.0,
        sample_rate: args.sample_rate,
        expected_clients: 1.0,
        delta: args.delta,
        target_epsilon: args.target_epsilon,
    };
    dp.validate()
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--dp-", "--")))?;
    dp.check_target(args.rounds)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--dp-", "--")))?;
    if args.quiet {
        return Ok(());
    }
    if !args.json {
        println!("round  epsilon  order  (delta {})", args.delta);
    }
    for round in 1..=args.rounds {
        let spent = dp.spent(round);
        if args.json {
            println!(
                "{}",
                json!({"round": round, "epsilon": spent.epsilon, "delta": args.delta, "order": spent.order})
            );
        } else {
            println!("{round:>5}  {:>7.4}  {:>5}", spent.epsilon, spent.order);
        }
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raffm::core::cli::exit_code("raffm-privacy", run(Args::parse()))
}
