//! The adaptive scale-to-zero policy: what a model's own idle gaps say about how long to keep
//! its last pod, in the spirit of the "hybrid histogram" policy of Shahrad et al., "Serverless
//! in the Wild" (USENIX ATC 2020): a fixed-size histogram of idle times (the paper: 1-minute
//! bins up to 4 hours, 240 bins), a keep-alive window from its tail (the 99th percentile), and
//! for predictable callers (no gap shorter than the head, the 5th percentile) no pod at all
//! after use, but a **pre-warm** just before the next request is expected. While the histogram
//! is not representative (fewer than [`MIN_GAPS`] gaps, or a percentile beyond its range) the
//! fixed grace period applies, as the paper falls back to a standard keep-alive.
//!
//! Pure: gaps and durations are arguments. O(1) per gap (amortised: the counts are halved
//! when they reach [`DECAY_AT`], so old behaviour fades and memory stays fixed); a plan costs
//! one pass over the [`BINS`] bins.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bins of the histogram (the paper's 240).
pub const BINS: usize = 240;
/// Gaps needed before the histogram is trusted.
pub const MIN_GAPS: u32 = 10;
/// Shortest idle time counted as a gap. The autoscaler samples once a second, so traffic in
/// consecutive seconds is one busy period, not one-second gaps.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// When the gaps counted reach this, every count is halved: recent behaviour weighs more, and
/// a model whose callers change is relearned (the tail within hundreds of gaps, the head within
/// a few thousand).
pub const DECAY_AT: u32 = 1000;

/// The adaptive policy's knobs (ConfigMap `adaptive-*` keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveParams {
    /// Percentile of the gaps the last pod is kept for (99).
    pub keep_alive_percentile: f64,
    /// Percentile of the gaps below which no request is expected (5); 0 disables pre-warm.
    pub prewarm_percentile: f64,
    /// The histogram's range: gaps up to this are binned in `range / BINS` bins (4h: 1 min).
    pub histogram_range: Duration,
    /// How long before the expected next request a pre-warmed pod is asked for: the pod start
    /// (scheduling, image, model load) must fit in it (1m).
    pub prewarm_margin: Duration,
}

impl Default for AdaptiveParams {
    fn default() -> Self {
        Self {
            keep_alive_percentile: 99.0,
            prewarm_percentile: 5.0,
            histogram_range: Duration::from_secs(4 * 3600),
            prewarm_margin: Duration::from_secs(60),
        }
    }
}

/// A model's idle gaps, binned. Serializable, so the learned state can outlive a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleHistogram {
    /// Width of one bin, in milliseconds.
    bin_ms: u64,
    /// Gaps per bin.
    counts: Vec<u32>,
    /// Gaps longer than the range.
    beyond: u32,
    /// All gaps counted (`sum(counts) + beyond`).
    total: u32,
}

/// What the histogram says about the idle period that just began.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum IdlePlan {
    /// Not representative: the fixed grace period applies.
    Fixed {
        /// Gaps seen so far.
        gaps: u32,
        /// Why: too few gaps, or a percentile beyond the histogram's range.
        why: Unrepresentative,
    },
    /// Keep the last pod until `keep_alive` after the last traffic, then zero.
    KeepAlive {
        /// The tail of the gaps: the upper edge of the bin holding the keep-alive percentile.
        keep_alive: Duration,
        /// That percentile.
        percentile: f64,
        /// Gaps seen.
        gaps: u32,
    },
    /// No pod right after use; one pod from `prewarm_at` after the last traffic until
    /// `until`, then zero.
    PreWarm {
        /// The head of the gaps (lower edge of the bin holding the pre-warm percentile): no
        /// request is expected sooner.
        expected: Duration,
        /// `expected - prewarm_margin`.
        prewarm_at: Duration,
        /// The tail, as for `KeepAlive`.
        until: Duration,
        /// The pre-warm percentile.
        percentile: f64,
        /// Gaps seen.
        gaps: u32,
    },
}

/// Why the histogram is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unrepresentative {
    /// Fewer than [`MIN_GAPS`] gaps.
    TooFewGaps,
    /// The keep-alive percentile lies beyond the histogram's range.
    BeyondRange,
}

impl IdleHistogram {
    /// An empty histogram over `range` (at least one second per bin).
    pub fn new(range: Duration) -> Self {
        let bin_ms = (range.as_millis() / BINS as u128).max(1000) as u64;
        Self {
            bin_ms,
            counts: vec![0; BINS],
            beyond: 0,
            total: 0,
        }
    }

    /// Width of one bin.
    pub fn bin(&self) -> Duration {
        Duration::from_millis(self.bin_ms)
    }

    /// Gaps counted (after decay).
    pub fn gaps(&self) -> u32 {
        self.total
    }

    /// Counts one idle gap; gaps shorter than [`MIN_GAP`] are not gaps.
    pub fn add(&mut self, gap: Duration) {
        if gap < MIN_GAP {
            return;
        }
        let bin = (gap.as_millis() / u128::from(self.bin_ms)) as usize;
        match self.counts.get_mut(bin) {
            Some(c) => *c += 1,
            None => self.beyond += 1,
        }
        self.total += 1;
        if self.total >= DECAY_AT {
            for c in &mut self.counts {
                *c /= 2;
            }
            self.beyond /= 2;
            self.total = self.counts.iter().sum::<u32>() + self.beyond;
        }
    }

    /// The bin holding percentile `p` of all gaps (`None` when it is beyond the range).
    fn percentile_bin(&self, p: f64) -> Option<usize> {
        // Nearest rank: the smallest bin whose cumulative count reaches p% of all gaps.
        let rank = ((p / 100.0) * f64::from(self.total)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(i);
            }
        }
        None
    }

    /// The plan for an idle period, with the knobs `a`.
    pub fn plan(&self, a: &AdaptiveParams) -> IdlePlan {
        let gaps = self.total;
        if gaps < MIN_GAPS {
            return IdlePlan::Fixed {
                gaps,
                why: Unrepresentative::TooFewGaps,
            };
        }
        let Some(tail) = self.percentile_bin(a.keep_alive_percentile) else {
            return IdlePlan::Fixed {
                gaps,
                why: Unrepresentative::BeyondRange,
            };
        };
        let bin = self.bin();
        let until = bin * (tail as u32 + 1);
        if a.prewarm_percentile > 0.0
            && let Some(head) = self.percentile_bin(a.prewarm_percentile)
        {
            let expected = bin * head as u32;
            if expected > a.prewarm_margin {
                return IdlePlan::PreWarm {
                    expected,
                    prewarm_at: expected - a.prewarm_margin,
                    until,
                    percentile: a.prewarm_percentile,
                    gaps,
                };
            }
        }
        IdlePlan::KeepAlive {
            keep_alive: until,
            percentile: a.keep_alive_percentile,
            gaps,
        }
    }

    /// A compact text form for storage: `v1 BIN_MS BEYOND i:c,i:c,...` (non-empty bins only).
    pub fn encode(&self) -> String {
        let mut out = format!("v1 {} {} ", self.bin_ms, self.beyond);
        let mut first = true;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&format!("{i}:{c}"));
            }
        }
        out
    }

    /// Reads [`IdleHistogram::encode`]'s form; `None` when it is not that form. A histogram
    /// stored with another bin width (the range changed) is not used: its bins mean other gaps.
    pub fn decode(text: &str, range: Duration) -> Option<Self> {
        let mut parts = text.trim().splitn(4, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let bin_ms: u64 = parts.next()?.parse().ok()?;
        let beyond: u32 = parts.next()?.parse().ok()?;
        let mut h = Self::new(range);
        if h.bin_ms != bin_ms {
            return None;
        }
        for pair in parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (i, c) = pair.split_once(':')?;
            let (i, c): (usize, u32) = (i.parse().ok()?, c.parse().ok()?);
            *h.counts.get_mut(i)? = c.min(DECAY_AT);
        }
        h.beyond = beyond.min(DECAY_AT);
        h.total = h.counts.iter().sum::<u32>() + h.beyond;
        Some(h)
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The reason in words, for Events: "next request expected in ~14m (p5 of 312 gaps)".
impl fmt::Display for IdlePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdlePlan::Fixed { gaps, why } => match why {
                Unrepresentative::TooFewGaps => write!(
                    f,
                    "fixed grace period: {gaps} idle gaps seen, {MIN_GAPS} needed to adapt"
                ),
                Unrepresentative::BeyondRange => write!(
                    f,
                    "fixed grace period: the idle gaps' tail lies beyond the histogram range"
                ),
            },
            IdlePlan::KeepAlive {
                keep_alive,
                percentile,
                gaps,
            } => write!(
                f,
                "keep-alive {} (p{percentile:.0} of {gaps} gaps)",
                secs(keep_alive)
            ),
            IdlePlan::PreWarm {
                expected,
                percentile,
                gaps,
                ..
            } => write!(
                f,
                "next request expected in ~{} (p{percentile:.0} of {gaps} gaps)",
                secs(expected)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn hist(gaps: &[u64]) -> IdleHistogram {
        let mut h = IdleHistogram::new(Duration::from_secs(4 * 3600));
        for &g in gaps {
            h.add(Duration::from_secs(g));
        }
        h
    }

    #[test]
    fn too_few_gaps_fall_back_to_the_fixed_grace() {
        let h = hist(&[600; 9]);
        assert_eq!(
            h.plan(&AdaptiveParams::default()),
            IdlePlan::Fixed {
                gaps: 9,
                why: Unrepresentative::TooFewGaps
            }
        );
        // One-second "gaps" are continuous traffic, not gaps.
        assert_eq!(hist(&[1; 100]).gaps(), 0);
    }

    #[test]
    fn plans_table() {
        let a = AdaptiveParams::default();
        // (gaps in seconds, plan)
        let cases: Vec<(Vec<u64>, IdlePlan)> = vec![
            // Short, irregular gaps: keep the pod for the tail (bin 2's upper edge, 3 min).
            (
                [30, 90, 150, 20, 40, 60, 100, 130, 10, 170].repeat(3),
                IdlePlan::KeepAlive {
                    keep_alive: 3 * MIN,
                    percentile: 99.0,
                    gaps: 30,
                },
            ),
            // A periodic caller every ~15 min: zero at once, pre-warm at 14 - 1 = 13 min.
            (
                vec![14 * 60 + 30; 20],
                IdlePlan::PreWarm {
                    expected: 14 * MIN,
                    prewarm_at: 13 * MIN,
                    until: 15 * MIN,
                    percentile: 5.0,
                    gaps: 20,
                },
            ),
            // Gaps mostly beyond 4 h: the fixed grace.
            (
                vec![5 * 3600; 20],
                IdlePlan::Fixed {
                    gaps: 20,
                    why: Unrepresentative::BeyondRange,
                },
            ),
        ];
        for (gaps, want) in cases {
            assert_eq!(hist(&gaps).plan(&a), want, "{gaps:?}");
        }
        // Pre-warm off: the same periodic caller keeps its pod for the tail instead.
        let off = AdaptiveParams {
            prewarm_percentile: 0.0,
            ..a.clone()
        };
        assert_eq!(
            hist(&[14 * 60 + 30; 20]).plan(&off),
            IdlePlan::KeepAlive {
                keep_alive: 15 * MIN,
                percentile: 99.0,
                gaps: 20
            }
        );
    }

    #[test]
    fn the_event_says_why() {
        let h = hist(&[14 * 60 + 30; 312]);
        assert_eq!(
            h.plan(&AdaptiveParams::default()).to_string(),
            "next request expected in ~14m (p5 of 312 gaps)"
        );
    }

    #[test]
    fn decay_keeps_memory_fixed_and_follows_a_change() {
        let mut h = hist(&[600; 999]);
        assert_eq!(h.gaps(), 999);
        h.add(Duration::from_secs(600));
        assert_eq!(h.gaps(), 500);
        // The callers change to every 2 h: a few thousand gaps later even the head follows.
        for _ in 0..4000 {
            h.add(Duration::from_secs(7200 + 30));
        }
        match h.plan(&AdaptiveParams::default()) {
            IdlePlan::PreWarm { expected, .. } => assert_eq!(expected, 120 * MIN),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.counts.len(), BINS);
    }

    #[test]
    fn encode_round_trips_and_refuses_other_forms() {
        let range = Duration::from_secs(4 * 3600);
        let h = hist(&[30, 900, 900, 5 * 3600]);
        let text = h.encode();
        assert_eq!(text, "v1 60000 1 0:1,15:2");
        assert_eq!(IdleHistogram::decode(&text, range), Some(h));
        // Another range means other bins: not used.
        assert_eq!(
            IdleHistogram::decode(&text, Duration::from_secs(3600)),
            None
        );
        for bad in [
            "",
            "v2 60000 0 ",
            "v1 x 0 ",
            "v1 60000 0 999:1",
            "v1 60000 0 1-2",
        ] {
            assert_eq!(IdleHistogram::decode(bad, range), None, "{bad:?}");
        }
    }
}
