//! Percentiles of recorded samples (exact: every sample is kept and sorted).

use std::time::Duration;

/// Nearest-rank percentile `p` (0..=100) of sorted `v`.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds with one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// `p50 p90 p99 p99.9 max` in microseconds, as `key=value` pairs prefixed with `name`.
pub fn summary(name: &str, v: &mut [Duration]) -> String {
    v.sort_unstable();
    format!(
        "{name}_p50_us={} {name}_p90_us={} {name}_p99_us={} {name}_p999_us={} {name}_max_us={}",
        us(pct(v, 50.0)),
        us(pct(v, 90.0)),
        us(pct(v, 99.0)),
        us(pct(v, 99.9)),
        us(v.last().copied().unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(pct(&v, 50.0), Duration::from_micros(50));
        assert_eq!(pct(&v, 99.0), Duration::from_micros(99));
        assert_eq!(pct(&v, 100.0), Duration::from_micros(100));
        assert_eq!(pct(&v, 0.0), Duration::from_micros(1));
        assert_eq!(pct(&[], 50.0), Duration::ZERO);
    }
}
