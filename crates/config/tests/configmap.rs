//! The global configuration: every ConfigMap key, every rejected form, last-good semantics and
//! cross-key rules.

use std::collections::BTreeMap;
use std::time::Duration;

use zeroscale_config::{Aggregation, CONFIGMAP_KEYS, ConfigError, GlobalConfig, Metric};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> (GlobalConfig, Vec<ConfigError>) {
    GlobalConfig::from_configmap(&map(pairs), &GlobalConfig::default())
}

fn parse_ok(pairs: &[(&str, &str)]) -> GlobalConfig {
    let (cfg, errors) = parse(pairs);
    assert_eq!(errors, vec![], "{pairs:?}");
    cfg
}

#[test]
fn defaults_match_knative_and_the_brief() {
    let c = GlobalConfig::default();
    let s = &c.scaling;
    assert_eq!(s.stable_window, Duration::from_secs(60));
    assert_eq!(s.panic_window_percentage, 10.0);
    assert_eq!(s.panic_threshold_percentage, 200.0);
    assert_eq!(s.target, 100.0);
    assert_eq!(c.container_concurrency_target_default, 100.0);
    assert_eq!(c.requests_per_second_target_default, 200.0);
    assert_eq!(s.target_utilization, 0.7);
    assert_eq!(s.max_scale_up_rate, 1000.0);
    assert_eq!(s.max_scale_down_rate, 2.0);
    assert!(s.enable_scale_to_zero);
    assert_eq!(s.scale_to_zero_grace_period, Duration::from_secs(30));
    assert_eq!(s.scale_to_zero_pod_retention_period, Duration::ZERO);
    assert_eq!(s.initial_scale, 1);
    assert!(!c.allow_zero_initial_scale);
    assert_eq!((s.min_scale, s.max_scale), (0, 0));
    assert_eq!(s.scale_down_delay, Duration::ZERO);
    assert_eq!(s.activation_scale, 1);
    assert_eq!(s.metric, Metric::Concurrency);
    assert_eq!(s.aggregation, Aggregation::Linear);
    assert_eq!(c.tick_interval, Duration::from_secs(2));
    assert_eq!(c.learned_state_flush_interval, Duration::from_secs(300));
    assert_eq!(c.scrape_interval, Duration::from_secs(1));
    assert_eq!(c.scrape_timeout, Duration::from_millis(800));
    assert_eq!(c.activator.queue_depth, 10_000);
    assert_eq!(c.activator.queue_bytes, 64 << 20);
    assert_eq!(c.activator.queue_deadline, Duration::from_secs(300));
    assert_eq!(c.activator.max_routing_body_bytes, 1 << 20);
    assert_eq!(c.activator.wake_resend_interval, Duration::from_secs(10));
    assert_eq!(c.activator.response_timeout, Duration::from_secs(600));
    assert_eq!(c.activator.idle_timeout, Duration::from_secs(300));
}

#[test]
fn empty_configmap_gives_defaults() {
    assert_eq!(parse_ok(&[]), GlobalConfig::default());
}

#[test]
fn documented_defaults_parse_to_the_built_in_defaults() {
    let pairs: Vec<(&str, &str)> = CONFIGMAP_KEYS.iter().map(|d| (d.key, d.default)).collect();
    assert_eq!(parse_ok(&pairs), GlobalConfig::default());
}

#[test]
fn every_key_is_applied() {
    let c = parse_ok(&[
        ("metric", "rps"),
        ("container-concurrency-target-default", "50"),
        ("container-concurrency-target-percentage", "85.5"),
        ("requests-per-second-target-default", "150"),
        ("stable-window", "2m"),
        ("panic-window-percentage", "20"),
        ("panic-threshold-percentage", "300"),
        ("max-scale-up-rate", "10"),
        ("max-scale-down-rate", "1.5"),
        ("enable-scale-to-zero", "false"),
        ("scale-to-zero-grace-period", "1m30s"),
        ("scale-to-zero-pod-retention-period", "5m"),
        ("initial-scale", "0"),
        ("allow-zero-initial-scale", "true"),
        ("min-scale", "0"),
        ("max-scale", "20"),
        ("scale-down-delay", "15m"),
        ("activation-scale", "3"),
        ("aggregation", "weighted-exponential"),
        ("tick-interval", "500ms"),
        ("learned-state-flush-interval", "90s"),
        ("scrape-interval", "2s"),
        ("scrape-timeout", "1500ms"),
        ("activator-queue-depth", "42"),
        ("activator-queue-bytes", "1Gi"),
        ("activator-queue-deadline", "30s"),
        ("activator-max-routing-body-bytes", "256Ki"),
        ("activator-wake-resend-interval", "3s"),
        ("activator-response-timeout", "20m"),
        ("activator-idle-timeout", "90s"),
        ("activator-load-balancing", "prefix-hash"),
        ("activator-prefix-length", "64"),
        ("activator-prefix-load-factor", "1.5"),
        ("activator-cold-start-header", "false"),
    ]);
    let s = &c.scaling;
    assert_eq!(s.metric, Metric::Rps);
    assert_eq!(c.container_concurrency_target_default, 50.0);
    assert_eq!(c.requests_per_second_target_default, 150.0);
    assert_eq!(s.target, 150.0, "the target follows the metric");
    assert!((s.target_utilization - 0.855).abs() < 1e-12);
    assert_eq!(s.stable_window, Duration::from_secs(120));
    assert_eq!(s.panic_window_percentage, 20.0);
    assert_eq!(s.panic_window(), Duration::from_secs(24));
    assert_eq!(s.panic_threshold_percentage, 300.0);
    assert_eq!(s.max_scale_up_rate, 10.0);
    assert_eq!(s.max_scale_down_rate, 1.5);
    assert!(!s.enable_scale_to_zero);
    assert_eq!(s.scale_to_zero_grace_period, Duration::from_secs(90));
    assert_eq!(
        s.scale_to_zero_pod_retention_period,
        Duration::from_secs(300)
    );
    assert_eq!(s.initial_scale, 0);
    assert!(c.allow_zero_initial_scale);
    assert_eq!((s.min_scale, s.max_scale), (0, 20));
    assert_eq!(s.scale_down_delay, Duration::from_secs(900));
    assert_eq!(s.activation_scale, 3);
    assert_eq!(s.aggregation, Aggregation::WeightedExponential);
    assert_eq!(c.tick_interval, Duration::from_millis(500));
    assert_eq!(c.learned_state_flush_interval, Duration::from_secs(90));
    assert_eq!(c.scrape_interval, Duration::from_secs(2));
    assert_eq!(c.scrape_timeout, Duration::from_millis(1500));
    assert_eq!(c.activator.queue_depth, 42);
    assert_eq!(c.activator.queue_bytes, 1 << 30);
    assert_eq!(c.activator.queue_deadline, Duration::from_secs(30));
    assert_eq!(c.activator.max_routing_body_bytes, 256 << 10);
    assert_eq!(c.activator.wake_resend_interval, Duration::from_secs(3));
    assert_eq!(c.activator.response_timeout, Duration::from_secs(1200));
    assert_eq!(c.activator.idle_timeout, Duration::from_secs(90));
    assert_eq!(
        c.activator.load_balancing,
        zeroscale_config::LoadBalancing::PrefixHash
    );
    assert_eq!(c.activator.prefix_length, 64);
    assert_eq!(c.activator.prefix_load_factor, 1.5);
    assert!(!c.activator.cold_start_header);
}

#[test]
fn activator_timeouts_accept_their_whole_range() {
    for key in ["activator-response-timeout", "activator-idle-timeout"] {
        for (value, want) in [
            ("1s", Duration::from_secs(1)),
            ("1h30m", Duration::from_secs(5400)),
            ("24h", Duration::from_secs(86_400)),
            (" 2m\n", Duration::from_secs(120)),
        ] {
            let c = parse_ok(&[(key, value)]);
            let a = &c.activator;
            let (got, other, other_default) = if key == "activator-response-timeout" {
                (a.response_timeout, a.idle_timeout, Duration::from_secs(300))
            } else {
                (a.idle_timeout, a.response_timeout, Duration::from_secs(600))
            };
            assert_eq!(got, want, "{key}={value:?}");
            assert_eq!(other, other_default, "{key} must not set the other timeout");
        }
    }
}

#[test]
fn a_bad_activator_timeout_keeps_its_last_good_value() {
    let (last_good, errors) = parse(&[
        ("activator-response-timeout", "30m"),
        ("activator-idle-timeout", "2m"),
    ]);
    assert!(errors.is_empty(), "{errors:?}");
    let data = map(&[
        ("activator-response-timeout", "25h"),
        ("activator-idle-timeout", "300"),
    ]);
    let (cfg, errors) = GlobalConfig::from_configmap(&data, &last_good);
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            r#"activator-idle-timeout: "300" is invalid: "300" is not a duration: a number without a unit; write e.g. 30s, 1m30s or 500ms; expected a duration in 1s..=24h; keeping the last good value"#,
            r#"activator-response-timeout: "25h" is invalid: expected a duration in 1s..=24h; keeping the last good value"#,
        ]
    );
    assert_eq!(cfg.activator.response_timeout, Duration::from_secs(1800));
    assert_eq!(cfg.activator.idle_timeout, Duration::from_secs(120));
}

#[test]
fn min_scale_and_bounds_are_applied() {
    let c = parse_ok(&[
        ("min-scale", "2"),
        ("max-scale", "0"),
        ("initial-scale", "5"),
    ]);
    assert_eq!((c.scaling.min_scale, c.scaling.max_scale), (2, 0));
    assert_eq!(c.scaling.initial_scale, 5);
}

#[test]
fn values_are_trimmed_and_bools_ignore_case() {
    let c = parse_ok(&[
        ("stable-window", " 90s\n"),
        ("enable-scale-to-zero", "False"),
    ]);
    assert_eq!(c.scaling.stable_window, Duration::from_secs(90));
    assert!(!c.scaling.enable_scale_to_zero);
}

#[test]
fn underscore_keys_such_as_knatives_example_are_ignored() {
    parse_ok(&[("_example", "# stable-window: 60s\nwhatever")]);
}

/// Every invalid form, with the substrings its message must contain.
const BAD_VALUES: &[(&str, &str, &[&str])] = &[
    ("metric", "qps", &["concurrency or rps"]),
    ("metric", "", &["concurrency or rps"]),
    ("metric", "Concurrency", &["concurrency or rps"]),
    (
        "container-concurrency-target-default",
        "0",
        &["0.01..=1000000"],
    ),
    (
        "container-concurrency-target-default",
        "-5",
        &["0.01..=1000000"],
    ),
    (
        "container-concurrency-target-default",
        "1e9",
        &["0.01..=1000000"],
    ),
    (
        "container-concurrency-target-default",
        "NaN",
        &["0.01..=1000000"],
    ),
    (
        "container-concurrency-target-default",
        "inf",
        &["0.01..=1000000"],
    ),
    (
        "container-concurrency-target-default",
        "ten",
        &["0.01..=1000000"],
    ),
    ("container-concurrency-target-percentage", "0", &["1..=100"]),
    (
        "container-concurrency-target-percentage",
        "101",
        &["1..=100"],
    ),
    (
        "container-concurrency-target-percentage",
        "70%",
        &["1..=100"],
    ),
    (
        "requests-per-second-target-default",
        "0.001",
        &["0.01..=1000000"],
    ),
    ("stable-window", "5s", &["6s..=1h"]),
    ("stable-window", "2h", &["6s..=1h"]),
    ("stable-window", "60", &["without a unit", "6s..=1h"]),
    ("stable-window", "-1m", &["not a duration", "6s..=1h"]),
    ("stable-window", "1x", &["unknown unit \"x\"", "6s..=1h"]),
    ("stable-window", "", &["empty duration", "6s..=1h"]),
    ("stable-window", "1 m", &["not a duration", "6s..=1h"]),
    ("panic-window-percentage", "0.5", &["1..=100"]),
    ("panic-window-percentage", "100.1", &["1..=100"]),
    ("panic-threshold-percentage", "100", &["110..=1000"]),
    ("panic-threshold-percentage", "1001", &["110..=1000"]),
    (
        "max-scale-up-rate",
        "1",
        &["greater than 1, at most 1000000"],
    ),
    ("max-scale-up-rate", "0.5", &["greater than 1"]),
    ("max-scale-down-rate", "1.0", &["greater than 1"]),
    ("max-scale-down-rate", "2000000", &["at most 1000000"]),
    ("enable-scale-to-zero", "yes", &["true or false"]),
    ("enable-scale-to-zero", "1", &["true or false"]),
    ("allow-zero-initial-scale", "", &["true or false"]),
    ("scale-to-zero-grace-period", "0s", &["1s..=1h"]),
    ("scale-to-zero-grace-period", "30", &["1s..=1h"]),
    ("scale-to-zero-pod-retention-period", "61m", &["0s..=1h"]),
    ("initial-scale", "-1", &["0..=10000"]),
    ("initial-scale", "1.5", &["0..=10000"]),
    ("initial-scale", "+3", &["0..=10000"]),
    ("min-scale", "10001", &["0..=10000"]),
    ("min-scale", "99999999999999999999", &["0..=10000"]),
    ("max-scale", "many", &["0..=10000"]),
    ("scale-down-delay", "2h", &["0s..=1h"]),
    ("activation-scale", "0", &["1..=10000"]),
    (
        "aggregation",
        "exponential",
        &["linear or weighted-exponential"],
    ),
    ("tick-interval", "50ms", &["100ms..=1m"]),
    ("tick-interval", "2m", &["100ms..=1m"]),
    ("learned-state-flush-interval", "5s", &["10s..=1h"]),
    ("learned-state-flush-interval", "2h", &["10s..=1h"]),
    ("scrape-interval", "0s", &["100ms..=1m"]),
    ("scrape-timeout", "5ms", &["10ms..=1m"]),
    ("activator-queue-depth", "0", &["1..=1000000"]),
    ("activator-queue-depth", "1000001", &["1..=1000000"]),
    (
        "activator-queue-bytes",
        "64MB",
        &["unknown suffix \"MB\"", "1Ki..=64Gi"],
    ),
    ("activator-queue-bytes", "100", &["1Ki..=64Gi"]),
    ("activator-queue-bytes", "65Gi", &["1Ki..=64Gi"]),
    (
        "activator-queue-bytes",
        "Mi",
        &["not a byte size", "1Ki..=64Gi"],
    ),
    ("activator-queue-bytes", "-1Ki", &["not a byte size"]),
    ("activator-queue-bytes", "99999999999Ti", &["too large"]),
    ("activator-queue-deadline", "0s", &["1s..=1h"]),
    ("activator-max-routing-body-bytes", "2Gi", &["1Ki..=1Gi"]),
    ("activator-wake-resend-interval", "11m", &["100ms..=10m"]),
    ("activator-response-timeout", "0s", &["1s..=24h"]),
    ("activator-response-timeout", "999ms", &["1s..=24h"]),
    ("activator-response-timeout", "24h1s", &["1s..=24h"]),
    (
        "activator-response-timeout",
        "600",
        &["without a unit", "1s..=24h"],
    ),
    (
        "activator-response-timeout",
        "10 minutes",
        &["not a duration", "1s..=24h"],
    ),
    (
        "activator-response-timeout",
        "",
        &["empty duration", "1s..=24h"],
    ),
    ("activator-idle-timeout", "0", &["1s..=24h"]),
    (
        "activator-idle-timeout",
        "2d",
        &["unknown unit \"d\"", "1s..=24h"],
    ),
    (
        "activator-idle-timeout",
        "-5m",
        &["not a duration", "1s..=24h"],
    ),
    ("activator-idle-timeout", "48h", &["1s..=24h"]),
];

#[test]
fn every_invalid_form_is_rejected_with_a_message_naming_key_value_and_range() {
    for &(key, value, expected) in BAD_VALUES {
        let (cfg, errors) = parse(&[(key, value)]);
        assert_eq!(errors.len(), 1, "{key}={value:?}: {errors:?}");
        let e = &errors[0];
        assert_eq!((e.key.as_str(), e.value.as_str()), (key, value));
        let text = e.to_string();
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
            cfg,
            GlobalConfig::default(),
            "{key}={value:?} must keep the last good value"
        );
    }
}

#[test]
fn every_documented_range_is_quoted_when_the_value_is_rejected() {
    for doc in CONFIGMAP_KEYS {
        let (_, errors) = parse(&[(doc.key, "@@")]);
        assert_eq!(errors.len(), 1, "{}", doc.key);
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
fn a_bad_key_keeps_the_last_good_value_and_good_keys_still_apply() {
    let (last_good, errors) = parse(&[("stable-window", "2m"), ("max-scale", "7")]);
    assert!(errors.is_empty());
    let data = map(&[
        ("stable-window", "2 minutes"),
        ("max-scale", "8"),
        ("min-scale", "oops"),
    ]);
    let (cfg, errors) = GlobalConfig::from_configmap(&data, &last_good);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["min-scale", "stable-window"]);
    assert_eq!(
        cfg.scaling.stable_window,
        Duration::from_secs(120),
        "last good kept"
    );
    assert_eq!(cfg.scaling.min_scale, last_good.scaling.min_scale);
    assert_eq!(cfg.scaling.max_scale, 8, "good key applied");
}

#[test]
fn a_key_removed_from_the_configmap_returns_to_its_default() {
    let (last_good, _) = parse(&[("max-scale", "7")]);
    let (cfg, errors) = GlobalConfig::from_configmap(&BTreeMap::new(), &last_good);
    assert!(errors.is_empty());
    assert_eq!(cfg.scaling.max_scale, 0);
}

#[test]
fn unknown_keys_name_the_nearest_known_key() {
    for (typo, nearest) in [
        ("stable-windw", "stable-window"),
        ("maxScale", "max-scale"),
        ("min_scale", "min-scale"),
        ("scale-to-zero-grace", "scale-to-zero-grace-period"),
        ("activator-queue-deadlin", "activator-queue-deadline"),
        ("activator-response-timout", "activator-response-timeout"),
        ("activator-idle-timeout-seconds", "activator-idle-timeout"),
        (
            "container-concurrency-target",
            "container-concurrency-target-default",
        ),
    ] {
        let (cfg, errors) = parse(&[(typo, "1"), ("max-scale", "3")]);
        assert_eq!(errors.len(), 1, "{typo}");
        assert_eq!(errors[0].key, typo);
        assert!(
            errors[0]
                .problem
                .contains(&format!("did you mean {nearest:?}")),
            "{typo}: {}",
            errors[0]
        );
        assert_eq!(cfg.scaling.max_scale, 3, "the good key still applies");
    }
}

#[test]
fn an_unknown_key_unlike_any_known_one_lists_them_all() {
    let (_, errors) = parse(&[("zzz", "1")]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].problem.contains("known keys: metric, "),
        "{}",
        errors[0]
    );
    assert!(errors[0].problem.contains("activator-wake-resend-interval"));
}

fn conflict(pairs: &[(&str, &str)]) -> (GlobalConfig, ConfigError) {
    let (cfg, mut errors) = parse(pairs);
    assert_eq!(errors.len(), 1, "{pairs:?}: {errors:?}");
    (cfg, errors.remove(0))
}

#[test]
fn min_above_max_uses_max_and_names_both_keys() {
    let (cfg, e) = conflict(&[("min-scale", "5"), ("max-scale", "3")]);
    assert_eq!((cfg.scaling.min_scale, cfg.scaling.max_scale), (3, 3));
    assert_eq!(e.key, "min-scale");
    for want in ["min-scale=5", "max-scale=3", "using min-scale 3"] {
        assert!(e.problem.contains(want), "{e}");
    }
}

#[test]
fn max_scale_zero_is_unbounded_and_never_conflicts() {
    let c = parse_ok(&[
        ("min-scale", "50"),
        ("max-scale", "0"),
        ("activation-scale", "9"),
    ]);
    assert_eq!(c.scaling.min_scale, 50);
    assert_eq!(c.scaling.activation_scale, 9);
    assert_eq!(
        c.scaling.initial_scale, 50,
        "min-scale wins over a smaller initial-scale"
    );
}

#[test]
fn min_equal_to_max_is_fine() {
    parse_ok(&[("min-scale", "4"), ("max-scale", "4")]);
}

#[test]
fn activation_scale_above_a_bounded_max_is_capped() {
    let (cfg, e) = conflict(&[("activation-scale", "10"), ("max-scale", "4")]);
    assert_eq!(cfg.scaling.activation_scale, 4);
    assert_eq!(e.key, "activation-scale");
    assert!(e.problem.contains("max-scale=4"), "{e}");
}

#[test]
fn initial_scale_zero_needs_allow_zero_initial_scale() {
    let (cfg, e) = conflict(&[("initial-scale", "0")]);
    assert_eq!(cfg.scaling.initial_scale, 1);
    assert_eq!(e.key, "initial-scale");
    assert!(e.problem.contains("allow-zero-initial-scale=true"), "{e}");
    let c = parse_ok(&[("initial-scale", "0"), ("allow-zero-initial-scale", "true")]);
    assert_eq!(c.scaling.initial_scale, 0);
}

#[test]
fn initial_scale_above_a_bounded_max_is_capped() {
    let (cfg, e) = conflict(&[("initial-scale", "9"), ("max-scale", "2")]);
    assert_eq!(cfg.scaling.initial_scale, 2);
    assert!(e.problem.contains("initial-scale=9") && e.problem.contains("max-scale=2"));
}

#[test]
fn panic_window_below_one_second_is_raised() {
    let (cfg, e) = conflict(&[("stable-window", "6s")]);
    assert_eq!(e.key, "stable-window", "the only key written");
    assert!(
        e.problem.contains("600ms") && e.problem.contains("1s minimum"),
        "{e}"
    );
    assert_eq!(cfg.scaling.panic_window_percentage, 16.67);
    assert!(cfg.scaling.panic_window() >= Duration::from_secs(1));

    let (cfg, e) = conflict(&[("stable-window", "60s"), ("panic-window-percentage", "1")]);
    assert_eq!(e.key, "panic-window-percentage");
    assert_eq!(cfg.scaling.panic_window_percentage, 1.67);
}

#[test]
fn scrape_timeout_longer_than_the_interval_is_capped() {
    let (cfg, e) = conflict(&[("scrape-timeout", "3s")]);
    assert_eq!(cfg.scrape_timeout, Duration::from_secs(1));
    assert_eq!(e.key, "scrape-timeout");
    assert!(e.problem.contains("scrape-interval=1s"), "{e}");
}

#[test]
fn routing_body_larger_than_the_queue_budget_is_capped() {
    let (cfg, e) = conflict(&[("activator-queue-bytes", "4Ki")]);
    assert_eq!(cfg.activator.max_routing_body_bytes, 4096);
    assert_eq!(e.key, "activator-queue-bytes");
    assert!(
        e.problem.contains("activator-max-routing-body-bytes=1Mi"),
        "{e}"
    );
}

#[test]
fn a_conflict_involving_a_bad_key_uses_the_last_good_value() {
    let (last_good, _) = parse(&[("max-scale", "10"), ("min-scale", "2")]);
    let data = map(&[("max-scale", "ten"), ("min-scale", "12")]);
    let (cfg, errors) = GlobalConfig::from_configmap(&data, &last_good);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(cfg.scaling.max_scale, 10);
    assert_eq!(cfg.scaling.min_scale, 10);
}

#[test]
fn sizing_and_the_adaptive_policy_are_parsed_and_bad_values_named() {
    use zeroscale_config::{Sizing, ZeroPolicy};
    let c = parse_ok(&[
        ("sizing", "knative"),
        ("scale-to-zero-policy", "adaptive"),
        ("adaptive-keep-alive-percentile", "95"),
        ("adaptive-prewarm-percentile", "0"),
        ("adaptive-histogram-range", "1h"),
        ("adaptive-prewarm-margin", "2m"),
        ("adaptive-cold-start-cost", "90s"),
    ]);
    let s = &c.scaling;
    assert_eq!(s.sizing, Sizing::Knative);
    assert_eq!(s.scale_to_zero_policy, ZeroPolicy::Adaptive);
    assert_eq!(s.adaptive.keep_alive_percentile, 95.0);
    assert_eq!(s.adaptive.prewarm_percentile, 0.0);
    assert_eq!(s.adaptive.histogram_range, Duration::from_secs(3600));
    assert_eq!(s.adaptive.prewarm_margin, Duration::from_secs(120));
    assert_eq!(s.adaptive.cold_start_cost, Some(Duration::from_secs(90)));
    assert_eq!(
        GlobalConfig::default().scaling.adaptive.cold_start_cost,
        None
    );
    let off = parse_ok(&[("adaptive-cold-start-cost", "off")]);
    assert_eq!(off.scaling.adaptive.cold_start_cost, None);
    assert_eq!(GlobalConfig::default().scaling.sizing, Sizing::Demand);
    for (key, bad, allowed) in [
        ("sizing", "fast", "demand or knative"),
        ("scale-to-zero-policy", "learned", "fixed or adaptive"),
        ("adaptive-keep-alive-percentile", "40", "50"),
        ("adaptive-prewarm-percentile", "60", "50"),
        ("adaptive-histogram-range", "1m", "4m"),
        (
            "adaptive-cold-start-cost",
            "0s",
            "off or a duration in 1s..=24h",
        ),
        (
            "adaptive-cold-start-cost",
            "cheap",
            "off or a duration in 1s..=24h",
        ),
        ("adaptive-cold-start-cost", "25h", "1s..=24h"),
    ] {
        let (cfg, errors) = parse(&[(key, bad)]);
        assert_eq!(errors.len(), 1, "{key}={bad}: {errors:?}");
        assert_eq!(errors[0].key, key);
        assert_eq!(errors[0].value, bad);
        assert!(
            errors[0].problem.contains(allowed),
            "{key}: {}",
            errors[0].problem
        );
        // The last good value stays.
        assert_eq!(cfg.scaling, GlobalConfig::default().scaling, "{key}");
    }
}

#[test]
fn held_streams_are_off_by_default_and_take_off_or_a_duration() {
    let d = GlobalConfig::default();
    assert_eq!(d.activator.hold_streams, None);
    assert_eq!(
        d.activator.stream_heartbeat_interval,
        Duration::from_secs(10)
    );
    let c = parse_ok(&[
        ("activator-hold-streams", "15s"),
        ("activator-stream-heartbeat-interval", "2s"),
    ]);
    assert_eq!(c.activator.hold_streams, Some(Duration::from_secs(15)));
    assert_eq!(
        c.activator.stream_heartbeat_interval,
        Duration::from_secs(2)
    );
    assert_eq!(
        parse_ok(&[("activator-hold-streams", "0s")])
            .activator
            .hold_streams,
        Some(Duration::ZERO),
        "0s holds a stream as soon as it is queued"
    );
    assert_eq!(
        parse_ok(&[("activator-hold-streams", " off ")])
            .activator
            .hold_streams,
        None
    );
    for (key, bad, says) in [
        (
            "activator-hold-streams",
            "2h",
            "expected off or a duration in 0s..=1h",
        ),
        ("activator-hold-streams", "on", "expected off or a duration"),
        (
            "activator-hold-streams",
            "true",
            "expected off or a duration",
        ),
        ("activator-stream-heartbeat-interval", "500ms", "1s..=5m"),
        ("activator-stream-heartbeat-interval", "off", "1s..=5m"),
    ] {
        let last_good = parse_ok(&[
            ("activator-hold-streams", "5s"),
            ("activator-stream-heartbeat-interval", "3s"),
        ]);
        let (c, errors) = GlobalConfig::from_configmap(&map(&[(key, bad)]), &last_good);
        assert_eq!(errors.len(), 1, "{key}={bad}: {errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.starts_with(&format!("{key}: {bad:?} is invalid")),
            "{text}"
        );
        assert!(text.contains(says), "{text}");
        // The bad key keeps its last good value; the other key is back at its default.
        if key == "activator-hold-streams" {
            assert_eq!(c.activator.hold_streams, Some(Duration::from_secs(5)));
        } else {
            assert_eq!(
                c.activator.stream_heartbeat_interval,
                Duration::from_secs(3)
            );
        }
    }
}
