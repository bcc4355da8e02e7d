//! What prefix-hash balancing adds to a request, in the activator's own functions: the body
//! parse that routes it (with the prompt's prefix key, or without), and the pick of a pod
//! among 8 (keyed with bounded loads, or least-request). BENCHMARKS.md, "Prefix-hash balancing".

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use zeroscale_activator::route;
use zeroscale_gate::balance;

/// The chat body of `scripts/bench-proxy.sh`'s balance part: a 605-character system prompt.
fn chat_body() -> Bytes {
    let system = "You are a careful assistant for the zeroscale project. ".repeat(11);
    Bytes::from(format!(
        r#"{{"model":"chat","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"How do I scale a model to zero?"}}]}}"#
    ))
}

fn bench(c: &mut Criterion) {
    let body = chat_body();
    let mut g = c.benchmark_group("route_body");
    g.bench_function("model only (least-request)", |b| {
        b.iter(|| route::model_from_body(black_box(&body)).unwrap())
    });
    // Held streams (issue 16 part 4) read `"stream"` in the same parse.
    let streamed = Bytes::from(std::str::from_utf8(&body).unwrap().replacen(
        r#"{"model":"chat","#,
        r#"{"model":"chat","stream":true,"#,
        1,
    ));
    g.bench_function("model and stream flag, streamed body (hold-streams)", |b| {
        b.iter(|| {
            let (r, m) = route::route_body(black_box(&streamed)).unwrap();
            (m, r.streams())
        })
    });
    g.bench_function("model and 256-character prefix key (prefix-hash)", |b| {
        b.iter(|| {
            let (r, m) = route::route_body(black_box(&body)).unwrap();
            (m, r.prefix_key(256).unwrap())
        })
    });
    g.finish();

    // 8 pods with a few requests each.
    let pods: Vec<(u32, u64)> = (0..8u16)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080));
            (u32::from(i % 3), balance::pod_hash(addr))
        })
        .collect();
    let mut g = c.benchmark_group("pick_8_pods");
    g.bench_function("least-request", |b| {
        b.iter(|| balance::pick_by(pods.len(), 0, black_box(3), |i| Some(pods[i].0)))
    });
    g.bench_function("prefix-hash, bounded loads", |b| {
        b.iter(|| {
            balance::pick_keyed_by(pods.len(), 0, black_box(0x1234_5678), 1.25, |i| {
                Some(pods[i])
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
