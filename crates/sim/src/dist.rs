//! Seeded randomness and the latency distributions of the model (pod start phases).
//!
//! Every random draw comes from a [`ChaCha8Rng`] seeded from the run's seed and the model's
//! index, so a run is reproducible bit for bit, and models do not share a stream (adding a
//! model does not change the draws of the others). ChaCha8 from `rand` is used because its
//! output is specified and stable across platforms and releases, unlike `StdRng`.

use std::fmt;
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use zeroscale_config::{format_duration, parse_duration};

use crate::event::{Nanos, nanos};

/// z-score of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874_040_841;

/// The random stream of one model.
#[derive(Debug)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// The stream for `stream` (a model index) under `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        // splitmix64 of (seed, stream): distinct, well-mixed seeds for neighbouring inputs.
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(ChaCha8Rng::seed_from_u64(z))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    fn open01(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.open01(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.open01().ln()
    }

    /// Lognormal with the given mean and coefficient of variation (stddev / mean).
    pub fn lognormal_mean_cv(&mut self, mean: f64, cv: f64) -> f64 {
        let s2 = (1.0 + cv * cv).ln();
        let mu = mean.ln() - s2 / 2.0;
        (mu + s2.sqrt() * self.normal()).exp()
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n.max(1))
    }
}

/// A latency distribution, written `2s` or `fixed:2s` (always that long), or
/// `lognormal:median=2s,p99=10s` (heavy right tail, the usual shape of image pulls and model
/// loads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Lognormal with this median and 99th percentile (p99 >= median).
    LogNormal {
        /// The median.
        median: Duration,
        /// The 99th percentile.
        p99: Duration,
    },
}

impl Latency {
    /// No latency.
    pub const ZERO: Latency = Latency::Fixed(Duration::ZERO);

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> Nanos {
        match *self {
            Latency::Fixed(d) => nanos(d),
            Latency::LogNormal { median, p99 } => {
                let m = median.as_secs_f64();
                if m <= 0.0 {
                    return 0;
                }
                let sigma = (p99.as_secs_f64() / m).ln().max(0.0) / Z99;
                let x = m * (sigma * rng.normal()).exp();
                // Bound the tail at 1000x the median so one draw cannot stall a run for days.
                (x.min(m * 1000.0) * 1e9) as Nanos
            }
        }
    }

    /// The median.
    pub fn median(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::LogNormal { median, .. } => median,
        }
    }
}

impl std::str::FromStr for Latency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("lognormal:") {
            let (mut median, mut p99) = (None, None);
            for part in rest.split(',') {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?}: expected median=DURATION or p99=DURATION"))?;
                let d = parse_duration(v.trim())?;
                match k.trim() {
                    "median" => median = Some(d),
                    "p99" => p99 = Some(d),
                    other => {
                        return Err(format!(
                            "unknown parameter {other:?}; expected median or p99"
                        ));
                    }
                }
            }
            let (Some(median), Some(p99)) = (median, p99) else {
                return Err(format!("{s:?}: lognormal needs median=... and p99=..."));
            };
            if p99 < median {
                return Err(format!("{s:?}: p99 must be at least the median"));
            }
            return Ok(Latency::LogNormal { median, p99 });
        }
        let d = s.strip_prefix("fixed:").unwrap_or(s);
        parse_duration(d)
            .map(Latency::Fixed)
            .map_err(|e| format!("{e}; or write lognormal:median=2s,p99=10s"))
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(d) => f.write_str(&format_duration(*d)),
            Latency::LogNormal { median, p99 } => write!(
                f,
                "lognormal:median={},p99={}",
                format_duration(*median),
                format_duration(*p99)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let l: Latency = "lognormal:median=2s,p99=10s".parse().unwrap();
        assert_eq!(l.to_string(), "lognormal:median=2s,p99=10s");
        assert_eq!(
            "1500ms".parse::<Latency>(),
            Ok(Latency::Fixed(Duration::from_millis(1500)))
        );
        assert_eq!(
            "fixed:3s".parse::<Latency>(),
            Ok(Latency::Fixed(Duration::from_secs(3)))
        );
        assert!("lognormal:median=2s".parse::<Latency>().is_err());
        assert!("lognormal:median=2s,p99=1s".parse::<Latency>().is_err());
        assert!("soon".parse::<Latency>().is_err());
    }

    #[test]
    fn lognormal_has_its_median_and_p99() {
        let l: Latency = "lognormal:median=2s,p99=10s".parse().unwrap();
        let mut rng = Rng::new(7, 0);
        let mut xs: Vec<Nanos> = (0..20_000).map(|_| l.sample(&mut rng)).collect();
        xs.sort_unstable();
        let median = xs[xs.len() / 2] as f64 / 1e9;
        let p99 = xs[xs.len() * 99 / 100] as f64 / 1e9;
        assert!((median - 2.0).abs() < 0.1, "median {median}");
        assert!((p99 - 10.0).abs() < 1.0, "p99 {p99}");
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<f64> = (0..5)
            .map({
                let mut r = Rng::new(1, 0);
                move |_| r.uniform()
            })
            .collect();
        let b: Vec<f64> = (0..5)
            .map({
                let mut r = Rng::new(1, 0);
                move |_| r.uniform()
            })
            .collect();
        let c: Vec<f64> = (0..5)
            .map({
                let mut r = Rng::new(1, 1);
                move |_| r.uniform()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn lognormal_mean_cv_has_its_mean() {
        let mut rng = Rng::new(3, 0);
        let n = 50_000;
        let mean = (0..n).map(|_| rng.lognormal_mean_cv(2.0, 1.5)).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.15, "mean {mean}");
    }
}
