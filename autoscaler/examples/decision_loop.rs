//! The steady-state decision loop at scale: 10,000 opted-in Deployments in the index, fed
//! synthetic activator rounds once a (simulated) second, decided every 2 seconds, with the
//! per-Deployment metrics updated as the real control loop does. Reports CPU time per tick,
//! per-round ingest time, resident memory, and how many scale writes the ticks asked for.
//!
//! Time is simulated (the index and engine take it as an argument), so this runs as fast as
//! the CPU allows; the CPU figures are what one real tick would cost.
//!
//! ```text
//! cargo run --release -p zeroscale-autoscaler --example decision_loop -- [deployments] [seconds]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use zeroscale_autoscaler::DeploymentKey;
use zeroscale_autoscaler::index::{DeploymentView, Index, Source};
use zeroscale_autoscaler::metrics::Metrics;
use zeroscale_autoscaler::scrape::{ModelSample, Round};

fn cpu_time() -> Duration {
    // utime + stime of this process, in clock ticks (USER_HZ is 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the comm field: state is index 0, utime index 11, stime index 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Load of Deployment `i` at second `s`: a third idle, a third steady, a third with a spike.
fn load(i: usize, s: u64) -> f64 {
    match i % 3 {
        0 => 0.0,
        1 => 35.0 + (i % 7) as f64 * 10.0,
        _ => {
            if (s / 20).is_multiple_of(2) {
                20.0
            } else {
                250.0 + (i % 11) as f64 * 5.0
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(180);
    let rss_start = rss_mib();

    let t0 = Instant::now();
    let mut index = Index::new(&[None]);
    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let cm: BTreeMap<String, String> = BTreeMap::new();
    index.apply_configmap(Some(&cm));
    for s in [
        Source::ConfigMap,
        Source::Deployments(None),
        Source::Hpas(None),
    ] {
        index.begin_relist(s.clone());
        if s == Source::Deployments(None) {
            for i in 0..n {
                let annotations = [("zeroscale.dev/enabled".to_owned(), "true".to_owned())]
                    .into_iter()
                    .collect();
                index.apply_deployment(
                    DeploymentView {
                        key: DeploymentKey::new(format!("ns-{}", i % 50), format!("model-{i}")),
                        annotations,
                        spec_replicas: 1,
                        ready_replicas: 1,
                        resources: Default::default(),
                    },
                    t0,
                );
            }
        }
        index.end_relist(&s);
    }
    let keys: Vec<DeploymentKey> = (0..n)
        .map(|i| DeploymentKey::new(format!("ns-{}", i % 50), format!("model-{i}")))
        .collect();
    assert_eq!(index.managed_count(), n);

    let mut tick_cpu = Vec::new();
    let mut tick_wall = Vec::new();
    let mut round_wall = Vec::new();
    let mut writes = 0usize;
    let mut ticks = 0usize;
    let mut writes_last_minute = 0usize;
    let mut steady_writes_last_minute = 0usize;
    for s in 1..=seconds {
        let now = t0 + Duration::from_secs(s);
        // One activator round: every busy Deployment appears with its average concurrency.
        let started = Instant::now();
        let mut models = HashMap::with_capacity(n);
        for (i, key) in keys.iter().enumerate() {
            let c = load(i, s);
            if c > 0.0 {
                let in_flight = c.round() as u64;
                models.insert(
                    key.clone(),
                    ModelSample {
                        concurrency: c,
                        rps: c * 2.0,
                        in_flight,
                        queued: 0,
                        ..Default::default()
                    },
                );
            }
        }
        let round = Round {
            at: now,
            complete: true,
            models,
            failures: vec![],
            demand: false,
        };
        index.record_round(&round);
        round_wall.push(started.elapsed());

        if s.is_multiple_of(2) {
            let cpu = cpu_time();
            let wall = Instant::now();
            let out = index.tick(now);
            for report in &out.reports {
                metrics.observe_report(report);
            }
            let intents = out.intents.len();
            let last_minute = s > seconds.saturating_sub(60);
            for intent in out.intents {
                let i: usize = intent
                    .key
                    .deployment
                    .trim_start_matches("model-")
                    .parse()
                    .unwrap_or(2);
                if last_minute && i % 3 != 2 {
                    steady_writes_last_minute += 1;
                }
                // As if every patch succeeded and the pods became ready at once: the watch
                // event that follows, fed back into the index.
                index.scale_done(&intent.key, intent.to, true);
                let annotations = [("zeroscale.dev/enabled".to_owned(), "true".to_owned())]
                    .into_iter()
                    .collect();
                index.apply_deployment(
                    DeploymentView {
                        key: intent.key,
                        annotations,
                        spec_replicas: intent.to,
                        ready_replicas: intent.to,
                        resources: Default::default(),
                    },
                    now,
                );
            }
            tick_wall.push(wall.elapsed());
            tick_cpu.push(cpu_time().saturating_sub(cpu));
            writes += intents;
            ticks += 1;
            if last_minute {
                writes_last_minute += intents;
            }
        }
    }
    tick_wall.sort();
    round_wall.sort();
    let total_cpu: Duration = tick_cpu.iter().sum();
    println!("deployments: {n}, simulated seconds: {seconds}, ticks: {ticks}");
    println!(
        "tick (decide all + metrics), wall: p50 {:.2?} p99 {:.2?} max {:.2?}; CPU mean {:.2?}/tick",
        percentile(&tick_wall, 0.5),
        percentile(&tick_wall, 0.99),
        tick_wall.last().copied().unwrap_or_default(),
        total_cpu / ticks.max(1) as u32
    );
    println!(
        "round ingest (build + record), wall: p50 {:.2?} p99 {:.2?}",
        percentile(&round_wall, 0.5),
        percentile(&round_wall, 0.99)
    );
    println!(
        "scale writes asked: {writes} in {ticks} ticks ({:.3} per Deployment per tick); in the last minute: {writes_last_minute}, of which by idle or steady Deployments: {steady_writes_last_minute}",
        writes as f64 / (ticks.max(1) * n) as f64
    );
    println!(
        "RSS: {:.1} MiB at start, {:.1} MiB at the end",
        rss_start,
        rss_mib()
    );
}
