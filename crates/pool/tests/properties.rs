//! Property tests of capacity pools: the four properties over random pools, one decision
//! at a time and over simulated runs where the plans are applied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use zeroscale_pool::{Member, Plan, Policy, decide};

#[derive(Clone, Debug)]
struct Spec {
    current: u32,
    desired: u32,
    releasing: u32,
    per_replica: u64,
    busy: bool,
    pinned: bool,
    last_used: u64,
    resident: u64,
    waiting: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(0u32), 0u32..=4],
        0u32..=5,
        0u32..=2,
        prop_oneof![Just(1u64), 0u64..=3],
        any::<bool>(),
        prop::bool::weighted(0.15),
        0u64..=500,
        0u64..=500,
        0u64..=500,
    )
        .prop_map(
            |(
                current,
                desired,
                releasing,
                per_replica,
                busy,
                pinned,
                last_used,
                resident,
                waiting,
            )| {
                Spec {
                    current,
                    desired,
                    releasing: releasing.min(current),
                    per_replica,
                    busy,
                    pinned,
                    last_used,
                    resident,
                    waiting,
                }
            },
        )
}

fn members(specs: &[Spec], t0: Instant) -> Vec<Member<usize>> {
    specs
        .iter()
        .enumerate()
        .map(|(key, s)| Member {
            key,
            current: s.current,
            desired: s.desired,
            releasing: s.releasing,
            per_replica: s.per_replica,
            busy: s.busy,
            pinned: s.pinned,
            last_used: t0 + Duration::from_secs(s.last_used),
            resident_since: t0 + Duration::from_secs(s.resident),
            waiting_since: (s.current == 0 && s.desired > 0)
                .then(|| t0 + Duration::from_secs(s.waiting)),
        })
        .collect()
}

fn units(ms: &[Member<usize>], count: impl Fn(&Member<usize>) -> u32) -> u64 {
    ms.iter().map(|m| u64::from(count(m)) * m.per_replica).sum()
}

/// Replicas each member is asked for once the plan is applied; a scale-down or an eviction
/// counts at the larger count, as if it had not happened yet (it may fail).
fn after(ms: &[Member<usize>], plan: &Plan<usize>) -> BTreeMap<usize, u32> {
    let mut to: BTreeMap<usize, u32> = ms.iter().map(|m| (m.key, m.current)).collect();
    for (k, n) in &plan.targets {
        let slot = to.get_mut(k).expect("a member");
        *slot = (*slot).max(*n);
    }
    to
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn one_decision_keeps_every_rule(
        specs in prop::collection::vec(spec(), 1..12),
        capacity in 0u64..=12,
        residency in 0u64..=120,
        now in 0u64..=600,
    ) {
        let t0 = Instant::now();
        let ms = members(&specs, t0);
        let policy = Policy { capacity, min_residency: Duration::from_secs(residency) };
        let now = t0 + Duration::from_secs(now);
        let plan = decide(&ms, &policy, now);

        // Capacity: never asked for more than it has (or, if it already holds more, no more at all).
        let to = after(&ms, &plan);
        let used_after = units(&ms, |m| to[&m.key]);
        let used_before = units(&ms, |m| m.current);
        prop_assert_eq!(plan.used, used_before);
        // What it grants is exactly the units its scale-ups add.
        let up = units(&ms, |m| to[&m.key].max(m.current)) - used_before;
        prop_assert_eq!(plan.granted, up, "{:?}", plan);
        if used_before <= capacity {
            prop_assert!(used_after <= capacity, "{} > {}: {:?}", used_after, capacity, plan);
        } else {
            prop_assert_eq!(used_after, used_before, "{:?}", plan);
        }
        // Grants stay within what was wanted; a wake gets at least one replica or waits.
        for (k, n) in &plan.targets {
            let m = &ms[*k];
            prop_assert!(*n != m.current);
            if *n > m.current {
                prop_assert!(*n <= m.desired);
            } else {
                prop_assert_eq!(*n, m.desired);
            }
        }
        // Every scale-down goes through.
        for m in ms.iter().filter(|m| m.desired < m.current) {
            prop_assert!(plan.targets.contains(&(m.key, m.desired)), "{:?}", plan);
        }

        // Evictions: only idle, unpinned members resident for the minimum, at their own count,
        // each once, and not also given a target.
        let mut seen = std::collections::BTreeSet::new();
        for e in &plan.evictions {
            let m = &ms[e.key];
            prop_assert!(!m.busy && !m.pinned, "evicted a busy or pinned member: {:?}", e);
            prop_assert!(now.saturating_duration_since(m.resident_since) >= policy.min_residency);
            prop_assert!(m.current > 0 && m.desired == m.current && e.from == m.current);
            prop_assert!(seen.insert(e.key), "evicted twice");
            prop_assert!(plan.targets.iter().all(|(k, _)| *k != e.key));
            prop_assert!(e.for_model != e.key);
        }
        // An eviction is only made when a request is left wanting.
        if !plan.evictions.is_empty() {
            let wanting = ms.iter().any(|m| m.desired > to[&m.key]);
            prop_assert!(wanting, "{:?}", plan);
        }

        // FIFO: a wake is granted only if every wake that came before it (and fits the pool at
        // all) was granted too.
        let mut wakes: Vec<&Member<usize>> =
            ms.iter().filter(|m| m.current == 0 && m.desired > 0).collect();
        wakes.sort_by_key(|m| (m.waiting_since, m.key));
        let granted = |m: &Member<usize>| to[&m.key] > 0;
        for (i, w) in wakes.iter().enumerate() {
            if granted(w) {
                for earlier in &wakes[..i] {
                    if earlier.per_replica <= capacity {
                        prop_assert!(granted(earlier), "{:?} served before {:?}", w.key, earlier.key);
                    }
                }
            }
            prop_assert_eq!(plan.waiting.contains(&w.key), !granted(w));
        }
        // Scale-ups get nothing while a wake that fits the pool waits.
        let head_waits = wakes.iter().any(|w| !granted(w) && w.per_replica <= capacity);
        if head_waits {
            for m in ms.iter().filter(|m| m.current > 0) {
                prop_assert!(to[&m.key] <= m.current, "{:?}", plan);
            }
        }
    }
}

/// A simulated pool: models whose demand comes and goes, the plans applied at each step
/// (a patch may fail), residency and use tracked as the autoscaler tracks them.
#[derive(Clone, Debug)]
struct Step {
    /// Per model: wants this many replicas (0 = idle) in this step.
    demand: Vec<u32>,
    advance: u64,
    patches_fail: bool,
}

fn steps(models: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop::collection::vec(prop_oneof![3 => Just(0u32), 2 => 1u32..=3], models),
            1u64..=30,
            prop::bool::weighted(0.1),
        )
            .prop_map(|(demand, advance, patches_fail)| Step {
                demand,
                advance,
                patches_fail,
            }),
        1..60,
    )
}

struct Model {
    current: u32,
    last_used: Instant,
    resident_since: Instant,
    waiting_since: Option<Instant>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_run_never_exceeds_the_pool_never_thrashes_and_serves_every_wake(
        run in steps(5),
        capacity in 1u64..=4,
        residency in 0u64..=90,
    ) {
        let t0 = Instant::now();
        let policy = Policy { capacity, min_residency: Duration::from_secs(residency) };
        let mut now = t0;
        let mut models: Vec<Model> = (0..5)
            .map(|_| Model { current: 0, last_used: t0, resident_since: t0, waiting_since: None })
            .collect();
        let decide_step = |models: &mut Vec<Model>, demand: &[u32], now: Instant, fail: bool| {
            let ms: Vec<Member<usize>> = models
                .iter()
                .enumerate()
                .map(|(key, m)| {
                    let want = demand[key];
                    Member {
                        key,
                        current: m.current,
                        // Busy models want what they need; idle ones keep what they have.
                        desired: if want > 0 { want } else { m.current },
                        releasing: 0,
                        per_replica: 1,
                        busy: want > 0,
                        pinned: false,
                        last_used: m.last_used,
                        resident_since: m.resident_since,
                        waiting_since: m.waiting_since,
                    }
                })
                .collect();
            let plan = decide(&ms, &policy, now);
            for e in &plan.evictions {
                let m = &models[e.key];
                prop_assert!(demand[e.key] == 0, "evicted a busy model");
                prop_assert!(now.saturating_duration_since(m.resident_since) >= policy.min_residency,
                    "thrash: model {} evicted {:?} after it came in", e.key, now - m.resident_since);
            }
            if !fail {
                for (k, n) in &plan.targets {
                    let m = &mut models[*k];
                    if m.current == 0 && *n > 0 {
                        m.resident_since = now;
                        m.waiting_since = None;
                    }
                    m.current = *n;
                }
                for e in &plan.evictions {
                    models[e.key].current = 0;
                }
            }
            let used: u64 = models.iter().map(|m| u64::from(m.current)).sum();
            prop_assert!(used <= capacity, "pool at {} of {}", used, capacity);
            Ok(())
        };
        for step in &run {
            now += Duration::from_secs(step.advance);
            for (k, m) in models.iter_mut().enumerate() {
                if step.demand[k] > 0 {
                    m.last_used = now;
                    if m.current == 0 && m.waiting_since.is_none() {
                        m.waiting_since = Some(now);
                    }
                } else if m.current == 0 {
                    // Its requests timed out or were served elsewhere: no longer waiting.
                    m.waiting_since = None;
                }
            }
            decide_step(&mut models, &step.demand, now, step.patches_fail)?;
        }
        // Then one request to each model in turn, everyone else idle: each is served within a
        // few decisions once the residency has passed.
        for k in 0..5 {
            let mut demand = vec![0u32; 5];
            demand[k] = 1;
            models[k].last_used = now;
            if models[k].current == 0 {
                models[k].waiting_since = Some(now);
            }
            let mut served = false;
            for _ in 0..4 {
                now += Duration::from_secs(residency + 1);
                decide_step(&mut models, &demand, now, false)?;
                if models[k].current > 0 {
                    served = true;
                    break;
                }
            }
            prop_assert!(served, "model {} never served", k);
        }
    }
}
