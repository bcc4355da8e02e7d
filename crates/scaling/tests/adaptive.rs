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
    let changes: Vec<(u64, u32, Reason)> = r
        .decisions
        .iter()
        .map(|(s, d)| (s - start, d.desired, d.reason))
        .collect();
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
    let changes: Vec<(u64, u32, Reason)> = r
        .decisions
        .iter()
        .map(|(s, d)| (s - end, d.desired, d.reason))
        .collect();
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
    // goes to zero as soon as its stable window is empty.
    let busy_at = irregular_busy_at();
    let end = *busy_at.last().expect("one");
    let busy = |s: u64| busy_at.iter().any(|&b| s >= b && s < b + 3);
    for (price, zero_at, says) in [
        (
            600,
            3 * MIN + 2,
            "idle for 180s: keep-alive 3m: cheapest at a cold start = 10m of a replica (0 of 12 gaps longer)",
        ),
        (
            10,
            8,
            "idle for 6s: zero at once: cheapest at a cold start = 10s of a replica (12 of 12 gaps longer)",
        ),
    ] {
        let mut p = params();
        p.adaptive.cold_start_cost = Some(Duration::from_secs(price));
        let mut r = Run::new(p);
        r.run(0, end + 3, busy);
        r.decisions.clear();
        r.run(end + 3, end + 3 + 4 * MIN, |_| false);
        let changes: Vec<(u64, u32, Reason)> = r
            .decisions
            .iter()
            .map(|(s, d)| (s - end, d.desired, d.reason))
            .collect();
        assert_eq!(
            changes,
            [(zero_at, 0, Reason::ScaleToZero)],
            "{price}: {:?}",
            r.decisions
        );
        assert_eq!(r.decisions[0].1.to_string(), says, "{price}");
    }
}
