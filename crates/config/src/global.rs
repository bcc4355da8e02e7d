//! The global configuration: built-in defaults overlaid with the ConfigMap's data.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::keys::{self, CONFIGMAP_KEYS};
use crate::parse::{self, bytes_in, duration_in, int, number, number_above, one_of, parse_bool};
use crate::rules::{Scope, check_params};
use zeroscale_scaling::{Sizing, ZeroPolicy};

use crate::{
    ActivatorConfig, Aggregation, ConfigError, GlobalConfig, LoadBalancing, Metric, Params,
};

/// Largest replica count accepted for any scale setting.
pub const MAX_REPLICAS: u32 = 10_000;
pub(crate) const MIN_TARGET: f64 = 0.01;
pub(crate) const MAX_TARGET: f64 = 1_000_000.0;
pub(crate) const MAX_RATE: f64 = 1_000_000.0;
pub(crate) const METRICS: &[(&str, Metric)] =
    &[("concurrency", Metric::Concurrency), ("rps", Metric::Rps)];
const AGGREGATIONS: &[(&str, Aggregation)] = &[
    ("linear", Aggregation::Linear),
    ("weighted-exponential", Aggregation::WeightedExponential),
];
pub(crate) const LOAD_BALANCINGS: &[(&str, LoadBalancing)] = &[
    ("least-request", LoadBalancing::LeastRequest),
    ("prefix-hash", LoadBalancing::PrefixHash),
];
/// The longest prompt prefix (characters) prefix-hash balancing keys on.
pub(crate) const PREFIX_LENGTH_MAX: u32 = 65_536;
const SIZINGS: &[(&str, Sizing)] = &[("demand", Sizing::Demand), ("knative", Sizing::Knative)];
pub(crate) const ZERO_POLICIES: &[(&str, ZeroPolicy)] = &[
    ("fixed", ZeroPolicy::Fixed),
    ("adaptive", ZeroPolicy::Adaptive),
];
pub(crate) const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
pub(crate) const HOUR: Duration = secs(3600);
pub(crate) const STABLE_WINDOW_RANGE: (Duration, Duration) = (secs(6), HOUR);
pub(crate) const GRACE_RANGE: (Duration, Duration) = (secs(1), HOUR);
pub(crate) const QUEUE_DEADLINE_RANGE: (Duration, Duration) = (secs(1), HOUR);
/// Range of the response and idle timeouts: an LLM's prefill of a long prompt can take minutes,
/// so the bound is generous.
pub(crate) const ACTIVATOR_TIMEOUT_RANGE: (Duration, Duration) = (secs(1), secs(24 * 3600));

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            scaling: Params::default(),
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            allow_zero_initial_scale: false,
            tick_interval: secs(2),
            scrape_interval: secs(1),
            scrape_timeout: millis(800),
            activator: ActivatorConfig::default(),
            pools: BTreeMap::new(),
            pool_min_residency: secs(60),
            learned_state_flush_interval: secs(300),
        }
    }
}

impl Default for ActivatorConfig {
    fn default() -> Self {
        Self {
            queue_depth: 10_000,
            queue_bytes: 64 << 20,
            queue_deadline: secs(300),
            max_routing_body_bytes: 1 << 20,
            wake_resend_interval: secs(10),
            response_timeout: secs(600),
            idle_timeout: secs(300),
            load_balancing: LoadBalancing::LeastRequest,
            prefix_length: 256,
            prefix_load_factor: 1.25,
            cold_start_header: true,
            hold_streams: None,
            stream_heartbeat_interval: secs(10),
        }
    }
}

/// Stores the parsed value, or `fallback` and the problem when parsing failed.
fn set<T>(slot: &mut T, fallback: T, parsed: Result<T, String>) -> Result<(), String> {
    match parsed {
        Ok(v) => {
            *slot = v;
            Ok(())
        }
        Err(problem) => {
            *slot = fallback;
            Err(problem)
        }
    }
}

/// Applies one known ConfigMap key; on a bad value the key keeps `good`'s value.
fn apply(cfg: &mut GlobalConfig, good: &GlobalConfig, key: &str, v: &str) -> Result<(), String> {
    let (s, g) = (&mut cfg.scaling, &good.scaling);
    let (a, ga) = (&mut cfg.activator, &good.activator);
    let (lo, hi) = STABLE_WINDOW_RANGE;
    match key {
        "metric" => set(&mut s.metric, g.metric, one_of(v, METRICS)),
        "container-concurrency-target-default" => set(
            &mut cfg.container_concurrency_target_default,
            good.container_concurrency_target_default,
            number(v, MIN_TARGET, MAX_TARGET),
        ),
        "container-concurrency-target-percentage" => set(
            &mut s.target_utilization,
            g.target_utilization,
            number(v, 1.0, 100.0).map(|p| p / 100.0),
        ),
        "requests-per-second-target-default" => set(
            &mut cfg.requests_per_second_target_default,
            good.requests_per_second_target_default,
            number(v, MIN_TARGET, MAX_TARGET),
        ),
        "stable-window" => set(
            &mut s.stable_window,
            g.stable_window,
            duration_in(v, lo, hi),
        ),
        "panic-window-percentage" => set(
            &mut s.panic_window_percentage,
            g.panic_window_percentage,
            number(v, 1.0, 100.0),
        ),
        "panic-threshold-percentage" => set(
            &mut s.panic_threshold_percentage,
            g.panic_threshold_percentage,
            number(v, 110.0, 1000.0),
        ),
        "max-scale-up-rate" => set(
            &mut s.max_scale_up_rate,
            g.max_scale_up_rate,
            number_above(v, 1.0, MAX_RATE),
        ),
        "max-scale-down-rate" => set(
            &mut s.max_scale_down_rate,
            g.max_scale_down_rate,
            number_above(v, 1.0, MAX_RATE),
        ),
        "enable-scale-to-zero" => set(
            &mut s.enable_scale_to_zero,
            g.enable_scale_to_zero,
            parse_bool(v),
        ),
        "scale-to-zero-grace-period" => set(
            &mut s.scale_to_zero_grace_period,
            g.scale_to_zero_grace_period,
            duration_in(v, GRACE_RANGE.0, GRACE_RANGE.1),
        ),
        "scale-to-zero-pod-retention-period" => set(
            &mut s.scale_to_zero_pod_retention_period,
            g.scale_to_zero_pod_retention_period,
            duration_in(v, Duration::ZERO, HOUR),
        ),
        "initial-scale" => set(
            &mut s.initial_scale,
            g.initial_scale,
            int(v, 0, MAX_REPLICAS),
        ),
        "allow-zero-initial-scale" => set(
            &mut cfg.allow_zero_initial_scale,
            good.allow_zero_initial_scale,
            parse_bool(v),
        ),
        "min-scale" => set(&mut s.min_scale, g.min_scale, int(v, 0, MAX_REPLICAS)),
        "max-scale" => set(&mut s.max_scale, g.max_scale, int(v, 0, MAX_REPLICAS)),
        "scale-down-delay" => set(
            &mut s.scale_down_delay,
            g.scale_down_delay,
            duration_in(v, Duration::ZERO, HOUR),
        ),
        "activation-scale" => set(
            &mut s.activation_scale,
            g.activation_scale,
            int(v, 1, MAX_REPLICAS),
        ),
        "aggregation" => set(&mut s.aggregation, g.aggregation, one_of(v, AGGREGATIONS)),
        "sizing" => set(&mut s.sizing, g.sizing, one_of(v, SIZINGS)),
        "scale-to-zero-policy" => set(
            &mut s.scale_to_zero_policy,
            g.scale_to_zero_policy,
            one_of(v, ZERO_POLICIES),
        ),
        "adaptive-keep-alive-percentile" => set(
            &mut s.adaptive.keep_alive_percentile,
            g.adaptive.keep_alive_percentile,
            number(v, 50.0, 100.0),
        ),
        "adaptive-prewarm-percentile" => set(
            &mut s.adaptive.prewarm_percentile,
            g.adaptive.prewarm_percentile,
            number(v, 0.0, 50.0),
        ),
        "adaptive-histogram-range" => set(
            &mut s.adaptive.histogram_range,
            g.adaptive.histogram_range,
            duration_in(v, secs(240), secs(24 * 3600)),
        ),
        "adaptive-prewarm-margin" => set(
            &mut s.adaptive.prewarm_margin,
            g.adaptive.prewarm_margin,
            duration_in(v, Duration::ZERO, HOUR),
        ),
        "adaptive-cold-start-cost" => set(
            &mut s.adaptive.cold_start_cost,
            g.adaptive.cold_start_cost,
            parse::off_or_duration_in(v, secs(1), secs(24 * 3600)),
        ),
        "learned-state-flush-interval" => set(
            &mut cfg.learned_state_flush_interval,
            good.learned_state_flush_interval,
            duration_in(v, secs(10), HOUR),
        ),
        "tick-interval" => set(
            &mut cfg.tick_interval,
            good.tick_interval,
            duration_in(v, millis(100), secs(60)),
        ),
        "scrape-interval" => set(
            &mut cfg.scrape_interval,
            good.scrape_interval,
            duration_in(v, millis(100), secs(60)),
        ),
        "scrape-timeout" => set(
            &mut cfg.scrape_timeout,
            good.scrape_timeout,
            duration_in(v, millis(10), secs(60)),
        ),
        "activator-queue-depth" => set(
            &mut a.queue_depth,
            ga.queue_depth,
            int(v, 1, 1_000_000).map(|n| n as usize),
        ),
        "activator-queue-bytes" => set(
            &mut a.queue_bytes,
            ga.queue_bytes,
            bytes_in(v, 1 << 10, 64 << 30),
        ),
        "activator-queue-deadline" => set(
            &mut a.queue_deadline,
            ga.queue_deadline,
            duration_in(v, QUEUE_DEADLINE_RANGE.0, QUEUE_DEADLINE_RANGE.1),
        ),
        "activator-response-timeout" => set(
            &mut a.response_timeout,
            ga.response_timeout,
            duration_in(v, ACTIVATOR_TIMEOUT_RANGE.0, ACTIVATOR_TIMEOUT_RANGE.1),
        ),
        "activator-idle-timeout" => set(
            &mut a.idle_timeout,
            ga.idle_timeout,
            duration_in(v, ACTIVATOR_TIMEOUT_RANGE.0, ACTIVATOR_TIMEOUT_RANGE.1),
        ),
        "activator-max-routing-body-bytes" => set(
            &mut a.max_routing_body_bytes,
            ga.max_routing_body_bytes,
            // 1Gi fits usize on every supported target (32-bit included).
            bytes_in(v, 1 << 10, 1 << 30).map(|n| n as usize),
        ),
        "activator-load-balancing" => set(
            &mut a.load_balancing,
            ga.load_balancing,
            one_of(v, LOAD_BALANCINGS),
        ),
        "activator-prefix-length" => set(
            &mut a.prefix_length,
            ga.prefix_length,
            int(v, 1, PREFIX_LENGTH_MAX),
        ),
        "activator-prefix-load-factor" => set(
            &mut a.prefix_load_factor,
            ga.prefix_load_factor,
            number(v, 1.0, 10.0),
        ),
        "activator-cold-start-header" => set(
            &mut a.cold_start_header,
            ga.cold_start_header,
            parse_bool(v),
        ),
        "activator-hold-streams" => set(
            &mut a.hold_streams,
            ga.hold_streams,
            parse::off_or_duration_in(v, Duration::ZERO, HOUR),
        ),
        "activator-stream-heartbeat-interval" => set(
            &mut a.stream_heartbeat_interval,
            ga.stream_heartbeat_interval,
            duration_in(v, secs(1), secs(300)),
        ),
        "activator-wake-resend-interval" => set(
            &mut a.wake_resend_interval,
            ga.wake_resend_interval,
            duration_in(v, millis(100), secs(600)),
        ),
        "pools" => set(
            &mut cfg.pools,
            good.pools.clone(),
            crate::pool::parse_pools(v),
        ),
        "pool-min-residency" => set(
            &mut cfg.pool_min_residency,
            good.pool_min_residency,
            duration_in(v, Duration::ZERO, HOUR),
        ),
        // Only keys of CONFIGMAP_KEYS reach here; a unit test applies every one of them.
        other => Err(format!(
            "key {other:?} is documented but not parsed (a bug)"
        )),
    }
}

impl GlobalConfig {
    /// Overlay ConfigMap data on built-in defaults. A bad key keeps `last_good`'s value for that
    /// key and yields a [`ConfigError`]; good keys are applied. Unknown keys yield a
    /// [`ConfigError`] naming the nearest known key. Keys starting with `_` (such as Knative's
    /// `_example`) are ignored. Values are trimmed of surrounding whitespace. Cross-key conflicts
    /// are resolved to a consistent configuration and reported naming every key involved.
    pub fn from_configmap(
        data: &BTreeMap<String, String>,
        last_good: &GlobalConfig,
    ) -> (GlobalConfig, Vec<ConfigError>) {
        let mut cfg = GlobalConfig::default();
        let mut errors = Vec::new();
        let mut scope = Scope::new("");
        for (key, raw) in data {
            if key.starts_with('_') {
                continue;
            }
            let Some(doc) = CONFIGMAP_KEYS.iter().find(|d| d.key == key) else {
                errors.push(ConfigError {
                    key: key.clone(),
                    value: raw.clone(),
                    problem: format!("{}; ignored", keys::unknown_key(key, CONFIGMAP_KEYS)),
                });
                continue;
            };
            scope.write(doc.key, key, raw);
            if let Err(problem) = apply(&mut cfg, last_good, doc.key, raw.trim()) {
                errors.push(ConfigError {
                    key: key.clone(),
                    value: raw.clone(),
                    problem: format!("{problem}; keeping the last good value"),
                });
            }
        }
        cfg.scaling.target = cfg.target_default(cfg.scaling.metric);
        check_params(
            &mut cfg.scaling,
            cfg.allow_zero_initial_scale,
            1,
            &scope,
            &mut errors,
        );
        if cfg.scrape_timeout > cfg.scrape_interval {
            scope.conflict(
                &mut errors,
                &["scrape-timeout", "scrape-interval"],
                format!(
                    "scrape-timeout={} and scrape-interval={} conflict: a scrape must end before the next starts; using scrape-timeout {}",
                    parse::format_duration(cfg.scrape_timeout),
                    parse::format_duration(cfg.scrape_interval),
                    parse::format_duration(cfg.scrape_interval),
                ),
            );
            cfg.scrape_timeout = cfg.scrape_interval;
        }
        let queue_bytes = usize::try_from(cfg.activator.queue_bytes).unwrap_or(usize::MAX);
        if cfg.activator.max_routing_body_bytes > queue_bytes {
            scope.conflict(
                &mut errors,
                &["activator-max-routing-body-bytes", "activator-queue-bytes"],
                format!(
                    "activator-max-routing-body-bytes={} and activator-queue-bytes={} conflict: a buffered body must fit the queue; using activator-max-routing-body-bytes {}",
                    parse::format_bytes(cfg.activator.max_routing_body_bytes as u64),
                    parse::format_bytes(cfg.activator.queue_bytes),
                    parse::format_bytes(cfg.activator.queue_bytes),
                ),
            );
            cfg.activator.max_routing_body_bytes = queue_bytes;
        }
        (cfg, errors)
    }

    /// The default per-pod target for `metric` (`container-concurrency-target-default` or
    /// `requests-per-second-target-default`).
    pub fn target_default(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Concurrency => self.container_concurrency_target_default,
            Metric::Rps => self.requests_per_second_target_default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_key_is_parsed() {
        let good = GlobalConfig::default();
        for doc in CONFIGMAP_KEYS {
            let mut cfg = GlobalConfig::default();
            assert_eq!(
                apply(&mut cfg, &good, doc.key, doc.default),
                Ok(()),
                "{}",
                doc.key
            );
        }
    }
}
