//! Per-second buckets of samples in a fixed-size ring, with running sums for the stable and
//! panic windows.
//!
//! Values are stored as integers in millionths ("micro-units") so the running sums are exact:
//! a float sum that is updated by adding and subtracting drifts, and a drift of 1e-14 would turn
//! `ceil(0 / target)` = 0 pods into 1 pod and keep an idle model from ever reaching zero.

use crate::params::{Aggregation, Metric};

/// Micro-units per unit.
const MICROS: f64 = 1e6;
/// Largest accepted sample value; larger ones are clamped. A million concurrent requests (or a
/// million requests per second) for one Deployment is far beyond any real model, and the bound
/// keeps every sum inside `u64` (3600 buckets x 1e12 micro-units < 2^64).
pub(crate) const MAX_SAMPLE: f64 = 1e6;
/// Longest window in seconds (Knative's maximum stable window is one hour). Bounds memory.
pub(crate) const MAX_WINDOW_SECS: u64 = 3600;

/// Knative's weighted-exponential constants: the weights of a full window must add up to at
/// least `WEIGHT_PRECISION`, and the decay never goes below `MIN_EXPONENT` (otherwise a long
/// window would degrade into a plain average).
const WEIGHT_PRECISION: f64 = 0.9999;
const MIN_EXPONENT: f64 = 0.2;

/// Quantises one sample value: NaN and negatives are 0, huge values are clamped.
pub(crate) fn to_micros(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else {
        // `as` saturates, and the clamp keeps the product far below u64::MAX anyway.
        (v.min(MAX_SAMPLE) * MICROS).round() as u64
    }
}

/// Knative's `computeSmoothingCoeff` for a window of `buckets` seconds.
fn smoothing(buckets: u64) -> f64 {
    (1.0 - (1.0 - WEIGHT_PRECISION).powf(1.0 / buckets as f64)).max(MIN_EXPONENT)
}

/// The figures of one second, in micro-units: the two metrics, and the demand figures
/// (arrivals, requests at pods, completions and their service seconds per second; 0 when the
/// source reports none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pair {
    pub(crate) concurrency: u64,
    pub(crate) rps: u64,
    pub(crate) arrivals: u64,
    pub(crate) in_service: u64,
    pub(crate) served: u64,
    pub(crate) service: u64,
}

impl Pair {
    fn get(self, metric: Metric) -> u64 {
        match metric {
            Metric::Concurrency => self.concurrency,
            Metric::Rps => self.rps,
        }
    }
    fn add(&mut self, o: Pair) {
        self.concurrency += o.concurrency;
        self.rps += o.rps;
        self.arrivals += o.arrivals;
        self.in_service += o.in_service;
        self.served += o.served;
        self.service += o.service;
    }
    fn sub(&mut self, o: Pair) {
        // Never underflows: a sum always contains every bucket value subtracted from it.
        self.concurrency -= o.concurrency;
        self.rps -= o.rps;
        self.arrivals -= o.arrivals;
        self.in_service -= o.in_service;
        self.served -= o.served;
        self.service -= o.service;
    }
}

/// One second: the sum and the number of samples recorded for it. Duplicates are averaged.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    sum: Pair,
    count: u32,
}

impl Bucket {
    /// The bucket's value: the mean of its samples (rounded), 0 when empty.
    fn value(&self) -> Pair {
        // One sample per second is the common case: no division (an empty bucket sums to 0).
        if self.count <= 1 {
            return self.sum;
        }
        let n = u64::from(self.count);
        let mean = |v: u64| (v + n / 2) / n;
        Pair {
            concurrency: mean(self.sum.concurrency),
            rps: mean(self.sum.rps),
            arrivals: mean(self.sum.arrivals),
            in_service: mean(self.sum.in_service),
            served: mean(self.sum.served),
            service: mean(self.sum.service),
        }
    }
}

/// The stable and panic windows over one ring of per-second buckets.
///
/// Invariant: the ring holds exactly the seconds `head - len + 1 ..= head`; every other bucket
/// is empty. `stable` is the sum of all bucket values, `panic` the sum over the newest
/// `panic_len` seconds.
///
/// A bucket is stored in two parts: its sample count in `counts`, and its sums in `sums`, which
/// is `None` while every bucket's sum is zero. An idle model records a zero sample every
/// second, so its ring is counts only: 4 bytes a second instead of 52 (at 10,000 idle models
/// and a 60 s window, 2.3 MiB instead of 32 MiB). The counts stay exact because they decide
/// how a later sample of the same second is averaged.
#[derive(Clone, Debug)]
pub(crate) struct Windows {
    counts: Box<[u32]>,
    sums: Option<Box<[Pair]>>,
    panic_len: u64,
    /// Newest second covered; `None` until the first sample or decision.
    head: Option<i64>,
    /// First second of the current run of data (reset after a full window without samples),
    /// so that a young window averages over the seconds it has seen, like Knative.
    first: Option<i64>,
    /// Newest second a sample was recorded for.
    last_write: Option<i64>,
    stable: Pair,
    panic: Pair,
    stable_alpha: f64,
    panic_alpha: f64,
    dropped: u64,
}

/// What `Windows::record` did with a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Placed in its bucket.
    Placed,
    /// Older than the stable window: dropped.
    TooOld,
}

impl Windows {
    /// A ring of `stable_len` seconds with a panic window of `panic_len` seconds (both clamped
    /// to `1..=MAX_WINDOW_SECS`, and the panic window to at most the stable one).
    pub(crate) fn new(stable_len: u64, panic_len: u64) -> Self {
        let stable_len = stable_len.clamp(1, MAX_WINDOW_SECS);
        let panic_len = panic_len.clamp(1, stable_len);
        Self {
            counts: vec![0; stable_len as usize].into_boxed_slice(),
            sums: None,
            panic_len,
            head: None,
            first: None,
            last_write: None,
            stable: Pair::default(),
            panic: Pair::default(),
            stable_alpha: smoothing(stable_len),
            panic_alpha: smoothing(panic_len),
            dropped: 0,
        }
    }

    pub(crate) fn stable_len(&self) -> u64 {
        self.counts.len() as u64
    }

    fn bucket(&self, i: usize) -> Bucket {
        Bucket {
            sum: self.sums.as_ref().map_or(Pair::default(), |s| s[i]),
            count: self.counts[i],
        }
    }

    /// The sums, allocated (all zero) on the first sample with a value.
    fn sums_mut(&mut self) -> &mut [Pair] {
        let len = self.counts.len();
        self.sums
            .get_or_insert_with(|| vec![Pair::default(); len].into_boxed_slice())
    }

    fn clear(&mut self, i: usize) {
        self.counts[i] = 0;
        if let Some(s) = self.sums.as_mut() {
            s[i] = Pair::default();
        }
    }

    /// Frees the sums once every one is zero again (a window after the last traffic).
    fn release_zero_sums(&mut self) {
        if self.stable == Pair::default()
            && self
                .sums
                .as_ref()
                .is_some_and(|s| s.iter().all(|p| *p == Pair::default()))
        {
            self.sums = None;
        }
    }

    pub(crate) fn panic_len(&self) -> u64 {
        self.panic_len
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    fn idx(&self, sec: i64) -> usize {
        sec.rem_euclid(self.counts.len() as i64) as usize
    }

    /// Moves the newest second to `to` (no-op if it is not newer), emptying the buckets that
    /// fall out of the windows. Costs O(min(to - head, window)); per-second ticks make it O(1).
    /// Returns the newest second after the move.
    pub(crate) fn advance(&mut self, to: i64) -> i64 {
        let Some(head) = self.head else {
            self.head = Some(to);
            return to;
        };
        if to <= head {
            return head;
        }
        let len = self.stable_len() as i64;
        let plen = self.panic_len as i64;
        let k = to - head;
        // Panic first: with panic_len == len, the seconds leaving the panic window are the
        // very buckets the stable step below empties.
        if k >= plen {
            self.panic = Pair::default();
        } else {
            for s in (head + 1 - plen)..=(to - plen) {
                let v = self.bucket(self.idx(s)).value();
                self.panic.sub(v);
            }
        }
        if k >= len {
            self.counts.fill(0);
            self.sums = None;
            self.stable = Pair::default();
        } else {
            for s in (head + 1)..=to {
                let i = self.idx(s);
                let v = self.bucket(i).value();
                self.stable.sub(v);
                self.clear(i);
            }
            self.release_zero_sums();
        }
        self.head = Some(to);
        to
    }

    /// Records one sample for second `sec` (values already in micro-units).
    pub(crate) fn record(&mut self, sec: i64, sample: Pair) -> Recorded {
        let len = self.stable_len() as i64;
        if let Some(head) = self.head
            && sec <= head - len
        {
            self.dropped += 1;
            return Recorded::TooOld;
        }
        let head = self.advance(sec);
        self.first = match (self.first, self.last_write) {
            (Some(first), Some(last)) if sec < last + len => Some(first.min(sec)),
            // First sample ever, or the first after a full window of silence: a new run.
            _ => Some(sec),
        };
        self.last_write = Some(self.last_write.map_or(sec, |l| l.max(sec)));

        let i = self.idx(sec);
        let old = self.bucket(i).value();
        if sample != Pair::default() {
            self.sums_mut()[i].add(sample);
        }
        self.counts[i] = self.counts[i].saturating_add(1);
        let new = self.bucket(i).value();
        self.stable.sub(old);
        self.stable.add(new);
        if sec > head - self.panic_len as i64 {
            self.panic.sub(old);
            self.panic.add(new);
        }
        Recorded::Placed
    }

    /// Number of seconds the window of `len` seconds ending at `end` averages over: the whole
    /// window, or fewer while the current run of data is younger than it.
    fn valid(&self, end: i64, len: u64) -> u64 {
        match self.first {
            None => 0,
            Some(first) => ((end - first + 1).max(1) as u64).min(len),
        }
    }

    /// (stable, panic) averages of `metric` for the windows ending at `end`, which must be the
    /// value returned by `advance`.
    pub(crate) fn averages(&self, end: i64, metric: Metric, agg: Aggregation) -> (f64, f64) {
        let stable_len = self.stable_len();
        let (sv, pv) = (self.valid(end, stable_len), self.valid(end, self.panic_len));
        match agg {
            Aggregation::Linear => (
                linear(self.stable.get(metric), sv),
                linear(self.panic.get(metric), pv),
            ),
            Aggregation::WeightedExponential => (
                self.weighted(end, sv, self.stable_alpha, metric),
                self.weighted(end, pv, self.panic_alpha, metric),
            ),
        }
    }

    /// Knative's weighted-exponential average: the newest second weighs `alpha`, each older
    /// one `(1 - alpha)` times the next. Unlike Knative we divide by the sum of the weights
    /// used, so a young window is not biased towards 0 (with a full window that sum is
    /// >= 0.9999, so the results agree). O(window).
    fn weighted(&self, end: i64, valid: u64, alpha: f64, metric: Metric) -> f64 {
        if valid == 0 {
            return 0.0;
        }
        let keep = 1.0 - alpha;
        let mut w = alpha;
        let mut acc = 0.0;
        // Walk the ring backwards from `end` without a modulo per step.
        let mut i = self.idx(end);
        for _ in 0..valid {
            acc += self.bucket(i).value().get(metric) as f64 * w;
            w *= keep;
            i = i.checked_sub(1).unwrap_or(self.counts.len() - 1);
        }
        let total = 1.0 - keep.powi(valid as i32);
        acc / total / MICROS
    }

    /// Linear (stable, panic) averages of the demand figures, per second, for the windows
    /// ending at `end` (the value returned by `advance`): the demand model's inputs are rates
    /// and a ratio of sums, which recency weighting would bias, so they are always linear.
    pub(crate) fn demand_averages(&self, end: i64) -> (DemandAverage, DemandAverage) {
        let of = |sum: Pair, valid: u64| DemandAverage {
            arrivals: linear(sum.arrivals, valid),
            in_service: linear(sum.in_service, valid),
            served: linear(sum.served, valid),
            service: linear(sum.service, valid),
        };
        (
            of(self.stable, self.valid(end, self.stable_len())),
            of(self.panic, self.valid(end, self.panic_len)),
        )
    }

    /// Average arrivals per second over the `len` newest seconds ending at `end` (at most the
    /// stable window). O(len).
    pub(crate) fn arrivals_over(&self, end: i64, len: u64) -> f64 {
        let len = len.clamp(1, self.stable_len());
        let valid = self.valid(end, len);
        let mut sum = 0u64;
        for s in (end - valid as i64 + 1)..=end {
            sum += self.bucket(self.idx(s)).value().arrivals;
        }
        linear(sum, valid)
    }

    /// Changes the window lengths, keeping the newest seconds that still fit. O(window).
    pub(crate) fn resize(&mut self, stable_len: u64, panic_len: u64) {
        let mut next = Windows::new(stable_len, panic_len);
        if next.stable_len() == self.stable_len() && next.panic_len == self.panic_len {
            return;
        }
        next.head = self.head;
        next.first = self.first;
        next.last_write = self.last_write;
        next.dropped = self.dropped;
        if let Some(head) = self.head {
            let keep = next.stable_len().min(self.stable_len()) as i64;
            for s in (head - keep + 1)..=head {
                let b = self.bucket(self.idx(s));
                let v = b.value();
                let i = next.idx(s);
                next.counts[i] = b.count;
                if b.sum != Pair::default() {
                    next.sums_mut()[i] = b.sum;
                }
                next.stable.add(v);
                if s > head - next.panic_len as i64 {
                    next.panic.add(v);
                }
            }
        }
        *self = next;
    }
}

/// The demand figures averaged over one window, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct DemandAverage {
    pub(crate) arrivals: f64,
    pub(crate) in_service: f64,
    pub(crate) served: f64,
    pub(crate) service: f64,
}

fn linear(sum: u64, valid: u64) -> f64 {
    if valid == 0 {
        0.0
    } else {
        sum as f64 / MICROS / valid as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: f64) -> Pair {
        Pair {
            concurrency: to_micros(v),
            ..Pair::default()
        }
    }

    /// Recomputes both sums from the buckets: the running sums must always match.
    fn check_sums(w: &Windows) {
        let Some(head) = w.head else { return };
        let mut stable = Pair::default();
        let mut panic = Pair::default();
        for s in (head - w.stable_len() as i64 + 1)..=head {
            let v = w.bucket(w.idx(s)).value();
            stable.add(v);
            if s > head - w.panic_len as i64 {
                panic.add(v);
            }
        }
        assert_eq!(stable, w.stable, "stable sum");
        assert_eq!(panic, w.panic, "panic sum");
    }

    fn avg(w: &mut Windows, end: i64) -> (f64, f64) {
        let end = w.advance(end);
        check_sums(w);
        w.averages(end, Metric::Concurrency, Aggregation::Linear)
    }

    #[test]
    fn young_window_averages_over_seconds_seen() {
        let mut w = Windows::new(60, 6);
        w.record(0, c(10.0));
        w.record(1, c(20.0));
        assert_eq!(avg(&mut w, 1), (15.0, 15.0));
        // A gap counts as zero.
        assert_eq!(avg(&mut w, 3), (7.5, 7.5));
    }

    #[test]
    fn full_window_slides() {
        let mut w = Windows::new(10, 2);
        for s in 0..10 {
            w.record(s, c(1.0));
        }
        assert_eq!(avg(&mut w, 9), (1.0, 1.0));
        w.record(10, c(11.0));
        // Second 0 left the stable window, second 8 left the panic window.
        assert_eq!(avg(&mut w, 10), (2.0, 6.0));
        assert_eq!(avg(&mut w, 12), (1.8, 0.0));
        assert_eq!(avg(&mut w, 100), (0.0, 0.0));
    }

    #[test]
    fn duplicates_are_averaged_and_out_of_order_placed() {
        let mut w = Windows::new(10, 5);
        w.record(5, c(4.0));
        w.record(5, c(8.0));
        assert_eq!(avg(&mut w, 5), (6.0, 6.0));
        // An earlier second inside the window joins its own bucket.
        assert_eq!(w.record(3, c(3.0)), Recorded::Placed);
        assert_eq!(avg(&mut w, 5), (3.0, 3.0));
        // Older than the stable window: dropped.
        assert_eq!(w.record(-5, c(100.0)), Recorded::TooOld);
        assert_eq!(w.dropped(), 1);
        assert_eq!(avg(&mut w, 5), (3.0, 3.0));
    }

    #[test]
    fn a_full_window_of_silence_starts_a_new_run() {
        let mut w = Windows::new(10, 5);
        w.record(0, c(50.0));
        w.record(20, c(30.0));
        assert_eq!(avg(&mut w, 20), (30.0, 30.0));
    }

    #[test]
    fn sums_stay_exact_over_many_updates() {
        let mut w = Windows::new(7, 3);
        let mut x: u64 = 12345;
        for s in 0..5000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) as f64 / 1e3;
            let back = ((x >> 20) % 4) as i64;
            w.record(s - back, c(v));
            if s % 13 == 0 {
                w.record(s, c(v * 0.5));
            }
            check_sums(&w);
        }
        // After a window of zero samples everything is exactly zero, not 1e-14.
        for s in 5000..5010 {
            w.record(s, c(0.0));
        }
        assert_eq!(avg(&mut w, 5009), (0.0, 0.0));
    }

    #[test]
    fn resize_keeps_newest_seconds() {
        let mut w = Windows::new(10, 2);
        for s in 0..10 {
            w.record(s, c(s as f64));
        }
        w.resize(4, 2);
        check_sums(&w);
        assert_eq!(avg(&mut w, 9), (7.5, 8.5));
        w.resize(20, 10);
        check_sums(&w);
        // The young run is 10 seconds old, and only the newest 4 survived the shrink.
        assert_eq!(avg(&mut w, 9), (3.0, 3.0));
    }

    #[test]
    fn weighted_favours_recent_seconds() {
        // Knative's example, newest last: [10, 10, 5, 5].
        let mut w = Windows::new(4, 4);
        for (s, v) in [10.0, 10.0, 5.0, 5.0].into_iter().enumerate() {
            w.record(s as i64, c(v));
        }
        let end = w.advance(3);
        let (weighted, _) = w.averages(end, Metric::Concurrency, Aggregation::WeightedExponential);
        let (linear, _) = w.averages(end, Metric::Concurrency, Aggregation::Linear);
        assert_eq!(linear, 7.5);
        assert!(weighted < 6.0, "{weighted}");
        assert!(weighted > 5.0, "{weighted}");
    }

    #[test]
    fn an_idle_ring_stores_counts_only_and_still_averages_duplicates() {
        let mut w = Windows::new(10, 2);
        for s in 0..30 {
            w.record(s, c(0.0));
        }
        assert!(w.sums.is_none(), "zero samples allocate no sums");
        // The zero sample already in second 29 counts: a second sample there is averaged.
        w.record(29, c(10.0));
        assert!(w.sums.is_some());
        assert_eq!(avg(&mut w, 29), (0.5, 2.5));
        // A window of zero samples later every sum is zero again and freed; a partial one is
        // not enough.
        for s in 30..39 {
            w.record(s, c(0.0));
            assert!(w.sums.is_some(), "second {s}: 29 is still in the window");
        }
        w.record(39, c(0.0));
        assert!(w.sums.is_none(), "second 29 left the window");
        assert_eq!(avg(&mut w, 39), (0.0, 0.0));
        // A resize keeps what was recorded, sums and counts alike.
        // (Second 39 now holds 0 and 4: its value is 2.)
        w.record(39, c(4.0));
        w.resize(20, 4);
        check_sums(&w);
        assert_eq!(avg(&mut w, 39), (0.1, 0.5));
    }

    #[test]
    fn samples_are_sanitised() {
        assert_eq!(to_micros(f64::NAN), 0);
        assert_eq!(to_micros(-3.0), 0);
        assert_eq!(to_micros(f64::INFINITY), 1_000_000_000_000);
        assert_eq!(to_micros(1.5), 1_500_000);
    }
}
