//! Axis ranges, ticks, labels and units.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use crate::data::Evaluation;

/// An axis range around `values`, padded by a tenth of their span (at least `min_pad`),
/// kept within `[floor, ceil]`.
pub fn padded(values: &[f64], floor: f64, ceil: f64, min_pad: f64) -> (f64, f64) {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (floor, ceil);
    }
    let pad = ((hi - lo) * 0.1).max(min_pad);
    ((lo - pad).max(floor), (hi + pad).min(ceil))
}

/// A linear axis with the ticks given (rounds, budget fractions, one row per pipeline).
pub struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ticked {
    pub fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Self {
            lo: range.start,
            hi: range.end,
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        if self.hi == self.lo {
            return (limit.0 + limit.1) / 2;
        }
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// At most about 12 integer ticks from `lo` to `hi`.
pub fn integer_ticks(lo: u32, hi: u32) -> Vec<f64> {
    let step = ((hi - lo + 1) as f64 / 12.0).ceil().max(1.0) as u32;
    (lo..=hi).step_by(step as usize).map(f64::from).collect()
}

/// Decimals for tick labels of an axis spanning `span`.
pub fn decimals(span: f64) -> usize {
    if span < 0.05 {
        3
    } else if span < 0.5 {
        2
    } else if span < 5.0 {
        1
    } else {
        0
    }
}

/// The accuracy axis label: which split, how many examples.
pub fn accuracy_label(evaluation: &Evaluation) -> String {
    let split = evaluation.split.as_deref().unwrap_or("validation");
    match evaluation.examples {
        Some(n) => format!("{split} accuracy ({n} examples)"),
        None => format!("{split} accuracy"),
    }
}

pub fn millions(p: f64) -> f64 {
    p / 1e6
}
