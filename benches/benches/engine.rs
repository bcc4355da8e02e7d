//! The scaling engine's cost: one decision with full windows, and one tick of a large cluster.
//!
//! `cargo bench -p zeroscale-benches --bench engine`; results in `BENCHMARKS.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use zeroscale_benches::{load, steady, warmed_decider};
use zeroscale_scaling::{Aggregation, Params};

/// One Deployment's tick with full 60s windows: record this second's sample, then decide.
fn one_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/one_decision");
    for (name, aggregation) in [
        ("linear", Aggregation::Linear),
        ("weighted_exponential", Aggregation::WeightedExponential),
    ] {
        let params = Params {
            aggregation,
            ..Params::default()
        };
        let t0 = Instant::now();
        let (mut d, mut now) = warmed_decider(params, t0, 5);
        let mut s = 60;
        g.bench_function(format!("record_and_decide/{name}"), |b| {
            b.iter(|| {
                s += 1;
                now += Duration::from_secs(1);
                d.record(now, load(5, s));
                black_box(d.decide(now, black_box(&steady(3))))
            })
        });
    }
    // The decision alone, at a fixed second (windows already advanced).
    let (mut d, now) = warmed_decider(Params::default(), Instant::now(), 5);
    g.bench_function("decide_only/linear", |b| {
        b.iter(|| black_box(d.decide(black_box(now), black_box(&steady(3)))))
    });
    g.finish();
}

/// One tick of a 10,000-Deployment cluster: each decider records one sample and decides.
fn cluster_tick(c: &mut Criterion) {
    const N: usize = 10_000;
    let t0 = Instant::now();
    let mut deciders: Vec<_> = (0..N)
        .map(|i| warmed_decider(Params::default(), t0, i).0)
        .collect();
    let mut now = t0 + Duration::from_secs(59);
    let mut s = 59;
    let mut g = c.benchmark_group("engine/cluster_tick");
    g.sample_size(30);
    g.bench_function("10000_deciders", |b| {
        b.iter(|| {
            s += 1;
            now += Duration::from_secs(1);
            let mut total = 0u64;
            for (i, d) in deciders.iter_mut().enumerate() {
                d.record(now, load(i, s));
                total += u64::from(d.decide(now, &steady(3)).desired);
            }
            black_box(total)
        })
    });
    g.finish();
}

criterion_group!(benches, one_decision, cluster_tick);
criterion_main!(benches);
