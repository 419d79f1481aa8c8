//! Client-level differential privacy: DP-FedAvg (McMahan et al. 2018) over heterogeneous
//! sub-models, and the accountant that prices it.
//!
//! Each round, every client takes part independently with probability `q` (Poisson
//! sampling; `raffm-sample-clients --sample-rate`). Each participant's update
//! Δ_c = w_c − w_global, over the elements it holds and zero elsewhere, is clipped to L2
//! norm `S`; the server sums the clipped updates, adds N(0, σ²S²) to every element of the
//! global model (held or not: which elements changed would otherwise say who took part),
//! and divides by the expected number of participants `q·N`, not by the count received.
//! One client changes the sum by at most `S` whatever sub-model it holds, so the round is
//! the sampled Gaussian mechanism with noise multiplier σ, and [`accountant`] composes it
//! over rounds.
//!
//! What the guarantee covers: client-level (ε, δ)-DP of the sequence of global models, for
//! clients whose sub-model widths do not depend on their data (budgets from device
//! memory and tiers do not). A client vocabulary does depend on the data: the rows a client
//! holds say which tokens it saw, so DP refuses such updates.

pub mod accountant;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;

/// The environment variable a secret noise seed is read from.
pub const SEED_VARIABLE: &str = "RAFFM_DP_SEED";

/// DP-FedAvg's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpFedAvg {
    /// σ: the noise's standard deviation in units of the clip norm.
    pub noise_multiplier: f64,
    /// S: the L2 bound of every client's update.
    pub clip_norm: f64,
    /// q: each client's probability of taking part in a round.
    pub sample_rate: f64,
    /// q·N: the fixed denominator of the noisy sum.
    pub expected_clients: f64,
    pub delta: f64,
    /// The run refuses to start a round that would spend more.
    pub target_epsilon: Option<f64>,
}

impl DpFedAvg {
    /// Why the settings cannot work, naming the option.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{name} must be a positive number, got {v}"
                )))
            }
        };
        positive("--dp-noise-multiplier", self.noise_multiplier)?;
        positive("--dp-clip-norm", self.clip_norm)?;
        positive("--dp-expected-clients", self.expected_clients)?;
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(Error::Invalid(format!(
                "--dp-sample-rate must be in (0, 1], got {}",
                self.sample_rate
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::Invalid(format!(
                "--dp-delta must be in (0, 1), got {}",
                self.delta
            )));
        }
        if let Some(t) = self.target_epsilon {
            positive("--dp-target-epsilon", t)?;
        }
        Ok(())
    }

    /// The privacy spent after `rounds` rounds.
    pub fn spent(&self, rounds: u64) -> accountant::Spent {
        accountant::epsilon(self.sample_rate, self.noise_multiplier, rounds, self.delta)
    }

    /// An error when round `round` would take the cumulative ε past the target.
    pub fn check_target(&self, round: u64) -> Result<()> {
        let Some(target) = self.target_epsilon else {
            return Ok(());
        };
        let after = self.spent(round);
        if after.epsilon > target {
            let within = match self.last_round_within(target) {
                0 => "not even round 1 stays within it".to_string(),
                1 => "round 1 stays within it".to_string(),
                r => format!("rounds 1-{r} stay within it"),
            };
            return Err(Error::Invalid(format!(
                "round {round} would bring the privacy loss to epsilon {:.4} at delta {}, past the target epsilon {target} ({within})",
                after.epsilon, self.delta
            )));
        }
        Ok(())
    }

    /// The last round whose cumulative ε stays within `target` (0: none).
    pub fn last_round_within(&self, target: f64) -> u64 {
        (1..).find(|&r| self.spent(r).epsilon > target).unwrap() - 1
    }

    /// The record of round `round` for its manifest.
    pub fn record(&self, round: u64, seed: &SeedRecord) -> PrivacyRecord {
        let cumulative = self.spent(round);
        PrivacyRecord {
            mechanism: "DP-FedAvg, client level: clipped updates, Gaussian noise on the sum, fixed denominator".into(),
            accountant: "RDP of the sampled Gaussian mechanism, Opacus's 151 orders and conversion".into(),
            settings: self.clone(),
            round,
            epsilon_round: self.spent(1).epsilon,
            epsilon: cumulative.epsilon,
            order: cumulative.order,
            noise_seed: seed.clone(),
        }
    }
}

/// What a global manifest says of its privacy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrivacyRecord {
    pub mechanism: String,
    pub accountant: String,
    pub settings: DpFedAvg,
    /// Rounds of DP-FedAvg so far, this one included.
    pub round: u64,
    /// ε of one round alone.
    pub epsilon_round: f64,
    /// ε of all rounds so far.
    pub epsilon: f64,
    /// The Rényi order that gave `epsilon`.
    pub order: f64,
    pub noise_seed: SeedRecord,
}

/// Where the noise seed came from. A seed given as an option is written out, so the run can
/// be repeated; one from the environment is a secret and only its hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedRecord {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The noise seed: `--dp-seed` when given (experiments), else the secret in
/// `RAFFM_DP_SEED`. Giving both, or neither, is an error.
pub fn noise_seed(option: Option<u64>, environment: Option<&str>) -> Result<(u64, SeedRecord)> {
    match (option, environment) {
        (Some(_), Some(_)) => Err(Error::Invalid(format!(
            "--dp-seed and {SEED_VARIABLE} are both set: give the noise seed once"
        ))),
        (Some(seed), None) => Ok((
            seed,
            SeedRecord {
                source: "--dp-seed".into(),
                seed: Some(seed),
                sha256: None,
            },
        )),
        (None, Some(text)) => {
            let seed = text.trim().parse::<u64>().map_err(|_| {
                Error::Invalid(format!(
                    "{SEED_VARIABLE} must be a whole number below 2^64"
                ))
            })?;
            let sha256 = crate::core::io::sha256_bytes(text.trim().as_bytes());
            Ok((
                seed,
                SeedRecord {
                    source: SEED_VARIABLE.into(),
                    seed: None,
                    sha256: Some(sha256),
                },
            ))
        }
        (None, None) => Err(Error::Invalid(format!(
            "DP-FedAvg needs a noise seed: set {SEED_VARIABLE} (a secret, kept out of manifests) or give --dp-seed (for experiments)"
        ))),
    }
}

/// The noise stream of global tensor `name` in round `round`: streams of different tensors
/// and rounds are independent, and one tensor's stream does not depend on the others.
pub fn noise_stream(seed: u64, round: u64, name: &str) -> SplitMix64 {
    SplitMix64::derive(seed, &format!("dp-noise/round-{round}/{name}"))
}

/// Fills `out` with independent N(0, std²) draws from `stream`.
pub fn fill_gaussian(stream: &mut SplitMix64, std: f64, out: &mut [f64]) {
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let (a, b) = stream.normal_pair();
        pair[0] = std * a;
        pair[1] = std * b;
    }
    if let [last] = pairs.into_remainder() {
        *last = std * stream.normal_pair().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DpFedAvg {
        DpFedAvg {
            noise_multiplier: 1.0,
            clip_norm: 0.5,
            sample_rate: 0.2,
            expected_clients: 4.0,
            delta: 1e-5,
            target_epsilon: Some(4.0),
        }
    }

    #[test]
    fn the_target_stops_the_round_that_would_pass_it() {
        let dp = settings();
        // ε after 1..5 rounds at q 0.2, σ 1: 2.83, ..., 4.54 (Opacus); 4.0 is passed at some
        // round r, and every earlier round is allowed.
        let r = dp.last_round_within(4.0);
        assert!(r >= 1 && dp.spent(r).epsilon <= 4.0 && dp.spent(r + 1).epsilon > 4.0);
        for round in 1..=r {
            dp.check_target(round).unwrap();
        }
        let e = dp.check_target(r + 1).unwrap_err().to_string();
        assert!(
            e.contains("past the target epsilon 4") && e.contains(&format!("rounds 1-{r}")),
            "{e}"
        );
        assert!(DpFedAvg {
            target_epsilon: None,
            ..dp
        }
        .check_target(100)
        .is_ok());
    }

    #[test]
    fn bad_settings_name_the_option() {
        let bad = [
            (
                DpFedAvg {
                    noise_multiplier: 0.0,
                    ..settings()
                },
                "--dp-noise-multiplier",
            ),
            (
                DpFedAvg {
                    clip_norm: f64::NAN,
                    ..settings()
                },
                "--dp-clip-norm",
            ),
            (
                DpFedAvg {
                    sample_rate: 1.5,
                    ..settings()
                },
                "--dp-sample-rate",
            ),
            (
                DpFedAvg {
                    delta: 1.0,
                    ..settings()
                },
                "--dp-delta",
            ),
            (
                DpFedAvg {
                    target_epsilon: Some(-1.0),
                    ..settings()
                },
                "--dp-target-epsilon",
            ),
        ];
        for (dp, option) in bad {
            let e = dp.validate().unwrap_err().to_string();
            assert!(e.starts_with(option), "{e}");
        }
        settings().validate().unwrap();
    }

    #[test]
    fn a_seed_comes_from_one_place_and_a_secret_is_not_written() {
        let (seed, record) = noise_seed(Some(7), None).unwrap();
        assert_eq!((seed, record.seed), (7, Some(7)));
        let (seed, record) = noise_seed(None, Some("12345\n")).unwrap();
        assert_eq!(seed, 12345);
        assert!(record.seed.is_none() && record.sha256.is_some());
        assert!(!serde_json::to_string(&record).unwrap().contains("12345"));
        assert!(noise_seed(Some(1), Some("2")).is_err());
        assert!(noise_seed(None, None)
            .unwrap_err()
            .to_string()
            .contains(SEED_VARIABLE));
        assert!(noise_seed(None, Some("-3")).is_err());
    }
}
