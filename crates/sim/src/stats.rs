//! Results: wait percentiles, the per-bin timeline, totals over models, and the demand a trace
//! puts on a model (the "steady need" a policy is compared with).

use serde::Serialize;

use crate::event::{Nanos, SEC};
use crate::service::Service;
use crate::trace::Request;

/// Wait percentiles in seconds (nearest rank), over served requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WaitStats {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// The nearest-rank percentile `p` (0..=1) of sorted values.
pub fn percentile(sorted: &[Nanos], p: f64) -> Nanos {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl WaitStats {
    /// Sorts `waits` and takes the percentiles.
    pub fn of(waits: &mut [Nanos]) -> WaitStats {
        waits.sort_unstable();
        let s = |t: Nanos| t as f64 / 1e9;
        WaitStats {
            p50: s(percentile(waits, 0.5)),
            p99: s(percentile(waits, 0.99)),
            max: s(waits.last().copied().unwrap_or(0)),
        }
    }
}

/// Load and replicas per fixed-width bin of time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Width of a bin (nanoseconds).
    pub bin: Nanos,
    /// Requests that arrived in each bin.
    pub arrivals: Vec<u64>,
    /// Pod-nanoseconds of existing pods in each bin.
    pub alive_ns: Vec<u128>,
    /// Pod-nanoseconds of ready pods in each bin.
    pub ready_ns: Vec<u128>,
    /// Request-nanoseconds held by the activator (queued + in flight) in each bin.
    pub held_ns: Vec<u128>,
    /// Highest `spec.replicas` seen at a tick or change in each bin.
    pub spec_max: Vec<u32>,
}

impl Timeline {
    /// `bins` empty bins of width `bin`.
    pub fn new(bin: Nanos, bins: usize) -> Self {
        Self {
            bin,
            arrivals: vec![0; bins],
            alive_ns: vec![0; bins],
            ready_ns: vec![0; bins],
            held_ns: vec![0; bins],
            spec_max: vec![0; bins],
        }
    }

    fn index(&self, t: Nanos) -> Option<usize> {
        let i = (t / self.bin.max(1)) as usize;
        (i < self.arrivals.len()).then_some(i)
    }

    /// One arrival at `t`.
    pub fn arrival(&mut self, t: Nanos) {
        if let Some(i) = self.index(t) {
            self.arrivals[i] += 1;
        }
    }

    /// `dt` nanoseconds starting at `t` (within one bin) with these counts.
    pub fn add(&mut self, t: Nanos, dt: u128, alive: u128, ready: u128, held: u128) {
        if let Some(i) = self.index(t) {
            self.alive_ns[i] += alive * dt;
            self.ready_ns[i] += ready * dt;
            self.held_ns[i] += held * dt;
        }
    }

    /// `spec.replicas` seen at `t`.
    pub fn spec(&mut self, t: Nanos, spec: u32) {
        if let Some(i) = self.index(t) {
            self.spec_max[i] = self.spec_max[i].max(spec);
        }
    }

    /// Adds another timeline of the same shape (totals over models).
    pub fn merge(&mut self, o: &Timeline) {
        if self.arrivals.is_empty() {
            *self = o.clone();
            return;
        }
        for i in 0..self.arrivals.len().min(o.arrivals.len()) {
            self.arrivals[i] += o.arrivals[i];
            self.alive_ns[i] += o.alive_ns[i];
            self.ready_ns[i] += o.ready_ns[i];
            self.held_ns[i] += o.held_ns[i];
            self.spec_max[i] += o.spec_max[i];
        }
    }
}

/// The demand a model's requests put on it, independent of any policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Demand {
    /// Mean offered concurrency over the trace (arrival rate x mean service time).
    pub mean_concurrency: f64,
    /// Highest offered concurrency over any `window` (Little's law per window).
    pub peak_concurrency: f64,
    /// `ceil(peak_concurrency / per_pod)`: the pods the peak needs at the policy's target.
    pub peak_pods: u32,
    /// The window used (seconds).
    pub window_secs: f64,
}

/// Offered concurrency per `window`: the service-seconds of the requests arriving in each
/// window divided by its length, and the pods that needs at `per_pod` concurrency each.
pub fn demand(requests: &[Request], service: &Service, window: Nanos, per_pod: f64) -> Demand {
    let window = window.max(1);
    let Some(last) = requests.last() else {
        return Demand::default();
    };
    let bins = (last.at / window + 1) as usize;
    let mut work = vec![0u128; bins];
    let mut total: u128 = 0;
    for r in requests {
        let s = u128::from(service.of(r));
        work[(r.at / window) as usize] += s;
        total += s;
    }
    let peak = work.iter().copied().max().unwrap_or(0) as f64 / window as f64;
    let span = (bins as u64 * window).max(SEC) as f64;
    Demand {
        mean_concurrency: total as f64 / span,
        peak_concurrency: peak,
        peak_pods: (peak / per_pod.max(1e-9)).ceil() as u32,
        window_secs: window as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Nanos> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn demand_is_littles_law_per_window() {
        let reqs: Vec<Request> = (0..20)
            .map(|i| Request {
                at: i * SEC / 10, // 10/s for 2 s
                model: 0,
                context_tokens: None,
                generated_tokens: None,
            })
            .collect();
        let d = demand(&reqs, &Service::Fixed(SEC / 2), SEC, 2.0);
        assert_eq!(d.peak_concurrency, 5.0); // 10/s x 0.5 s
        assert_eq!(d.peak_pods, 3);
        assert_eq!(d.mean_concurrency, 5.0);
    }
}
