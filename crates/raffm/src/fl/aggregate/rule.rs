//! How the server combines the updates: the rule per element, clipping, DP, weighting.

use serde::Serialize;

use super::Weighting;
use crate::core::error::{Error, Result};
use crate::fl::privacy::DpFedAvg;

/// The combination applied to every element over the clients that hold it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Rule {
    /// The weighted mean (paper eq. 7).
    Fedavg,
    /// The coordinate-wise median; the mean of the middle two for an even count.
    Median,
    /// The coordinate-wise mean after dropping ⌊β·n⌋ of the n values at each end. Elements
    /// with fewer than 1/β holders drop nothing: they get the plain mean, and each tensor's
    /// record counts them (`untrimmed`).
    TrimmedMean { trim_fraction: f64 },
}

impl Rule {
    /// From the command line: `fedavg`, `median`, or `trimmed-mean` with its fraction.
    pub fn parse(name: &str, trim_fraction: Option<f64>) -> Result<Self> {
        let rule = match name {
            "fedavg" => Rule::Fedavg,
            "median" => Rule::Median,
            "trimmed-mean" | "trimmed_mean" => {
                let beta = trim_fraction.ok_or_else(|| {
                    Error::Invalid("--rule trimmed-mean needs --trim-fraction".into())
                })?;
                if !(beta > 0.0 && beta < 0.5) {
                    return Err(Error::Invalid(format!(
                        "--trim-fraction must be in (0, 0.5), got {beta}"
                    )));
                }
                return Ok(Rule::TrimmedMean {
                    trim_fraction: beta,
                });
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown --rule `{name}` (expected fedavg, median or trimmed-mean)"
                )))
            }
        };
        if trim_fraction.is_some() {
            return Err(Error::Invalid(format!(
                "--trim-fraction applies to --rule trimmed-mean, not {name}"
            )));
        }
        Ok(rule)
    }

    /// Whether the rule takes each element's values all at once (not a running sum).
    pub fn is_order_statistic(self) -> bool {
        !matches!(self, Rule::Fedavg)
    }
}

/// The server's side of a round.
#[derive(Debug, Clone)]
pub struct ServerRule {
    pub rule: Rule,
    pub weighting: Weighting,
    /// new = old + server_lr · (combined − old).
    pub server_lr: f64,
    /// Clip every client's update Δ_c = w_c − w_global (over the elements it holds) to this
    /// L2 norm before combining.
    pub clip_norm: Option<f64>,
    /// DP-FedAvg: clipping to its norm, noise, the fixed denominator.
    pub dp: Option<DpRound>,
}

/// One round of DP-FedAvg: the settings, the (secret) noise seed and the round number,
/// which picks the noise stream.
#[derive(Debug, Clone)]
pub struct DpRound {
    pub settings: DpFedAvg,
    pub seed: u64,
    pub round: u64,
}

impl ServerRule {
    /// Plain FedAvg with the given weighting and server learning rate.
    pub fn fedavg(weighting: Weighting, server_lr: f64) -> Self {
        Self {
            rule: Rule::Fedavg,
            weighting,
            server_lr,
            clip_norm: None,
            dp: None,
        }
    }

    /// The norm updates are clipped to, if any.
    pub fn clip(&self) -> Option<f64> {
        self.dp
            .as_ref()
            .map(|dp| dp.settings.clip_norm)
            .or(self.clip_norm)
    }

    /// Why this combination cannot work, naming the option.
    pub fn validate(&self) -> Result<()> {
        if !(self.server_lr.is_finite() && self.server_lr > 0.0) {
            return Err(Error::Invalid(format!(
                "--server-lr must be a positive number, got {}",
                self.server_lr
            )));
        }
        if let Some(s) = self.clip_norm {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::Invalid(format!(
                    "--clip-norm must be a positive number, got {s}"
                )));
            }
        }
        if self.rule.is_order_statistic() && self.weighting == Weighting::Examples {
            return Err(Error::Invalid(
                "--weighting examples applies to fedavg: the median and trimmed mean count each holder once (give --weighting uniform)".into(),
            ));
        }
        if let Some(dp) = &self.dp {
            dp.settings.validate()?;
            if self.rule != Rule::Fedavg {
                return Err(Error::Invalid(
                    "DP-FedAvg needs --rule fedavg: its noise is calibrated to a clipped sum"
                        .into(),
                ));
            }
            if self.weighting == Weighting::Examples {
                return Err(Error::Invalid(
                    "DP-FedAvg weights every client equally, so that one client moves the sum by at most the clip norm (give --weighting uniform)".into(),
                ));
            }
            if self.clip_norm.is_some() {
                return Err(Error::Invalid(
                    "--clip-norm and --dp-clip-norm are both set: DP clips to --dp-clip-norm"
                        .into(),
                ));
            }
            if dp.round == 0 {
                return Err(Error::Invalid("--round must be 1 or more with DP".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_combinations_name_the_option() {
        assert_eq!(Rule::parse("median", None).unwrap(), Rule::Median);
        assert_eq!(
            Rule::parse("trimmed-mean", Some(0.25)).unwrap(),
            Rule::TrimmedMean {
                trim_fraction: 0.25
            }
        );
        for (name, beta, want) in [
            ("trimmed-mean", None, "--trim-fraction"),
            ("trimmed-mean", Some(0.5), "--trim-fraction must be in"),
            ("median", Some(0.1), "applies to --rule trimmed-mean"),
            ("krum", None, "unknown --rule `krum`"),
        ] {
            let e = Rule::parse(name, beta).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut rule = ServerRule::fedavg(Weighting::Examples, 1.0);
        rule.rule = Rule::Median;
        assert!(rule
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--weighting"));
        rule.weighting = Weighting::Uniform;
        rule.validate().unwrap();
        rule.clip_norm = Some(0.0);
        assert!(rule
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--clip-norm"));
    }
}
