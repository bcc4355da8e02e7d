//! The demand model (`Sizing::Demand`): sizing from arrivals x service time plus the backlog's
//! drain, against Knative's sizing from requests held, and the panic comparison as reported.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use zeroscale_scaling::{
    DataState, Decider, Decision, Demand, Observation, Params, Reason, Sample, Sizing,
};

fn t0() -> Instant {
    // Far enough from the process start that `t0 - x` never underflows.
    Instant::now() + Duration::from_secs(3600)
}

fn at(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

fn obs(ready: u32, current: u32, in_flight: u64, queued: u64) -> Observation {
    Observation {
        ready_pods: ready,
        current_scale: current,
        in_flight,
        queued,
        data: DataState::Fresh,
    }
}

/// The setting: container-concurrency 8 at 70% (5.6 per pod), a 6 s stable window and
/// a 50% panic window (3 s: the drain target), as the test kit's fast configuration.
fn fast(sizing: Sizing) -> Params {
    Params {
        target: 8.0,
        stable_window: Duration::from_secs(6),
        panic_window_percentage: 50.0,
        scale_to_zero_grace_period: Duration::from_secs(4),
        sizing,
        ..Params::default()
    }
}

/// A second as the activator reports it: `held` requests held on average (queued + in
/// flight), `arrivals` per second, `served` finished per second with `service` seconds each.
fn second(held: f64, arrivals: f64, served: f64, service: f64) -> (Sample, Option<Demand>) {
    (
        Sample {
            concurrency: held,
            rps: served,
        },
        Some(Demand {
            arrivals,
            in_service: served * service,
            served,
            service_seconds: served * service,
        }),
    )
}

/// Warm traffic (20/s at 50 ms: 1 request in service), then 30 s idle and scaled to zero, then
/// a cold start: 3 s at zero while 60 requests queue, as the Azure code trace at 20x gives.
/// Returns the decision at the first tick after the wake, with the backlog still queued.
fn cold_start(sizing: Sizing) -> Decision {
    let t0 = t0();
    let mut d = Decider::new(fast(sizing), t0, false);
    for s in 0..10 {
        let (m, dm) = second(1.0, 20.0, 20.0, 0.05);
        d.record_with(at(t0, s), m, dm);
        d.decide(at(t0, s), &obs(1, 1, 1, 0));
    }
    for s in 10..40 {
        let (m, dm) = second(0.0, 0.0, 0.0, 0.05);
        d.record_with(at(t0, s), m, dm);
        d.decide(at(t0, s), &obs(1, 1, 0, 0));
    }
    assert_eq!(d.decide(at(t0, 40), &obs(1, 1, 0, 0)).desired, 0);
    // At zero: 20/s arrive and queue; held grows 0 -> 60, 30 on average.
    for (s, held) in [(41, 10.0), (42, 30.0), (43, 50.0)] {
        let (m, dm) = second(held, 20.0, 0.0, 0.05);
        d.record_with(at(t0, s), m, dm);
    }
    d.decide(at(t0, 43), &obs(0, 1, 0, 60))
}

#[test]
fn a_cold_start_backlog_is_work_to_drain_not_sustained_load() {
    // Demand: 15/s (arrivals over the 3 s panic window + 1 s, one of them before the
    // burst) x 50 ms = 0.75, + 60 queued x 50 ms / 3 s = 1.0 -> 1.75 -> 1 pod.
    let d = cold_start(Sizing::Demand);
    let demand = d.inputs.demand.expect("demand sizing");
    assert!(
        (demand.service_time.expect("measured") - 0.05).abs() < 1e-9,
        "{demand:?}"
    );
    assert_eq!(demand.backlog, 60);
    assert_eq!(demand.drain_time, Duration::from_secs(3));
    assert!((d.inputs.panic_average - 1.75).abs() < 1e-6, "{d:?}");
    assert_eq!(d.desired, 1, "{d}");
    assert_eq!(
        d.to_string(),
        "stable demand 1.5 over 6s (10.0 arrivals/s x 0.050s served, + 60 queued drained in 3s), \
         target 5.6 per pod"
    );
    // Knative reads the 30 held on average over the panic window as sustained concurrency:
    // ceil(30 / 5.6) = 6 pods, which is panic for 1 ready and held for a stable window.
    let k = cold_start(Sizing::Knative);
    assert_eq!(k.inputs.demand, None);
    assert_eq!((k.desired, k.reason), (6, Reason::Panic), "{k}");
}

#[test]
fn demand_table() {
    // (arrivals/s, service s, in service, queued, stable window s) -> pods at 5.6 per pod.
    let cases: &[(f64, f64, f64, u64, u64, u32)] = &[
        // Steady, no queue: Little's law.
        (100.0, 0.05, 5.0, 0, 6, 1),
        (200.0, 0.05, 10.0, 0, 6, 2),
        // A backlog adds what drains it in the 3 s panic window: 300 x 0.05 / 3 = 5.
        (100.0, 0.05, 5.0, 300, 6, 2),
        // Long requests: one slot per queued request at most (100 x min(1, 30/3) = 100).
        (0.1, 30.0, 3.0, 100, 6, 19),
        // Arrivals stopped but long requests are still being served: those are a floor.
        (0.0, 30.0, 11.0, 0, 6, 2),
    ];
    for &(arrivals, service, in_service, queued, window, pods) in cases {
        let t0 = t0();
        let params = Params {
            stable_window: Duration::from_secs(window),
            ..fast(Sizing::Demand)
        };
        let mut d = Decider::new(params, t0, false);
        // Earlier traffic measured the service time; the window's own seconds serve
        // `arrivals` each (or nothing, when arrivals stopped).
        d.record_with(
            at(t0, 0),
            Sample::default(),
            Some(Demand {
                arrivals: 0.0,
                in_service: service,
                served: 1.0,
                service_seconds: service,
            }),
        );
        d.decide(at(t0, 0), &obs(pods, pods, 1, 0));
        // A new run of data, a while later.
        let start = 1000;
        // Steady: the window's requests finish as they arrive; or nothing finishes (arrivals
        // stopped, long requests still in service).
        let served = if arrivals > 0.0 { arrivals } else { 0.0 };
        for s in start..start + window {
            d.record_with(
                at(t0, s),
                Sample {
                    concurrency: 1000.0,
                    rps: 0.0,
                },
                Some(Demand {
                    arrivals,
                    in_service,
                    served,
                    service_seconds: served * service,
                }),
            );
        }
        let dec = d.decide(at(t0, start + window - 1), &obs(pods, pods, 1, queued));
        assert_eq!(
            dec.desired, pods,
            "{arrivals}/s x {service}s, {in_service} in service, {queued} queued: {dec}"
        );
    }
}

#[test]
fn without_demand_figures_it_sizes_as_knative_and_before_a_service_time_from_pods_only() {
    let t0 = t0();
    // (demand figures, pods wanted): Knative reads the 28 held as ceil(28 / 5.6) = 5 pods;
    // with figures but nothing served yet, only the 11 being served count: 2 pods.
    for (with_demand, want) in [(false, 5), (true, 2)] {
        let mut d = Decider::new(fast(Sizing::Demand), t0, false);
        for s in 0..6 {
            let sample = Sample {
                concurrency: 28.0,
                rps: 0.0,
            };
            let demand = with_demand.then_some(Demand {
                arrivals: 20.0,
                in_service: 11.0,
                served: 0.0,
                service_seconds: 0.0,
            });
            d.record_with(at(t0, s), sample, demand);
        }
        let dec = d.decide(at(t0, 5), &obs(1, 1, 11, 28));
        assert_eq!(dec.inputs.demand.is_some(), with_demand);
        assert_eq!(dec.desired, want, "{dec}");
        if with_demand {
            assert_eq!(
                dec.to_string(),
                "panic mode: demand 11.0 over 3s (11.0 being served; no service time measured \
                 yet) = 1.96 pods at 5.6 per pod, rounded up to 2 for 1 ready: 200% >= threshold \
                 200%"
            );
        }
    }
}

#[test]
fn panic_says_what_was_compared() {
    // 6.0 is 107% of one pod's 5.6, rounded up to 2 pods: 200% of 1 ready, the threshold.
    let t0 = t0();
    let mut d = Decider::new(fast(Sizing::Knative), t0, false);
    for s in 0..6 {
        d.record(
            at(t0, s),
            Sample {
                concurrency: 6.0,
                rps: 0.0,
            },
        );
    }
    let dec = d.decide(at(t0, 5), &obs(1, 1, 6, 0));
    assert_eq!((dec.desired, dec.reason), (2, Reason::Panic));
    assert_eq!(dec.inputs.panic_percentage, 200.0);
    assert_eq!(
        dec.to_string(),
        "panic mode: concurrency 6.0 over 3s = 1.07 pods at 5.6 per pod, rounded up to 2 for 1 \
         ready: 200% >= threshold 200%"
    );
}

/// A model with service time `s` and arrival rate at most `r` meets a backlog of at most `n`
/// queued requests (a cold start or pods still starting); `t` is the drain target (the panic
/// window), `tpp` what one pod carries.
#[derive(Clone, Debug)]
struct Case {
    service: f64,
    rate: f64,
    backlog: u64,
    stable_secs: u64,
    target: f64,
    activation: u32,
    seconds: Vec<(f64, f64, f64, u64)>,
    ready: u32,
}

impl Case {
    fn tpp(&self) -> f64 {
        self.target * 0.7
    }
    fn drain(&self) -> f64 {
        (self.stable_secs / 10) as f64
    }
    /// The bound: what drains the backlog within the target plus r x s, in pods (and
    /// activation-scale, which any load gets).
    fn bound(&self) -> u32 {
        let backlog = self.backlog as f64 * (self.service / self.drain()).min(1.0);
        let pods = ((backlog + self.rate * self.service) / self.tpp() * (1.0 + 1e-6)).ceil();
        (pods as u32).max(self.activation)
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![0.005..0.5f64, 0.5..60.0f64],
        0.5..500.0f64,
        0u64..=5000,
        prop_oneof![Just(10u64), Just(60), Just(120)],
        1.0..100.0f64,
        1u32..=3,
    )
        .prop_flat_map(
            |(service, rate, backlog, stable_secs, target, activation)| {
                // Each second: (held, arrivals, served, queued now); held is anything at all.
                let second = (
                    0.0..20_000.0f64,
                    0.0..=rate,
                    prop_oneof![Just(0.0), 0.5..=rate.max(0.5)],
                    0..=backlog,
                );
                let seconds = prop::collection::vec(second, 1..200);
                (
                    Just((service, rate, backlog, stable_secs, target, activation)),
                    seconds,
                )
            },
        )
        .prop_flat_map(
            |((service, rate, backlog, stable_secs, target, activation), seconds)| {
                let c = Case {
                    service,
                    rate,
                    backlog,
                    stable_secs,
                    target,
                    activation,
                    seconds,
                    ready: 0,
                };
                let b = c.bound();
                (0..=b).prop_map(move |ready| Case { ready, ..c.clone() })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A backlog of N requests with service time s and arrival rate r never asks for more than
    /// what drains it within the target plus r x s, whatever the requests held look like (the
    /// ready pods are kept within that bound, so panic's "never below the current scale" and
    /// the down-rate floor do not raise it).
    #[test]
    fn a_backlog_never_asks_for_more_than_drains_it(c in case()) {
        let t0 = t0();
        let params = Params {
            target: c.target,
            stable_window: Duration::from_secs(c.stable_secs),
            panic_window_percentage: 10.0,
            activation_scale: c.activation,
            sizing: Sizing::Demand,
            ..Params::default()
        };
        let mut d = Decider::new(params, t0, false);
        // Earlier traffic measured the service time.
        d.record_with(at(t0, 0), Sample::default(), Some(Demand {
            arrivals: c.rate,
            in_service: c.rate * c.service,
            served: c.rate,
            service_seconds: c.rate * c.service,
        }));
        let bound = c.bound();
        for (i, &(held, arrivals, served, queued)) in c.seconds.iter().enumerate() {
            let now = at(t0, i as u64 + 1);
            d.record_with(now, Sample { concurrency: held, rps: served }, Some(Demand {
                arrivals,
                in_service: served * c.service,
                served,
                service_seconds: served * c.service,
            }));
            let dec = d.decide(now, &obs(c.ready, c.ready, 0, queued));
            prop_assert!(dec.desired <= bound, "{} > {}: {:?}\n{}", dec.desired, bound, c, dec);
        }
    }
}
