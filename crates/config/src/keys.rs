//! The documented keys: every ConfigMap key and every annotation with its default, allowed range
//! and meaning. `docs/configuration.md` holds exactly these tables (a test checks it).

use crate::ANNOTATION_PREFIX;

/// Documentation of one ConfigMap key or annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    /// The ConfigMap key, or the full annotation name.
    pub key: &'static str,
    /// The default, as it would be written.
    pub default: &'static str,
    /// What is allowed; error messages for the key quote this text.
    pub range: &'static str,
    /// One line on what it does.
    pub doc: &'static str,
}

const fn k(
    key: &'static str,
    default: &'static str,
    range: &'static str,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        key,
        default,
        range,
        doc,
    }
}

pub(crate) const BOOL: &str = "true or false";
pub(crate) const PERCENT: &str = "1..=100";
pub(crate) const TARGET: &str = "0.01..=1000000";
pub(crate) const PANIC_THRESHOLD: &str = "110..=1000";
pub(crate) const RATE: &str = "greater than 1, at most 1000000";
pub(crate) const SCALE: &str = "0..=10000";
pub(crate) const ACTIVATION_SCALE: &str = "1..=10000";
pub(crate) const STABLE_WINDOW: &str = "6s..=1h";
pub(crate) const GRACE: &str = "1s..=1h";
pub(crate) const HOUR_OR_LESS: &str = "0s..=1h";
pub(crate) const QUEUE_DEADLINE: &str = "1s..=1h";
pub(crate) const ACTIVATOR_TIMEOUT: &str = "1s..=24h";
pub(crate) const METRIC: &str = "concurrency or rps";
pub(crate) const AGGREGATION: &str = "linear or weighted-exponential";
pub(crate) const SIZING: &str = "demand or knative";
pub(crate) const ZERO_POLICY: &str = "fixed or adaptive";
pub(crate) const METRIC_SOURCE: &str = "activator or pod";
pub(crate) const LOAD_BALANCING: &str = "least-request or prefix-hash";
pub(crate) const PREFIX_LENGTH: &str = "1..=65536";
pub(crate) const HOLD_STREAMS: &str = "off or a duration in 0s..=1h";
pub(crate) const HEARTBEAT_INTERVAL: &str = "1s..=5m";
pub(crate) const HOSTNAMES: &str =
    "comma-separated DNS-1123 subdomains (lowercase host names without port)";
pub(crate) const SERVICE: &str = "a DNS-1035 label: 1-63 characters of a-z, 0-9 and '-', starting with a letter and ending with a letter or digit";
pub(crate) const PORT: &str =
    "a port name (1-15 characters of a-z, 0-9, '-', with a letter) or a number in 1..=65535";
pub(crate) const PORT_NUMBER: &str = "1..=65535";
pub(crate) const CONTAINER_CONCURRENCY: &str = "0..=1000";
pub(crate) const METRIC_NAME: &str = "a Prometheus metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*";
pub(crate) const HTTP_PATH: &str =
    "an HTTP path starting with '/', visible ASCII, without '?' or '#'";

/// Every key of the `zeroscale-config` ConfigMap.
pub const CONFIGMAP_KEYS: &[KeyDoc] = &[
    k(
        "metric",
        "concurrency",
        METRIC,
        "Metric the target refers to: requests in flight per pod, or requests per second per pod.",
    ),
    k(
        "container-concurrency-target-default",
        "100",
        TARGET,
        "Target requests in flight per pod when the metric is concurrency.",
    ),
    k(
        "container-concurrency-target-percentage",
        "70",
        PERCENT,
        "Percentage of the target to aim for, leaving headroom for bursts (applies to both metrics).",
    ),
    k(
        "requests-per-second-target-default",
        "200",
        TARGET,
        "Target requests per second per pod when the metric is rps.",
    ),
    k(
        "stable-window",
        "60s",
        STABLE_WINDOW,
        "Window over which the stable average is taken.",
    ),
    k(
        "panic-window-percentage",
        "10",
        PERCENT,
        "Panic window as a percentage of the stable window; the panic window is at least 1s.",
    ),
    k(
        "panic-threshold-percentage",
        "200",
        PANIC_THRESHOLD,
        "Panic mode starts when the panic-window demand reaches this percentage of ready capacity.",
    ),
    k(
        "max-scale-up-rate",
        "1000",
        RATE,
        "Max ratio of desired to ready pods in one decision on the way up.",
    ),
    k(
        "max-scale-down-rate",
        "2",
        RATE,
        "Max ratio of ready to desired pods in one decision on the way down.",
    ),
    k(
        "enable-scale-to-zero",
        "true",
        BOOL,
        "Whether idle Deployments may be scaled to zero replicas.",
    ),
    k(
        "scale-to-zero-grace-period",
        "30s",
        GRACE,
        "How long a model must be seen idle by every activator before it may go to zero.",
    ),
    k(
        "scale-to-zero-pod-retention-period",
        "0s",
        HOUR_OR_LESS,
        "Minimum time the last pod is kept after traffic stopped.",
    ),
    k(
        "initial-scale",
        "1",
        SCALE,
        "Replicas right after a Deployment opts in with spec.replicas above 0 (one that opts in at 0 stays at 0 until its first request); 0 needs allow-zero-initial-scale.",
    ),
    k(
        "allow-zero-initial-scale",
        "false",
        BOOL,
        "Whether initial-scale may be 0.",
    ),
    k(
        "min-scale",
        "0",
        SCALE,
        "Lower bound on replicas of every opted-in Deployment.",
    ),
    k(
        "max-scale",
        "0",
        SCALE,
        "Upper bound on replicas; 0 means unbounded.",
    ),
    k(
        "scale-down-delay",
        "0s",
        HOUR_OR_LESS,
        "A scale-down happens only after the lower count was wanted for this long (0s = off).",
    ),
    k(
        "activation-scale",
        "1",
        ACTIVATION_SCALE,
        "Replicas started when a model wakes from zero.",
    ),
    k(
        "aggregation",
        "linear",
        AGGREGATION,
        "How samples in a window are averaged: equally, or recent seconds weighing more.",
    ),
    k(
        "sizing",
        "demand",
        SIZING,
        "How the concurrency to carry is estimated (metric concurrency): demand sizes for arrival rate x measured service time plus what drains the queue within the panic window, so requests queued during a cold start are not read as sustained load; knative sizes for the average of requests held (queued + in flight), as Knative's KPA.",
    ),
    k(
        "scale-to-zero-policy",
        "fixed",
        ZERO_POLICY,
        "How long an idle model keeps its last pod: fixed, the grace period; adaptive, learned from the model's own idle gaps (keep-alive from their tail, or zero right after use and a pre-warm before the next expected request), the grace period until 10 gaps are seen.",
    ),
    k(
        "adaptive-keep-alive-percentile",
        "99",
        "50..=100",
        "Adaptive policy: the last pod is kept for this percentile of the model's idle gaps.",
    ),
    k(
        "adaptive-prewarm-percentile",
        "5",
        "0..=50",
        "Adaptive policy: when no gap is shorter than this percentile (minus the margin), the model goes to zero right after use and is pre-warmed; 0 disables pre-warming.",
    ),
    k(
        "adaptive-histogram-range",
        "4h",
        "4m..=24h",
        "Adaptive policy: longest idle gap binned (240 bins, so 4h gives 1-minute bins); gaps beyond it send the model back to the grace period when they reach the keep-alive percentile.",
    ),
    k(
        "adaptive-prewarm-margin",
        "1m",
        HOUR_OR_LESS,
        "Adaptive policy: a pre-warmed pod is asked for this long before the next request is expected; the pod start (scheduling, image, model load) must fit in it.",
    ),
    k(
        "adaptive-cold-start-cost",
        "off",
        "off or a duration in 1s..=24h",
        "Adaptive policy: what one cold start is worth, in time of one replica; with it, each model's keep-alive is the one that costs least over its own idle gaps (idle replica time kept + this price per cold start) instead of adaptive-keep-alive-percentile; off uses the percentile.",
    ),
    k(
        "learned-state-flush-interval",
        "5m",
        "10s..=1h",
        "Adaptive policy: the leader writes each of the 32 ConfigMaps holding the learned idle gaps (zeroscale-learned-00..31) at most this often, and only when it changed: at most 32 writes per interval whatever the number of models.",
    ),
    k(
        "tick-interval",
        "2s",
        "100ms..=1m",
        "How often the autoscaler makes scaling decisions.",
    ),
    k(
        "scrape-interval",
        "1s",
        "100ms..=1m",
        "How often the autoscaler scrapes activators and pods.",
    ),
    k(
        "scrape-timeout",
        "800ms",
        "10ms..=1m",
        "Timeout of one scrape; at most scrape-interval.",
    ),
    k(
        "activator-queue-depth",
        "10000",
        "1..=1000000",
        "Max requests an activator holds per model while it has no ready pod.",
    ),
    k(
        "activator-queue-bytes",
        "64Mi",
        "1Ki..=64Gi",
        "Max request-body bytes an activator holds per model (plain bytes or Ki/Mi/Gi/Ti suffix).",
    ),
    k(
        "activator-queue-deadline",
        "5m",
        QUEUE_DEADLINE,
        "How long a held request may wait for a ready pod before it is answered 504.",
    ),
    k(
        "activator-response-timeout",
        "10m",
        ACTIVATOR_TIMEOUT,
        "Longest a pod may take, after the request was sent to it, to send the head of its answer; past it the client gets 504.",
    ),
    k(
        "activator-idle-timeout",
        "5m",
        ACTIVATOR_TIMEOUT,
        "Longest a request body (to the pod) or an answer body (a stream back) may pause without a byte before the transfer is cut.",
    ),
    k(
        "activator-max-routing-body-bytes",
        "1Mi",
        "1Ki..=1Gi",
        "Max body bytes buffered to read an OpenAI-style model field; larger bodies get 413.",
    ),
    k(
        "activator-load-balancing",
        "least-request",
        LOAD_BALANCING,
        "How the activator spreads a model's requests over its pods: the fewest in flight, or (OpenAI bodies) requests sharing a prompt prefix to one pod while it stays within activator-prefix-load-factor times the mean load (consistent hashing with bounded loads); requests without a prompt go least-request.",
    ),
    k(
        "activator-prefix-length",
        "256",
        PREFIX_LENGTH,
        "Prefix-hash balancing: how many characters of the prompt (messages' contents in order, or prompt) make the key.",
    ),
    k(
        "activator-prefix-load-factor",
        "1.25",
        "1..=10",
        "Prefix-hash balancing: the bound c; a pod takes a request by its prefix only if it then holds at most ceil(c x the mean requests in flight per ready pod), else the next pod in the prefix's order does.",
    ),
    k(
        "activator-cold-start-header",
        "true",
        BOOL,
        "Answers to requests that waited for their model to wake carry zeroscale-cold-start: the wait, e.g. 5.21s; false leaves answers as the pod sent them.",
    ),
    k(
        "activator-hold-streams",
        "off",
        HOLD_STREAMS,
        "A streamed request (\"stream\": true in an OpenAI body, or Accept: text/event-stream) still waiting for its model to wake after this long is answered 200 at once and kept open with SSE comment heartbeats until the pod answers; off answers it only when the pod does.",
    ),
    k(
        "activator-stream-heartbeat-interval",
        "10s",
        HEARTBEAT_INTERVAL,
        "How often a held stream (activator-hold-streams) gets an SSE comment heartbeat while its model wakes.",
    ),
    k(
        "activator-wake-resend-interval",
        "10s",
        "100ms..=10m",
        "An activator re-sends a wake signal if the model still has no ready pod after this long.",
    ),
    k(
        "pools",
        "none",
        crate::pool::POOLS,
        "Capacity pools: the autoscaler never asks a pool for more replicas (or more of the resource, counted by each pod template's requests) than this, and scales idle models of the pool to zero, least recently used first, to make room.",
    ),
    k(
        "pool-min-residency",
        "1m",
        HOUR_OR_LESS,
        "How long a model in a pool stays after it woke before it may be scaled to zero to make room for another (so two models cannot evict each other back and forth).",
    ),
];

/// Every `zeroscale.dev/*` annotation read on a Deployment.
pub const ANNOTATIONS: &[KeyDoc] = &[
    k(
        "zeroscale.dev/enabled",
        "false",
        BOOL,
        "Opt-in: the Deployment is managed only when this is true (any case, spaces around ignored); another value gets a Warning Event. Set false to scale it by hand.",
    ),
    k(
        "zeroscale.dev/min-scale",
        "ConfigMap min-scale",
        SCALE,
        "Lower bound on replicas.",
    ),
    k(
        "zeroscale.dev/max-scale",
        "ConfigMap max-scale",
        SCALE,
        "Upper bound on replicas; 0 means unbounded.",
    ),
    k(
        "zeroscale.dev/target",
        "ConfigMap target default of the metric",
        TARGET,
        "Target metric value per pod; with container-concurrency set it is at most that.",
    ),
    k(
        "zeroscale.dev/target-utilization-percentage",
        "ConfigMap container-concurrency-target-percentage",
        PERCENT,
        "Percentage of the target to aim for.",
    ),
    k(
        "zeroscale.dev/metric",
        "ConfigMap metric",
        METRIC,
        "Metric the target refers to.",
    ),
    k(
        "zeroscale.dev/window",
        "ConfigMap stable-window",
        STABLE_WINDOW,
        "Stable window.",
    ),
    k(
        "zeroscale.dev/panic-window-percentage",
        "ConfigMap panic-window-percentage",
        PERCENT,
        "Panic window as a percentage of the stable window.",
    ),
    k(
        "zeroscale.dev/panic-threshold-percentage",
        "ConfigMap panic-threshold-percentage",
        PANIC_THRESHOLD,
        "Panic threshold.",
    ),
    k(
        "zeroscale.dev/scale-to-zero-grace-period",
        "ConfigMap scale-to-zero-grace-period",
        GRACE,
        "Idle time before scaling to zero.",
    ),
    k(
        "zeroscale.dev/scale-to-zero-policy",
        "ConfigMap scale-to-zero-policy",
        ZERO_POLICY,
        "fixed (the grace period) or adaptive (learned from this model's idle gaps, with the ConfigMap's adaptive-* knobs).",
    ),
    k(
        "zeroscale.dev/initial-scale",
        "ConfigMap initial-scale",
        SCALE,
        "Replicas right after opting in with spec.replicas above 0 (at 0 it stays at 0 until its first request); 0 needs allow-zero-initial-scale in the ConfigMap.",
    ),
    k(
        "zeroscale.dev/activation-scale",
        "ConfigMap activation-scale",
        ACTIVATION_SCALE,
        "Replicas started when waking from zero.",
    ),
    k(
        "zeroscale.dev/scale-down-delay",
        "ConfigMap scale-down-delay",
        HOUR_OR_LESS,
        "Delay before a scale-down takes effect.",
    ),
    k(
        "zeroscale.dev/model-name",
        "a KServe predictor's InferenceService name, else the Deployment name",
        crate::parse::MODEL_NAME_RULE,
        "Model name the activator routes by (path, OpenAI body model field).",
    ),
    k(
        "zeroscale.dev/hostnames",
        "none",
        HOSTNAMES,
        "Extra Host header names routed to this model.",
    ),
    k(
        "zeroscale.dev/service",
        "the Service selecting the pods",
        SERVICE,
        "Service whose EndpointSlices list the model's pods.",
    ),
    k(
        "zeroscale.dev/port",
        "the Service's first port",
        PORT,
        "Service port (name or number) the activator forwards to.",
    ),
    k(
        "zeroscale.dev/container-concurrency",
        "0",
        CONTAINER_CONCURRENCY,
        "Max requests in flight per pod the activator sends; 0 means unlimited.",
    ),
    k(
        "zeroscale.dev/queue-deadline",
        "ConfigMap activator-queue-deadline",
        QUEUE_DEADLINE,
        "How long a request for this model may wait for a ready pod.",
    ),
    k(
        "zeroscale.dev/response-timeout",
        "ConfigMap activator-response-timeout",
        ACTIVATOR_TIMEOUT,
        "How long this model's pods may take to send the head of an answer before the client gets 504.",
    ),
    k(
        "zeroscale.dev/idle-timeout",
        "ConfigMap activator-idle-timeout",
        ACTIVATOR_TIMEOUT,
        "Longest pause without a byte in a request or answer body (stream) of this model before it is cut.",
    ),
    k(
        "zeroscale.dev/load-balancing",
        "ConfigMap activator-load-balancing",
        LOAD_BALANCING,
        "How the activator spreads this model's requests over its pods (see the ConfigMap key).",
    ),
    k(
        "zeroscale.dev/prefix-length",
        "ConfigMap activator-prefix-length",
        PREFIX_LENGTH,
        "Prefix-hash balancing: characters of the prompt that make the key.",
    ),
    k(
        "zeroscale.dev/hold-streams",
        "ConfigMap activator-hold-streams",
        HOLD_STREAMS,
        "Holding this model's streamed requests open with SSE heartbeats while it wakes (see the ConfigMap key).",
    ),
    k(
        "zeroscale.dev/metric-source",
        "activator",
        METRIC_SOURCE,
        "Where concurrency comes from; pod needs pod-metric-name and pod-metric-port.",
    ),
    k(
        "zeroscale.dev/pod-metric-name",
        "none",
        METRIC_NAME,
        "Gauge scraped from each pod when metric-source is pod.",
    ),
    k(
        "zeroscale.dev/pod-metric-port",
        "none",
        PORT_NUMBER,
        "Pod port to scrape when metric-source is pod.",
    ),
    k(
        "zeroscale.dev/pod-metric-path",
        "/metrics",
        HTTP_PATH,
        "HTTP path to scrape when metric-source is pod.",
    ),
    k(
        "zeroscale.dev/pool",
        "none",
        crate::pool::POOL_NAME,
        "Capacity pool the Deployment shares with others (see the ConfigMap's pools); a name not configured gets a Warning Event and no pool.",
    ),
];

/// Renders keys as the Markdown table `docs/configuration.md` holds.
pub fn markdown_table(keys: &[KeyDoc]) -> String {
    let mut out =
        String::from("| Key | Default | Allowed | Meaning |\n| --- | --- | --- | --- |\n");
    for key in keys {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            key.key,
            key.default,
            key.range.replace('|', "\\|"),
            key.doc
        ));
    }
    out
}

/// The problem text for an unknown key: the nearest known key when one is close, else all of them.
pub(crate) fn unknown_key(key: &str, known: &[KeyDoc]) -> String {
    let strip = |s: &str| -> String {
        s.strip_prefix(ANNOTATION_PREFIX)
            .unwrap_or(s)
            .to_ascii_lowercase()
    };
    let wanted = strip(key);
    let best = known
        .iter()
        .map(|k| {
            let known = strip(k.key);
            let mut score = strsim::normalized_damerau_levenshtein(&wanted, &known)
                .max(strsim::jaro_winkler(&wanted, &known) - 0.15);
            // `stable-window` for `window`, `model` for `model-name`: one contains the other.
            let (short, long) = if wanted.len() < known.len() {
                (&wanted, &known)
            } else {
                (&known, &wanted)
            };
            if short.len() >= 3 && long.contains(short.as_str()) {
                score = score.max(0.6 + 0.4 * short.len() as f64 / long.len() as f64);
            }
            (score, k.key)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, nearest)) if score >= 0.6 => {
            format!("unknown key; did you mean {nearest:?}?")
        }
        _ => {
            let names: Vec<&str> = known.iter().map(|k| k.key).collect();
            format!("unknown key; known keys: {}", names.join(", "))
        }
    }
}
