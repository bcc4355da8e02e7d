//! Where a gate's counts go: a small trait its owner implements, and a plain implementation
//! with atomic counters ([`Counts`]) for tests and for owners without a metrics library.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The in-flight count of one pod, as exported.
pub trait PodGauge: Send + Sync + 'static {
    /// One more request on the pod.
    fn inc(&self);
    /// One request fewer on the pod.
    fn dec(&self);
}

/// What a gate reports. Called under the gate's lock: implementations only count.
pub trait GateMetrics: Send + Sync + std::fmt::Debug + 'static {
    /// The in-flight gauge of one pod.
    type Pod: PodGauge;
    /// Requests waiting changed by `delta`.
    fn queued(&self, delta: i64);
    /// Requests counted on a pod changed by `delta`.
    fn in_flight(&self, delta: i64);
    /// A request was counted on a pod at `at` (the instant its permit's service time starts
    /// from). The default counts only that.
    fn started(&self, _at: Instant) {
        self.in_flight(1);
    }
    /// A request the pod had for `served` ended at `at` (its permit was dropped): one fewer
    /// counted on a pod. The default counts only that.
    fn finished(&self, _served: Duration, _at: Instant) {
        self.in_flight(-1);
    }
    /// A request left the queue with a pod after waiting this long.
    fn waited(&self, waited: Duration);
    /// A waiting request's caller went away before it was served.
    fn abandoned(&self);
    /// The first request queued while the model had no eligible pod (the one that asked for
    /// the wake) left the queue with a pod after waiting this long: the cold start it saw.
    fn cold_start(&self, _waited: Duration) {}
    /// The gauge of a pod that joined the gate.
    fn pod(&self, addr: SocketAddr) -> Self::Pod;
    /// The pod's IP is no longer in the gate (no pod with that IP is left).
    fn remove_pod(&self, addr: SocketAddr);
    /// The pod at `addr` refused a connection and takes no new request for `pause`.
    fn ejected(&self, addr: SocketAddr, pause: Duration);
}

/// A [`GateMetrics`] that keeps plain counts.
#[derive(Debug, Default)]
pub struct Counts {
    queued: AtomicI64,
    in_flight: AtomicI64,
    waited: AtomicU64,
    abandoned: AtomicU64,
    ejected: AtomicU64,
    cold_starts: AtomicU64,
}

impl Counts {
    /// Requests waiting now.
    pub fn queued(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests that were served after waiting.
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    /// Waiting requests given up by their callers.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Pods taken out of rotation after a refused connection.
    pub fn ejected(&self) -> u64 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Cold starts seen (requests that asked for a wake and were then served).
    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }
}

/// A pod gauge that counts nothing (pods of [`Counts`]).
#[derive(Debug, Default)]
pub struct NoGauge;

impl PodGauge for NoGauge {
    fn inc(&self) {}
    fn dec(&self) {}
}

impl GateMetrics for Counts {
    type Pod = NoGauge;
    fn queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Ordering::Relaxed);
    }
    fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }
    fn waited(&self, _waited: Duration) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }
    fn cold_start(&self, _waited: Duration) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
    }
    fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }
    fn pod(&self, _addr: SocketAddr) -> NoGauge {
        NoGauge
    }
    fn remove_pod(&self, _addr: SocketAddr) {}
    fn ejected(&self, _addr: SocketAddr, _pause: Duration) {
        self.ejected.fetch_add(1, Ordering::Relaxed);
    }
}
