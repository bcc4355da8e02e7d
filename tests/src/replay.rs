//! A time-compressed trace replayed through the add-on on the local cluster, and the same
//! schedule through `zeroscale-sim` with the same settings (issue 15: the end-to-end replay
//! with demand sizing, and the simulator's calibration against the real system).
//!
//! Both sides count the same things the same way:
//! - **cold starts**: requests that arrived while their model had no ready pod and waited for
//!   one. The add-on: answers carrying the activator's `zeroscale-cold-start` header (set when a
//!   request was queued with no ready pod, `zeroscale_gate`'s `cold` ticket). The simulator:
//!   `ModelOutcome::cold_starts`.
//! - **replica-seconds**: every pod that exists (starting, ready or terminating), integrated
//!   over the same window from the first request. The add-on: the pod counts polled every
//!   100 ms ([`ReplicaWatch`]), held between polls. The simulator: `replica_seconds` with its
//!   horizon set to the same window.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use zeroscale_config::feed::{FEED_PATH, FeedPage};
use zeroscale_sim::dist::Latency;
use zeroscale_sim::event::nanos;
use zeroscale_sim::policy::PolicyKind;
use zeroscale_sim::setup::ConfigSource;
use zeroscale_sim::sim::{ModelOutcome, Options, PodStart, Service as SimService, simulate};
use zeroscale_sim::trace::Request;

use zeroscale_testkit::http_client;

use crate::traffic::{self, LocalAddon, Outcome, ReplicaPoint, ReplicaWatch, Summary};
use crate::{Ctx, sample_model_deployment, service_for};

/// What is replayed, and how the model and the add-on are set up: everything both sides read.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Deployment (and model) name.
    pub model: String,
    /// `sample-model --load-delay`: from process start to a passing readiness probe.
    pub load_delay: Duration,
    /// `sample-model --service-time`: every request.
    pub service_time: Duration,
    /// `zeroscale.dev/container-concurrency`.
    pub container_concurrency: u32,
    /// `zeroscale-config` keys (the test kit's fast configuration and whatever the test sets).
    pub config: BTreeMap<String, String>,
    /// Activator processes.
    pub activators: usize,
    /// Arrival times from the first request.
    pub schedule: Vec<Duration>,
}

impl Setup {
    /// The Deployment's annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        [
            ("zeroscale.dev/enabled".to_owned(), "true".to_owned()),
            (
                "zeroscale.dev/container-concurrency".to_owned(),
                self.container_concurrency.to_string(),
            ),
        ]
        .into()
    }

    /// Offered concurrency (arrivals x service time) of the busiest `window` of the schedule,
    /// and the pods it needs at `per_pod` concurrency each (rounded up).
    pub fn steady_need(&self, window: Duration, per_pod: f64) -> (f64, u32) {
        let d = zeroscale_sim::stats::demand(
            &self.requests(),
            &SimService::Fixed(nanos(self.service_time)),
            nanos(window),
            per_pod,
        );
        (d.peak_concurrency, d.peak_pods)
    }

    /// The per-pod concurrency the autoscaler aims at (target x utilisation), as
    /// zeroscale-config resolves it from [`Setup::config`] and the annotations.
    pub fn target_per_pod(&self) -> anyhow::Result<f64> {
        let s = self.sim_config().resolve()?;
        Ok(s.params.target * s.params.target_utilization)
    }

    fn sim_config(&self) -> ConfigSource {
        ConfigSource {
            configmap: self.config.clone(),
            annotations: self.annotations(),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.schedule
            .iter()
            .map(|at| Request {
                at: nanos(*at),
                model: 0,
                context_tokens: None,
                generated_tokens: None,
            })
            .collect()
    }
}

/// A trace's arrival times from its first row, `speedup` times faster, at most `max_replay`.
pub fn schedule(rows: &[traffic::TraceRow], speedup: f64, max_replay: Duration) -> Vec<Duration> {
    let Some(t0) = rows.first().map(|r| r.at) else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| Duration::from_secs_f64((r.at - t0) / speedup))
        .take_while(|at| *at <= max_replay)
        .collect()
}

/// The window `[from, to)` of the Azure LLM code trace: cut from the full trace in
/// `../shared/data/azure-llm-2023` (beside the repository; `$ZEROSCALE_TRACE_DIR` overrides)
/// when present, and then the committed `sample` (under the repository) must be exactly that
/// cut; else the committed sample. Returns the rows and where they came from.
pub fn code_trace(
    sample: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<(Vec<traffic::TraceRow>, String)> {
    let root = traffic::repo_root();
    let sample = root.join(sample);
    // `ZEROSCALE_TRACE_DIR` points elsewhere (a missing directory tests the fallback).
    let dir = std::env::var_os("ZEROSCALE_TRACE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data/azure-llm-2023"));
    let full = dir.join("AzureLLMInferenceTrace_code.csv");
    let sample_rows = traffic::read_trace(&sample)?;
    if !full.exists() {
        return Ok((sample_rows, sample.display().to_string()));
    }
    let rows = traffic::cut(&traffic::read_trace(&full)?, from, to)?;
    let a: Vec<&str> = rows.iter().map(|r| r.line.as_str()).collect();
    let b: Vec<&str> = sample_rows.iter().map(|r| r.line.as_str()).collect();
    ensure!(
        a == b,
        "{} is not the cut [{from}, {to}) of {} ({} rows there, {} in the sample)",
        sample.display(),
        full.display(),
        a.len(),
        b.len()
    );
    Ok((rows, format!("{} (cut)", full.display())))
}

/// What the add-on did with a replay.
pub struct Observed {
    /// Every request's outcome, in schedule order.
    pub outcomes: Vec<Outcome>,
    /// Their summary.
    pub summary: Summary,
    /// The activators' `requests_total` of the model by status code.
    pub counted: BTreeMap<u16, u64>,
    /// Replica counts over time, from the first request.
    pub points: Vec<ReplicaPoint>,
    /// From the first request to the end of the watch: the window of the integrals.
    pub window: Duration,
    /// Answers with the cold-start header.
    pub cold_starts: usize,
    /// Pod-seconds over the window.
    pub replica_seconds: f64,
    /// Highest `spec.replicas`.
    pub peak: i32,
    /// The mean time requests spent at pods, as the activators measured it (their stat feed's
    /// summed service time over requests served): the configured service time plus what the
    /// data path and a busy machine add.
    pub service_time: Option<Duration>,
}

impl Observed {
    /// Non-200 answers (and requests with no answer).
    pub fn non_200(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.ok()).count()
    }
}

/// `∫ pods dt` over `[0, end]`: each point's count held until the next.
pub fn pod_seconds(points: &[ReplicaPoint], end: Duration) -> f64 {
    let mut total = 0.0;
    for (i, p) in points.iter().enumerate() {
        let until = points.get(i + 1).map_or(end, |n| n.at).min(end);
        if until > p.at {
            total += p.pods as f64 * (until - p.at).as_secs_f64();
        }
    }
    total
}

/// Replays `setup` through the add-on: a `sample-model` Deployment at 0 replicas (it stays at
/// 0 until the first request), `setup.activators` activators and the autoscaler as local
/// processes with `setup.config`, one small completion request per scheduled arrival (open
/// loop), sent round-robin over the activators. The watch stops `tail` after the last answer.
/// Returns what was observed and the add-on (for logs in failure messages).
pub async fn on_cluster(
    ctx: &Ctx,
    setup: &Setup,
    tail: Duration,
) -> anyhow::Result<(Observed, LocalAddon)> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let name = setup.model.as_str();
    let load = format!("--load-delay={}ms", setup.load_delay.as_millis());
    let service = format!("--service-time={}ms", setup.service_time.as_millis());
    let model_arg = format!("--model-name={name}");
    let mut d: Deployment = sample_model_deployment(name, 0, &[&model_arg, &service, &load]);
    d.metadata.annotations = Some(setup.annotations());
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service_for(name))
        .await?;
    let addon = LocalAddon::start(
        &cluster,
        &client,
        &ns,
        setup.activators,
        setup.config.clone(),
    )
    .await?;
    let body = json!({"model": name, "prompt": "x", "max_tokens": 1});
    let watch = ReplicaWatch::start(&client, &ns, name);
    let start = Instant::now();
    let arrivals = setup.schedule.iter().map(|at| (*at, body.clone()));
    let outcomes = open_loop(&addon.listen_addrs(), arrivals, start).await?;
    tokio::time::sleep(tail).await;
    let window = start.elapsed();
    let points = watch.stop().await?;
    let counted = addon.answered_by_code(name).await?;
    let service_time = measured_service_time(&addon, &ns, name).await?;
    let observed = Observed {
        service_time,
        summary: Summary::of(&outcomes),
        counted,
        cold_starts: outcomes.iter().filter(|o| o.cold_wait.is_some()).count(),
        replica_seconds: pod_seconds(&points, window),
        peak: points.iter().map(|p| p.spec).max().unwrap_or(0),
        points,
        window,
        outcomes,
    };
    Ok((observed, addon))
}

/// The mean time at pods of `ns/name`'s served requests, summed over the activators' stat feeds
/// (a full page each: cumulative since they started); `None` before any was served.
pub async fn measured_service_time(
    addon: &LocalAddon,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<Duration>> {
    let (mut served, mut micros) = (0u64, 0u64);
    for a in &addon.activators {
        let text = http_client::get(a.admin, FEED_PATH).await?.text();
        let page: FeedPage =
            serde_json::from_str(&text).with_context(|| format!("{FEED_PATH}: {text}"))?;
        for m in page
            .models
            .iter()
            .filter(|m| m.namespace == ns && m.deployment == name)
        {
            if let Some(d) = m.demand {
                served += d.served;
                micros += d.service_us;
            }
        }
    }
    Ok((served > 0).then(|| Duration::from_micros(micros / served)))
}

/// Sends each `(at, body)` as an OpenAI-style completion at `start + at` (open loop: one task
/// per request, whatever the answers), round-robin over `targets`; every outcome, in order.
pub async fn open_loop(
    targets: &[std::net::SocketAddr],
    arrivals: impl IntoIterator<Item = (Duration, serde_json::Value)>,
    start: Instant,
) -> anyhow::Result<Vec<Outcome>> {
    let tasks: Vec<_> = arrivals
        .into_iter()
        .enumerate()
        .map(|(i, (at, body))| {
            let which = i % targets.len();
            let addr = targets[which];
            tokio::spawn(async move {
                tokio::time::sleep_until((start + at).into()).await;
                traffic::send(
                    i as u64,
                    which,
                    addr,
                    "/v1/completions",
                    &body,
                    start,
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    Ok(outcomes)
}

/// What the simulator needs beyond [`Setup`]: the parts of the real system it models as
/// latencies.
#[derive(Clone, Copy, Debug)]
pub struct SimLatencies {
    /// Scale patch -> pod process started and probed (added to the load delay).
    pub pod_start: Duration,
    /// First queued request -> the autoscaler's 0 -> N patch.
    pub wake: Duration,
    /// A terminating pod's last request -> its object gone.
    pub shutdown: Duration,
}

/// The same schedule through `zeroscale-sim`, with the same ConfigMap keys and annotations and
/// load delay, each request taking `service` at its pod, its horizon the add-on's observation
/// window.
pub fn in_simulator(
    setup: &Setup,
    service: Duration,
    window: Duration,
    lat: SimLatencies,
) -> anyhow::Result<ModelOutcome> {
    let settings = setup
        .sim_config()
        .resolve()
        .context("the replay's configuration")?;
    let opts = Options {
        service: SimService::Fixed(nanos(service)),
        start: PodStart {
            schedule: Latency::Fixed(lat.pod_start),
            image: Latency::ZERO,
            load: Latency::Fixed(setup.load_delay),
        },
        wake_latency: nanos(lat.wake),
        shutdown: nanos(lat.shutdown),
        initial_replicas: 0,
        newly_enabled: true,
        horizon: nanos(window),
        bin: nanos(Duration::from_secs(1)),
        seed: 1,
    };
    Ok(simulate(
        &setup.model,
        &setup.requests(),
        &settings,
        &PolicyKind::Engine,
        &opts,
        0,
    ))
}

/// `|a - b| / b`, or 0 when both are 0.
pub fn relative_error(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }
}

/// For each wake in `points` (`spec.replicas` from 0 to more, or above 0 at the first point),
/// the time until a pod is ready: the real system's wake-to-ready latency, load delay included.
pub fn wake_to_ready(points: &[ReplicaPoint]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut woke: Option<Duration> = None;
    let mut prev_spec = 0;
    for p in points {
        if prev_spec == 0 && p.spec > 0 && p.ready == 0 {
            woke = Some(p.at);
        }
        if p.ready > 0
            && let Some(w) = woke.take()
        {
            out.push(p.at - w);
        }
        prev_spec = p.spec;
    }
    out
}
