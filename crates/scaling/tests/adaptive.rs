//! The adaptive scale-to-zero policy in the decider: a periodic caller is scaled to zero right
//! after use and pre-warmed before its next call; irregular callers keep their pod for the tail
//! of their gaps; few gaps mean the fixed grace period.

use std::time::{Duration, Instant};

use zeroscale_scaling::idle::{IdlePlan, KeepAliveBy};
use zeroscale_scaling::{
    DataState, Decider, Decision, Observation, Params, Reason, Sample, ZeroPolicy,
};

const MIN: u64 = 60;

fn params() -> Params {
    Params {
        stable_window: Duration::from_secs(6),
        scale_to_zero_grace_period: Duration::from_secs(30),
        scale_to_zero_policy: ZeroPolicy::Adaptive,
        ..Params::default()
    }
}

/// A decider fed one sample a second, deciding each second, with the Deployment following
/// its decisions (a pod is ready at once).
struct Run {
    d: Decider,
    t0: Instant,
    scale: u32,
    decisions: Vec<(u64, Decision)>,
}

impl Run {
    /// Each change of the desired replicas seen: (seconds after `t0`, replicas, reason).
    fn changes_since(&self, t0: u64) -> Vec<(u64, u32, Reason)> {
        self.decisions
            .iter()
            .map(|(s, d)| (s - t0, d.desired, d.reason))
            .collect()
    }

    fn new(params: Params) -> Self {
        let t0 = Instant::now() + Duration::from_secs(3600);
        Self {
            d: Decider::new(params, t0, false),
            t0,
            scale: 1,
            decisions: Vec::new(),
        }
    }

    /// Seconds `from..to`, with `busy(s)` saying whether a request is in flight that second.
    fn run(&mut self, from: u64, to: u64, busy: impl Fn(u64) -> bool) {
        for s in from..to {
            let at = self.t0 + Duration::from_secs(s);
            let b = busy(s);
            let c = if b { 1.0 } else { 0.0 };
            self.d.record(
                at,
                Sample {
                    concurrency: c,
                    rps: c,
                },
            );
            let obs = Observation {
                ready_pods: self.scale,
                current_scale: self.scale,
                in_flight: u64::from(b),
                queued: 0,
                data: DataState::Fresh,
            };
            let dec = self.d.decide(at, &obs);
            if dec.desired != self.scale {
                self.decisions.push((s, dec.clone()));
            }
            self.scale = dec.desired;
        }
    }
}

/// A caller every `period` seconds (the first at `offset`), each request 3 s long.
fn periodic(period: u64, offset: u64) -> impl Fn(u64) -> bool {
    move |s| s >= offset && (s - offset) % period < 3
}

#[test]
fn a_periodic_caller_goes_to_zero_after_use_and_is_pre_warmed() {
    let mut r = Run::new(params());
    // 12 calls 15 minutes apart: the gaps (14m57s) are learned.
    r.run(0, 12 * 15 * MIN, periodic(15 * MIN, 0));
    match r.d.idle_histogram().plan(&r.d.params().adaptive) {
        IdlePlan::PreWarm {
            expected,
            prewarm_at,
            ..
        } => {
            assert_eq!(expected, Duration::from_secs(14 * MIN));
            assert_eq!(prewarm_at, Duration::from_secs(13 * MIN));
        }
        other => panic!("{other:?}"),
    }
    // The next period: zero once the stable window is empty (not after a 30 s grace), one
    // pod 13 minutes after the last request, ready when the call comes at 15 minutes.
    let start = 12 * 15 * MIN;
    r.decisions.clear();
    r.run(start, start + 15 * MIN + 10, periodic(15 * MIN, 0));
    let changes = r.changes_since(start);
    // Busy 0..3 s; the 6 s window is empty from second 8 on. The call at 15 min finds the
    // pre-warmed pod, and the model goes to zero again after it.
    assert_eq!(
        changes,
        [
            (8, 0, Reason::ScaleToZero),
            (13 * MIN + 2, 1, Reason::PreWarm),
            (15 * MIN + 8, 0, Reason::ScaleToZero),
        ],
        "{:?}",
        r.decisions
    );
    let (_, zero) = &r.decisions[0];
    assert_eq!(
        zero.to_string(),
        "idle for 6s: next request expected in ~14m (p5 of 12 gaps)"
    );
    let (_, warm) = &r.decisions[1];
    assert_eq!(
        warm.to_string(),
        "pre-warm: idle for 780s, next request expected in ~14m (p5 of 12 gaps)"
    );
}

/// The seconds an irregular caller starts a 3 s busy period at: gaps of 10 s to 2.5 min, the
/// tail in the bin of 2-3 min.
fn irregular_busy_at() -> Vec<u64> {
    let gaps = [30, 90, 150, 20, 40, 60, 100, 130, 10, 140, 50, 70];
    let mut busy_at = vec![0u64];
    for g in gaps {
        let last = *busy_at.last().expect("one");
        busy_at.push(last + 3 + g);
    }
    busy_at
}

/// The irregular caller's traffic with `p`, then 4 minutes idle: each change of the desired
/// replicas in that idle time (seconds after the last call, replicas, reason) and the first
/// one's text.
fn idle_after_the_irregular_caller(p: Params) -> (Vec<(u64, u32, Reason)>, String) {
    let busy_at = irregular_busy_at();
    let end = *busy_at.last().expect("one");
    let mut r = Run::new(p);
    r.run(0, end + 3, |s| busy_at.iter().any(|&b| s >= b && s < b + 3));
    r.decisions.clear();
    r.run(end + 3, end + 3 + 4 * MIN, |_| false);
    let changes = r.changes_since(end);
    let text = r
        .decisions
        .first()
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    (changes, text)
}

#[test]
fn irregular_callers_keep_their_pod_for_the_tail_and_few_gaps_use_the_grace() {
    // Gaps of 30 s to 2.5 min: the tail is the bin of 2-3 min, so 3 min of keep-alive.
    let busy_at = irregular_busy_at();
    let end = *busy_at.last().expect("one");
    let mut r = Run::new(params());
    // Nine gaps: not yet representative, the fixed 30 s grace.
    let tenth = busy_at[9];
    r.run(0, tenth + 1, |s| {
        busy_at.iter().any(|&b| s >= b && s < b + 3)
    });
    let plan = r.d.idle_histogram().plan(&r.d.params().adaptive);
    assert!(matches!(plan, IdlePlan::Fixed { gaps: 9, .. }), "{plan:?}");
    r.run(tenth + 1, end + 3, |s| {
        busy_at.iter().any(|&b| s >= b && s < b + 3)
    });
    let plan = r.d.idle_histogram().plan(&r.d.params().adaptive);
    assert_eq!(
        plan,
        IdlePlan::KeepAlive {
            keep_alive: Duration::from_secs(3 * MIN),
            by: KeepAliveBy::Percentile(99.0),
            gaps: 12
        }
    );
    // Idle after the last call: one pod for 3 minutes, then zero.
    r.decisions.clear();
    r.run(end + 3, end + 3 + 4 * MIN, |_| false);
    let changes = r.changes_since(end);
    assert_eq!(
        changes,
        [(3 * MIN + 2, 0, Reason::ScaleToZero)],
        "{:?}",
        r.decisions
    );
    assert_eq!(
        r.decisions[0].1.to_string(),
        "idle for 180s: keep-alive 3m (p99 of 12 gaps)"
    );
}

#[test]
fn the_fixed_policy_learns_too_and_the_state_survives_a_restart() {
    let mut fixed = Run::new(Params {
        scale_to_zero_policy: ZeroPolicy::Fixed,
        ..params()
    });
    fixed.run(0, 12 * 15 * MIN, periodic(15 * MIN, 0));
    assert_eq!(fixed.d.idle_histogram().gaps(), 11);
    // A new decider (an autoscaler restart) with the stored text plans the same.
    let text = fixed.d.idle_histogram().encode();
    let mut restarted = Decider::new(params(), Instant::now(), false);
    let range = restarted.params().adaptive.histogram_range;
    restarted.restore_idle_histogram(
        zeroscale_scaling::idle::IdleHistogram::decode(&text, range).expect("decodes"),
    );
    assert_eq!(restarted.idle_histogram(), fixed.d.idle_histogram());
}

#[test]
fn a_price_on_cold_starts_picks_the_keep_alive_and_says_so() {
    // The irregular caller's gaps (10 s to 2.5 min): at 10 min a cold start is worth more than
    // waiting for the whole tail (3 min); at 10 s it is cheaper than any wait, and the model
    // goes to zero once idle for two samples, before its stable window is empty.
    for (price, zero_at, says) in [
        (
            600,
            3 * MIN + 2,
            "idle for 180s: keep-alive 3m: cheapest at a cold start = 10m of a replica (0 of 12 gaps longer)",
        ),
        (
            10,
            4,
            "idle for 2s: zero at once: cheapest at a cold start = 10s of a replica (12 of 12 gaps longer), before the stable window's 6s",
        ),
    ] {
        let mut p = params();
        p.adaptive.cold_start_cost = Some(Duration::from_secs(price));
        let (changes, text) = idle_after_the_irregular_caller(p);
        assert_eq!(changes, [(zero_at, 0, Reason::ScaleToZero)], "{price}");
        assert_eq!(text, says, "{price}");
    }
}

/// The irregular caller learned, then idle: where the model goes to zero (seconds after the
/// start of its last busy period) and what the Event says, by policy. A 60 s stable window;
/// the last request's traffic is in it until 62 s (its last busy second is 2).
#[test]
fn an_early_zero_goes_below_the_stable_window_only_when_priced() {
    let window = |p: Params| Params {
        stable_window: Duration::from_secs(60),
        ..p
    };
    let priced = |cost: u64, range: u64| {
        let mut p = window(params());
        p.adaptive.cold_start_cost = Some(Duration::from_secs(cost));
        p.adaptive.histogram_range = Duration::from_secs(range);
        p
    };
    let fixed = window(Params {
        scale_to_zero_policy: ZeroPolicy::Fixed,
        ..params()
    });
    // (policy, zero at, Event)
    let cases: Vec<(Params, u64, &str)> = vec![
        // The fixed grace (30 s) and the percentile rule (3 min) as before: the grace never
        // binds below the window, the percentile's keep-alive counts from the last traffic.
        (fixed, 62, "idle for 60s (grace period 30s)"),
        (
            window(params()),
            3 * MIN + 2,
            "idle for 180s: keep-alive 3m (p99 of 12 gaps)",
        ),
        // Zero at once: idle for two samples, 58 s before the window would have emptied.
        (
            priced(10, 4 * 3600),
            4,
            "idle for 2s: zero at once: cheapest at a cold start = 10s of a replica (12 of 12 gaps longer), before the stable window's 60s",
        ),
        // A keep-alive of at least the window is the window's own rule, priced or not.
        (
            priced(600, 4 * 3600),
            3 * MIN + 2,
            "idle for 180s: keep-alive 3m: cheapest at a cold start = 10m of a replica (0 of 12 gaps longer)",
        ),
    ];
    for (p, zero_at, says) in cases {
        let (changes, text) = idle_after_the_irregular_caller(p.clone());
        assert_eq!(
            changes,
            [(zero_at, 0, Reason::ScaleToZero)],
            "{:?}",
            p.adaptive
        );
        assert_eq!(text, says, "{:?}", p.adaptive);
    }
}

/// After an early zero the stable window still holds the served traffic: the model stays at
/// zero (not back to 1 on the next tick), and a new request wakes it as any model at zero.
#[test]
fn after_an_early_zero_only_a_new_request_brings_the_model_back() {
    let busy_at = irregular_busy_at();
    let end = *busy_at.last().expect("one");
    let mut p = Params {
        stable_window: Duration::from_secs(60),
        ..params()
    };
    p.adaptive.cold_start_cost = Some(Duration::from_secs(10));
    let mut r = Run::new(p);
    r.run(0, end + 3, |s| busy_at.iter().any(|&b| s >= b && s < b + 3));
    r.decisions.clear();
    // Idle for 20 s, then one request at end + 23 (in flight at zero: a wake).
    r.run(end + 3, end + 3 + 2 * MIN, |s| s == end + 23);
    let changes = r.changes_since(end);
    assert_eq!(
        changes,
        [
            (4, 0, Reason::ScaleToZero),
            (23, 1, Reason::Wake),
            (25, 0, Reason::ScaleToZero)
        ],
        "{:?}",
        r.decisions
    );
    // At zero in between, the windows still average above zero, and the Event says why the
    // model stays there.
    let obs = Observation {
        ready_pods: 0,
        current_scale: 0,
        in_flight: 0,
        queued: 0,
        data: DataState::Fresh,
    };
    let mut q = Run::new(r.d.params().clone());
    q.run(0, end + 3, |s| busy_at.iter().any(|&b| s >= b && s < b + 3));
    q.run(end + 3, end + 10, |_| false);
    let d = q.d.decide(q.t0 + Duration::from_secs(end + 10), &obs);
    assert_eq!((d.desired, d.reason), (0, Reason::ScaleToZero));
    assert!(
        d.inputs.stable_average > 0.0 && d.inputs.early_zero,
        "{d:?}"
    );
    assert_eq!(
        d.to_string(),
        "no request since the early zero, staying at zero (the stable window's 60s still holds the traffic served before it)"
    );
    // Stale or missing data at zero does not bring it back either (the idle clock stops, so
    // only the hold keeps it there).
    for data in [DataState::Stale, DataState::Missing] {
        let d = q.d.decide(
            q.t0 + Duration::from_secs(end + 11),
            &Observation { data, ..obs },
        );
        assert_eq!(d.desired, 0, "{d:?}");
    }
    let d = q.d.decide(q.t0 + Duration::from_secs(end + 12), &obs);
    assert_eq!((d.desired, d.inputs.early_zero), (0, true), "{d:?}");
}
