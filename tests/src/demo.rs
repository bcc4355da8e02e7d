//! The one-command demo (`./scripts/demo.sh`, binary `zeroscale-demo`): a real local cluster
//! with a real node, the add-on installed from `manifests/` and running as pods from the images
//! the project builds (2 activators, 2 leader-elected autoscalers), the example model
//! (`manifests/examples/`) at 0 replicas, and a scenario played through the
//! `zeroscale-activator` Service while a live line per second shows what happens:
//!
//! 1. **cold start**: one request at 0 replicas; it waits in the activator until a pod has
//!    loaded the model;
//! 2. **burst**: many concurrent clients for a while: scale-up, panic mode;
//! 3. **idle**: no traffic until the Deployment is back at 0;
//! 4. **second cold start**: one request at 0 again;
//! 5. **more models than GPUs** ([`pool`]): three models share a capacity pool of two replicas;
//!    one request to each in turn evicts the least recently used idle one.
//!
//! Then a summary table. Every request must be answered 200: [`Summary::lost`] lists the others
//! and the binary exits non-zero if there are any. Traffic is bounded in count and time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroscale_testkit::LocalCluster;
use zeroscale_testkit::addon;
use zeroscale_testkit::http_client;

pub mod pool;

/// `println!` unless quiet (the e2e test runs the scenario without the live view).
macro_rules! say {
    ($quiet:expr, $($t:tt)*) => {
        if !$quiet {
            println!($($t)*);
        }
    };
}

/// The example model's namespace and name (as in `manifests/examples/model.yaml`).
pub const MODEL_NAMESPACE: &str = "models";
/// The example model's Deployment and routed model name.
pub const MODEL: &str = "sentiment";

/// Knobs of the scenario. The defaults finish in about two minutes once binaries are built.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Concurrent clients during the burst, each sending one request after the other.
    pub burst_clients: usize,
    /// How long the burst lasts.
    pub burst: Duration,
    /// At most this many requests in the burst (a bound on load, not a target).
    pub burst_max_requests: u64,
    /// The model's scale-to-zero grace period (the example says 60s; shorter for a demo).
    pub grace_period: &'static str,
    /// The stable window (the default 60s is realistic but slow to watch).
    pub stable_window: &'static str,
    /// Limit on the idle phase: the model must be back at 0 by then.
    pub idle_limit: Duration,
    /// Per-request client timeout.
    pub request_timeout: Duration,
    /// No live view or progress lines (the summary is still returned).
    pub quiet: bool,
    /// Play the pool scene ([`pool`]) after the others.
    pub pool_scene: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            burst_clients: 16,
            burst: Duration::from_secs(20),
            burst_max_requests: 20_000,
            grace_period: "10s",
            stable_window: "12s",
            idle_limit: Duration::from_secs(120),
            request_timeout: Duration::from_secs(90),
            quiet: false,
            pool_scene: true,
        }
    }
}

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests not answered 200, by status code or error kind.
    pub failures: BTreeMap<String, u64>,
    /// A few of them in detail: phase, time, what happened.
    pub lost: Vec<String>,
    /// Latency of each cold start (request at 0 replicas) with its label.
    pub cold_starts: Vec<(String, Duration)>,
    /// Burst latencies (p50, p99, max).
    pub burst_latency: Option<(Duration, Duration, Duration)>,
    /// Requests answered per second during the burst (mean).
    pub burst_rps: f64,
    /// `(seconds since the scenario started, replicas)` at every change of `spec.replicas`.
    pub timeline: Vec<(u64, i32)>,
    /// Whether the autoscaler reported panic mode at some point.
    pub panic_seen: bool,
    /// Highest `spec.replicas` seen.
    pub max_replicas: i32,
    /// Scale Events on the Deployment, in order.
    pub events: Vec<String>,
    /// What the pool scene saw, when it was played.
    pub pool: Option<pool::PoolStory>,
    /// Wall time of the whole run, setup included.
    pub total: Duration,
}

impl Summary {
    /// Every request answered 200 and, in the pool scene, the pool never above its capacity.
    pub fn passed(&self) -> bool {
        self.ok == self.sent
            && self.failures.is_empty()
            && self
                .pool
                .as_ref()
                .is_none_or(|p| p.peak.0 <= pool::CAPACITY)
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let errors = if self.failures.is_empty() {
            "none".to_owned()
        } else {
            self.failures
                .iter()
                .map(|(k, v)| format!("{v} x {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let colds = self
            .cold_starts
            .iter()
            .map(|(l, d)| format!("{:.1}s ({l})", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        let timeline = self
            .timeline
            .iter()
            .map(|(t, r)| format!("t={t}s {r}"))
            .collect::<Vec<_>>()
            .join(" -> ");
        let _ = writeln!(s, "summary");
        let _ = writeln!(s, "  requests sent        {}", self.sent);
        let _ = writeln!(s, "  answered 200         {}", self.ok);
        let _ = writeln!(s, "  errors               {errors}");
        let _ = writeln!(
            s,
            "  cold starts          {}: {colds}",
            self.cold_starts.len()
        );
        if let Some((p50, p99, max)) = self.burst_latency {
            let _ = writeln!(
                s,
                "  burst latency        p50 {} ms, p99 {} ms, max {} ms ({:.0} req/s)",
                p50.as_millis(),
                p99.as_millis(),
                max.as_millis(),
                self.burst_rps
            );
        }
        let _ = writeln!(
            s,
            "  max replicas         {} (panic mode seen: {})",
            self.max_replicas,
            if self.panic_seen { "yes" } else { "no" }
        );
        let _ = writeln!(s, "  replica timeline     {timeline}");
        let _ = writeln!(s, "  scale events         {}", self.events.len());
        if let Some(p) = &self.pool {
            s.push_str(&p.table());
        }
        let _ = writeln!(s, "  total time           {:.0}s", self.total.as_secs_f64());
        for l in &self.lost {
            let _ = writeln!(s, "  LOST: {l}");
        }
        s
    }
}

/// Shared counters of the traffic generators.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    ok: AtomicU64,
    done: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    lost: Mutex<Vec<String>>,
    burst_latencies: Mutex<Vec<Duration>>,
}

impl Traffic {
    fn record(&self, phase: &str, t: Duration, result: Result<u16, String>, latency: Duration) {
        self.done.fetch_add(1, Ordering::Relaxed);
        let kind = match result {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if phase == "burst" {
                    lock(&self.burst_latencies).push(latency);
                }
                return;
            }
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
        *lock(&self.failures).entry(kind.clone()).or_default() += 1;
        let mut lost = lock(&self.lost);
        if lost.len() < 10 {
            lost.push(format!(
                "{phase} request at t={:.1}s: {kind} after {} ms",
                t.as_secs_f64(),
                latency.as_millis()
            ));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Background tasks that end with their owner, also when the demo is interrupted (dropped).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One prediction for `model` (in [`MODEL_NAMESPACE`]) through the activator, routed by
/// `Host: {model}.{namespace}` (and the KServe path): `Ok(status)` or a short description of
/// what went wrong.
async fn predict(addr: SocketAddr, model: &str, timeout: Duration) -> Result<u16, String> {
    let host = format!("{model}.{MODEL_NAMESPACE}");
    match tokio::time::timeout(timeout, post_predict(addr, &host, model)).await {
        Ok(Ok((status, _))) => Ok(status),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err("connection refused".into())
        }
        Ok(Err(e)) => Err(format!("transport error ({e})")),
        Err(_) => Err("client timeout".into()),
    }
}

/// `POST /v1/models/{model}:predict` with `Host: host` and a small JSON body, on a fresh
/// HTTP/1.1 connection closed after the answer: `(status, body)`.
pub async fn post_predict(
    addr: SocketAddr,
    host: &str,
    model: &str,
) -> std::io::Result<(u16, String)> {
    let body = json!({"instances": [[0.2, 0.8]]}).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("malformed answer: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("no status in {head:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Joins the chunks of a chunked body (enough for small JSON answers).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of `metric{..., deployment="sentiment", ...}` in a Prometheus text exposition.
fn series(text: &str, metric: &str) -> Option<f64> {
    let label = format!("deployment=\"{MODEL}\"");
    let ns = format!("namespace=\"{MODEL_NAMESPACE}\"");
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric).is_some_and(|r| r.starts_with('{'))
                && l.contains(&label)
                && l.contains(&ns)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

async fn metrics(addr: SocketAddr) -> String {
    match http_client::get(addr, "/metrics").await {
        Ok(r) if r.status == 200 => r.text(),
        _ => String::new(),
    }
}

/// Metrics addresses (port 9090, as the manifests name it `metrics`) of the Ready pods of an
/// add-on Deployment.
async fn addon_pods(client: &Client, name: &str) -> Vec<SocketAddr> {
    let selector = format!("app.kubernetes.io/name={name}");
    crate::ready_pod_addrs(client, addon::ADDON_NAMESPACE, &selector, 9090)
        .await
        .unwrap_or_default()
}

/// What the monitor saw, for the summary.
#[derive(Default)]
struct Seen {
    timeline: Vec<(u64, i32)>,
    panic: bool,
    max_replicas: i32,
    events: Vec<String>,
}

/// Prints one line per second and every new scale Event until `stop` is set.
struct Monitor {
    client: Client,
    started: Instant,
    phase: Arc<Mutex<&'static str>>,
    traffic: Arc<Traffic>,
    seen: Arc<Mutex<Seen>>,
    quiet: bool,
}

impl Monitor {
    async fn run(self) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), MODEL_NAMESPACE);
        let events: Api<Event> = Api::namespaced(self.client.clone(), MODEL_NAMESPACE);
        let mut known_events = BTreeSet::new();
        let mut last_replicas = None;
        let mut last_done = self.traffic.done.load(Ordering::Relaxed);
        let mut last_tick = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        say!(
            self.quiet,
            "{:>5}  {:<17} {:>8} {:>6}  {:>9} {:>6} {:>5}  {:<5}",
            "t",
            "phase",
            "replicas",
            "ready",
            "in-flight",
            "queued",
            "rps",
            "panic"
        );
        loop {
            ticker.tick().await;
            let t = self.started.elapsed().as_secs();
            let (desired, ready) = match deployments.get(MODEL).await {
                Ok(d) => (
                    d.spec.and_then(|s| s.replicas).unwrap_or(0),
                    d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
                ),
                Err(_) => (-1, -1),
            };
            // Every add-on pod, scraped directly: in-flight and queued summed over the
            // activators, panic as the leader (or any autoscaler) reports it.
            let (mut in_flight, mut queued, mut panic) = (0.0, 0.0, false);
            for addr in addon_pods(&self.client, addon::ACTIVATOR).await {
                let act = metrics(addr).await;
                in_flight += series(&act, "zeroscale_activator_requests_in_flight").unwrap_or(0.0);
                queued += series(&act, "zeroscale_activator_requests_queued").unwrap_or(0.0);
            }
            for addr in addon_pods(&self.client, addon::AUTOSCALER).await {
                let auto = metrics(addr).await;
                panic |= series(&auto, "zeroscale_autoscaler_panic_mode").unwrap_or(0.0) > 0.0;
            }
            let done = self.traffic.done.load(Ordering::Relaxed);
            let rps = (done - last_done) as f64 / last_tick.elapsed().as_secs_f64();
            last_done = done;
            last_tick = Instant::now();
            {
                let mut seen = lock(&self.seen);
                seen.panic |= panic;
                if desired >= 0 && last_replicas != Some(desired) {
                    seen.timeline.push((t, desired));
                    seen.max_replicas = seen.max_replicas.max(desired);
                    last_replicas = Some(desired);
                }
            }
            let phase = *lock(&self.phase);
            say!(
                self.quiet,
                "{:>4}s  {:<17} {:>8} {:>6}  {:>9} {:>6} {:>5.0}  {:<5}",
                t,
                phase,
                desired,
                ready,
                in_flight,
                queued,
                rps,
                if panic { "PANIC" } else { "-" }
            );
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={MODEL}")))
                .await;
            if let Ok(list) = list {
                for e in new_events(list.items, &["Scaled"], &mut known_events) {
                    let message = e.message.unwrap_or_default();
                    say!(self.quiet, "{:>5}  event  {message}", "");
                    lock(&self.seen).events.push(message);
                }
            }
        }
    }
}

/// Runs the whole demo on an already started cluster: installs and starts the add-on, deploys
/// the example model, plays the scenario. The caller owns the cluster (and stops it).
pub async fn run(cluster: &LocalCluster, opts: &DemoOptions) -> anyhow::Result<Summary> {
    if !cluster.has_real_node() {
        bail!("the demo runs the add-on as pods: start the cluster with a real node");
    }
    let began = Instant::now();
    let client = cluster.client();
    let manifests = addon::manifests_dir();

    say!(
        opts.quiet,
        "==> installing the add-on: server-side apply of manifests/ (kubectl apply -k manifests/)"
    );
    let mut config = BTreeMap::new();
    for (k, v) in [
        ("tick-interval", "1s"),
        ("scrape-interval", "1s"),
        ("stable-window", opts.stable_window),
        ("activator-wake-resend-interval", "2s"),
    ] {
        config.insert(k.to_owned(), v.to_owned());
    }
    if opts.pool_scene {
        config.insert("pools".into(), format!("{}={}", pool::POOL, pool::CAPACITY));
        config.insert("pool-min-residency".into(), "5s".into());
    }
    say!(
        opts.quiet,
        "    zeroscale-config overrides for a quick demo: {}",
        config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = Instant::now();
    crate::install_addon(&client, &config)
        .await
        .context("installing the add-on")?;
    let activator =
        crate::cluster_ip(&client, addon::ADDON_NAMESPACE, addon::ACTIVATOR, "http").await?;
    say!(
        opts.quiet,
        "    2 activator and 2 autoscaler pods Ready in {:.1}s (images built from the Dockerfile); \
         traffic goes to the zeroscale-activator Service at {activator}",
        t.elapsed().as_secs_f64()
    );

    say!(
        opts.quiet,
        "==> deploying the example model (kubectl apply -k manifests/examples/) at 0 replicas"
    );
    addon::apply_kustomization(&client, &manifests.join("examples"))
        .await
        .context("applying the example model")?;
    // The example waits 60s before going back to zero; a demo should not.
    let patch = json!({"metadata": {"annotations": {
        "zeroscale.dev/scale-to-zero-grace-period": opts.grace_period,
    }}});
    Api::<Deployment>::namespaced(client.clone(), MODEL_NAMESPACE)
        .patch(MODEL, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let d = Api::<Deployment>::namespaced(client.clone(), MODEL_NAMESPACE)
        .get(MODEL)
        .await?;
    let container = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first());
    say!(
        opts.quiet,
        "    {MODEL_NAMESPACE}/{MODEL}: image {} args {} (grace period shortened to {})",
        container.and_then(|c| c.image.clone()).unwrap_or_default(),
        container
            .and_then(|c| c.args.clone())
            .unwrap_or_default()
            .join(" "),
        opts.grace_period
    );

    let traffic = Arc::new(Traffic::default());
    let phase = Arc::new(Mutex::new("cold start"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    say!(
        opts.quiet,
        "==> scenario (all traffic through the activator)\n"
    );
    let monitor = Tasks(vec![tokio::spawn(
        Monitor {
            client: client.clone(),
            started,
            phase: phase.clone(),
            traffic: traffic.clone(),
            seen: seen.clone(),
            quiet: opts.quiet,
        }
        .run(),
    )]);
    let result = scenario(&client, activator, opts, &traffic, &phase, started).await;
    // One more line so the last change and Events show.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(monitor);
    let logs = || {
        format!(
            "the scenario failed; pod logs are under {}",
            cluster.dir().join("node/pod-logs").display()
        )
    };
    let cold_starts = result.with_context(logs)?;
    let pool = if opts.pool_scene {
        Some(
            pool::run(&client, activator, opts, &traffic, started)
                .await
                .with_context(logs)?,
        )
    } else {
        None
    };

    let seen = std::mem::take(&mut *lock(&seen));
    let mut lat = std::mem::take(&mut *lock(&traffic.burst_latencies));
    lat.sort();
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    let burst_latency = (!lat.is_empty()).then(|| (pick(0.5), pick(0.99), pick(1.0)));
    Ok(Summary {
        sent: traffic.sent.load(Ordering::Relaxed),
        ok: traffic.ok.load(Ordering::Relaxed),
        failures: std::mem::take(&mut *lock(&traffic.failures)),
        lost: std::mem::take(&mut *lock(&traffic.lost)),
        cold_starts,
        burst_rps: lat.len() as f64 / opts.burst.as_secs_f64(),
        burst_latency,
        timeline: seen.timeline,
        panic_seen: seen.panic,
        max_replicas: seen.max_replicas,
        events: seen.events,
        pool,
        total: began.elapsed(),
    })
}

async fn spec_and_pods(client: &Client) -> anyhow::Result<(i32, i32)> {
    let d = Api::<Deployment>::namespaced(client.clone(), MODEL_NAMESPACE)
        .get(MODEL)
        .await?;
    Ok((
        d.spec.and_then(|s| s.replicas).unwrap_or(0),
        d.status.and_then(|s| s.replicas).unwrap_or(0),
    ))
}

/// One request at zero replicas; its latency is the cold start.
async fn cold_start(
    activator: SocketAddr,
    opts: &DemoOptions,
    traffic: &Traffic,
    started: Instant,
    phase: &str,
) -> Duration {
    traffic.sent.fetch_add(1, Ordering::Relaxed);
    let t = started.elapsed();
    let t0 = Instant::now();
    let r = predict(activator, MODEL, opts.request_timeout).await;
    let latency = t0.elapsed();
    traffic.record(phase, t, r, latency);
    latency
}

async fn scenario(
    client: &Client,
    activator: SocketAddr,
    opts: &DemoOptions,
    traffic: &Arc<Traffic>,
    phase: &Arc<Mutex<&'static str>>,
    started: Instant,
) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut colds = Vec::new();
    if spec_and_pods(client).await?.0 != 0 {
        bail!("{MODEL_NAMESPACE}/{MODEL} is not at 0 replicas at the start");
    }

    // 1. First request: the activator holds it, wakes the autoscaler, forwards it once ready.
    let first = cold_start(activator, opts, traffic, started, "cold start").await;
    say!(
        opts.quiet,
        "{:>5}  first request answered after {:.1}s (cold start: wake, pod start, model load)",
        "",
        first.as_secs_f64()
    );
    colds.push(("first request".to_owned(), first));

    // 2. Burst: closed-loop clients, bounded in time and count.
    *lock(phase) = "burst";
    say!(
        opts.quiet,
        "{:>5}  burst: {} concurrent clients for {}s",
        "",
        opts.burst_clients,
        opts.burst.as_secs()
    );
    let burst_end = Instant::now() + opts.burst;
    let mut clients = Tasks(Vec::new());
    for _ in 0..opts.burst_clients {
        let traffic = traffic.clone();
        let (timeout, max) = (opts.request_timeout, opts.burst_max_requests);
        clients.0.push(tokio::spawn(async move {
            while Instant::now() < burst_end {
                if traffic.sent.fetch_add(1, Ordering::Relaxed) >= max {
                    traffic.sent.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let t = started.elapsed();
                let t0 = Instant::now();
                let r = predict(activator, MODEL, timeout).await;
                traffic.record("burst", t, r, t0.elapsed());
            }
        }));
    }
    for c in &mut clients.0 {
        c.await?;
    }
    drop(clients);

    // 3. Idle: the autoscaler scales down, then to zero after the grace period.
    *lock(phase) = "idle";
    say!(
        opts.quiet,
        "{:>5}  idle: no traffic until the model is back at 0",
        ""
    );
    let deadline = Instant::now() + opts.idle_limit;
    loop {
        let (spec, pods) = spec_and_pods(client).await?;
        if spec == 0 && pods == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not back at 0 replicas within {:?} of idle (spec {spec}, pods {pods})",
                opts.idle_limit
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the activator see the endpoints go, so the next request really finds no pod.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. Second cold start.
    *lock(phase) = "second cold start";
    let second = cold_start(activator, opts, traffic, started, "second cold start").await;
    say!(
        opts.quiet,
        "{:>5}  request at zero answered after {:.1}s",
        "",
        second.as_secs_f64()
    );
    colds.push(("after scale to zero".to_owned(), second));
    *lock(phase) = "done";
    Ok(colds)
}

/// The events of `items` with one of `reasons` not seen before (by name, remembered in
/// `known`), oldest first.
pub(crate) fn new_events(
    items: Vec<Event>,
    reasons: &[&str],
    known: &mut BTreeSet<String>,
) -> Vec<Event> {
    let mut fresh: Vec<Event> = items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| reasons.contains(&r)))
        .filter(|e| known.insert(e.metadata.name.clone().unwrap_or_default()))
        .collect();
    fresh.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|m| m.0)
            .or_else(|| e.first_timestamp.as_ref().map(|m| m.0))
    });
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_sums_the_model_lines_only() {
        let text = "\
# TYPE zeroscale_activator_requests_in_flight gauge
zeroscale_activator_requests_in_flight{namespace=\"models\",deployment=\"sentiment\",model=\"sentiment\"} 3
zeroscale_activator_requests_in_flight{namespace=\"other\",deployment=\"sentiment\",model=\"sentiment\"} 7
zeroscale_activator_requests_in_flight_total{namespace=\"models\",deployment=\"sentiment\"} 9
";
        assert_eq!(
            series(text, "zeroscale_activator_requests_in_flight"),
            Some(3.0)
        );
        assert_eq!(series(text, "zeroscale_activator_requests_queued"), None);
    }

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }

    #[test]
    fn a_lost_request_is_counted_and_named() {
        let t = Traffic::default();
        t.record(
            "burst",
            Duration::from_secs(3),
            Ok(200),
            Duration::from_millis(5),
        );
        t.record(
            "burst",
            Duration::from_secs(4),
            Ok(504),
            Duration::from_millis(9),
        );
        t.record(
            "idle",
            Duration::from_secs(5),
            Err("client timeout".into()),
            Duration::from_secs(90),
        );
        assert_eq!(t.ok.load(Ordering::Relaxed), 1);
        assert_eq!(t.done.load(Ordering::Relaxed), 3);
        let f = lock(&t.failures).clone();
        assert_eq!(f.get("HTTP 504"), Some(&1));
        assert_eq!(f.get("client timeout"), Some(&1));
        let lost = lock(&t.lost).clone();
        assert!(
            lost[0].contains("HTTP 504") && lost[0].contains("t=4.0s"),
            "{lost:?}"
        );
    }
}
