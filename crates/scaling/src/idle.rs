//! The adaptive scale-to-zero policy: what a model's own idle gaps say about how long to keep
//! its last pod, in the spirit of the "hybrid histogram" policy of Shahrad et al., "Serverless
//! in the Wild" (USENIX ATC 2020): a fixed-size histogram of idle times (the paper: 1-minute
//! bins up to 4 hours, 240 bins), a keep-alive window from its tail (the 99th percentile), and
//! for predictable callers (no gap shorter than the head, the 5th percentile) no pod at all
//! after use, but a **pre-warm** just before the next request is expected. While the histogram
//! is not representative (fewer than [`MIN_GAPS`] gaps, or a percentile beyond its range) the
//! fixed grace period applies, as the paper falls back to a standard keep-alive.
//!
//! With a price on cold starts ([`AdaptiveParams::cold_start_cost`]: one cold start is worth
//! P replica-seconds) the keep-alive is not a percentile but the bin edge k that minimises the
//! model's own expected cost over its histogram: `sum over gaps g of min(g, k) + P x
//! count(g >= k)`, each gap taken at its bin's midpoint and gaps beyond the range longer than
//! every k ([`IdleHistogram::cheapest_keep_alive`]). A pre-warm is then chosen only when its
//! expected cost over the same histogram is lower still.
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
    /// What one cold start is worth, in time of one replica: with it, the keep-alive is the
    /// cheapest one over the model's gaps instead of `keep_alive_percentile` (None: off).
    #[serde(default)]
    pub cold_start_cost: Option<Duration>,
}

impl Default for AdaptiveParams {
    fn default() -> Self {
        Self {
            keep_alive_percentile: 99.0,
            prewarm_percentile: 5.0,
            histogram_range: Duration::from_secs(4 * 3600),
            prewarm_margin: Duration::from_secs(60),
            cold_start_cost: None,
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
        /// How long: the upper edge of the bin holding the keep-alive percentile, or the
        /// cheapest bin edge at the cold-start cost.
        keep_alive: Duration,
        /// Which rule chose it, and what it saw.
        by: KeepAliveBy,
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
        /// The cold-start cost at which pre-warming was cheaper than any keep-alive (None:
        /// no price).
        cold_start_cost: Option<Duration>,
        /// Gaps seen.
        gaps: u32,
    },
}

/// The rule that chose a [`IdlePlan::KeepAlive`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeepAliveBy {
    /// The tail of the gaps: this percentile (`adaptive-keep-alive-percentile`).
    Percentile(f64),
    /// The least expected idle time + cold starts at this price (`adaptive-cold-start-cost`).
    Cost {
        /// What one cold start is worth, in time of one replica.
        cold_start_cost: Duration,
        /// Gaps at least as long as the keep-alive (each one a cold start).
        longer: u32,
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

    /// The cheapest keep-alive at `cold_start_cost` over these gaps, in bins (the edge
    /// `0..=BINS`), and how many gaps are at least that long. Keeping the pod for k costs
    /// `min(g, k)` of idle replica for a gap g, and a cold start (worth `cold_start_cost`) when
    /// g >= k; a gap is taken at its bin's midpoint, a gap beyond the range is longer than
    /// every k. Ties go to the shorter keep-alive. One pass over the bins, exact integer
    /// arithmetic, so the result is deterministic.
    ///
    /// Costs are twice the replica-milliseconds, in u64: at most 241,000 gaps (240 bins and
    /// the beyond count, each at most [`DECAY_AT`]) x 2 x (24 h range + a price of at most a
    /// week) is below 1e15, far from overflow.
    pub fn cheapest_keep_alive(&self, cold_start_cost: Duration) -> (usize, u32) {
        let (edge, longer, _) = self.keep_alive_cost(cold_start_cost);
        (edge, longer)
    }

    /// [`IdleHistogram::cheapest_keep_alive`] and its cost (twice the replica-milliseconds).
    fn keep_alive_cost(&self, cold_start_cost: Duration) -> (usize, u32, u64) {
        let bin = self.bin_ms;
        let price = millis(cold_start_cost);
        // Edge j: gaps below it (bins < j) cost their midpoints, the rest `k + P` each.
        let mut below_cost = 0u64; // sum of c_i x (2i + 1) x bin over i < j
        let mut longer = u64::from(self.total);
        let mut best = (0usize, self.total, longer * 2 * price);
        for (i, &c) in self.counts.iter().enumerate() {
            let c = u64::from(c);
            below_cost += c * (2 * i as u64 + 1) * bin;
            longer -= c;
            let j = i as u64 + 1;
            let cost = below_cost + longer * 2 * (j * bin + price);
            if cost < best.2 {
                best = (j as usize, longer as u32, cost);
            }
        }
        best
    }

    /// The expected cost of pre-warming, in the units of [`IdleHistogram::keep_alive_cost`]:
    /// a gap shorter than `prewarm_at` is a cold start, one up to `until` keeps the pre-warmed
    /// pod from `prewarm_at` until it ends, a longer one keeps it to `until` and is a cold
    /// start. Gaps at their bins' midpoints, as for the keep-alive.
    fn prewarm_cost(
        &self,
        prewarm_at: Duration,
        until: Duration,
        cold_start_cost: Duration,
    ) -> u64 {
        let bin = self.bin_ms;
        let (from, until, price) = (
            2 * millis(prewarm_at),
            2 * millis(until),
            2 * millis(cold_start_cost),
        );
        let late = until.saturating_sub(from) + price;
        let mut cost = u64::from(self.beyond) * late;
        for (i, &c) in self.counts.iter().enumerate() {
            let g = (2 * i as u64 + 1) * bin;
            let each = if g < from {
                price
            } else if g < until {
                g - from
            } else {
                late
            };
            cost += u64::from(c) * each;
        }
        cost
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
        let bin = self.bin();
        let tail = self.percentile_bin(a.keep_alive_percentile);
        let mut keep_alive_cost = None;
        let keep_alive = match a.cold_start_cost {
            // The price counts gaps beyond the range too: no fallback needed.
            Some(cold_start_cost) => {
                let (edge, longer, cost) = self.keep_alive_cost(cold_start_cost);
                keep_alive_cost = Some((cold_start_cost, cost));
                IdlePlan::KeepAlive {
                    keep_alive: bin * edge as u32,
                    by: KeepAliveBy::Cost {
                        cold_start_cost,
                        longer,
                    },
                    gaps,
                }
            }
            None => match tail {
                Some(tail) => IdlePlan::KeepAlive {
                    keep_alive: bin * (tail as u32 + 1),
                    by: KeepAliveBy::Percentile(a.keep_alive_percentile),
                    gaps,
                },
                None => {
                    return IdlePlan::Fixed {
                        gaps,
                        why: Unrepresentative::BeyondRange,
                    };
                }
            },
        };
        // Pre-warm as without a price (only with the percentile's tail in range), and with a
        // price only when it is cheaper than the cheapest keep-alive: a pre-warm that keeps a
        // pod through the tail of every gap can cost more than the cold starts it saves.
        let Some(tail) = tail else {
            return keep_alive;
        };
        let until = bin * (tail as u32 + 1);
        if a.prewarm_percentile > 0.0
            && let Some(head) = self.percentile_bin(a.prewarm_percentile)
        {
            let expected = bin * head as u32;
            let prewarm_at = expected.saturating_sub(a.prewarm_margin);
            let pays = || match keep_alive_cost {
                None => true,
                Some((price, cost)) => self.prewarm_cost(prewarm_at, until, price) < cost,
            };
            if expected > a.prewarm_margin && pays() {
                return IdlePlan::PreWarm {
                    expected,
                    prewarm_at,
                    until,
                    percentile: a.prewarm_percentile,
                    cold_start_cost: keep_alive_cost.map(|(price, _)| price),
                    gaps,
                };
            }
        }
        keep_alive
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

/// Milliseconds of `d`, at most a week: the ConfigMap bounds the price and the range to a day,
/// and the clamp keeps the cost sums of any caller's durations far from overflow.
fn millis(d: Duration) -> u64 {
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis()).map_or(WEEK_MS, |ms| ms.min(WEEK_MS))
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
                by: KeepAliveBy::Percentile(percentile),
                gaps,
            } => write!(
                f,
                "keep-alive {} (p{percentile:.0} of {gaps} gaps)",
                secs(keep_alive)
            ),
            IdlePlan::KeepAlive {
                keep_alive,
                by:
                    KeepAliveBy::Cost {
                        cold_start_cost,
                        longer,
                    },
                gaps,
            } => {
                if keep_alive.is_zero() {
                    write!(f, "zero at once")?;
                } else {
                    write!(f, "keep-alive {}", secs(keep_alive))?;
                }
                write!(
                    f,
                    ": cheapest at a cold start = {} of a replica ({longer} of {gaps} gaps longer)",
                    secs(cold_start_cost)
                )
            }
            IdlePlan::PreWarm {
                expected,
                percentile,
                cold_start_cost,
                gaps,
                ..
            } => {
                write!(
                    f,
                    "next request expected in ~{} (p{percentile:.0} of {gaps} gaps)",
                    secs(expected)
                )?;
                match cold_start_cost {
                    Some(price) => write!(
                        f,
                        "; cheaper than any keep-alive at a cold start = {} of a replica",
                        secs(price)
                    ),
                    None => Ok(()),
                }
            }
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
                    by: KeepAliveBy::Percentile(99.0),
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
                    cold_start_cost: None,
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
                by: KeepAliveBy::Percentile(99.0),
                gaps: 20
            }
        );
    }

    fn priced(cost_secs: u64) -> AdaptiveParams {
        AdaptiveParams {
            cold_start_cost: Some(Duration::from_secs(cost_secs)),
            ..AdaptiveParams::default()
        }
    }

    fn by_cost(keep_alive: Duration, cost_secs: u64, longer: u32, gaps: u32) -> IdlePlan {
        IdlePlan::KeepAlive {
            keep_alive,
            by: KeepAliveBy::Cost {
                cold_start_cost: Duration::from_secs(cost_secs),
                longer,
            },
            gaps,
        }
    }

    #[test]
    fn priced_plans_table() {
        // Short gaps (bins 0..=2) and a few of 2 h: (gaps in seconds, price in seconds, plan).
        let short = [30, 90, 150, 20, 40, 60, 100, 130, 10, 170].repeat(3);
        let mut with_long = short.clone();
        with_long.extend([7200; 3]);
        let cases: Vec<(Vec<u64>, u64, IdlePlan)> = vec![
            // A large price: keep the pod for the whole tail of the short gaps (3 min).
            (short.clone(), 600, by_cost(3 * MIN, 600, 0, 30)),
            // A small price: a cold start is cheaper than any wait, zero at once.
            (short.clone(), 10, by_cost(Duration::ZERO, 10, 30, 30)),
            // Bins 0, 1, 2 hold 12, 9, 9 gaps (midpoints 30, 90, 150 s). At 60 s: k = 0 costs
            // 30 x 60 = 1800, 1m 12 x 30 + 18 x 120 = 2520, 2m 1170 + 9 x 180 = 2790, 3m 2520:
            // zero at once.
            (short.clone(), 60, by_cost(Duration::ZERO, 60, 30, 30)),
            // At 2 min a cold start is dearer than the tail: 3 min.
            (short.clone(), 120, by_cost(3 * MIN, 120, 0, 30)),
            // The 2 h gaps are not worth 2 h of pod each at a 10 min price: 3 min still, the
            // three long gaps cold starts.
            (with_long.clone(), 600, by_cost(3 * MIN, 600, 3, 33)),
            // At a 3 h price they are: keep the pod to the end of their bin (2h 1m).
            (
                with_long.clone(),
                3 * 3600,
                by_cost(121 * MIN, 3 * 3600, 0, 33),
            ),
            // Gaps beyond the range are longer than every k: no fallback, zero at once.
            (
                vec![5 * 3600; 20],
                600,
                by_cost(Duration::ZERO, 600, 20, 20),
            ),
        ];
        for (gaps, cost, want) in cases {
            assert_eq!(hist(&gaps).plan(&priced(cost)), want, "{gaps:?} at {cost}s");
        }
        // Too few gaps: the fixed grace, price or not.
        assert_eq!(
            hist(&[30; 9]).plan(&priced(600)),
            IdlePlan::Fixed {
                gaps: 9,
                why: Unrepresentative::TooFewGaps
            }
        );
        // A periodic caller is still pre-warmed: 20 x 90 s of pre-warmed pod is cheaper than
        // 20 cold starts at 10 min.
        assert_eq!(
            hist(&[14 * 60 + 30; 20]).plan(&priced(600)),
            IdlePlan::PreWarm {
                expected: 14 * MIN,
                prewarm_at: 13 * MIN,
                until: 15 * MIN,
                percentile: 5.0,
                cold_start_cost: Some(Duration::from_secs(600)),
                gaps: 20,
            }
        );
        // Gaps spread over 20 min .. 2 h: the head (24 min) says pre-warm, but the pod would
        // idle up to 96 min per gap; at 10 min a cold start is cheaper (zero at once), at 3 h
        // the pre-warm is cheaper than any keep-alive.
        let spread: Vec<u64> = (20..120).map(|m| m * 60 + 30).collect();
        assert_eq!(
            hist(&spread).plan(&priced(600)),
            by_cost(Duration::ZERO, 600, 100, 100)
        );
        assert!(matches!(
            hist(&spread).plan(&priced(3 * 3600)),
            IdlePlan::PreWarm {
                expected,
                cold_start_cost: Some(_),
                ..
            } if expected == 24 * MIN
        ));
        // Without a price the pre-warm is taken as before.
        assert!(matches!(
            hist(&spread).plan(&AdaptiveParams::default()),
            IdlePlan::PreWarm {
                cold_start_cost: None,
                ..
            }
        ));
        // ... and with pre-warm off keeps its pod to the end of its bin at a high price,
        // goes to zero at once at a low one.
        let no_prewarm = |cost| AdaptiveParams {
            prewarm_percentile: 0.0,
            ..priced(cost)
        };
        assert_eq!(
            hist(&[14 * 60 + 30; 20]).plan(&no_prewarm(3600)),
            by_cost(15 * MIN, 3600, 0, 20)
        );
        assert_eq!(
            hist(&[14 * 60 + 30; 20]).plan(&no_prewarm(600)),
            by_cost(Duration::ZERO, 600, 20, 20)
        );
    }

    /// Twice the expected cost of keep-alive edge `j`, straight from the definition.
    fn cost_at(h: &IdleHistogram, j: usize, price: Duration) -> u64 {
        let bin = h.bin_ms;
        let k2 = 2 * j as u64 * bin;
        let cold = k2 + 2 * millis(price);
        let mut cost = u64::from(h.beyond) * cold;
        for (i, &c) in h.counts.iter().enumerate() {
            let g2 = (2 * i as u64 + 1) * bin;
            cost += u64::from(c) * if i < j { g2 } else { cold };
        }
        cost
    }

    proptest::proptest! {
        #[test]
        fn the_priced_keep_alive_is_the_cheapest_edge(
            gaps in proptest::collection::vec(
                proptest::prop_oneof![0u64..=600, 0u64..=4 * 3600, 4u64 * 3600..=6 * 3600],
                0..400,
            ),
            range in 240u64..=4 * 3600,
            price in 0u64..=4 * 3600,
        ) {
            let mut h = IdleHistogram::new(Duration::from_secs(range));
            for &g in &gaps {
                h.add(Duration::from_secs(g));
            }
            let price = Duration::from_secs(price);
            let (edge, longer) = h.cheapest_keep_alive(price);
            let costs: Vec<u64> = (0..=BINS).map(|j| cost_at(&h, j, price)).collect();
            let least = *costs.iter().min().expect("241 edges");
            // The true minimiser, the first of ties, and the gaps it counts as cold starts.
            proptest::prop_assert_eq!(costs[edge], least);
            proptest::prop_assert!(costs[..edge].iter().all(|&c| c > least));
            let below: u32 = h.counts[..edge].iter().sum();
            proptest::prop_assert_eq!(longer, h.total - below);
            // Deterministic, and what the plan carries.
            proptest::prop_assert_eq!(h.cheapest_keep_alive(price), (edge, longer));
            let a = AdaptiveParams {
                cold_start_cost: Some(price),
                prewarm_percentile: 0.0,
                ..AdaptiveParams::default()
            };
            let plan = h.plan(&a);
            if h.gaps() < MIN_GAPS {
                proptest::prop_assert!(matches!(plan, IdlePlan::Fixed { .. }), "{:?}", plan);
            } else {
                proptest::prop_assert_eq!(
                    plan,
                    IdlePlan::KeepAlive {
                        keep_alive: h.bin() * edge as u32,
                        by: KeepAliveBy::Cost { cold_start_cost: price, longer },
                        gaps: h.gaps(),
                    }
                );
                // With pre-warm on: the same keep-alive, or a pre-warm that costs less.
                let with = AdaptiveParams { prewarm_percentile: 5.0, ..a.clone() };
                match h.plan(&with) {
                    IdlePlan::PreWarm { prewarm_at, until, cold_start_cost, .. } => {
                        proptest::prop_assert_eq!(cold_start_cost, Some(price));
                        proptest::prop_assert!(
                            h.prewarm_cost(prewarm_at, until, price) < least
                        );
                    }
                    other => proptest::prop_assert_eq!(other, plan),
                }
            }
        }

        #[test]
        fn a_dearer_cold_start_never_shortens_the_keep_alive(
            gaps in proptest::collection::vec(0u64..=5 * 3600, 10..200),
            cheap in 0u64..=3600,
            extra in 0u64..=3600,
        ) {
            let h = hist(&gaps);
            let (low, _) = h.cheapest_keep_alive(Duration::from_secs(cheap));
            let (high, _) = h.cheapest_keep_alive(Duration::from_secs(cheap + extra));
            proptest::prop_assert!(high >= low, "{} < {}", high, low);
        }
    }

    #[test]
    fn the_priced_event_says_why() {
        let mut gaps = vec![30; 300];
        gaps.extend([7200; 12]);
        assert_eq!(
            hist(&gaps).plan(&priced(60)).to_string(),
            "keep-alive 1m: cheapest at a cold start = 1m of a replica (12 of 312 gaps longer)"
        );
        assert_eq!(
            hist(&gaps).plan(&priced(10)).to_string(),
            "zero at once: cheapest at a cold start = 10s of a replica (312 of 312 gaps longer)"
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
