//! The activator's metrics (names and labels are a contract: see `docs/architecture.md`).
//!
//! One [`Metrics`] is built from the registry handed down by `main`; each model resolves its
//! handles once ([`ModelMetrics`]) so the per-request path does no label lookups except for the
//! status-code counter.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use zeroscale_gate::{GateMetrics, PodGauge};

use crate::stat_feed::StatFeed;
pub use crate::stat_feed::{ConcurrencyIntegral, Held};

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

/// What became of a held stream ([`Metrics::held_stream`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `relayed`, `pod_error`, `client_gone` or an error type such as `queue_deadline`.
    pub outcome: &'static str,
}

/// Reason label of requests rejected before a model was known.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short machine-readable reason, e.g. `unknown_model`.
    pub reason: &'static str,
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

/// How long a model's series stay on `/metrics` after its last request, unless set otherwise
/// (`--idle-series-retention`).
pub const DEFAULT_IDLE_SERIES_RETENTION: Duration = Duration::from_secs(300);

/// A family of per-model series that are on `/metrics` only while their model holds requests
/// and for the idle-series retention after its last one: at 10,000 idle models the page holds
/// the process-wide series alone, not 30 lines a model. The handles keep counting while hidden
/// (a counter comes back with its cumulative value, which `rate()` reads as it should).
#[derive(Debug)]
pub struct Sparse<S, M> {
    series: Arc<RwLock<HashMap<S, (M, ConcurrencyIntegral)>>>,
    retention: Arc<AtomicU64>,
}

impl<S, M> Clone for Sparse<S, M> {
    fn clone(&self) -> Self {
        Self {
            series: self.series.clone(),
            retention: self.retention.clone(),
        }
    }
}

impl<S: Clone + Hash + Eq, M: Clone> Sparse<S, M> {
    fn new(retention: Arc<AtomicU64>) -> Self {
        Self {
            series: Arc::default(),
            retention,
        }
    }

    /// The series of `labels`, made with `make` if new, shown while `activity` is recent.
    fn get_or_insert_with(
        &self,
        labels: &S,
        activity: &ConcurrencyIntegral,
        make: impl FnOnce() -> M,
    ) -> M {
        if let Some((m, _)) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels)
        {
            return m.clone();
        }
        let mut w = self.series.write().unwrap_or_else(|e| e.into_inner());
        w.entry(labels.clone())
            .or_insert_with(|| (make(), activity.clone()))
            .0
            .clone()
    }

    fn remove(&self, labels: &S) {
        self.series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels);
    }

    fn retention(&self) -> Duration {
        Duration::from_nanos(self.retention.load(Ordering::Relaxed))
    }
}

impl<S, M: TypedMetric> TypedMetric for Sparse<S, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<S, M> EncodeMetric for Sparse<S, M>
where
    S: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync,
    M: EncodeMetric + TypedMetric + Clone + std::fmt::Debug + Send + Sync,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        encode_recent(
            encoder,
            self.retention(),
            series.iter().map(|(l, (m, a))| (l, m, a)),
        )
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    /// No series to show: the family's `HELP` and `TYPE` lines are left out too.
    fn is_empty(&self) -> bool {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        none_recent(self.retention(), series.values().map(|(_, a)| a))
    }
}

/// Encodes each `(labels, metric, activity)` whose activity is within `keep` of now: the one
/// rule of what a sparse family shows.
fn encode_recent<'a, L, M>(
    mut encoder: MetricEncoder,
    keep: Duration,
    rows: impl Iterator<Item = (&'a L, &'a M, &'a ConcurrencyIntegral)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet + 'a,
    M: EncodeMetric + 'a,
{
    let now = Instant::now();
    for (labels, m, activity) in rows {
        if activity.active_at(now, keep) {
            m.encode(encoder.encode_family(labels)?)?;
        }
    }
    Ok(())
}

/// Whether no activity is within `keep` of now ([`encode_recent`] would show nothing).
fn none_recent<'a>(
    keep: Duration,
    mut activity: impl Iterator<Item = &'a ConcurrencyIntegral>,
) -> bool {
    let now = Instant::now();
    !activity.any(|a| a.active_at(now, keep))
}

/// The series every model has from its start, under one copy of its labels: seven families
/// kept as seven [`Sparse`] maps cost seven label copies and map entries a model, a tenth of
/// the activator's memory at 10,000 idle models. Each family is a [`Field`] of this map.
#[derive(Clone, Debug)]
struct ModelSeries {
    integral: ConcurrencyIntegral,
    in_flight: Gauge,
    queued: Gauge,
    queue_wait: Histogram,
    wake_signals: Counter,
    wake_failures: Counter,
    abandoned: Counter,
}

type SeriesMap = Arc<RwLock<HashMap<ModelLabels, ModelSeries>>>;

/// One family of [`ModelSeries`], shown as a [`Sparse`] family is: while its model's
/// concurrency integral is recent.
#[derive(Debug)]
struct Field<M: 'static> {
    series: SeriesMap,
    retention: Arc<AtomicU64>,
    pick: fn(&ModelSeries) -> &M,
}

impl<M> Field<M> {
    fn new(series: &SeriesMap, retention: &Arc<AtomicU64>, pick: fn(&ModelSeries) -> &M) -> Self {
        Self {
            series: series.clone(),
            retention: retention.clone(),
            pick,
        }
    }

    fn retention(&self) -> Duration {
        Duration::from_nanos(self.retention.load(Ordering::Relaxed))
    }
}

impl<M: TypedMetric> TypedMetric for Field<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M> EncodeMetric for Field<M>
where
    M: EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        encode_recent(
            encoder,
            self.retention(),
            series.iter().map(|(l, s)| (l, (self.pick)(s), &s.integral)),
        )
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    /// No series to show: the family's `HELP` and `TYPE` lines are left out too.
    fn is_empty(&self) -> bool {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        none_recent(self.retention(), series.values().map(|s| &s.integral))
    }
}

/// A queue-wait histogram, with the same buckets everywhere.
fn wait_histogram() -> Histogram {
    // 1ms .. ~5.5min: covers an instant pass-through up to a slow model load.
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// All activator metrics, registered into the registry handed down from `main`.
#[derive(Debug)]
pub struct Metrics {
    /// Every model's integral, gauges, queue-wait histogram and wake/abandon counters.
    series: SeriesMap,
    feed: Arc<StatFeed>,
    retention: Arc<AtomicU64>,
    requests: Sparse<CodeLabels, Counter>,
    cold_start: Sparse<ModelLabels, Histogram>,
    pod_in_flight: Sparse<PodLabels, Gauge>,
    rejected: Family<ReasonLabels, Counter>,
    held_streams: Family<OutcomeLabels, Counter>,
    relayed: Counter,
    client_gone: Sparse<ModelLabels, Counter>,
    timeouts: Sparse<KindLabels, Counter>,
    retries: Sparse<KindLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them (names without the `zeroscale_activator_` prefix
    /// are never used: the prefix is part of the contract, so it is spelled out here).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let retention = Arc::new(AtomicU64::new(
            DEFAULT_IDLE_SERIES_RETENTION.as_nanos() as u64
        ));
        let m = Self {
            series: SeriesMap::default(),
            feed: Arc::new(StatFeed::default()),
            requests: Sparse::new(retention.clone()),
            cold_start: Sparse::new(retention.clone()),
            pod_in_flight: Sparse::new(retention.clone()),
            rejected: Family::default(),
            held_streams: Family::default(),
            relayed: Counter::default(),
            client_gone: Sparse::new(retention.clone()),
            timeouts: Sparse::new(retention.clone()),
            retries: Sparse::new(retention.clone()),
            retention,
        };
        let (series, retention) = (&m.series, &m.retention);
        registry.register(
            "zeroscale_activator_request_concurrency_seconds",
            "Integral over time of requests held (queued + in flight), in request-seconds",
            Field::new(series, retention, |s| &s.integral),
        );
        registry.register(
            "zeroscale_activator_requests",
            "Requests answered, by HTTP status code",
            m.requests.clone(),
        );
        registry.register(
            "zeroscale_activator_requests_in_flight",
            "Requests forwarded and not yet answered",
            Field::new(series, retention, |s| &s.in_flight),
        );
        registry.register(
            "zeroscale_activator_requests_queued",
            "Requests waiting for capacity",
            Field::new(series, retention, |s| &s.queued),
        );
        registry.register(
            "zeroscale_activator_queue_wait_seconds",
            "Time spent in the queue",
            Field::new(series, retention, |s| &s.queue_wait),
        );
        registry.register(
            "zeroscale_activator_cold_start_seconds",
            "From the first request queued while the model had no ready pod (the one that asked for the wake) to its forward to a pod",
            m.cold_start.clone(),
        );
        registry.register(
            "zeroscale_activator_wake_signals",
            "Wake signals sent to the autoscaler",
            Field::new(series, retention, |s| &s.wake_signals),
        );
        registry.register(
            "zeroscale_activator_wake_failures",
            "Wake signals that failed (no answer or a non-2xx answer)",
            Field::new(series, retention, |s| &s.wake_failures),
        );
        registry.register(
            "zeroscale_activator_queue_abandoned",
            "Queued requests whose client went away before capacity was found",
            Field::new(series, retention, |s| &s.abandoned),
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
            "zeroscale_activator_held_streams",
            "Streamed requests answered 200 while their model woke and held open with heartbeats, by what followed: outcome=relayed (the pod's stream), pod_error (the pod answered non-2xx), client_gone, or the type of the final error event (queue_deadline, backend_failed, response_timeout, unavailable, ...)",
            m.held_streams.clone(),
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
        let fresh = self.feed.new_cell(Instant::now());
        let s = self.model_series(&labels, fresh);
        self.feed.register(
            zeroscale_config::DeploymentKey::new(&labels.namespace, &labels.deployment),
            s.integral.clone(),
        );
        ModelMetrics {
            in_flight: s.in_flight,
            queued: s.queued,
            queue_wait: s.queue_wait,
            wake_signals: s.wake_signals,
            wake_failures: s.wake_failures,
            abandoned: s.abandoned,
            cold_start: Arc::default(),
            integral: s.integral,
            codes: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            failures: Arc::default(),
            root: self.clone(),
            labels,
        }
    }

    /// The series of `labels`, made new around `fresh` if there are none: a model made again
    /// under the same labels keeps counting where it was.
    fn model_series(&self, labels: &ModelLabels, fresh: ConcurrencyIntegral) -> ModelSeries {
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels)
        {
            return s.clone();
        }
        let mut w = self.series.write().unwrap_or_else(|e| e.into_inner());
        w.entry(labels.clone())
            .or_insert_with(|| ModelSeries {
                integral: fresh,
                in_flight: Gauge::default(),
                queued: Gauge::default(),
                queue_wait: wait_histogram(),
                wake_signals: Counter::default(),
                wake_failures: Counter::default(),
                abandoned: Counter::default(),
            })
            .clone()
    }

    /// Per-model series stay on `/metrics` this long after their model's last request.
    pub fn set_idle_series_retention(&self, retention: Duration) {
        self.retention
            .store(retention.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The stat feed the autoscaler reads (`/v1/feed`).
    pub fn feed(&self) -> &Arc<StatFeed> {
        &self.feed
    }

    /// Counts a request rejected before it reached a model.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a held stream's outcome (module `hold`). Not per model: a held stream is rare
    /// and its model's own series (requests, queue_abandoned, client_gone) say which.
    pub fn held_stream(&self, outcome: &'static str) {
        self.held_streams
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Held streams with `outcome` so far (for tests).
    pub fn held_streams_count(&self, outcome: &'static str) -> u64 {
        self.held_streams
            .get_or_create(&OutcomeLabels { outcome })
            .get()
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
    /// Cold starts, resolved at the first: a model that never waited for a wake has no series.
    cold_start: Arc<OnceLock<Histogram>>,
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
        self.integral.queued(delta);
    }

    fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
        self.integral.in_flight(delta);
    }

    fn started(&self, at: tokio::time::Instant) {
        self.in_flight.inc();
        self.integral.in_flight_at(1, at);
    }

    fn finished(&self, served: Duration, at: tokio::time::Instant) {
        self.in_flight.dec();
        self.integral.finished_at(served, at);
    }

    fn waited(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn abandoned(&self) {
        self.abandoned.inc();
    }

    fn cold_start(&self, waited: Duration) {
        // The feed keeps the latest one for `kubectl zeroscale status` past the series' life.
        self.integral
            .cold_start_at(waited, tokio::time::Instant::now());
        self.cold_start
            .get_or_init(|| {
                self.root.cold_start.get_or_insert_with(
                    &self.labels,
                    &self.integral,
                    wait_histogram,
                )
            })
            .observe(waited.as_secs_f64());
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
        self.integral.answered();
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
                return f.client_gone.get_or_init(|| {
                    self.root.client_gone.get_or_insert_with(
                        &self.labels,
                        &self.integral,
                        Counter::default,
                    )
                });
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
            family.get_or_insert_with(&labels, &self.integral, Counter::default)
        })
    }

    /// Requests answered with `code` so far.
    pub fn answered_count(&self, code: u16) -> u64 {
        self.family_counter(code).get()
    }

    fn family_counter(&self, code: u16) -> Counter {
        self.root.requests.get_or_insert_with(
            &self.code_labels(code),
            &self.integral,
            Counter::default,
        )
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
        self.root.pod_in_flight.get_or_insert_with(
            &self.pod_labels(pod_ip),
            &self.integral,
            Gauge::default,
        )
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
        r.feed.unregister(
            &zeroscale_config::DeploymentKey::new(&self.labels.namespace, &self.labels.deployment),
            &self.integral,
            Instant::now(),
        );
        r.series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.labels);
        r.cold_start.remove(&self.labels);
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
    fn answered_codes_reach_the_exported_series_cached_or_not() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let mm = m.model(ModelLabels {
            namespace: "ns".into(),
            deployment: "d".into(),
            model: "m".into(),
        });
        // A model is on /metrics while it holds requests (and a while after).
        let _held = mm.integral.hold();
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
        // A model is on /metrics while it holds requests (and a while after).
        let _held = mm.integral.hold();
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
        // A model is on /metrics while it holds requests (and a while after).
        let _held = mm.integral.hold();
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

    fn model_labels(i: usize) -> ModelLabels {
        ModelLabels {
            namespace: format!("team-{}", i % 100),
            deployment: format!("model-{i:05}"),
            model: format!("model-{i:05}"),
        }
    }

    fn render(reg: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
        out
    }

    /// Target: `/metrics` at 10,000 idle models is the process-wide series alone, under 4 KiB
    /// (it was about 29 MB: 30 lines a model, 20 of them histogram buckets). With 100 of them
    /// active, the page holds those 100 models' series and no others.
    #[test]
    fn metrics_at_10000_idle_models_stay_small_and_grow_with_the_active_ones() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let models: Vec<ModelMetrics> = (0..10_000).map(|i| m.model(model_labels(i))).collect();
        for mm in &models {
            // What a model at rest has had: wake signals, answers, a pod gone again.
            mm.wake_signals.inc();
            mm.answered(200);
            GateMetrics::waited(mm, Duration::from_millis(3));
        }
        let idle = render(&reg);
        println!("/metrics at 10,000 idle models: {} bytes", idle.len());
        assert!(
            idle.len() < 4096,
            "{} bytes:\n{}",
            idle.len(),
            &idle[..idle.len().min(2000)]
        );
        assert!(!idle.contains("deployment=\""), "{idle}");
        let held: Vec<Held> = models[..100].iter().map(|mm| mm.integral.hold()).collect();
        let busy = render(&reg);
        println!(
            "/metrics at 10,000 models, 100 active: {} bytes",
            busy.len()
        );
        let shown: std::collections::HashSet<&str> = busy
            .lines()
            .filter_map(|l| l.split("deployment=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(shown.len(), 100);
        assert!(shown.contains("model-00000") && shown.contains("model-00099"));
        assert!(!shown.contains("model-00100"));
        // Hidden series kept counting: the answer counted while idle is there.
        assert!(
            busy.contains(r#"zeroscale_activator_requests_total{namespace="team-0",deployment="model-00000",model="model-00000",code="200"} 1"#),
            "{}",
            &busy[..busy.len().min(3000)]
        );
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_model_leaves_the_page_after_the_retention_and_comes_back_counting() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.set_idle_series_retention(Duration::from_secs(60));
        let mm = m.model(model_labels(1));
        let held = mm.integral.hold();
        mm.answered(200);
        drop(held);
        let line = r#"zeroscale_activator_requests_total{namespace="team-1",deployment="model-00001",model="model-00001",code="200"}"#;
        assert!(render(&reg).contains(&format!("{line} 1")));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(render(&reg).contains(line), "still within the retention");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!render(&reg).contains("model-00001"), "{}", render(&reg));
        let held = mm.integral.hold();
        mm.answered(200);
        assert!(
            render(&reg).contains(&format!("{line} 2")),
            "{}",
            render(&reg)
        );
        drop(held);
    }
}
