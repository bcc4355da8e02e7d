//! Capacity pools: the cost of one pool decision when many models wake at once.
//!
//! `cargo bench -p zeroscale-pool --bench decide`; results in `BENCHMARKS.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use zeroscale_pool::{Member, Policy, decide};

/// A pool of 1,000 models at capacity 100: `running` of them hold one replica each, idle and
/// past the minimum residency (used at different times); 100 others wake at once; the rest
/// are at zero and idle.
fn pool(running: u32, t0: Instant) -> Vec<Member<u32>> {
    (0..1000u32)
        .map(|i| {
            let (current, desired) = match i {
                i if i < running => (1, 1),
                i if i < running + 100 => (0, 1),
                _ => (0, 0),
            };
            Member {
                key: i,
                current,
                desired,
                releasing: 0,
                per_replica: 1000,
                busy: false,
                pinned: false,
                // Spread so the least-recently-used order is not the key order.
                last_used: t0 + Duration::from_millis(u64::from((i * 7919) % 1000)),
                resident_since: t0,
                waiting_since: (current == 0 && desired > 0)
                    .then(|| t0 + Duration::from_secs(1) + Duration::from_millis(u64::from(i))),
            }
        })
        .collect()
}

fn waking_100(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/1000_models_capacity_100");
    let t0 = Instant::now();
    let now = t0 + Duration::from_secs(600);
    let policy = Policy {
        capacity: 100 * 1000,
        min_residency: Duration::from_secs(60),
    };
    // Full: 100 idle models hold the pool; every wake needs an eviction (100 of them).
    let full = pool(100, t0);
    let plan = decide(&full, &policy, now);
    assert_eq!((plan.evictions.len(), plan.waiting.len()), (100, 100));
    g.bench_function("wake_100_evict_100", |b| {
        b.iter(|| black_box(decide(black_box(&full), &policy, now)))
    });
    // Half full: 50 idle hold half; 50 wakes fit at once, 50 evict.
    let half = pool(50, t0);
    let plan = decide(&half, &policy, now);
    assert_eq!(plan.targets.len(), 50);
    assert_eq!(plan.evictions.len(), 50);
    g.bench_function("wake_100_half_free", |b| {
        b.iter(|| black_box(decide(black_box(&half), &policy, now)))
    });
    // Empty: all 100 wakes granted.
    let empty = pool(0, t0);
    assert_eq!(decide(&empty, &policy, now).targets.len(), 100);
    g.bench_function("wake_100_room_for_all", |b| {
        b.iter(|| black_box(decide(black_box(&empty), &policy, now)))
    });
    g.finish();
}

criterion_group!(benches, waking_100);
criterion_main!(benches);
