//! Per-Deployment settings: opt-in, annotation precedence, rejected values, cross-key rules.

use std::collections::BTreeMap;
use std::time::Duration;

use zeroscale_config::{
    ANNOTATIONS, ConfigError, DeploymentSettings, GlobalConfig, Metric, MetricSource, is_opted_in,
};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn global(pairs: &[(&str, &str)]) -> GlobalConfig {
    let (cfg, errors) = GlobalConfig::from_configmap(&map(pairs), &GlobalConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    cfg
}

fn resolve(pairs: &[(&str, &str)]) -> (DeploymentSettings, Vec<ConfigError>) {
    DeploymentSettings::resolve(&GlobalConfig::default(), &map(pairs))
}

fn resolve_ok(pairs: &[(&str, &str)]) -> DeploymentSettings {
    let (s, errors) = resolve(pairs);
    assert_eq!(errors, vec![], "{pairs:?}");
    s
}

#[test]
fn opt_in_needs_enabled_true() {
    for yes in ["true", "True", "TRUE", " true "] {
        assert!(
            is_opted_in(&map(&[("zeroscale.dev/enabled", yes)])),
            "{yes:?}"
        );
    }
    for no in ["false", "", "yes", "1", "on", "truee", "enabled"] {
        assert!(
            !is_opted_in(&map(&[("zeroscale.dev/enabled", no)])),
            "{no:?}"
        );
    }
    assert!(!is_opted_in(&map(&[])));
    assert!(!is_opted_in(&map(&[(
        "autoscaling.knative.dev/enabled",
        "true"
    )])));
    assert!(!is_opted_in(&map(&[("zeroscale.dev/Enabled", "true")])));
}

#[test]
fn without_annotations_the_global_values_apply() {
    let g = global(&[
        ("min-scale", "1"),
        ("stable-window", "2m"),
        ("activator-queue-deadline", "1m"),
        ("activator-response-timeout", "20m"),
        ("activator-idle-timeout", "45s"),
    ]);
    let (s, errors) = DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/enabled", "true")]));
    assert!(errors.is_empty());
    assert_eq!(s.scaling, g.scaling);
    assert_eq!(s.queue_deadline, Duration::from_secs(60));
    assert_eq!(s.response_timeout, Duration::from_secs(1200));
    assert_eq!(s.idle_timeout, Duration::from_secs(45));
    assert_eq!(s.model_name, None);
    assert_eq!(s.hostnames, Vec::<String>::new());
    assert_eq!((s.service.as_deref(), s.port.as_deref()), (None, None));
    assert_eq!(s.container_concurrency, 0);
    assert_eq!(s.metric_source, MetricSource::Activator);
}

#[test]
fn annotations_override_the_global_values() {
    let g = global(&[
        ("min-scale", "1"),
        ("max-scale", "50"),
        ("stable-window", "2m"),
    ]);
    let (s, errors) = DeploymentSettings::resolve(
        &g,
        &map(&[
            ("zeroscale.dev/enabled", "true"),
            ("zeroscale.dev/min-scale", "2"),
            ("zeroscale.dev/max-scale", "0"),
            ("zeroscale.dev/target", "12.5"),
            ("zeroscale.dev/target-utilization-percentage", "90"),
            ("zeroscale.dev/window", "30s"),
            ("zeroscale.dev/panic-window-percentage", "20"),
            ("zeroscale.dev/panic-threshold-percentage", "150"),
            ("zeroscale.dev/scale-to-zero-grace-period", "45s"),
            ("zeroscale.dev/initial-scale", "3"),
            ("zeroscale.dev/activation-scale", "2"),
            ("zeroscale.dev/scale-down-delay", "5m"),
            ("zeroscale.dev/model-name", "llama-3.1-8b_instruct"),
            (
                "zeroscale.dev/hostnames",
                "a.example.com, b.example.com,a.example.com",
            ),
            ("zeroscale.dev/service", "llama-svc"),
            ("zeroscale.dev/port", "http"),
            ("zeroscale.dev/container-concurrency", "20"),
            ("zeroscale.dev/queue-deadline", "90s"),
            ("zeroscale.dev/response-timeout", "30m"),
            ("zeroscale.dev/idle-timeout", "2m30s"),
            ("other.io/ignored", "whatever"),
        ]),
    );
    assert_eq!(errors, vec![]);
    let p = &s.scaling;
    assert_eq!((p.min_scale, p.max_scale), (2, 0));
    assert_eq!(p.target, 12.5);
    assert!((p.target_utilization - 0.9).abs() < 1e-12);
    assert_eq!(p.stable_window, Duration::from_secs(30));
    assert_eq!(p.panic_window(), Duration::from_secs(6));
    assert_eq!(p.panic_threshold_percentage, 150.0);
    assert_eq!(p.scale_to_zero_grace_period, Duration::from_secs(45));
    assert_eq!(p.initial_scale, 3);
    assert_eq!(p.activation_scale, 2);
    assert_eq!(p.scale_down_delay, Duration::from_secs(300));
    assert_eq!(s.model_name.as_deref(), Some("llama-3.1-8b_instruct"));
    assert_eq!(s.hostnames, ["a.example.com", "b.example.com"]);
    assert_eq!(s.service.as_deref(), Some("llama-svc"));
    assert_eq!(s.port.as_deref(), Some("http"));
    assert_eq!(s.container_concurrency, 20);
    assert_eq!(s.queue_deadline, Duration::from_secs(90));
    assert_eq!(s.response_timeout, Duration::from_secs(1800));
    assert_eq!(s.idle_timeout, Duration::from_secs(150));
    // Keys without an annotation keep the global value.
    assert_eq!(p.max_scale_up_rate, g.scaling.max_scale_up_rate);
    assert_eq!(p.enable_scale_to_zero, g.scaling.enable_scale_to_zero);
}

#[test]
fn timeout_annotations_override_the_configmap_and_fall_back_to_it() {
    let g = global(&[
        ("activator-response-timeout", "20m"),
        ("activator-idle-timeout", "1m"),
    ]);
    let resolve_with = |pairs: &[(&str, &str)]| DeploymentSettings::resolve(&g, &map(pairs));

    let (s, errors) = resolve_with(&[("zeroscale.dev/response-timeout", "24h")]);
    assert_eq!(errors, vec![]);
    assert_eq!(s.response_timeout, Duration::from_secs(86_400));
    assert_eq!(s.idle_timeout, Duration::from_secs(60), "the ConfigMap's");

    let (s, errors) = resolve_with(&[("zeroscale.dev/idle-timeout", "1s")]);
    assert_eq!(errors, vec![]);
    assert_eq!(
        s.response_timeout,
        Duration::from_secs(1200),
        "the ConfigMap's"
    );
    assert_eq!(s.idle_timeout, Duration::from_secs(1));

    // A bad annotation falls back to the ConfigMap's value, not the built-in default.
    let (s, errors) = resolve_with(&[
        ("zeroscale.dev/response-timeout", "25h"),
        ("zeroscale.dev/idle-timeout", "0s"),
    ]);
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            r#"zeroscale.dev/idle-timeout: "0s" is invalid: expected a duration in 1s..=24h; using the ConfigMap's value"#,
            r#"zeroscale.dev/response-timeout: "25h" is invalid: expected a duration in 1s..=24h; using the ConfigMap's value"#,
        ]
    );
    assert_eq!(s.response_timeout, Duration::from_secs(1200));
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
}

#[test]
fn numeric_port_is_accepted() {
    assert_eq!(
        resolve_ok(&[("zeroscale.dev/port", "8080")])
            .port
            .as_deref(),
        Some("8080")
    );
}

#[test]
fn metric_annotation_picks_that_metrics_target_default() {
    let g = global(&[("requests-per-second-target-default", "42")]);
    let (s, errors) = DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/metric", "rps")]));
    assert!(errors.is_empty());
    assert_eq!(s.scaling.metric, Metric::Rps);
    assert_eq!(s.scaling.target, 42.0);

    let g = global(&[
        ("metric", "rps"),
        ("container-concurrency-target-default", "7"),
    ]);
    let (s, _) = DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/metric", "concurrency")]));
    assert_eq!(s.scaling.target, 7.0);
}

#[test]
fn container_concurrency_is_the_default_target_and_caps_an_explicit_one() {
    let s = resolve_ok(&[("zeroscale.dev/container-concurrency", "8")]);
    assert_eq!(s.scaling.target, 8.0);
    let s = resolve_ok(&[
        ("zeroscale.dev/container-concurrency", "8"),
        ("zeroscale.dev/target", "6"),
    ]);
    assert_eq!(s.scaling.target, 6.0);

    let (s, errors) = resolve(&[
        ("zeroscale.dev/container-concurrency", "8"),
        ("zeroscale.dev/target", "10"),
    ]);
    assert_eq!(s.scaling.target, 8.0);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "zeroscale.dev/target");
    assert!(
        errors[0]
            .problem
            .contains("zeroscale.dev/container-concurrency=8"),
        "{}",
        errors[0]
    );

    // The cap is a concurrency limit: it does not apply to an rps target.
    let s = resolve_ok(&[
        ("zeroscale.dev/container-concurrency", "8"),
        ("zeroscale.dev/metric", "rps"),
    ]);
    assert_eq!(s.scaling.target, 200.0);
}

/// Every invalid annotation value, with the substrings its message must contain.
const BAD: &[(&str, &str, &[&str])] = &[
    ("enabled", "yes", &["true or false"]),
    ("min-scale", "-1", &["0..=10000"]),
    ("max-scale", "lots", &["0..=10000"]),
    ("target", "0", &["0.01..=1000000"]),
    ("target-utilization-percentage", "0.7", &["1..=100"]),
    ("metric", "latency", &["concurrency or rps"]),
    ("window", "5s", &["6s..=1h"]),
    ("window", "60", &["without a unit"]),
    ("panic-window-percentage", "200", &["1..=100"]),
    ("panic-threshold-percentage", "50", &["110..=1000"]),
    ("scale-to-zero-grace-period", "0s", &["1s..=1h"]),
    ("initial-scale", "x", &["0..=10000"]),
    ("activation-scale", "0", &["1..=10000"]),
    ("scale-down-delay", "-5s", &["0s..=1h"]),
    ("model-name", "Llama", &["a-z, 0-9"]),
    ("model-name", "my/model", &["a-z, 0-9"]),
    ("model-name", "-model", &["starting and ending"]),
    ("model-name", "model.", &["starting and ending"]),
    ("model-name", "", &["1-253 characters"]),
    ("hostnames", "a.example.com,", &["\"\" is not a host name"]),
    (
        "hostnames",
        "A.example.com",
        &["\"A.example.com\" is not a host name", "lowercase"],
    ),
    ("hostnames", "a.example.com:8080", &["not a host name"]),
    ("hostnames", "*.example.com", &["not a host name"]),
    ("service", "1svc", &["DNS-1035 label"]),
    ("service", "svc.ns", &["DNS-1035 label"]),
    ("port", "0", &["1..=65535"]),
    ("port", "65536", &["1..=65535"]),
    ("port", "http--alt", &["port name"]),
    ("port", "a-very-long-port-name", &["1-15 characters"]),
    ("container-concurrency", "1001", &["0..=1000"]),
    ("queue-deadline", "2h", &["1s..=1h"]),
    ("response-timeout", "0s", &["1s..=24h"]),
    ("response-timeout", "25h", &["1s..=24h"]),
    ("response-timeout", "600", &["without a unit", "1s..=24h"]),
    ("idle-timeout", "500ms", &["1s..=24h"]),
    ("idle-timeout", "1d", &["unknown unit \"d\"", "1s..=24h"]),
    (
        "idle-timeout",
        "five minutes",
        &["not a duration", "1s..=24h"],
    ),
    ("metric-source", "prometheus", &["activator or pod"]),
];

#[test]
fn every_invalid_annotation_is_rejected_and_the_global_value_used() {
    let defaults = resolve_ok(&[]);
    for &(short, value, expected) in BAD {
        let key = format!("zeroscale.dev/{short}");
        let (s, errors) = resolve(&[(&key, value)]);
        assert_eq!(errors.len(), 1, "{key}={value:?}: {errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.starts_with(&format!("{key}: {value:?} is invalid: ")),
            "{text}"
        );
        for want in expected {
            assert!(
                text.contains(want),
                "{key}={value:?}: {text:?} lacks {want:?}"
            );
        }
        assert_eq!(
            s, defaults,
            "{key}={value:?} must fall back to the global value"
        );
    }
}

#[test]
fn every_documented_range_is_quoted_when_the_value_is_rejected() {
    for doc in ANNOTATIONS {
        let (_, errors) = resolve(&[(doc.key, "@@")]);
        assert_eq!(errors.len(), 1, "{}: {errors:?}", doc.key);
        assert!(
            errors[0].problem.contains(doc.range),
            "{}: {:?} does not quote {:?}",
            doc.key,
            errors[0].problem,
            doc.range
        );
    }
}

#[test]
fn one_bad_annotation_does_not_discard_the_good_ones() {
    let (s, errors) = resolve(&[
        ("zeroscale.dev/min-scale", "two"),
        ("zeroscale.dev/max-scale", "9"),
        ("zeroscale.dev/model-name", "ok-model"),
    ]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "zeroscale.dev/min-scale");
    assert_eq!(s.scaling.max_scale, 9);
    assert_eq!(s.model_name.as_deref(), Some("ok-model"));
}

#[test]
fn unknown_zeroscale_annotations_name_the_nearest_one() {
    for (typo, nearest) in [
        ("zeroscale.dev/minScale", "zeroscale.dev/min-scale"),
        ("zeroscale.dev/max_scale", "zeroscale.dev/max-scale"),
        ("zeroscale.dev/enable", "zeroscale.dev/enabled"),
        ("zeroscale.dev/stable-window", "zeroscale.dev/window"),
        ("zeroscale.dev/hostname", "zeroscale.dev/hostnames"),
        ("zeroscale.dev/model", "zeroscale.dev/model-name"),
        ("zeroscale.dev/idle_timeout", "zeroscale.dev/idle-timeout"),
        (
            "zeroscale.dev/response-timout",
            "zeroscale.dev/response-timeout",
        ),
    ] {
        let (_, errors) = resolve(&[(typo, "1")]);
        assert_eq!(errors.len(), 1, "{typo}");
        assert_eq!(errors[0].key, typo);
        assert!(
            errors[0]
                .problem
                .contains(&format!("did you mean {nearest:?}")),
            "{typo}: {}",
            errors[0]
        );
    }
}

#[test]
fn other_prefixes_are_ignored() {
    resolve_ok(&[
        ("autoscaling.knative.dev/min-scale", "x"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ("zeroscale.dev", "x"),
        ("sub.zeroscale.dev/min-scale", "x"),
    ]);
}

#[test]
fn annotation_min_above_global_max_names_both_sources() {
    let g = global(&[("max-scale", "3")]);
    let (s, errors) = DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/min-scale", "5")]));
    assert_eq!((s.scaling.min_scale, s.scaling.max_scale), (3, 3));
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("zeroscale.dev/min-scale", "5")
    );
    for want in [
        "zeroscale.dev/min-scale=5",
        "ConfigMap max-scale=3",
        "using min-scale 3",
    ] {
        assert!(e.problem.contains(want), "{e}");
    }
}

#[test]
fn annotation_max_below_global_min_is_filed_under_the_annotation() {
    let g = global(&[("min-scale", "4")]);
    let (s, errors) = DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/max-scale", "2")]));
    assert_eq!((s.scaling.min_scale, s.scaling.max_scale), (2, 2));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "zeroscale.dev/max-scale");
    assert!(
        errors[0].problem.contains("ConfigMap min-scale=4"),
        "{}",
        errors[0]
    );
}

#[test]
fn activation_and_initial_scale_stay_within_max() {
    let (s, errors) = resolve(&[
        ("zeroscale.dev/max-scale", "2"),
        ("zeroscale.dev/activation-scale", "5"),
        ("zeroscale.dev/initial-scale", "4"),
    ]);
    assert_eq!(s.scaling.activation_scale, 2);
    assert_eq!(s.scaling.initial_scale, 2);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "zeroscale.dev/initial-scale",
            "zeroscale.dev/activation-scale"
        ]
    );
}

#[test]
fn min_scale_raises_initial_scale_silently() {
    let s = resolve_ok(&[("zeroscale.dev/min-scale", "3")]);
    assert_eq!(s.scaling.initial_scale, 3);
}

#[test]
fn annotation_initial_scale_zero_follows_the_global_allowance() {
    let (s, errors) = resolve(&[("zeroscale.dev/initial-scale", "0")]);
    assert_eq!(s.scaling.initial_scale, 1);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .problem
            .contains("ConfigMap allow-zero-initial-scale=true"),
        "{}",
        errors[0]
    );
    let g = global(&[("allow-zero-initial-scale", "true")]);
    let (s, errors) =
        DeploymentSettings::resolve(&g, &map(&[("zeroscale.dev/initial-scale", "0")]));
    assert!(errors.is_empty());
    assert_eq!(s.scaling.initial_scale, 0);
}

#[test]
fn annotation_window_too_short_for_the_panic_window_is_reported() {
    let (s, errors) = resolve(&[("zeroscale.dev/window", "8s")]);
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(e.key, "zeroscale.dev/window");
    assert!(
        e.problem.contains("ConfigMap panic-window-percentage=10"),
        "{e}"
    );
    assert!(e.problem.contains("zeroscale.dev/window=8s"), "{e}");
    assert_eq!(s.scaling.panic_window_percentage, 12.5);
    assert_eq!(s.scaling.panic_window(), Duration::from_secs(1));
}

#[test]
fn pod_metric_source_with_name_and_port() {
    let s = resolve_ok(&[
        ("zeroscale.dev/metric-source", "pod"),
        ("zeroscale.dev/pod-metric-name", "vllm:num_requests_running"),
        ("zeroscale.dev/pod-metric-port", "8000"),
    ]);
    assert_eq!(
        s.metric_source,
        MetricSource::Pod {
            metric: "vllm:num_requests_running".into(),
            port: 8000,
            path: "/metrics".into()
        }
    );
    let s = resolve_ok(&[
        ("zeroscale.dev/metric-source", "pod"),
        ("zeroscale.dev/pod-metric-name", "inflight"),
        ("zeroscale.dev/pod-metric-port", "9090"),
        ("zeroscale.dev/pod-metric-path", "/stats/prometheus"),
    ]);
    assert!(
        matches!(s.metric_source, MetricSource::Pod { ref path, .. } if path == "/stats/prometheus")
    );
}

#[test]
fn pod_metric_source_without_name_or_port_falls_back_to_the_activator() {
    let (s, errors) = resolve(&[
        ("zeroscale.dev/metric-source", "pod"),
        ("zeroscale.dev/pod-metric-name", "inflight"),
    ]);
    assert_eq!(s.metric_source, MetricSource::Activator);
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("zeroscale.dev/metric-source", "pod")
    );
    assert!(
        e.problem
            .contains("missing or invalid: zeroscale.dev/pod-metric-port"),
        "{e}"
    );
    assert!(e.problem.contains("using the activator"), "{e}");

    // An invalid name counts as missing: two errors, the value and the cross-key one.
    let (s, errors) = resolve(&[
        ("zeroscale.dev/metric-source", "pod"),
        ("zeroscale.dev/pod-metric-name", "not a name"),
        ("zeroscale.dev/pod-metric-port", "9090"),
    ]);
    assert_eq!(s.metric_source, MetricSource::Activator);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "zeroscale.dev/pod-metric-name",
            "zeroscale.dev/metric-source"
        ]
    );
}

#[test]
fn pod_metric_keys_without_pod_source_are_reported_as_ignored() {
    let (s, errors) = resolve(&[("zeroscale.dev/pod-metric-port", "9090")]);
    assert_eq!(s.metric_source, MetricSource::Activator);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .problem
            .contains("ignored because zeroscale.dev/metric-source is not pod")
    );
}

#[test]
fn bad_pod_metric_values_are_rejected() {
    for (key, value, want) in [
        (
            "zeroscale.dev/pod-metric-name",
            "9lives",
            "Prometheus metric name",
        ),
        ("zeroscale.dev/pod-metric-port", "0", "1..=65535"),
        (
            "zeroscale.dev/pod-metric-path",
            "metrics",
            "starting with '/'",
        ),
        ("zeroscale.dev/pod-metric-path", "/m?x=1", "without '?'"),
    ] {
        let (_, errors) = resolve(&[
            ("zeroscale.dev/metric-source", "pod"),
            ("zeroscale.dev/pod-metric-name", "ok"),
            ("zeroscale.dev/pod-metric-port", "1"),
            (key, value),
        ]);
        assert!(
            errors
                .iter()
                .any(|e| e.key == key && e.problem.contains(want)),
            "{key}={value:?}: {errors:?}"
        );
    }
}

#[test]
fn hold_streams_is_opt_in_per_model_over_the_configmap() {
    assert_eq!(resolve_ok(&[]).hold_streams, None, "off unless asked for");
    assert_eq!(
        resolve_ok(&[("zeroscale.dev/hold-streams", "20s")]).hold_streams,
        Some(Duration::from_secs(20))
    );
    let on = global(&[("activator-hold-streams", "30s")]);
    let inherit = DeploymentSettings::resolve(&on, &map(&[])).0;
    assert_eq!(inherit.hold_streams, Some(Duration::from_secs(30)));
    let (opt_out, errors) =
        DeploymentSettings::resolve(&on, &map(&[("zeroscale.dev/hold-streams", "off")]));
    assert_eq!(errors, vec![]);
    assert_eq!(
        opt_out.hold_streams, None,
        "a model opts out of the global setting"
    );
    let (bad, errors) =
        DeploymentSettings::resolve(&on, &map(&[("zeroscale.dev/hold-streams", "soon")]));
    assert_eq!(
        bad.hold_streams,
        Some(Duration::from_secs(30)),
        "the ConfigMap's value"
    );
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        text.starts_with(r#"zeroscale.dev/hold-streams: "soon" is invalid"#)
            && text.contains("expected off or a duration in 0s..=1h; using the ConfigMap's value"),
        "{text}"
    );
}
