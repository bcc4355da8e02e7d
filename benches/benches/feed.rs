//! What the activator spends on its two outputs at 10,000 routed models: one stat-feed page (what
//! the autoscaler reads every second; `zeroscale_activator::stat_feed`) and one `/metrics` page
//! (per-model series only for active models), idle and with 100 models holding requests.
//!
//! `cargo bench -p zeroscale-benches --bench feed`; results in `BENCHMARKS.md`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use zeroscale_activator::Metrics;
use zeroscale_activator::metrics::{Held, ModelLabels, ModelMetrics};

const MODELS: usize = 10_000;

fn fleet() -> (Registry, Arc<Metrics>, Vec<ModelMetrics>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let models = (0..MODELS)
        .map(|i| {
            metrics.model(ModelLabels {
                namespace: format!("team-{}", i % 100),
                deployment: format!("model-{i:05}"),
                model: format!("model-{i:05}"),
            })
        })
        .collect();
    (registry, metrics, models)
}

fn pages(c: &mut Criterion) {
    let mut g = c.benchmark_group("activator/10000_models");
    let (registry, metrics, models) = fleet();
    for (name, active) in [("idle", 0), ("100_active", 100)] {
        let held: Vec<Held> = models[..active].iter().map(|m| m.integral.hold()).collect();
        let feed = metrics.feed();
        let first = feed.read(None, tokio::time::Instant::now());
        let mut cursor = (first.instance, first.generation);
        g.bench_function(format!("feed_page/{name}"), |b| {
            b.iter(|| {
                let page = feed.read(Some(cursor), tokio::time::Instant::now());
                cursor = (page.instance, page.generation);
                black_box(serde_json::to_vec(&page).unwrap())
            })
        });
        g.bench_function(format!("metrics_page/{name}"), |b| {
            b.iter(|| {
                let mut out = String::new();
                prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
                black_box(out)
            })
        });
        drop(held);
    }
    g.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
