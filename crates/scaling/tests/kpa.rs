//! Table tests of documented KPA behaviour, through the public API only.

use std::time::{Duration, Instant};

use zeroscale_scaling::{
    Aggregation, DataState, Decider, Decision, Metric, Observation, Params, Reason, Sample,
};

/// A decider and a time origin; seconds are counted from the origin.
struct Sim {
    d: Decider,
    t0: Instant,
}

impl Sim {
    fn new(params: Params, newly_enabled: bool) -> Self {
        // Far enough from the process start that `t0 - x` never underflows.
        let t0 = Instant::now() + Duration::from_secs(3600);
        Self {
            d: Decider::new(params, t0, newly_enabled),
            t0,
        }
    }

    fn at(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s)
    }

    /// One concurrency sample per second for seconds `from..to`.
    fn load(&mut self, from: u64, to: u64, concurrency: f64) {
        for s in from..to {
            let at = self.at(s as f64);
            self.d.record(
                at,
                Sample {
                    concurrency,
                    rps: 0.0,
                },
            );
        }
    }

    fn decide(&mut self, s: u64, obs: Observation) -> Decision {
        let now = self.at(s as f64);
        self.d.decide(now, &obs)
    }
}

fn obs(ready: u32, current: u32) -> Observation {
    Observation {
        ready_pods: ready,
        current_scale: current,
        in_flight: 0,
        queued: 0,
        data: DataState::Fresh,
    }
}

fn steady(n: u32) -> Observation {
    obs(n, n)
}

#[test]
fn stable_150_on_one_pod_wants_three() {
    // Knative's example: target 100 at 70% utilization, 150 concurrent -> ceil(150/70) = 3.
    let mut sim = Sim::new(Params::default(), false);
    sim.load(0, 60, 150.0);
    let d = sim.decide(59, steady(1));
    assert_eq!(d.desired, 3);
    // 3 pods for 1 ready is over the 200% panic threshold.
    assert_eq!(d.reason, Reason::Panic);

    let mut sim = Sim::new(Params::default(), true);
    sim.load(0, 60, 150.0);
    let d = sim.decide(59, steady(2));
    assert_eq!((d.desired, d.reason), (3, Reason::Stable));
    assert_eq!(d.inputs.stable_average, 150.0);
    assert_eq!(d.inputs.target_per_pod, 70.0);
    assert_eq!(
        d.to_string(),
        "stable concurrency 150.0 over 60s, target 70.0 per pod"
    );
}

#[test]
fn panic_is_entered_at_twice_the_ready_pods_and_held_for_a_stable_window() {
    let mut sim = Sim::new(Params::default(), true);
    // 350 = 5 pods x 70: calm.
    sim.load(0, 60, 350.0);
    let d = sim.decide(59, steady(5));
    assert_eq!((d.desired, d.reason), (5, Reason::Stable));
    assert!(!sim.d.in_panic());

    // Just under the threshold: 9 pods wanted for 5 ready is 180%.
    sim.load(60, 66, 630.0);
    let d = sim.decide(65, steady(5));
    assert!(!d.inputs.in_panic, "{d:?}");

    // 700 over the 6s panic window wants 10 pods = 200% of 5 ready: panic.
    sim.load(66, 72, 700.0);
    let d = sim.decide(71, steady(5));
    assert_eq!((d.desired, d.reason), (10, Reason::Panic));
    assert!(sim.d.in_panic());
    assert_eq!(
        d.to_string(),
        "panic mode: concurrency 700.0 over 6s = 10.00 pods at 70.0 per pod, rounded up to 10 \
         for 5 ready: 200% >= threshold 200%"
    );
    assert_eq!(d.inputs.panic_percentage, 200.0);

    // The load vanishes; panic holds 10 for a full stable window after the last second over
    // the threshold (71), then the rates allow halving.
    let mut last = d;
    for s in 72..=131 {
        sim.load(s, s + 1, 0.0);
        last = sim.decide(s, steady(last.desired));
        assert_eq!(
            (last.desired, last.reason),
            (10, Reason::Panic),
            "second {s}"
        );
    }
    sim.load(132, 133, 0.0);
    let d = sim.decide(132, steady(10));
    assert!(!sim.d.in_panic());
    assert_eq!((d.desired, d.reason), (5, Reason::RateLimitedDown));
}

#[test]
fn panic_uses_the_larger_window_and_never_scales_down() {
    let mut sim = Sim::new(Params::default(), true);
    sim.load(0, 6, 1400.0); // 20 pods
    let d = sim.decide(5, steady(2));
    assert_eq!((d.desired, d.reason), (20, Reason::Panic));
    // A smaller spike inside the episode does not lower the count.
    sim.load(6, 12, 300.0);
    let d = sim.decide(11, steady(20));
    assert_eq!(d.desired, 20);
    // Nor does a smaller current scale (someone scaled it down by hand).
    let d = sim.decide(12, steady(3));
    assert_eq!(d.desired, 20);
}

#[test]
fn scale_down_is_limited_to_halving_per_decision() {
    let mut sim = Sim::new(Params::default(), true);
    sim.load(0, 60, 0.0);
    let mut ready = 10;
    let mut seen = Vec::new();
    for s in 59..64 {
        sim.load(s + 1, s + 2, 0.0);
        let d = sim.decide(s, steady(ready));
        seen.push((d.desired, d.reason));
        ready = d.desired;
    }
    assert_eq!(
        seen,
        vec![
            (5, Reason::RateLimitedDown),
            (2, Reason::RateLimitedDown),
            (1, Reason::RateLimitedDown),
            // floor(1 / 2) = 0: idle for over 30s since the decider started, so zero.
            (0, Reason::ScaleToZero),
            (0, Reason::ScaleToZero),
        ]
    );
}

#[test]
fn scale_up_is_limited_by_max_scale_up_rate() {
    let params = Params {
        max_scale_up_rate: 2.0,
        ..Params::default()
    };
    let mut sim = Sim::new(params, true);
    sim.load(0, 60, 7000.0); // 100 pods
    let d = sim.decide(59, steady(3));
    assert_eq!(d.desired, 6, "{d:?}");
    // Rate-limited even though it is also panicking.
    assert_eq!(d.reason, Reason::Panic);
    // Zero ready counts as one ready pod for the rates.
    let mut sim = Sim::new(
        Params {
            max_scale_up_rate: 2.0,
            panic_threshold_percentage: 100_000.0,
            ..Params::default()
        },
        true,
    );
    sim.load(0, 60, 7000.0);
    let d = sim.decide(59, obs(0, 1));
    assert_eq!((d.desired, d.reason), (2, Reason::RateLimitedUp));
    assert_eq!(d.inputs.max_scale_up, 2);
}

#[test]
fn grace_and_retention_periods_are_respected_before_zero() {
    let params = Params {
        stable_window: Duration::from_secs(10),
        scale_to_zero_pod_retention_period: Duration::from_secs(45),
        ..Params::default()
    };
    let mut sim = Sim::new(params, false);
    sim.load(0, 10, 10.0); // last traffic at second 9
    sim.load(10, 21, 0.0);
    let d = sim.decide(20, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::GracePeriod));
    assert_eq!(d.inputs.idle_for, Some(Duration::from_secs(11)));
    assert_eq!(
        d.to_string(),
        "idle for 11s, keeping 1 pod until the grace period (30s) has passed"
    );
    sim.load(21, 101, 0.0);
    assert_eq!(sim.decide(38, steady(1)).desired, 1);
    let d = sim.decide(39, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::PodRetention));
    assert_eq!(sim.decide(53, steady(1)).desired, 1);
    let d = sim.decide(54, steady(1));
    assert_eq!((d.desired, d.reason), (0, Reason::ScaleToZero));
    assert_eq!(d.to_string(), "idle for 45s (grace period 30s)");

    // A request in flight keeps the pod and restarts the idle clock.
    let busy = Observation {
        in_flight: 1,
        ..steady(1)
    };
    let d = sim.decide(55, busy);
    assert_eq!((d.desired, d.reason), (1, Reason::InFlight));
    assert_eq!(d.inputs.idle_for, None);
    let d = sim.decide(56, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::GracePeriod));
    assert_eq!(sim.decide(55 + 45, steady(1)).desired, 0);
}

#[test]
fn a_young_decider_waits_the_grace_period_and_zero_stays_zero() {
    let mut sim = Sim::new(Params::default(), false);
    sim.load(0, 5, 0.0);
    // Idle since it was created 4s ago: not long enough.
    let d = sim.decide(4, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::GracePeriod));
    // Already at zero: staying there needs no grace period.
    let d = sim.decide(4, steady(0));
    assert_eq!((d.desired, d.reason), (0, Reason::ScaleToZero));
    assert_eq!(d.to_string(), "no traffic, staying at zero");
}

#[test]
fn scale_to_zero_disabled_floors_at_one() {
    let params = Params {
        enable_scale_to_zero: false,
        ..Params::default()
    };
    let mut sim = Sim::new(params, false);
    sim.load(0, 120, 0.0);
    let d = sim.decide(119, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::HeldByMin));
    assert_eq!(d.to_string(), "held at 1: scale to zero is disabled");
    assert_eq!(sim.decide(120, steady(0)).desired, 1);
}

#[test]
fn wake_gives_activation_scale_at_once() {
    let mut sim = Sim::new(Params::default(), false);
    let waiting = Observation {
        queued: 3,
        ..steady(0)
    };
    let d = sim.decide(0, waiting);
    assert_eq!((d.desired, d.reason), (1, Reason::Wake));
    assert_eq!(d.to_string(), "3 requests waiting in the activator");

    let params = Params {
        activation_scale: 3,
        ..Params::default()
    };
    let mut sim = Sim::new(params.clone(), false);
    let d = sim.decide(0, waiting);
    assert_eq!((d.desired, d.reason), (3, Reason::Wake));
    assert_eq!(
        d.to_string(),
        "3 requests waiting in the activator (activation-scale 3)"
    );
    // In-flight requests wake too; max-scale still bounds it.
    let mut sim = Sim::new(
        Params {
            max_scale: 2,
            ..params.clone()
        },
        false,
    );
    let d = sim.decide(
        0,
        Observation {
            in_flight: 1,
            ..steady(0)
        },
    );
    assert_eq!((d.desired, d.reason), (2, Reason::Wake));
    assert_eq!(
        d.to_string(),
        "1 request in flight at zero replicas (activation-scale 3)"
    );
    // Activation-scale is also a floor for any load.
    let mut sim = Sim::new(params, false);
    sim.load(0, 60, 10.0);
    assert_eq!(sim.decide(59, steady(1)).desired, 3);
}

#[test]
fn min_and_max_scale_are_held() {
    let params = Params {
        min_scale: 2,
        max_scale: 5,
        ..Params::default()
    };
    let mut sim = Sim::new(params.clone(), true);
    sim.load(0, 60, 700.0); // 10 pods
    let d = sim.decide(59, steady(4));
    assert_eq!((d.desired, d.reason), (5, Reason::HeldByMax));
    assert_eq!(d.to_string(), "held at max-scale 5");

    let mut sim = Sim::new(params, false);
    sim.load(0, 200, 0.0);
    let d = sim.decide(199, steady(2));
    assert_eq!((d.desired, d.reason), (2, Reason::HeldByMin));
    assert_eq!(d.to_string(), "held at min-scale 2");
    // Below min (e.g. at zero): raised to min.
    assert_eq!(sim.decide(199, steady(0)).desired, 2);
}

#[test]
fn scale_down_delay_keeps_the_max_of_the_delay_window() {
    let params = |delay| Params {
        stable_window: Duration::from_secs(10),
        max_scale_down_rate: 1000.0,
        scale_down_delay: Duration::from_secs(delay),
        ..Params::default()
    };
    let run = |delay| {
        let mut sim = Sim::new(params(delay), true);
        let mut out = Vec::new();
        for s in 0..70 {
            sim.load(s, s + 1, if s < 20 { 700.0 } else { 70.0 });
            out.push(sim.decide(s, steady(10)));
        }
        out
    };
    let plain = run(0);
    let delayed = run(30);
    // Without a delay the count follows the stable window down to 1 pod at second 29.
    assert_eq!(plain[28].desired, 2);
    assert_eq!(plain[29].desired, 1);
    // With a 30s delay, the highest count of seconds s-29..=s is kept.
    assert_eq!(
        (delayed[30].desired, delayed[30].reason),
        (10, Reason::ScaleDownDelay)
    );
    assert_eq!(delayed[57].desired, 2);
    assert_eq!(
        (delayed[58].desired, delayed[58].reason),
        (1, Reason::Stable)
    );
    for s in 0..70usize {
        let max = plain[s.saturating_sub(29)..=s]
            .iter()
            .map(|d| d.desired)
            .max()
            .unwrap();
        assert_eq!(delayed[s].desired, max, "second {s}");
    }
}

#[test]
fn stale_or_missing_data_never_scales_down() {
    let mut sim = Sim::new(Params::default(), true);
    sim.load(0, 120, 0.0);
    for data in [DataState::Stale, DataState::Missing] {
        let d = sim.decide(119, Observation { data, ..steady(3) });
        assert_eq!((d.desired, d.reason), (3, Reason::StaleData));
        assert_eq!(d.inputs.idle_for, None);
        let d = sim.decide(119, Observation { data, ..steady(1) });
        assert_eq!((d.desired, d.reason), (1, Reason::StaleData));
    }
    assert_eq!(
        sim.decide(
            119,
            Observation {
                data: DataState::Missing,
                ..steady(3)
            }
        )
        .to_string(),
        "metrics are missing, holding at 3 (no scale-down without fresh data)"
    );
    // At zero with missing data and no requests: stays at zero (no wake on a failed scrape).
    let d = sim.decide(
        120,
        Observation {
            data: DataState::Missing,
            ..steady(0)
        },
    );
    assert_eq!((d.desired, d.reason), (0, Reason::StaleData));
    // The stale ticks restarted the idle clock: fresh data must show a whole grace period.
    let d = sim.decide(121, steady(1));
    assert_eq!((d.desired, d.reason), (1, Reason::GracePeriod));
    assert_eq!(sim.decide(150, steady(1)).desired, 0);

    // Scaling up on the data there is stays allowed.
    sim.load(150, 210, 700.0);
    let d = sim.decide(
        209,
        Observation {
            data: DataState::Stale,
            ..steady(8)
        },
    );
    assert_eq!((d.desired, d.reason), (10, Reason::Stable));
}

#[test]
fn rps_metric_targets_requests_per_second() {
    let params = Params {
        metric: Metric::Rps,
        target: 200.0,
        ..Params::default()
    };
    let mut sim = Sim::new(params, true);
    for s in 0..60 {
        let at = sim.at(s as f64);
        sim.d.record(
            at,
            Sample {
                concurrency: 1.0,
                rps: 420.0,
            },
        );
    }
    let d = sim.decide(59, steady(2));
    assert_eq!((d.desired, d.reason), (3, Reason::Stable));
    assert_eq!(
        d.to_string(),
        "stable rps 420.0 over 60s, target 140.0 per pod"
    );
}

#[test]
fn weighted_exponential_follows_recent_load() {
    let run = |aggregation, early: f64, late: f64| {
        let mut sim = Sim::new(
            Params {
                aggregation,
                ..Params::default()
            },
            true,
        );
        sim.load(0, 30, early);
        sim.load(30, 60, late);
        sim.decide(59, steady(2))
    };
    // Rising load: the linear average is 70 (1 pod); the weighted one is ~140 (2 pods).
    let lin = run(Aggregation::Linear, 0.0, 140.0);
    let exp = run(Aggregation::WeightedExponential, 0.0, 140.0);
    assert_eq!(lin.inputs.stable_average, 70.0);
    // 140 x (1 - 0.8^30) / (1 - 0.8^60): the weights of the last 30 of 60 seconds.
    assert!((exp.inputs.stable_average - 139.83).abs() < 0.01, "{exp:?}");
    assert_eq!((lin.desired, exp.desired), (1, 2));
    // Falling load: the weighted average forgets the old seconds.
    let lin = run(Aggregation::Linear, 140.0, 0.0);
    let exp = run(Aggregation::WeightedExponential, 140.0, 0.0);
    assert_eq!(lin.inputs.stable_average, 70.0);
    assert!(exp.inputs.stable_average < 0.2, "{exp:?}");
    // Steady load: both agree.
    let lin = run(Aggregation::Linear, 100.0, 100.0);
    let exp = run(Aggregation::WeightedExponential, 100.0, 100.0);
    assert!((lin.inputs.stable_average - exp.inputs.stable_average).abs() < 1e-9);
}

#[test]
fn late_duplicate_and_out_of_order_samples() {
    let mut sim = Sim::new(Params::default(), true);
    let c = |v| Sample {
        concurrency: v,
        rps: 0.0,
    };
    // Two samples in one second are averaged.
    sim.d.record(sim.at(0.2), c(100.0));
    sim.d.record(sim.at(0.7), c(200.0));
    let d = sim.decide(0, steady(5));
    assert_eq!(d.inputs.stable_average, 150.0);
    // An out-of-order sample lands in its own second; the gap (second 1) counts as zero.
    sim.d.record(sim.at(3.0), c(30.0));
    sim.d.record(sim.at(2.0), c(60.0));
    let d = sim.decide(3, steady(5));
    assert_eq!(d.inputs.stable_average, (150.0 + 0.0 + 60.0 + 30.0) / 4.0);
    // The panic window (6s) covers the same four seconds here.
    assert_eq!(d.inputs.panic_average, d.inputs.stable_average);
    // A sample older than the stable window is dropped and counted.
    let d = sim.decide(100, steady(5));
    sim.d.record(sim.at(20.0), c(1000.0));
    assert_eq!(sim.d.dropped_samples(), 1);
    assert_eq!(
        sim.decide(100, steady(5)).inputs.stable_average,
        d.inputs.stable_average
    );
    // A sample from just before the decider was created is kept.
    let mut sim = Sim::new(Params::default(), true);
    sim.d.record(sim.t0 - Duration::from_millis(300), c(70.0));
    let d = sim.decide(0, steady(1));
    assert_eq!(d.inputs.stable_average, 35.0);
    assert_eq!(sim.d.dropped_samples(), 0);
}

#[test]
fn initial_scale_holds_for_a_stable_window_of_data_only_when_newly_enabled() {
    let params = Params {
        initial_scale: 3,
        ..Params::default()
    };
    let mut sim = Sim::new(params.clone(), true);
    // Opted in with 1 replica, not ready yet, no data: hold.
    let d = sim.decide(100, obs(0, 1));
    assert_eq!((d.desired, d.reason), (3, Reason::Initial));
    assert_eq!(
        d.to_string(),
        "initial-scale 3 until a full stable window of data (60s)"
    );
    sim.load(100, 160, 0.0);
    assert_eq!(sim.decide(159, steady(3)).desired, 3);
    sim.load(160, 161, 0.0);
    let d = sim.decide(160, steady(3));
    assert_eq!((d.desired, d.reason), (1, Reason::RateLimitedDown));
    // Once over, never again.
    assert_eq!(sim.decide(161, steady(0)).desired, 0);

    // An autoscaler restart never re-applies it.
    let mut sim = Sim::new(params.clone(), false);
    let d = sim.decide(0, steady(0));
    assert_eq!(d.desired, 0);

    // Opted in at zero replicas: stays at zero, with data or without, until a request
    // arrives; then the wake (activation-scale), never initial-scale.
    let mut sim = Sim::new(params, true);
    for s in 0..90 {
        if s > 0 {
            sim.load(s - 1, s, 0.0);
        }
        let d = sim.decide(s, steady(0));
        assert_eq!(
            (d.desired, d.reason),
            (0, Reason::ScaleToZero),
            "second {s}"
        );
    }
    let waiting = Observation {
        queued: 1,
        ..steady(0)
    };
    let d = sim.decide(90, waiting);
    assert_eq!((d.desired, d.reason), (1, Reason::Wake));
}

#[test]
fn a_restarted_autoscaler_holds_the_ready_pods_for_a_stable_window() {
    let mut sim = Sim::new(Params::default(), false);
    sim.load(0, 1, 0.0);
    let d = sim.decide(0, steady(4));
    assert_eq!((d.desired, d.reason), (4, Reason::Panic));
    assert_eq!(
        d.to_string(),
        "panic mode: holding 4 until the panic window has stayed under 200% of ready capacity \
         for 60s (now concurrency 0.0 over 6s wants 0 pods = 0% of 4 ready)"
    );
    sim.load(1, 62, 0.0);
    assert_eq!(sim.decide(60, steady(4)).desired, 4);
    let d = sim.decide(61, steady(4));
    assert_eq!((d.desired, d.reason), (2, Reason::RateLimitedDown));
    // With one ready pod there is nothing to protect.
    let mut sim = Sim::new(Params::default(), false);
    sim.load(0, 60, 0.0);
    assert_eq!(sim.decide(59, steady(1)).reason, Reason::ScaleToZero);
    assert!(!sim.d.in_panic());
}

#[test]
fn hot_reload_keeps_samples() {
    let mut sim = Sim::new(Params::default(), true);
    sim.load(0, 60, 140.0);
    sim.d.set_params(Params {
        target: 20.0,
        stable_window: Duration::from_secs(30),
        ..Params::default()
    });
    let d = sim.decide(59, steady(10));
    assert_eq!(d.inputs.stable_window, Duration::from_secs(30));
    assert_eq!(d.inputs.panic_window, Duration::from_secs(3));
    assert_eq!(d.inputs.stable_average, 140.0);
    assert_eq!(d.desired, 10);
    assert_eq!(sim.d.params().target, 20.0);
}

#[test]
fn decisions_serialize_with_stable_labels() {
    assert_eq!(Reason::ScaleToZero.as_str(), "scale_to_zero");
    assert_eq!(Reason::RateLimitedDown.as_str(), "rate_limited_down");
    assert_eq!(DataState::Missing.as_str(), "missing");
}
