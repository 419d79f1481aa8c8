//! What an aggregation records per tensor: how many clients held its elements, and what the
//! rule could do with that many.

use serde::{Deserialize, Serialize};

/// Holdings of one global tensor in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorHoldings {
    pub name: String,
    pub elements: u64,
    /// Elements at least one client held.
    pub held: u64,
    /// Fewest, most and mean holders over the held elements.
    pub holders_min: u32,
    pub holders_max: u32,
    pub holders_mean: f64,
    /// Elements exactly one client held: its value alone decides them, under any rule.
    pub single_holder: u64,
    /// Trimmed mean: held elements with too few holders to drop any (⌊β·n⌋ = 0), which get
    /// the plain mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untrimmed: Option<u64>,
    /// DP: the noise's standard deviation on each element of the new model (η·σ·S / m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_std: Option<f64>,
    /// DP: the noise against one clipped update's worth of signal per holder (σ over the
    /// mean holder count); elements held by few clients are the noisiest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_per_holder: Option<f64>,
}

/// Counts holders element by element.
#[derive(Debug, Clone, Default)]
pub(super) struct HolderStats {
    elements: u64,
    held: u64,
    min: u32,
    max: u32,
    sum: u64,
    single: u64,
    untrimmed: u64,
}

impl HolderStats {
    /// An element with `n` holders; `untrimmed`: the rule could trim none of them.
    pub fn add(&mut self, n: u32, untrimmed: bool) {
        self.elements += 1;
        if n == 0 {
            return;
        }
        self.min = if self.held == 0 { n } else { self.min.min(n) };
        self.max = self.max.max(n);
        self.held += 1;
        self.sum += n as u64;
        self.single += (n == 1) as u64;
        self.untrimmed += untrimmed as u64;
    }

    /// `count` elements that nobody holds.
    pub fn add_unheld(&mut self, count: u64) {
        self.elements += count;
    }

    pub fn merge(&mut self, other: &HolderStats) {
        if other.held > 0 {
            self.min = if self.held == 0 {
                other.min
            } else {
                self.min.min(other.min)
            };
        }
        self.elements += other.elements;
        self.held += other.held;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.single += other.single;
        self.untrimmed += other.untrimmed;
    }

    pub fn report(&self, name: &str, trimmed: bool) -> TensorHoldings {
        TensorHoldings {
            name: name.to_string(),
            elements: self.elements,
            held: self.held,
            holders_min: self.min,
            holders_max: self.max,
            holders_mean: if self.held == 0 {
                0.0
            } else {
                self.sum as f64 / self.held as f64
            },
            single_holder: self.single,
            untrimmed: trimmed.then_some(self.untrimmed),
            noise_std: None,
            noise_per_holder: None,
        }
    }
}
