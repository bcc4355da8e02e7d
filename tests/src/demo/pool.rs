//! The demo's last scene, "more models than GPUs": the three models of
//! `manifests/examples/pool/` share capacity pool `gpu` of two replicas (the demo's ConfigMap
//! sets `pools: gpu=2`). One request to each in turn, then to the first again: the third and the
//! fourth wake find the pool full, and the autoscaler scales the least recently used idle model
//! to zero to make room (a `PoolEviction` Event on both Deployments) or, while every model is
//! inside `pool-min-residency`, holds the wake (`PoolWait`) until it can; the request waits in
//! the activator meanwhile.
//!
//! Every change of the pool's `spec.replicas` is watched in the API server's order, so the
//! peak in the summary is exact, not sampled once a second.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client};
use zeroscale_testkit::addon;

use super::{DemoOptions, MODEL_NAMESPACE, Tasks, Traffic, lock, predict};
use crate::traffic::PeakWatch;

/// The pool's name in the ConfigMap and the models' `zeroscale.dev/pool` annotation.
pub const POOL: &str = "gpu";
/// Its capacity in replicas.
pub const CAPACITY: i32 = 2;
/// The pool's models (Deployment = routed model name), as in `manifests/examples/pool/`.
pub const MODELS: [&str; 3] = ["summarize", "translate", "classify"];
/// The requests, one after the other: each model once, then the first again.
const ORDER: [&str; 4] = [MODELS[0], MODELS[1], MODELS[2], MODELS[0]];

/// What the pool scene saw.
#[derive(Debug, Default)]
pub struct PoolStory {
    /// The largest sum of `spec.replicas` over the pool's Deployments, with the counts that
    /// made it.
    pub peak: (i32, String),
    /// Each request in order: its model and how long its answer took.
    pub answers: Vec<(String, Duration)>,
    /// `PoolEviction` and `PoolWait` Events in order: `reason deployment: message`.
    pub events: Vec<String>,
    /// Evictions (one per `PoolEviction` Event on the Deployment that got the room).
    pub evictions: usize,
}

impl PoolStory {
    /// Lines for the demo's summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let answers = self
            .answers
            .iter()
            .map(|(m, d)| format!("{m} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "  pool {POOL} requests     {answers}");
        let _ = writeln!(
            s,
            "  pool {POOL} peak         {} of {CAPACITY} replicas ({})",
            self.peak.0, self.peak.1
        );
        let _ = writeln!(s, "  pool {POOL} evictions    {}", self.evictions);
        s
    }
}

/// The pool's replicas per model, from the Deployments' `spec.replicas` (missing = not yet
/// created).
fn counts_line(spec: &BTreeMap<String, i32>) -> String {
    MODELS
        .iter()
        .map(|m| format!("{m}={}", spec.get(*m).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per second (each model's desired/ready replicas) and every new pool Event.
async fn monitor(client: Client, started: Instant, quiet: bool, story: Arc<Mutex<PoolStory>>) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), MODEL_NAMESPACE);
    let events: Api<Event> = Api::namespaced(client, MODEL_NAMESPACE);
    let mut known = BTreeSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut cells = Vec::new();
        let mut used = 0;
        for m in MODELS {
            let (desired, ready) = match deployments.get(m).await {
                Ok(d) => (
                    d.spec.and_then(|s| s.replicas).unwrap_or(0),
                    d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
                ),
                Err(_) => (0, 0),
            };
            used += desired;
            cells.push(format!("{m} {desired}/{ready}"));
        }
        if !quiet {
            println!(
                "{:>4}s  pool {POOL} {used}/{CAPACITY}   {}",
                started.elapsed().as_secs(),
                cells.join("   ")
            );
        }
        let Ok(list) = events.list(&Default::default()).await else {
            continue;
        };
        for e in super::new_events(list.items, &["PoolEviction", "PoolWait"], &mut known) {
            let reason = e.reason.unwrap_or_default();
            let on = e.involved_object.name.unwrap_or_default();
            let message = e.message.unwrap_or_default();
            if !quiet {
                println!("{:>5}  event  {reason} {on}: {message}", "");
            }
            let mut story = lock(&story);
            if reason == "PoolEviction" && message.contains("to make room for this Deployment") {
                story.evictions += 1;
            }
            story.events.push(format!("{reason} {on}: {message}"));
        }
    }
}

/// Plays the scene through the activator Service at `activator`. Requests are counted in
/// `traffic` (phase "pool") like the rest of the demo's.
pub(super) async fn run(
    client: &Client,
    activator: SocketAddr,
    opts: &DemoOptions,
    traffic: &Traffic,
    started: Instant,
) -> anyhow::Result<PoolStory> {
    let quiet = opts.quiet;
    if !quiet {
        println!(
            "\n==> more models than GPUs: {} models in pool {POOL} of {CAPACITY} replicas \
             (kubectl apply -k manifests/examples/pool/); one request to each in turn, then \
             to {} again\n",
            MODELS.len(),
            MODELS[0]
        );
    }
    let peak = PeakWatch::start(client.clone(), MODEL_NAMESPACE, &MODELS);
    let story = Arc::new(Mutex::new(PoolStory::default()));
    let watchers = Tasks(vec![tokio::spawn(monitor(
        client.clone(),
        started,
        quiet,
        story.clone(),
    ))]);
    addon::apply_kustomization(client, &addon::manifests_dir().join("examples/pool"))
        .await
        .context("applying manifests/examples/pool")?;
    for model in ORDER {
        traffic
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = started.elapsed();
        let t0 = Instant::now();
        let r = predict(activator, model, opts.request_timeout).await;
        let latency = t0.elapsed();
        if !quiet {
            let what = match &r {
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.clone(),
            };
            println!(
                "{:>5}  request to {model}: {what} after {:.1}s",
                "",
                latency.as_secs_f64()
            );
        }
        traffic.record("pool", t, r, latency);
        lock(&story).answers.push((model.to_owned(), latency));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // One more line so the last Events show.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(watchers);
    let mut story = std::mem::take(&mut *lock(&story));
    let (sum, spec) = peak.peak();
    story.peak = (sum, counts_line(&spec));
    Ok(story)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_name_every_model_of_the_pool() {
        let spec = BTreeMap::from([("translate".to_owned(), 1), ("summarize".to_owned(), 1)]);
        assert_eq!(counts_line(&spec), "summarize=1 translate=1 classify=0");
    }

    #[test]
    fn the_story_table_shows_peak_and_evictions() {
        let story = PoolStory {
            peak: (2, "summarize=1 translate=1 classify=0".into()),
            answers: vec![("summarize".into(), Duration::from_millis(2500))],
            events: vec![],
            evictions: 2,
        };
        let t = story.table();
        assert!(t.contains("2 of 2 replicas (summarize=1"), "{t}");
        assert!(t.contains("evictions    2"), "{t}");
        assert!(t.contains("summarize 2.5s"), "{t}");
    }
}
