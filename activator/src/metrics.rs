//! The activator's metrics (names and labels are a contract: see `docs/architecture.md`).
//!
//! One [`Metrics`] is built from the registry handed down by `main`; each model resolves its
//! handles once ([`ModelMetrics`]) so the per-request path does no label lookups except for the
//! status-code counter.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use zeroscale_gate::{GateMetrics, PodGauge};

/// Labels of every per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name (the autoscaler's key).
    pub deployment: String,
    /// The routed model name.
    pub model: String,
}

/// Per-model labels plus the answered status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
    /// The routed model name.
    pub model: String,
    /// HTTP status code.
    pub code: u16,
}

/// Per-model labels plus the pod address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
    /// The routed model name.
    pub model: String,
    /// The pod's IP.
    pub pod_ip: String,
}

/// Per-model labels plus what happened (`kind`), for the request path's failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub deployment: String,
    /// The routed model name.
    pub model: String,
    /// What happened, e.g. `response` for a timeout or `stale_connection` for a retry.
    pub kind: &'static str,
}

/// Reason label of requests rejected before a model was known.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short machine-readable reason, e.g. `unknown_model`.
    pub reason: &'static str,
}

#[derive(Debug)]
struct IntegralState {
    count: u64,
    /// Accumulated request-nanoseconds: integer so the sum is exact.
    acc_nanos: u128,
    last: Instant,
}

/// The integral over time of the number of requests held (queued + forwarded and not yet
/// answered), in request-seconds. Time is passed in (`*_at`), so it is testable without a clock;
/// the scrape uses `tokio::time::Instant::now()`, which a paused test clock controls.
#[derive(Clone, Debug)]
pub struct ConcurrencyIntegral(Arc<Mutex<IntegralState>>);

impl Default for ConcurrencyIntegral {
    fn default() -> Self {
        Self::new_at(Instant::now())
    }
}

impl ConcurrencyIntegral {
    /// A zero integral starting at `now`.
    pub fn new_at(now: Instant) -> Self {
        Self(Arc::new(Mutex::new(IntegralState {
            count: 0,
            acc_nanos: 0,
            last: now,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntegralState> {
        // A poisoned lock only means a panic elsewhere; the counters stay meaningful.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(st: &mut IntegralState, now: Instant) {
        // `saturating_duration_since`: a caller's `now` older than the last change adds nothing.
        let dt = now.saturating_duration_since(st.last);
        st.acc_nanos += u128::from(st.count) * dt.as_nanos();
        if now > st.last {
            st.last = now;
        }
    }

    /// One more request held from `now` on.
    pub fn inc_at(&self, now: Instant) {
        let mut st = self.lock();
        Self::advance(&mut st, now);
        st.count += 1;
    }

    /// One request fewer held from `now` on.
    pub fn dec_at(&self, now: Instant) {
        let mut st = self.lock();
        Self::advance(&mut st, now);
        st.count = st.count.saturating_sub(1);
    }

    /// Requests held right now.
    pub fn current(&self) -> u64 {
        self.lock().count
    }

    /// The integral up to `now`, as an exact duration (request-nanoseconds).
    pub fn total_at(&self, now: Instant) -> Duration {
        let st = self.lock();
        let dt = now.saturating_duration_since(st.last);
        let nanos = st.acc_nanos + u128::from(st.count) * dt.as_nanos();
        let secs = (nanos / 1_000_000_000) as u64;
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// The integral up to `now` in request-seconds.
    pub fn seconds_at(&self, now: Instant) -> f64 {
        self.total_at(now).as_secs_f64()
    }

    /// A guard that holds one request until dropped.
    pub fn hold(&self) -> Held {
        self.inc_at(Instant::now());
        Held(self.clone())
    }
}

impl TypedMetric for ConcurrencyIntegral {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ConcurrencyIntegral {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let v = self.seconds_at(Instant::now());
        encoder.encode_counter::<NoLabelSet, f64, f64>(&v, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Holds one request in a [`ConcurrencyIntegral`] until dropped.
#[derive(Debug)]
pub struct Held(ConcurrencyIntegral);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec_at(Instant::now());
    }
}

/// Builds queue-wait histograms with the same buckets everywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitBuckets;

impl MetricConstructor<Histogram> for WaitBuckets {
    fn new_metric(&self) -> Histogram {
        // 1ms .. ~5.5min: covers an instant pass-through up to a slow model load.
        Histogram::new(exponential_buckets(0.001, 2.0, 19))
    }
}

/// All activator metrics, registered into the registry handed down from `main`.
#[derive(Debug)]
pub struct Metrics {
    integral: Family<ModelLabels, ConcurrencyIntegral>,
    requests: Family<CodeLabels, Counter>,
    in_flight: Family<ModelLabels, Gauge>,
    queued: Family<ModelLabels, Gauge>,
    queue_wait: Family<ModelLabels, Histogram, WaitBuckets>,
    wake_signals: Family<ModelLabels, Counter>,
    wake_failures: Family<ModelLabels, Counter>,
    abandoned: Family<ModelLabels, Counter>,
    pod_in_flight: Family<PodLabels, Gauge>,
    rejected: Family<ReasonLabels, Counter>,
    relayed: Counter,
    client_gone: Family<ModelLabels, Counter>,
    timeouts: Family<KindLabels, Counter>,
    retries: Family<KindLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them (names without the `zeroscale_activator_` prefix
    /// are never used: the prefix is part of the contract, so it is spelled out here).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self {
            integral: Family::default(),
            requests: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
            queue_wait: Family::new_with_constructor(WaitBuckets),
            wake_signals: Family::default(),
            wake_failures: Family::default(),
            abandoned: Family::default(),
            pod_in_flight: Family::default(),
            rejected: Family::default(),
            relayed: Counter::default(),
            client_gone: Family::default(),
            timeouts: Family::default(),
            retries: Family::default(),
        };
        registry.register(
            "zeroscale_activator_request_concurrency_seconds",
            "Integral over time of requests held (queued + in flight), in request-seconds",
            m.integral.clone(),
        );
        registry.register(
            "zeroscale_activator_requests",
            "Requests answered, by HTTP status code",
            m.requests.clone(),
        );
        registry.register(
            "zeroscale_activator_requests_in_flight",
            "Requests forwarded and not yet answered",
            m.in_flight.clone(),
        );
        registry.register(
            "zeroscale_activator_requests_queued",
            "Requests waiting for capacity",
            m.queued.clone(),
        );
        registry.register(
            "zeroscale_activator_queue_wait_seconds",
            "Time spent in the queue",
            m.queue_wait.clone(),
        );
        registry.register(
            "zeroscale_activator_wake_signals",
            "Wake signals sent to the autoscaler",
            m.wake_signals.clone(),
        );
        registry.register(
            "zeroscale_activator_wake_failures",
            "Wake signals that failed (no answer or a non-2xx answer)",
            m.wake_failures.clone(),
        );
        registry.register(
            "zeroscale_activator_queue_abandoned",
            "Queued requests whose client went away before capacity was found",
            m.abandoned.clone(),
        );
        registry.register(
            "zeroscale_activator_pod_requests_in_flight",
            "Requests in flight per pod",
            m.pod_in_flight.clone(),
        );
        registry.register(
            "zeroscale_activator_rejected_requests",
            "Requests rejected before a model was chosen, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "zeroscale_activator_relayed_requests",
            "Requests forwarded by the relay (the HTTP/1.1 fast lane) rather than through hyper",
            m.relayed.clone(),
        );
        registry.register(
            "zeroscale_activator_client_gone",
            "Forwarded requests whose client went away before the answer was complete (the pod connection is closed)",
            m.client_gone.clone(),
        );
        registry.register(
            "zeroscale_activator_timeouts",
            "Requests cut by a timeout: kind=response (no answer head within response-timeout: 504), kind=idle (a body paused longer than idle-timeout)",
            m.timeouts.clone(),
        );
        registry.register(
            "zeroscale_activator_retries",
            "Requests sent again before any byte of an answer came back: kind=connect (another pod; the connection failed), kind=stale_connection (a fresh connection; a reused one closed under it)",
            m.retries.clone(),
        );
        Arc::new(m)
    }

    /// Resolves the handles of one model.
    pub fn model(self: &Arc<Self>, labels: ModelLabels) -> ModelMetrics {
        ModelMetrics {
            integral: self.integral.get_or_create(&labels).clone(),
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            queued: self.queued.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            wake_signals: self.wake_signals.get_or_create(&labels).clone(),
            wake_failures: self.wake_failures.get_or_create(&labels).clone(),
            abandoned: self.abandoned.get_or_create(&labels).clone(),
            codes: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            failures: Arc::default(),
            root: self.clone(),
            labels,
        }
    }

    /// Counts a request rejected before it reached a model.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a request the relay forwards.
    pub fn relayed(&self) {
        self.relayed.inc();
    }

    /// Requests the relay forwarded so far.
    pub fn relayed_count(&self) -> u64 {
        self.relayed.get()
    }

    /// Number of rejected requests for `reason` (for tests).
    pub fn rejected_count(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabels { reason }).get()
    }
}

/// The pre-resolved metric handles of one model.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Labels of this model's series.
    pub labels: ModelLabels,
    /// Concurrency integral (queued + in flight).
    pub integral: ConcurrencyIntegral,
    /// Requests forwarded and not yet answered.
    pub in_flight: Gauge,
    /// Requests waiting for capacity.
    pub queued: Gauge,
    /// Time spent in the queue.
    pub queue_wait: Histogram,
    /// Wake signals sent.
    pub wake_signals: Counter,
    /// Wake signals that failed.
    pub wake_failures: Counter,
    /// Queued requests whose client went away.
    pub abandoned: Counter,
    /// Counters of [`CACHED_CODES`], resolved on first use (no zero series for unseen codes).
    codes: Arc<[OnceLock<Counter>; CACHED_CODES.len()]>,
    /// Failure counters, resolved on first use: a model that never fails has no such series.
    failures: Arc<Failures>,
    root: Arc<Metrics>,
}

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelMetrics")
            .field("labels", &self.labels)
            .finish()
    }
}

/// The in-flight gauge of one pod (`pod_requests_in_flight`).
#[derive(Debug)]
pub struct PodInFlight(Gauge);

impl PodGauge for PodInFlight {
    fn inc(&self) {
        self.0.inc();
    }
    fn dec(&self) {
        self.0.dec();
    }
}

/// The gate's counts land in this model's series.
impl GateMetrics for ModelMetrics {
    type Pod = PodInFlight;

    fn queued(&self, delta: i64) {
        self.queued.inc_by(delta);
    }

    fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    fn waited(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn abandoned(&self) {
        self.abandoned.inc();
    }

    fn pod(&self, addr: std::net::SocketAddr) -> PodInFlight {
        PodInFlight(ModelMetrics::pod(self, addr.ip().to_string()))
    }

    fn remove_pod(&self, addr: std::net::SocketAddr) {
        ModelMetrics::remove_pod(self, addr.ip().to_string());
    }

    fn ejected(&self, addr: std::net::SocketAddr, pause: Duration) {
        tracing::info!(model = %self.labels.model, namespace = %self.labels.namespace, pod = %addr, "pod refused a connection: no new requests for {pause:?}");
    }
}

#[derive(Debug, Default)]
struct Failures {
    client_gone: OnceLock<Counter>,
    response_timeout: OnceLock<Counter>,
    idle_timeout: OnceLock<Counter>,
    connect_retry: OnceLock<Counter>,
    stale_retry: OnceLock<Counter>,
}

/// A request-path event counted per model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client left before its answer was complete.
    ClientGone,
    /// No answer head within the response timeout.
    ResponseTimeout,
    /// A body paused longer than the idle timeout.
    IdleTimeout,
    /// Sent to another pod: the connection to the first failed before any byte was written.
    ConnectRetry,
    /// Sent again on a fresh connection: a reused one closed before any byte of an answer.
    StaleRetry,
}

/// Status codes whose request counters each model resolves once, so answering a request
/// neither builds a label set (three `String` clones) nor takes the read lock of the family that
/// every model shares. Other codes take that slower path.
const CACHED_CODES: [u16; 12] = [200, 201, 204, 400, 404, 408, 413, 429, 500, 502, 503, 504];

impl ModelMetrics {
    /// Counts one answered request.
    pub fn answered(&self, code: u16) {
        match CACHED_CODES.iter().position(|&c| c == code) {
            Some(i) => self.codes[i]
                .get_or_init(|| self.family_counter(code))
                .inc(),
            None => self.family_counter(code).inc(),
        };
    }

    /// Counts one request-path event.
    pub fn count(&self, event: Event) {
        self.counter(event).inc();
    }

    /// How often `event` happened (for tests).
    pub fn count_of(&self, event: Event) -> u64 {
        self.counter(event).get()
    }

    fn counter(&self, event: Event) -> &Counter {
        let f = &self.failures;
        let (slot, kind) = match event {
            Event::ClientGone => {
                return f
                    .client_gone
                    .get_or_init(|| self.root.client_gone.get_or_create(&self.labels).clone());
            }
            Event::ResponseTimeout => (&f.response_timeout, "response"),
            Event::IdleTimeout => (&f.idle_timeout, "idle"),
            Event::ConnectRetry => (&f.connect_retry, "connect"),
            Event::StaleRetry => (&f.stale_retry, "stale_connection"),
        };
        slot.get_or_init(|| {
            let labels = self.kind_labels(kind);
            let family = match event {
                Event::ResponseTimeout | Event::IdleTimeout => &self.root.timeouts,
                _ => &self.root.retries,
            };
            family.get_or_create(&labels).clone()
        })
    }

    /// Requests answered with `code` so far.
    pub fn answered_count(&self, code: u16) -> u64 {
        self.family_counter(code).get()
    }

    fn family_counter(&self, code: u16) -> Counter {
        self.root
            .requests
            .get_or_create(&self.code_labels(code))
            .clone()
    }

    fn code_labels(&self, code: u16) -> CodeLabels {
        CodeLabels {
            namespace: self.labels.namespace.clone(),
            deployment: self.labels.deployment.clone(),
            model: self.labels.model.clone(),
            code,
        }
    }

    /// The in-flight gauge of one pod.
    pub fn pod(&self, pod_ip: String) -> Gauge {
        self.root
            .pod_in_flight
            .get_or_create(&self.pod_labels(pod_ip))
            .clone()
    }

    /// Drops the series of a pod that is gone.
    pub fn remove_pod(&self, pod_ip: String) {
        self.root.pod_in_flight.remove(&self.pod_labels(pod_ip));
    }

    fn pod_labels(&self, pod_ip: String) -> PodLabels {
        PodLabels {
            namespace: self.labels.namespace.clone(),
            deployment: self.labels.deployment.clone(),
            model: self.labels.model.clone(),
            pod_ip,
        }
    }

    /// Drops this model's series (the model is no longer routed). Status-code counters stay:
    /// they are cumulative and harmless.
    pub fn remove(&self) {
        let r = &self.root;
        r.integral.remove(&self.labels);
        r.in_flight.remove(&self.labels);
        r.queued.remove(&self.labels);
        r.queue_wait.remove(&self.labels);
        r.wake_signals.remove(&self.labels);
        r.wake_failures.remove(&self.labels);
        r.abandoned.remove(&self.labels);
        r.client_gone.remove(&self.labels);
        for kind in ["response", "idle"] {
            r.timeouts.remove(&self.kind_labels(kind));
        }
        for kind in ["connect", "stale_connection"] {
            r.retries.remove(&self.kind_labels(kind));
        }
    }

    fn kind_labels(&self, kind: &'static str) -> KindLabels {
        KindLabels {
            namespace: self.labels.namespace.clone(),
            deployment: self.labels.deployment.clone(),
            model: self.labels.model.clone(),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_is_exact_with_injected_time() {
        let t0 = Instant::now();
        let c = ConcurrencyIntegral::new_at(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        c.inc_at(ms(0));
        c.inc_at(ms(1000)); // 1 req for 1s
        c.inc_at(ms(1500)); // 2 reqs for 0.5s
        c.dec_at(ms(2000)); // 3 reqs for 0.5s
        // at 3000: 2 reqs for 1s
        assert_eq!(
            c.total_at(ms(3000)),
            Duration::from_millis(1000 + 1000 + 1500 + 2000)
        );
        assert_eq!(c.current(), 2);
        c.dec_at(ms(3000));
        c.dec_at(ms(3000));
        // nothing held: the integral stays put.
        assert_eq!(c.total_at(ms(10_000)), Duration::from_millis(5500));
        assert!((c.seconds_at(ms(10_000)) - 5.5).abs() < 1e-12);
    }

    #[test]
    fn integral_never_goes_backwards() {
        let t0 = Instant::now();
        let c = ConcurrencyIntegral::new_at(t0 + Duration::from_secs(5));
        c.inc_at(t0); // older than `last`: adds nothing, does not move `last` back.
        assert_eq!(
            c.total_at(t0 + Duration::from_secs(6)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn answered_codes_reach_the_exported_series_cached_or_not() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let mm = m.model(ModelLabels {
            namespace: "ns".into(),
            deployment: "d".into(),
            model: "m".into(),
        });
        let clone = mm.clone();
        for _ in 0..3 {
            mm.answered(200);
        }
        clone.answered(200);
        clone.answered(418); // not in CACHED_CODES
        mm.answered(418);
        assert_eq!((mm.answered_count(200), clone.answered_count(418)), (4, 2));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let line = |code: &str| {
            out.lines()
                .find(|l| l.starts_with("zeroscale_activator_requests_total{") && l.contains(code))
                .unwrap_or_else(|| panic!("no series for {code}:\n{out}"))
                .to_owned()
        };
        assert!(
            line("code=\"200\"").ends_with(" 4"),
            "{}",
            line("code=\"200\"")
        );
        assert!(
            line("code=\"418\"").ends_with(" 2"),
            "{}",
            line("code=\"418\"")
        );
        assert!(
            !out.contains("code=\"503\""),
            "an unseen code must not be exported:\n{out}"
        );
    }

    #[test]
    fn the_gate_counts_land_in_the_model_series() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let mm = m.model(ModelLabels {
            namespace: "ns".into(),
            deployment: "d".into(),
            model: "m".into(),
        });
        let addr: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
        GateMetrics::queued(&mm, 3);
        GateMetrics::queued(&mm, -1);
        GateMetrics::in_flight(&mm, 2);
        GateMetrics::abandoned(&mm);
        GateMetrics::waited(&mm, Duration::from_millis(5));
        let pod = GateMetrics::pod(&mm, addr);
        pod.inc();
        pod.inc();
        pod.dec();
        assert_eq!(
            (mm.queued.get(), mm.in_flight.get(), mm.abandoned.get()),
            (2, 2, 1)
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"zeroscale_activator_pod_requests_in_flight{namespace="ns",deployment="d",model="m",pod_ip="10.0.0.7"} 1"#),
            "{out}"
        );
        assert!(out.contains("zeroscale_activator_queue_wait_seconds_count{namespace=\"ns\",deployment=\"d\",model=\"m\"} 1"), "{out}");
        GateMetrics::remove_pod(&mm, addr);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(!out.contains("pod_ip="), "{out}");
    }

    #[test]
    fn contract_names_are_exported() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let mm = m.model(ModelLabels {
            namespace: "ns".into(),
            deployment: "d".into(),
            model: "m".into(),
        });
        mm.answered(200);
        mm.wake_signals.inc();
        mm.pod("10.0.0.1".into()).set(1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for name in [
            "zeroscale_activator_request_concurrency_seconds_total{",
            "zeroscale_activator_requests_total{",
            "zeroscale_activator_requests_in_flight{",
            "zeroscale_activator_requests_queued{",
            "zeroscale_activator_queue_wait_seconds_bucket{",
            "zeroscale_activator_wake_signals_total{",
            "zeroscale_activator_pod_requests_in_flight{",
        ] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
        assert!(
            out.contains(r#"namespace="ns",deployment="d",model="m",code="200""#),
            "{out}"
        );
        assert!(out.contains(r#"pod_ip="10.0.0.1""#), "{out}");
    }
}
