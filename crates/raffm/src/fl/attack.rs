//! Malicious clients, for robustness experiments and tests only: a client that sends its
//! update scaled by a factor, or with its sign flipped. Every update made so carries the
//! attack in its manifest, and aggregation records it per client.

use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attack {
    /// Send start + factor · (trained − start).
    Scale { factor: f64 },
    /// Send start − (trained − start).
    Flip,
}

impl std::str::FromStr for Attack {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "--attack `{s}`: expected scale:FACTOR (a finite number) or flip"
            ))
        };
        match s.split_once(':') {
            None if s == "flip" => Ok(Attack::Flip),
            Some(("scale", factor)) => {
                let factor: f64 = factor.parse().map_err(|_| bad())?;
                factor
                    .is_finite()
                    .then_some(Attack::Scale { factor })
                    .ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }
}

impl Attack {
    /// What the client's update Δ = trained − start is multiplied by.
    pub fn factor(self) -> f64 {
        match self {
            Attack::Scale { factor } => factor,
            Attack::Flip => -1.0,
        }
    }

    /// Turns `trained` into the malicious model it sends, given the model it started from.
    /// A value that the scaling takes past the float range is an error, not an infinity.
    pub fn apply(self, start: &Checkpoint, trained: &mut Checkpoint) -> Result<()> {
        let factor = self.factor();
        for (name, t) in trained.tensors.iter_mut() {
            let s = start.tensor(name);
            for (v, &s) in t.data.iter_mut().zip(&s.data) {
                let sent = s as f64 + factor * (*v as f64 - s as f64);
                *v = sent as f32;
                if !v.is_finite() {
                    return Err(Error::Invalid(format!(
                        "--attack {self:?}: tensor `{name}` leaves the float32 range"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::families::bert::{tiny_model, Variant};

    #[test]
    fn parses_and_scales_the_update_not_the_weights() {
        assert_eq!("flip".parse::<Attack>().unwrap(), Attack::Flip);
        assert_eq!(
            "scale:100".parse::<Attack>().unwrap(),
            Attack::Scale { factor: 100.0 }
        );
        for bad in ["scale", "scale:x", "scale:inf", "boost:2"] {
            assert!(bad
                .parse::<Attack>()
                .unwrap_err()
                .to_string()
                .contains("--attack"));
        }
        let config = tiny_model(Variant::Bert, 1, 8, 2, 16, true);
        let start = Checkpoint::random(&config, 1);
        let trained = Checkpoint::random(&config, 2);
        for attack in [Attack::Flip, Attack::Scale { factor: 3.0 }] {
            let mut sent = trained.clone();
            attack.apply(&start, &mut sent).unwrap();
            for (name, t) in &sent.tensors {
                for ((&v, &s), &w) in t
                    .data
                    .iter()
                    .zip(&start.tensor(name).data)
                    .zip(&trained.tensor(name).data)
                {
                    let want = s as f64 + attack.factor() * (w as f64 - s as f64);
                    assert!(
                        (v as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{name}"
                    );
                }
            }
        }
    }
}
