//! Properties of any run: every request has exactly one outcome, the accounting is consistent,
//! the limits hold, and a run is a pure function of its inputs.

use std::time::Duration;

use proptest::prelude::*;
use zeroscale_sim::dist::Latency;
use zeroscale_sim::event::{Nanos, SEC};
use zeroscale_sim::policy::PolicyKind;
use zeroscale_sim::setup::ConfigSource;
use zeroscale_sim::sim::{Options, PodStart, Service, simulate};
use zeroscale_sim::trace::Request;

const MS: Nanos = 1_000_000;

fn case() -> impl Strategy<Value = (Vec<Nanos>, u64, u32, usize, u64, u64, u64, u64, u64)> {
    (
        prop::collection::vec(0..120_000u64, 0..200), // arrivals in ms
        1..60u64,                                     // grace (s)
        0..4u32,                                      // container-concurrency
        1..50usize,                                   // queue depth
        1..30u64,                                     // queue deadline (s)
        1..2000u64,                                   // service (ms)
        0..20_000u64,                                 // start median (ms)
        0..2u64,                                      // fixed or lognormal start
        0..1000u64,                                   // seed
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_run_is_consistent((mut ats, grace, cc, depth, deadline, service, start, lognormal, seed) in case()) {
        ats.sort_unstable();
        let reqs: Vec<Request> = ats
            .iter()
            .map(|&ms| Request { at: ms * MS, model: 0, context_tokens: None, generated_tokens: None })
            .collect();
        let mut c = ConfigSource::default();
        c.set("scale-to-zero-grace-period", &format!("{grace}s"));
        c.set("zeroscale.dev/container-concurrency", &cc.to_string());
        c.set("activator-queue-depth", &depth.to_string());
        c.set("activator-queue-deadline", &format!("{deadline}s"));
        c.set("tick-interval", "1s");
        let s = c.resolve().unwrap();
        let median = Duration::from_millis(start);
        let load = if lognormal == 1 {
            Latency::LogNormal { median, p99: median * 3 }
        } else {
            Latency::Fixed(median)
        };
        let o = Options {
            service: Service::Fixed(service * MS),
            start: PodStart { schedule: Latency::ZERO, image: Latency::ZERO, load },
            wake_latency: 20 * MS,
            shutdown: 500 * MS,
            initial_replicas: 0,
            newly_enabled: false,
            horizon: 200 * SEC,
            bin: 10 * SEC,
            seed,
        };
        let m = simulate("m", &reqs, &s, &PolicyKind::Engine, &o, 0);
        prop_assert_eq!(m.requests, reqs.len() as u64);
        prop_assert_eq!(m.served + m.rejected_503 + m.expired_504 + m.unfinished, m.requests);
        prop_assert!(m.idle_replica_seconds <= m.ready_replica_seconds + 1e-9);
        prop_assert!(m.ready_replica_seconds <= m.replica_seconds + 1e-9);
        prop_assert!(m.wakes <= m.cold_starts);
        prop_assert!(m.cold_starts <= m.requests);
        prop_assert!(m.peak_ready <= m.peak_replicas);
        prop_assert_eq!(m.scale_events, m.scale_ups + m.scale_downs);
        // Nobody is served after its deadline.
        prop_assert!(m.waits.iter().all(|&w| w <= deadline * SEC), "{:?}", m.waits.iter().max());
        // The timeline holds the same integral as the total, to the nanosecond.
        let alive: u128 = m.timeline.alive_ns.iter().sum();
        prop_assert_eq!(alive as f64 / 1e9, m.replica_seconds);
        let arrivals: u64 = m.timeline.arrivals.iter().sum();
        prop_assert_eq!(arrivals, m.requests);
        // Without traffic nothing ever starts.
        if reqs.is_empty() {
            prop_assert_eq!(m.replica_seconds, 0.0);
        }
        // Pure: the same inputs give the same outcome.
        let again = simulate("m", &reqs, &s, &PolicyKind::Engine, &o, 0);
        prop_assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&m).unwrap());
    }
}
