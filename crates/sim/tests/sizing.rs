//! The demand model against Knative's sizing on simulated traffic: a cold start's backlog, and
//! steady load read through slower scrapes.

use std::time::Duration;

use zeroscale_sim::dist::Latency;
use zeroscale_sim::event::{Nanos, SEC};
use zeroscale_sim::policy::PolicyKind;
use zeroscale_sim::setup::{ConfigSource, ModelSettings};
use zeroscale_sim::sim::{ModelOutcome, Options, PodStart, Service, simulate};
use zeroscale_sim::trace::Request;

const MS: Nanos = 1_000_000;

/// The test kit's fast configuration (as the replay), container-concurrency 8 at
/// 70%: 5.6 per pod.
fn settings(sizing: &str, extra: &[(&str, &str)]) -> ModelSettings {
    let mut c = ConfigSource::default();
    for (k, v) in [
        ("tick-interval", "1s"),
        ("scrape-interval", "1s"),
        ("stable-window", "6s"),
        ("panic-window-percentage", "50"),
        ("scale-to-zero-grace-period", "4s"),
        ("activator-wake-resend-interval", "2s"),
        ("zeroscale.dev/container-concurrency", "8"),
        ("sizing", sizing),
    ]
    .iter()
    .chain(extra)
    {
        c.set(k, v);
    }
    c.resolve().expect("valid config")
}

fn opts(horizon: Nanos) -> Options {
    Options {
        service: Service::Fixed(50 * MS),
        start: PodStart {
            schedule: Latency::ZERO,
            image: Latency::ZERO,
            load: Latency::Fixed(Duration::from_secs(2)),
        },
        wake_latency: 50 * MS,
        shutdown: SEC,
        initial_replicas: 0,
        newly_enabled: false,
        horizon,
        bin: SEC,
        seed: 1,
    }
}

/// `rate` requests per second, evenly spaced, over `[from, to)` seconds.
fn steady(from: u64, to: u64, rate: u64) -> impl Iterator<Item = Nanos> {
    let gap = SEC / rate;
    (from * SEC..to * SEC).step_by(gap as usize)
}

fn run(sizing: &str, extra: &[(&str, &str)], ats: &[Nanos]) -> ModelOutcome {
    let requests: Vec<Request> = ats
        .iter()
        .map(|&at| Request {
            at,
            model: 0,
            context_tokens: None,
            generated_tokens: None,
        })
        .collect();
    let s = settings(sizing, extra);
    simulate("m", &requests, &s, &PolicyKind::Engine, &opts(120 * SEC), 0)
}

/// Warm traffic for 20 s (20/s: the service time is measured), 30 s of silence (scaled to
/// zero), then 100/s for 40 s: 5 concurrent at 50 ms, 1 pod at 5.6 per pod; 200 requests
/// queue during the 2 s start.
fn cold_start_trace() -> Vec<Nanos> {
    steady(0, 20, 20).chain(steady(50, 90, 100)).collect()
}

#[test]
fn a_cold_start_backlog_does_not_run_away() {
    let ats = cold_start_trace();
    let demand = run("demand", &[], &ats);
    let knative = run("knative", &[], &ats);
    for m in [&demand, &knative] {
        assert_eq!(m.served, m.requests, "{m:?}");
        assert_eq!((m.rejected_503, m.expired_504), (0, 0));
        assert!(m.wakes >= 2, "woken from zero again: {:?}", m.events);
    }
    // The steady need is 1 pod; draining the 200 queued in the 3 s panic window adds
    // 200 x 0.05 / 3 = 3.3 concurrent: 2 pods at most, within 2x of the steady need.
    assert!(demand.peak_replicas <= 2, "{:?}", demand.events);
    // Knative reads the backlog (about 100 held on average over the panic window) as load.
    assert!(
        knative.peak_replicas >= 8,
        "Knative no longer runs away, so this test no longer compares: {:?}",
        knative.events
    );
    assert!(demand.replica_seconds < knative.replica_seconds);
}

#[test]
fn steady_load_is_sized_by_littles_law() {
    // 100/s at 50 ms = 5 concurrent: 1 pod at 5.6 per pod, from a pod that is up.
    let ats: Vec<Nanos> = steady(0, 100, 100).collect();
    for scrape in ["1s", "2s"] {
        let m = run(
            "demand",
            &[
                ("scrape-interval", scrape),
                ("scrape-timeout", "1s"),
                ("zeroscale.dev/min-scale", "1"),
            ],
            &ats,
        );
        // The first wake's backlog may hold a second pod through one panic episode; after
        // it, one pod and no change until the load stops.
        assert!(m.peak_replicas <= 2, "scrape {scrape}: {:?}", m.events);
        let last_change = m.events.iter().rev().find(|e| e.at < 100 * SEC);
        assert!(
            last_change.is_some_and(|e| e.to == 1 && e.at <= 20 * SEC),
            "scrape {scrape}: no change in steady load: {:?}",
            m.events
        );
    }
}
