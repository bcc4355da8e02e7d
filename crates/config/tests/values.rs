//! Durations, byte sizes, model names, and properties that hold for any input.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use zeroscale_config::{
    ANNOTATIONS, CONFIGMAP_KEYS, DeploymentSettings, GlobalConfig, MIN_PANIC_WINDOW,
    format_duration, parse_bytes, parse_duration, validate_model_name,
};

#[test]
fn durations_parse() {
    let ms = Duration::from_millis;
    for (text, want) in [
        ("30s", ms(30_000)),
        ("1m30s", ms(90_000)),
        ("500ms", ms(500)),
        ("2h", ms(7_200_000)),
        ("0s", Duration::ZERO),
        ("0", Duration::ZERO),
        ("1.5s", ms(1500)),
        (".5s", ms(500)),
        ("1h2m3s4ms", ms(3_723_004)),
        ("250us", Duration::from_micros(250)),
        ("250µs", Duration::from_micros(250)),
        ("7ns", Duration::from_nanos(7)),
        ("30s1m", ms(90_000)),
    ] {
        assert_eq!(parse_duration(text), Ok(want), "{text:?}");
    }
}

#[test]
fn malformed_durations_are_rejected_with_a_reason() {
    for (text, want) in [
        ("", "empty duration"),
        ("-1s", "expected a number"),
        ("+1s", "expected a number"),
        ("30", "without a unit"),
        ("1m30", "without a unit"),
        ("1x", "unknown unit \"x\""),
        ("1S", "unknown unit \"S\""),
        ("s", "expected a number"),
        ("1 s", "unknown unit \" s\""),
        (" 1s", "expected a number"),
        ("1.s.", "expected a number at \".\""),
        ("99999999999999999999999999999999999999h", "too long"),
        ("18446744073709551616s", "too long"),
    ] {
        let err = parse_duration(text).expect_err(text);
        assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn byte_sizes_parse() {
    assert_eq!(parse_bytes("65536"), Ok(65536));
    assert_eq!(parse_bytes("64Ki"), Ok(64 << 10));
    assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
    assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
    assert_eq!(parse_bytes("1Ti"), Ok(1 << 40));
    for bad in ["", "Mi", "64 Mi", "64mi", "64M", "64MB", "1.5Gi", "-1"] {
        assert!(parse_bytes(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn model_name_rule() {
    for ok in [
        "m",
        "llama-3",
        "llama-3.1-8b",
        "bert_base",
        "a".repeat(253).as_str(),
    ] {
        assert_eq!(validate_model_name(ok), Ok(()), "{ok:?}");
    }
    let too_long = "a".repeat(254);
    for bad in [
        "", "Llama", "a/b", "a b", "-a", "a-", ".a", "a_", "a%20", "é", &too_long,
    ] {
        assert!(validate_model_name(bad).is_err(), "{bad:?}");
    }
}

fn any_key() -> impl Strategy<Value = String> {
    let known: Vec<String> = CONFIGMAP_KEYS
        .iter()
        .chain(ANNOTATIONS)
        .map(|d| d.key.to_owned())
        .collect();
    prop_oneof![proptest::sample::select(known), ".{0,30}"]
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,20}",
        "[0-9]{1,25}",
        "[0-9]{1,12}(\\.[0-9]{0,12})?(ns|us|ms|s|m|h|Ki|Mi|Gi|Ti)?",
        "(true|false|pod|rps|linear|/metrics|a\\.b)",
    ]
}

proptest! {
    #[test]
    fn from_configmap_never_panics_and_stays_consistent(
        data in proptest::collection::btree_map(any_key(), any_value(), 0..12),
    ) {
        let (cfg, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
        check_consistent(&cfg.scaling);
        prop_assert!(cfg.scrape_timeout <= cfg.scrape_interval);
        // Feeding the result back as last-good must not panic either.
        let (again, _) = GlobalConfig::from_configmap(&data, &cfg);
        check_consistent(&again.scaling);
        for e in errors {
            prop_assert!(data.contains_key(&e.key), "{} names a key not in the data", e.key);
        }
    }

    #[test]
    fn resolve_never_panics_and_stays_consistent(
        data in proptest::collection::btree_map(any_key(), any_value(), 0..12),
    ) {
        let (s, errors) = DeploymentSettings::resolve(&GlobalConfig::default(), &data);
        check_consistent(&s.scaling);
        for e in errors {
            prop_assert!(data.contains_key(&e.key), "{} names a key not in the data", e.key);
        }
    }

    #[test]
    fn parse_duration_never_panics_and_formats_back(s in ".{0,40}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}

fn check_consistent(p: &zeroscale_config::Params) {
    if p.max_scale != 0 {
        assert!(p.min_scale <= p.max_scale, "{p:?}");
        assert!(p.initial_scale <= p.max_scale, "{p:?}");
        assert!(p.activation_scale <= p.max_scale, "{p:?}");
    }
    assert!(p.initial_scale >= p.min_scale, "{p:?}");
    assert!(p.activation_scale >= 1, "{p:?}");
    assert!(p.panic_window() >= MIN_PANIC_WINDOW, "{p:?}");
    assert!(p.target > 0.0 && p.target_utilization > 0.0 && p.target_utilization <= 1.0);
    assert!(p.max_scale_up_rate > 1.0 && p.max_scale_down_rate > 1.0);
}

#[test]
fn error_keys_are_exact_keys_from_the_input() {
    let data: BTreeMap<String, String> = [("max-scale".to_owned(), "x".to_owned())]
        .into_iter()
        .collect();
    let (_, errors) = GlobalConfig::from_configmap(&data, &GlobalConfig::default());
    assert_eq!(errors[0].key, "max-scale");
}
