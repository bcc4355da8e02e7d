//! A multi-model workload generator shaped by the Azure Functions characterisation of
//! Shahrad et al., "Serverless in the Wild: Characterizing and Optimizing the Serverless
//! Workload at a Large Cloud Provider", USENIX ATC 2020 (§3, two weeks of July 2019).
//!
//! Figures taken from the paper:
//! - **Rate skew** (Fig. 5a): 45% of applications are invoked once per hour or less on
//!   average, and 81% once per minute or less; rates span about 8 orders of magnitude. The
//!   generator draws each model's mean rate from a log-normal fitted through exactly those two
//!   points: `ln(rate/s) ~ N(mu, sigma)` with `P(rate <= 1/3600) = 0.45` and
//!   `P(rate <= 1/60) = 0.81`, which gives `sigma = ln(60) / (z(0.81) - z(0.45)) = 4.08` and
//!   `mu = ln(1/3600) - z(0.45) x sigma = -7.68` (median 1.7 requests per hour; +-2 sigma covers
//!   7 orders of magnitude).
//! - **Periodic callers**: timers trigger 16% of functions (Fig. 2) and produce near-constant
//!   inter-arrival times (the CV near 0 of Fig. 6); so 16% of models are periodic.
//!
//! Choices of this generator (not figures of the paper): periodic models call every
//! `1/rate` with 5% jitter and a random phase; the others draw inter-arrival times from a
//! log-normal with their mean rate and a CV of 1 (Poisson-like, half of them) or uniform in
//! 2..6 (bursty, the long right tail of Fig. 6's CV distribution); rates are capped by
//! `max_rate` so one model cannot dominate a run, and scaled by `rate_scale` to move the whole
//! fleet (model servers see fewer, heavier requests than functions).

use crate::dist::Rng;
use crate::event::{Nanos, SEC};
use crate::trace::{Request, Trace};

/// z-scores of the 45th and 81st percentiles of the standard normal distribution.
const Z45: f64 = -0.125_661_346_855_074;
const Z81: f64 = 0.877_896_295_051_229;
/// Share of periodic (timer-like) models.
const PERIODIC_SHARE: f64 = 0.16;

/// `mu` and `sigma` of `ln(rate per second)`, fitted as the module docs say.
pub fn rate_lognormal() -> (f64, f64) {
    let sigma = 60f64.ln() / (Z81 - Z45);
    let mu = (1.0f64 / 3600.0).ln() - Z45 * sigma;
    (mu, sigma)
}

/// The arrival pattern of one generated model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// Every `1/rate`, with small jitter.
    Periodic,
    /// Log-normal inter-arrival times with this CV (1 = Poisson-like).
    Random {
        /// Coefficient of variation of the inter-arrival times.
        cv: f64,
    },
}

/// Generator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Generator {
    /// Number of models.
    pub models: usize,
    /// Length of the trace.
    pub duration: Nanos,
    /// Multiplies every model's rate.
    pub rate_scale: f64,
    /// Upper bound of a model's mean rate (requests per second), after scaling.
    pub max_rate: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for Generator {
    fn default() -> Self {
        Self {
            models: 20,
            duration: 3600 * SEC,
            rate_scale: 1.0,
            max_rate: 10.0,
            seed: 1,
        }
    }
}

/// One generated model: its name, mean rate and pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Name (`g{index}-{periodic|poisson|bursty}`).
    pub name: String,
    /// Mean requests per second.
    pub rate: f64,
    /// Arrival pattern.
    pub pattern: Pattern,
}

impl Generator {
    /// The models' rates and patterns.
    pub fn specs(&self) -> Vec<ModelSpec> {
        let (mu, sigma) = rate_lognormal();
        let mut rng = Rng::new(self.seed, 0xFEED);
        (0..self.models)
            .map(|i| {
                let rate = ((mu + sigma * rng.normal()).exp() * self.rate_scale).min(self.max_rate);
                let u = rng.uniform();
                let (pattern, kind) = if u < PERIODIC_SHARE {
                    (Pattern::Periodic, "periodic")
                } else if u < PERIODIC_SHARE + (1.0 - PERIODIC_SHARE) / 2.0 {
                    (Pattern::Random { cv: 1.0 }, "poisson")
                } else {
                    (
                        Pattern::Random {
                            cv: 2.0 + 4.0 * rng.uniform(),
                        },
                        "bursty",
                    )
                };
                ModelSpec {
                    name: format!("g{i:02}-{kind}"),
                    rate,
                    pattern,
                }
            })
            .collect()
    }

    /// Generates the trace.
    pub fn trace(&self) -> Trace {
        let specs = self.specs();
        let mut requests = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut rng = Rng::new(self.seed, 1000 + i as u64);
            let mean = 1.0 / spec.rate.max(1e-12);
            let end = self.duration as f64 / 1e9;
            let mut t = match spec.pattern {
                Pattern::Periodic => mean * rng.uniform(),
                // A random point of a renewal process: start part-way into a gap.
                Pattern::Random { cv } => rng.lognormal_mean_cv(mean, cv) * rng.uniform(),
            };
            while t < end {
                requests.push(Request {
                    at: (t * 1e9) as Nanos,
                    model: i as u32,
                    context_tokens: None,
                    generated_tokens: None,
                });
                t += match spec.pattern {
                    Pattern::Periodic => mean * (1.0 + 0.05 * rng.normal()).max(0.5),
                    Pattern::Random { cv } => rng.lognormal_mean_cv(mean, cv),
                };
            }
        }
        requests.sort_by_key(|r| (r.at, r.model));
        Trace {
            models: specs.into_iter().map(|s| s.name).collect(),
            requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_goes_through_the_papers_two_points() {
        let (mu, sigma) = rate_lognormal();
        let z = |rate: f64| (rate.ln() - mu) / sigma;
        assert!((z(1.0 / 3600.0) - Z45).abs() < 1e-9);
        assert!((z(1.0 / 60.0) - Z81).abs() < 1e-9);
        assert!((sigma - 4.08).abs() < 0.01, "{sigma}");
    }

    #[test]
    fn rates_follow_the_skew() {
        let g = Generator {
            models: 4000,
            max_rate: f64::INFINITY,
            ..Default::default()
        };
        let specs = g.specs();
        let share = |limit: f64| {
            specs.iter().filter(|s| s.rate <= limit).count() as f64 / specs.len() as f64
        };
        assert!((share(1.0 / 3600.0) - 0.45).abs() < 0.03);
        assert!((share(1.0 / 60.0) - 0.81).abs() < 0.03);
        let periodic = specs
            .iter()
            .filter(|s| s.pattern == Pattern::Periodic)
            .count();
        assert!((periodic as f64 / 4000.0 - PERIODIC_SHARE).abs() < 0.02);
    }

    #[test]
    fn a_periodic_model_calls_on_time_and_the_trace_is_reproducible() {
        let g = Generator {
            models: 50,
            rate_scale: 100.0,
            ..Default::default()
        };
        let t = g.trace();
        assert_eq!(t, g.trace());
        assert!(t.requests.windows(2).all(|w| w[0].at <= w[1].at));
        let specs = g.specs();
        let (i, spec) = specs
            .iter()
            .enumerate()
            .find(|(_, s)| s.pattern == Pattern::Periodic && s.rate > 0.01)
            .expect("a periodic model with some traffic");
        let ats: Vec<f64> = t
            .of_model(i as u32)
            .iter()
            .map(|r| r.at as f64 / 1e9)
            .collect();
        let gaps: Vec<f64> = ats.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!(
            (mean * spec.rate - 1.0).abs() < 0.05,
            "mean gap {mean}, rate {}",
            spec.rate
        );
    }
}
