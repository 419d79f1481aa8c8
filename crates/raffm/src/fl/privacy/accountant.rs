//! Rényi-DP accountant for the sampled Gaussian mechanism (Mironov, Talwar and Zhang 2019),
//! computed the way Opacus's `RDPAccountant` computes it: the same 151 orders, the same
//! series for integer and fractional orders, and the same conversion to (ε, δ).
//!
//! One step is one round of DP-FedAvg: each client takes part with probability `q`, the sum
//! of the clipped updates gets Gaussian noise of standard deviation `sigma * S`.

use serde::Serialize;

/// Opacus's default orders: 1.1, 1.2, ..., 10.9 and then 12, 13, ..., 63.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + x as f64 / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// A privacy loss: ε at the δ it was asked for, and the order that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spent {
    pub epsilon: f64,
    pub delta: f64,
    pub order: f64,
}

/// The mechanisms run so far: (sample rate, noise multiplier, steps).
#[derive(Debug, Clone, Default)]
pub struct Accountant {
    history: Vec<(f64, f64, u64)>,
}

impl Accountant {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `steps` steps of the sampled Gaussian mechanism with sample rate `q` and noise
    /// multiplier `sigma`.
    pub fn step(&mut self, q: f64, sigma: f64, steps: u64) {
        self.history.push((q, sigma, steps));
    }

    /// ε at `delta` over everything recorded, minimised over the default orders.
    pub fn spent(&self, delta: f64) -> Spent {
        let orders = default_orders();
        let rdp: Vec<f64> = orders
            .iter()
            .map(|&alpha| {
                self.history
                    .iter()
                    .map(|&(q, sigma, steps)| steps as f64 * rdp_step(q, sigma, alpha))
                    .sum()
            })
            .collect();
        to_epsilon(&orders, &rdp, delta)
    }
}

/// ε after `steps` rounds at sample rate `q` and noise multiplier `sigma`.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Spent {
    let mut accountant = Accountant::new();
    accountant.step(q, sigma, steps);
    accountant.spent(delta)
}

/// The Rényi divergence of order `alpha` of one step of the sampled Gaussian mechanism.
pub fn rdp_step(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else if sigma == 0.0 || alpha.is_infinite() {
        f64::INFINITY
    } else if q == 1.0 {
        alpha / (2.0 * sigma * sigma)
    } else if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha as u64) / (alpha - 1.0)
    } else {
        log_a_fractional(q, sigma, alpha) / (alpha - 1.0)
    }
}

/// The best ε over the orders, from their RDP values: the conversion of Balle et al. (2020)
/// that Opacus uses, ε = rdp − (ln δ + ln α)/(α − 1) + ln((α − 1)/α).
fn to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Spent {
    let mut best = Spent {
        epsilon: f64::INFINITY,
        delta,
        order: f64::NAN,
    };
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let eps = r - (delta.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
        if eps < best.epsilon {
            best.epsilon = eps;
            best.order = alpha;
        }
    }
    best
}

/// ln A_α for integer α: a binomial expansion of the mixture's moment.
fn log_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0; // ln C(alpha, i), updated as i grows
    for i in 0..=alpha {
        if i > 0 {
            log_binom += ((alpha - i + 1) as f64).ln() - (i as f64).ln();
        }
        let i = i as f64;
        let log_coef = log_binom + i * q.ln() + (alpha as f64 - i) * (1.0 - q).ln();
        log_a = log_add(log_a, log_coef + (i * i - i) / (2.0 * sigma * sigma));
    }
    log_a
}

/// ln A_α for fractional α: two series split at z0, summed until their terms fall below
/// e^-30.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut coef = 1.0f64; // the generalised binomial coefficient C(alpha, i)
    let mut i = 0.0f64;
    loop {
        let log_coef = coef.abs().ln();
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * (1.0 - q).ln();
        let log_t1 = log_coef + j * q.ln() + i * (1.0 - q).ln();
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (2f64.sqrt() * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (2f64.sqrt() * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if coef > 0.0 {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        coef *= (alpha - i) / (i + 1.0);
        i += 1.0;
        if log_s0.max(log_s1) < -30.0 {
            break;
        }
    }
    log_add(log_a0, log_a1)
}

/// ln(e^a + e^b).
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// ln(e^a − e^b) for a ≥ b; −∞ when they are equal.
fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        a
    } else if a <= b {
        f64::NEG_INFINITY
    } else {
        let d = (a - b).exp_m1();
        if d.is_infinite() {
            a
        } else {
            d.ln() + b
        }
    }
}

/// ln erfc(x), finite far into the tail where erfc itself underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        libm::erfc(x).ln()
    } else {
        // erfc(x) = e^{-x²} / (x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + …)
        let inv = 1.0 / (x * x);
        let series = 1.0 - 0.5 * inv + 0.75 * inv * inv - 1.875 * inv * inv * inv;
        -x * x - (x * std::f64::consts::PI.sqrt()).ln() + series.ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Reference {
        versions: serde_json::Value,
        orders: Vec<f64>,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        sample_rate: f64,
        noise_multiplier: f64,
        steps: u64,
        delta: f64,
        epsilon: f64,
        best_order: f64,
    }

    fn reference() -> Reference {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/opacus-rdp.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_orders_are_opacus_defaults() {
        let r = reference();
        assert_eq!(r.versions["opacus"], "1.6.0");
        assert_eq!(default_orders(), r.orders);
        assert_eq!(default_orders().len(), 151);
    }

    #[test]
    fn epsilon_matches_opacus() {
        // The two cases, written out so that the fixture cannot drift from them.
        assert!((epsilon(0.2, 1.0, 5, 1e-5).epsilon - 4.5445).abs() < 1e-3);
        assert!((epsilon(0.01, 1.0, 1000, 1e-5).epsilon - 2.1014).abs() < 1e-3);
        for c in reference().cases {
            let got = epsilon(c.sample_rate, c.noise_multiplier, c.steps, c.delta);
            assert!(
                (got.epsilon - c.epsilon).abs() < 1e-3,
                "q {} sigma {} steps {}: {} against Opacus {}",
                c.sample_rate,
                c.noise_multiplier,
                c.steps,
                got.epsilon,
                c.epsilon
            );
            assert_eq!(got.order, c.best_order, "best order");
        }
    }

    #[test]
    fn composition_adds_up_and_epsilon_grows_with_steps() {
        let mut split = Accountant::new();
        split.step(0.2, 1.0, 2);
        split.step(0.2, 1.0, 3);
        assert_eq!(split.spent(1e-5), epsilon(0.2, 1.0, 5, 1e-5));
        let eps: Vec<f64> = (1..=6)
            .map(|t| epsilon(0.2, 1.0, t, 1e-5).epsilon)
            .collect();
        assert!(eps.windows(2).all(|w| w[0] < w[1]), "{eps:?}");
        // More noise, or rarer sampling, spends less.
        assert!(epsilon(0.2, 2.0, 5, 1e-5).epsilon < eps[4]);
        assert!(epsilon(0.1, 1.0, 5, 1e-5).epsilon < eps[4]);
    }

    #[test]
    fn full_sampling_is_the_gaussian_mechanism() {
        // q = 1: RDP of order α is α / (2σ²), exactly.
        for alpha in [1.5, 2.0, 7.0] {
            assert_eq!(rdp_step(1.0, 2.0, alpha), alpha / 8.0);
        }
        assert_eq!(rdp_step(0.0, 1.0, 3.0), 0.0);
        assert!(rdp_step(0.3, 0.0, 3.0).is_infinite());
    }

    #[test]
    fn log_erfc_is_continuous_into_the_tail() {
        let below = log_erfc(25.0 - 1e-9);
        let above = log_erfc(25.0);
        assert!(
            (below - above).abs() < 1e-6 * below.abs(),
            "{below} {above}"
        );
        assert!((log_erfc(0.0)).abs() < 1e-15);
        assert!((log_erfc(-30.0) - 2f64.ln()).abs() < 1e-15);
    }
}
