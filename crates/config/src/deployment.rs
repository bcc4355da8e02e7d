//! Per-Deployment settings: the global configuration overlaid with `zeroscale.dev/*` annotations.

use std::collections::BTreeMap;

use crate::global::{
    ACTIVATOR_TIMEOUT_RANGE, GRACE_RANGE, HOUR, MAX_REPLICAS, MAX_TARGET, METRICS, MIN_TARGET,
    QUEUE_DEADLINE_RANGE, STABLE_WINDOW_RANGE,
};
use crate::keys::{self, ANNOTATIONS};
use crate::parse::{
    self, duration_in, int, is_dns1035_label, is_dns1123_subdomain, is_http_path, is_metric_name,
    is_port_name, number, one_of, parse_bool,
};
use crate::rules::{Scope, check_params};
use crate::{
    ANNOTATION_PREFIX, ConfigError, DeploymentSettings, ENABLED_ANNOTATION, GlobalConfig, Metric,
    MetricSource,
};

/// Default path scraped when `zeroscale.dev/metric-source` is `pod`.
pub const DEFAULT_POD_METRIC_PATH: &str = "/metrics";
/// Largest `zeroscale.dev/container-concurrency`.
pub const MAX_CONTAINER_CONCURRENCY: u32 = 1000;

/// Whether a Deployment opted in: `zeroscale.dev/enabled` is `true` in any ASCII case, surrounding
/// whitespace ignored. Any other value, including other truthy spellings such as `yes` or `1`, is
/// not opted in.
pub fn is_opted_in(annotations: &BTreeMap<String, String>) -> bool {
    opt_in(annotations).unwrap_or(false)
}

/// [`is_opted_in`], with the reason when `zeroscale.dev/enabled` is written but is neither
/// `true` nor `false` (a Deployment so annotated is not managed, and should be told why).
pub fn opt_in(annotations: &BTreeMap<String, String>) -> Result<bool, ConfigError> {
    match annotations.get(ENABLED_ANNOTATION) {
        None => Ok(false),
        Some(v) => parse_bool(v.trim()).map_err(|problem| ConfigError {
            key: ENABLED_ANNOTATION.to_owned(),
            value: v.clone(),
            problem: format!("{problem} (any case); the Deployment is not managed by zeroscale"),
        }),
    }
}

/// Annotations parsed one by one, before they are combined.
#[derive(Default)]
struct Overrides {
    target: Option<f64>,
    metric_source_pod: Option<bool>,
    pod_metric_name: Option<String>,
    pod_metric_port: Option<u16>,
    pod_metric_path: Option<String>,
}

fn name_rule(ok: bool, rule: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {rule}"))
    }
}

fn parse_hostnames(v: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    if v.is_empty() {
        return Ok(out);
    }
    for host in v.split(',').map(str::trim) {
        if !is_dns1123_subdomain(host) {
            return Err(format!(
                "{host:?} is not a host name; expected {}",
                keys::HOSTNAMES
            ));
        }
        if !out.iter().any(|h| h == host) {
            out.push(host.to_owned());
        }
    }
    Ok(out)
}

fn parse_port(v: &str) -> Result<String, String> {
    let numeric = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let ok = if numeric {
        matches!(v.parse::<u32>(), Ok(1..=65535))
    } else {
        is_port_name(v)
    };
    name_rule(ok, keys::PORT).map(|()| v.to_owned())
}

fn parse_port_number(v: &str) -> Result<u16, String> {
    int(v, 1, 65535)
        .map(|n| n as u16)
        .map_err(|_| format!("expected a port number in {}", keys::PORT_NUMBER))
}

impl DeploymentSettings {
    /// annotations > global. A bad annotation yields a [`ConfigError`] (key = full annotation name)
    /// and the global value is used. An unknown `zeroscale.dev/*` annotation yields a
    /// [`ConfigError`] naming the nearest known one. Other annotations are ignored. Values are
    /// trimmed of surrounding whitespace. Cross-key conflicts are resolved to consistent settings
    /// and reported naming every key involved.
    pub fn resolve(
        global: &GlobalConfig,
        annotations: &BTreeMap<String, String>,
    ) -> (DeploymentSettings, Vec<ConfigError>) {
        let mut s = DeploymentSettings {
            scaling: global.scaling.clone(),
            model_name: None,
            hostnames: Vec::new(),
            service: None,
            port: None,
            container_concurrency: 0,
            queue_deadline: global.activator.queue_deadline,
            response_timeout: global.activator.response_timeout,
            idle_timeout: global.activator.idle_timeout,
            load_balancing: global.activator.load_balancing,
            prefix_length: global.activator.prefix_length,
            hold_streams: global.activator.hold_streams,
            metric_source: MetricSource::Activator,
            pool: None,
        };
        let mut o = Overrides::default();
        let mut errors = Vec::new();
        let mut scope = Scope::new("ConfigMap ");
        for (key, raw) in annotations {
            let Some(short) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let Some(doc) = ANNOTATIONS.iter().find(|d| d.key == key) else {
                errors.push(ConfigError {
                    key: key.clone(),
                    value: raw.clone(),
                    problem: format!("{}; ignored", keys::unknown_key(key, ANNOTATIONS)),
                });
                continue;
            };
            let v = raw.trim();
            let p = &mut s.scaling;
            let result = match short {
                "enabled" => parse_bool(v).map(drop),
                "min-scale" => int(v, 0, MAX_REPLICAS).map(|n| p.min_scale = n),
                "max-scale" => int(v, 0, MAX_REPLICAS).map(|n| p.max_scale = n),
                "target" => number(v, MIN_TARGET, MAX_TARGET).map(|t| o.target = Some(t)),
                "target-utilization-percentage" => {
                    number(v, 1.0, 100.0).map(|pct| p.target_utilization = pct / 100.0)
                }
                "metric" => one_of(v, METRICS).map(|m| p.metric = m),
                "window" => duration_in(v, STABLE_WINDOW_RANGE.0, STABLE_WINDOW_RANGE.1)
                    .map(|d| p.stable_window = d),
                "panic-window-percentage" => {
                    number(v, 1.0, 100.0).map(|pct| p.panic_window_percentage = pct)
                }
                "panic-threshold-percentage" => {
                    number(v, 110.0, 1000.0).map(|pct| p.panic_threshold_percentage = pct)
                }
                "scale-to-zero-grace-period" => duration_in(v, GRACE_RANGE.0, GRACE_RANGE.1)
                    .map(|d| p.scale_to_zero_grace_period = d),
                "scale-to-zero-policy" => {
                    one_of(v, crate::global::ZERO_POLICIES).map(|z| p.scale_to_zero_policy = z)
                }
                "initial-scale" => int(v, 0, MAX_REPLICAS).map(|n| p.initial_scale = n),
                "activation-scale" => int(v, 1, MAX_REPLICAS).map(|n| p.activation_scale = n),
                "scale-down-delay" => {
                    duration_in(v, std::time::Duration::ZERO, HOUR).map(|d| p.scale_down_delay = d)
                }
                "model-name" => {
                    parse::validate_model_name(v).map(|()| s.model_name = Some(v.to_owned()))
                }
                "hostnames" => parse_hostnames(v).map(|h| s.hostnames = h),
                "service" => name_rule(is_dns1035_label(v), keys::SERVICE)
                    .map(|()| s.service = Some(v.to_owned())),
                "port" => parse_port(v).map(|port| s.port = Some(port)),
                "container-concurrency" => {
                    int(v, 0, MAX_CONTAINER_CONCURRENCY).map(|n| s.container_concurrency = n)
                }
                "queue-deadline" => duration_in(v, QUEUE_DEADLINE_RANGE.0, QUEUE_DEADLINE_RANGE.1)
                    .map(|d| s.queue_deadline = d),
                "response-timeout" => {
                    duration_in(v, ACTIVATOR_TIMEOUT_RANGE.0, ACTIVATOR_TIMEOUT_RANGE.1)
                        .map(|d| s.response_timeout = d)
                }
                "idle-timeout" => {
                    duration_in(v, ACTIVATOR_TIMEOUT_RANGE.0, ACTIVATOR_TIMEOUT_RANGE.1)
                        .map(|d| s.idle_timeout = d)
                }
                "load-balancing" => {
                    one_of(v, crate::global::LOAD_BALANCINGS).map(|b| s.load_balancing = b)
                }
                "prefix-length" => {
                    int(v, 1, crate::global::PREFIX_LENGTH_MAX).map(|n| s.prefix_length = n)
                }
                "hold-streams" => parse::off_or_duration_in(v, std::time::Duration::ZERO, HOUR)
                    .map(|d| s.hold_streams = d),
                "metric-source" => one_of(v, &[("activator", false), ("pod", true)])
                    .map(|pod| o.metric_source_pod = Some(pod)),
                "pod-metric-name" => name_rule(is_metric_name(v), keys::METRIC_NAME)
                    .map(|()| o.pod_metric_name = Some(v.to_owned())),
                "pod-metric-port" => parse_port_number(v).map(|n| o.pod_metric_port = Some(n)),
                "pod-metric-path" => name_rule(is_http_path(v), keys::HTTP_PATH)
                    .map(|()| o.pod_metric_path = Some(v.to_owned())),
                "pool" => {
                    crate::pool::check_pool_name(v, &global.pools).map(|name| s.pool = Some(name))
                }
                // Only keys of ANNOTATIONS reach here; a unit test applies every one of them.
                other => Err(format!(
                    "annotation {other:?} is documented but not parsed (a bug)"
                )),
            };
            match result {
                Ok(()) => scope.write(scope_key(doc.key), key, raw),
                Err(problem) => errors.push(ConfigError {
                    key: key.clone(),
                    value: raw.clone(),
                    problem: format!("{problem}; using the ConfigMap's value"),
                }),
            }
        }

        // Target, as Knative resolves it: an explicit target, else container-concurrency when set
        // (for the concurrency metric), else the ConfigMap default of the metric; a target above
        // container-concurrency could never be reached, so it is capped.
        let p = &mut s.scaling;
        let cc = s.container_concurrency;
        let limited = p.metric == Metric::Concurrency && cc > 0;
        p.target = match o.target {
            Some(t) if limited && t > f64::from(cc) => {
                scope.conflict(
                    &mut errors,
                    &["target", "container-concurrency"],
                    format!(
                        "{}={t} and {}={cc} conflict: the concurrency target cannot exceed the per-pod limit; using target {cc}",
                        scope.name("target"),
                        scope.name("container-concurrency"),
                    ),
                );
                f64::from(cc)
            }
            Some(t) => t,
            None if limited => f64::from(cc),
            None => global.target_default(p.metric),
        };
        check_params(
            p,
            global.allow_zero_initial_scale,
            global.scaling.initial_scale,
            &scope,
            &mut errors,
        );

        s.metric_source = metric_source(&o, &scope, &mut errors);
        (s, errors)
    }
}

/// The ConfigMap-style name of an annotation for cross-key messages, so rules shared with the
/// ConfigMap find it (`zeroscale.dev/window` is the ConfigMap's `stable-window`).
fn scope_key(annotation: &'static str) -> &'static str {
    match annotation {
        "zeroscale.dev/window" => "stable-window",
        a => a.strip_prefix(ANNOTATION_PREFIX).unwrap_or(a),
    }
}

fn metric_source(o: &Overrides, scope: &Scope<'_>, errors: &mut Vec<ConfigError>) -> MetricSource {
    const POD_KEYS: [&str; 3] = ["pod-metric-name", "pod-metric-port", "pod-metric-path"];
    if o.metric_source_pod != Some(true) {
        for key in POD_KEYS.iter().filter(|k| scope.is_written(k)) {
            scope.conflict(
                errors,
                &[key],
                format!(
                    "ignored because {ANNOTATION_PREFIX}metric-source is not pod; the activator's metrics are used"
                ),
            );
        }
        return MetricSource::Activator;
    }
    match (&o.pod_metric_name, o.pod_metric_port) {
        (Some(metric), Some(port)) => MetricSource::Pod {
            metric: metric.clone(),
            port,
            path: o
                .pod_metric_path
                .clone()
                .unwrap_or_else(|| DEFAULT_POD_METRIC_PATH.to_owned()),
        },
        (name, port) => {
            let missing: Vec<String> = [
                ("pod-metric-name", name.is_none()),
                ("pod-metric-port", port.is_none()),
            ]
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(k, _)| format!("{ANNOTATION_PREFIX}{k}"))
            .collect();
            scope.conflict(
                errors,
                &["metric-source"],
                format!(
                    "metric-source pod needs a valid {ANNOTATION_PREFIX}pod-metric-name and {ANNOTATION_PREFIX}pod-metric-port (missing or invalid: {}); using the activator's metrics",
                    missing.join(", ")
                ),
            );
            MetricSource::Activator
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_annotation_is_parsed() {
        let samples = [
            ("zeroscale.dev/model-name", "m"),
            ("zeroscale.dev/hostnames", "a.example.com"),
            ("zeroscale.dev/service", "svc"),
            ("zeroscale.dev/port", "http"),
            ("zeroscale.dev/pod-metric-name", "x"),
            ("zeroscale.dev/pod-metric-port", "9090"),
            ("zeroscale.dev/pod-metric-path", "/metrics"),
            ("zeroscale.dev/pool", "a100"),
        ];
        let mut global = GlobalConfig::default();
        global.pools.insert(
            "a100".into(),
            crate::PoolCapacity {
                capacity_milli: 8000,
                resource: Some("nvidia.com/gpu".into()),
            },
        );
        for doc in ANNOTATIONS {
            let value = samples
                .iter()
                .find(|(k, _)| *k == doc.key)
                .map_or(doc.default, |(_, v)| v);
            let value = if value.starts_with("ConfigMap ") {
                // A value the global default accepts for the same concept.
                match doc.key {
                    "zeroscale.dev/target" => "100",
                    "zeroscale.dev/target-utilization-percentage" => "70",
                    "zeroscale.dev/metric" => "rps",
                    "zeroscale.dev/window" => "60s",
                    "zeroscale.dev/panic-window-percentage" => "10",
                    "zeroscale.dev/panic-threshold-percentage" => "200",
                    "zeroscale.dev/scale-to-zero-grace-period" => "30s",
                    "zeroscale.dev/scale-to-zero-policy" => "adaptive",
                    "zeroscale.dev/queue-deadline" => "5m",
                    "zeroscale.dev/response-timeout" => "10m",
                    "zeroscale.dev/idle-timeout" => "5m",
                    "zeroscale.dev/scale-down-delay" => "0s",
                    "zeroscale.dev/load-balancing" => "prefix-hash",
                    "zeroscale.dev/hold-streams" => "20s",
                    _ => "1",
                }
            } else {
                value
            };
            let mut one = BTreeMap::new();
            one.insert(doc.key.to_owned(), value.to_owned());
            if doc.key.contains("pod-metric") {
                one.insert("zeroscale.dev/metric-source".into(), "pod".into());
                one.insert("zeroscale.dev/pod-metric-name".into(), "x".into());
                one.insert("zeroscale.dev/pod-metric-port".into(), "1".into());
            }
            let (_, errors) = DeploymentSettings::resolve(&global, &one);
            assert_eq!(errors, vec![], "{} = {value}", doc.key);
        }
    }
}
