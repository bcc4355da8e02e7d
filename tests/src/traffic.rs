//! Traffic for end-to-end tests: the add-on's binaries as local processes (any number of
//! activators and one autoscaler), bounded load generators (steady paced clients, a trace
//! replay), a replica timeline, and a parser for the Azure LLM inference traces.
//!
//! All traffic goes to addresses inside the test's private network namespace, and every
//! generator is bounded in time and count.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use zeroscale_testkit::LocalCluster;
use zeroscale_testkit::http_client;
use zeroscale_testkit::process::{self, OwnedChild};

use crate::eventually;

/// A free port on the network namespace's host address (pods and the autoscaler's scraper can
/// reach it).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((zeroscale_testkit::netns::HOST_IP, 0))?;
    Ok(l.local_addr()?)
}

/// A workspace binary running as a process of the cluster (killed on drop, found by the leak
/// check), its output in `<cluster dir>/<name>.log`.
pub struct Proc {
    _child: OwnedChild,
    /// The process's log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts workspace binary `bin` with `args`, `RUST_LOG` = `rust_log`.
    pub fn spawn(
        cluster: &LocalCluster,
        name: &str,
        bin: &str,
        args: Vec<String>,
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        let log = cluster.dir().join(format!("{name}.log"));
        let mut cmd = process::command(&bin_path(bin), &args, cluster.marker(), &log)?;
        cmd.env("RUST_LOG", rust_log);
        let child = OwnedChild::spawn(name, cmd, log.clone())?;
        Ok(Self { _child: child, log })
    }

    /// Its process id (for reading its CPU time and memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self._child.pid()
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        process::tail(&self.log, n)
    }

    /// Lines of its log containing any of `needles` (at most `max`, the first ones).
    pub fn grep(&self, needles: &[&str], max: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .take(max)
            .map(strip_ansi)
            .collect()
    }
}

/// Path of workspace binary `bin`: `$ZEROSCALE_BIN_<BIN>` (upper case, `-` as `_`) when set, to
/// run a test against another build (for example a saved copy of the activator before a fix),
/// else the one built next to the test executable.
pub fn bin_path(bin: &str) -> PathBuf {
    let var = format!("ZEROSCALE_BIN_{}", bin.to_uppercase().replace('-', "_"));
    match std::env::var_os(&var).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => zeroscale_testkit::workspace_bin(bin),
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One activator process and its addresses.
pub struct Activator {
    /// The process.
    pub proc: Proc,
    /// Its proxy listener (where clients send requests).
    pub listen: SocketAddr,
    /// Its admin listener (`/readyz`, `/metrics`).
    pub admin: SocketAddr,
}

/// The add-on as local processes in one test namespace: `n` activators (each published to the
/// autoscaler through its own EndpointSlice of the `zeroscale-activator` Service) and one
/// autoscaler, configured by ConfigMap `zeroscale-config` in that namespace.
pub struct LocalAddon {
    /// The activators.
    pub activators: Vec<Activator>,
    /// The autoscaler.
    pub autoscaler: Proc,
    /// The autoscaler's metrics listener (`/readyz`, `/metrics`).
    pub autoscaler_metrics: SocketAddr,
}

impl LocalAddon {
    /// Writes the ConfigMap, publishes and starts `activators` activators and one autoscaler,
    /// all watching only `ns`, and waits until every one answers `/readyz` with 200.
    pub async fn start(
        cluster: &LocalCluster,
        client: &Client,
        ns: &str,
        activators: usize,
        config: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "zeroscale-config"},
            "data": config,
        }))?;
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .patch(
                "zeroscale-config",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        let (as_api, as_metrics) = (free_addr()?, free_addr()?);
        let kubeconfig = cluster.kubeconfig_path().display().to_string();
        let mut addrs = Vec::new();
        for _ in 0..activators {
            addrs.push((free_addr()?, free_addr()?));
        }
        publish_activators(client, ns, &addrs.iter().map(|a| a.1).collect::<Vec<_>>()).await?;
        let mut list = Vec::new();
        for (i, (listen, admin)) in addrs.into_iter().enumerate() {
            let proc = Proc::spawn(
                cluster,
                &format!("activator-{ns}-{i}"),
                "activator",
                vec![
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--namespace={ns}"),
                    format!("--watch-namespaces={ns}"),
                    format!("--listen={listen}"),
                    format!("--admin-listen={admin}"),
                    format!("--autoscaler-url=http://{as_api}"),
                    format!("--pod-name=activator-{i}"),
                    "--drain-timeout=5s".into(),
                    "--shutdown-delay=0s".into(),
                ],
                "info,kube=warn,zeroscale_activator=debug",
            )?;
            list.push(Activator {
                proc,
                listen,
                admin,
            });
        }
        let autoscaler = Proc::spawn(
            cluster,
            &format!("autoscaler-{ns}"),
            "autoscaler",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--namespace={ns}"),
                format!("--namespaces={ns}"),
                format!("--api-listen={as_api}"),
                format!("--metrics-listen={as_metrics}"),
                format!("--activator-service={ns}/zeroscale-activator"),
                "--lease-name=zeroscale-autoscaler".into(),
                "--lease-duration=4".into(),
                "--identity=a".into(),
            ],
            "info,kube=warn",
        )?;
        let addon = Self {
            activators: list,
            autoscaler,
            autoscaler_metrics: as_metrics,
        };
        for (i, a) in addon.activators.iter().enumerate() {
            wait_ready(&a.proc, a.admin, &format!("activator {i}")).await?;
        }
        wait_ready(&addon.autoscaler, as_metrics, "autoscaler").await?;
        Ok(addon)
    }

    /// Every activator's proxy address.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.activators.iter().map(|a| a.listen).collect()
    }

    /// The end of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.activators.iter().enumerate() {
            out.push_str(&format!("--- activator {i} ---\n{}\n", a.proc.tail(30)));
        }
        out.push_str(&format!(
            "--- autoscaler ---\n{}\n",
            self.autoscaler.tail(30)
        ));
        out
    }

    /// `zeroscale_activator_requests_total` of `deployment` by status code, summed over the
    /// activators.
    pub async fn answered_by_code(&self, deployment: &str) -> anyhow::Result<BTreeMap<u16, u64>> {
        let mut out = BTreeMap::new();
        for a in &self.activators {
            let text = http_client::get(a.admin, "/metrics").await?.text();
            for l in text.lines() {
                if !l.starts_with("zeroscale_activator_requests_total{")
                    || !l.contains(&format!("deployment=\"{deployment}\""))
                {
                    continue;
                }
                let code = l
                    .split("code=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|c| c.parse::<u16>().ok());
                let n = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|v| v as u64);
                if let (Some(code), Some(n)) = (code, n) {
                    *out.entry(code).or_insert(0) += n;
                }
            }
        }
        Ok(out)
    }
}

/// Waits until `admin`'s `/readyz` answers 200 (at most 60 s); the error carries `p`'s log tail.
pub async fn wait_ready(p: &Proc, admin: SocketAddr, what: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{what} ready"),
        Duration::from_secs(60),
        || async move {
            Ok(http_client::get(admin, "/readyz")
                .await
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| p.tail(40))
}

/// Publishes activators' metrics addresses the way the autoscaler discovers activators: the
/// selector-less Service `zeroscale-activator` in `ns` and one hand-made EndpointSlice per
/// activator (they share an address and differ in port, which one slice cannot express).
pub async fn publish_activators(
    client: &Client,
    ns: &str,
    metrics: &[SocketAddr],
) -> anyhow::Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "zeroscale-activator"},
        "spec": {"ports": [{"name": "metrics", "port": 9090}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    for (i, m) in metrics.iter().enumerate() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {
                "name": format!("zeroscale-activator-manual-{i}"),
                "labels": {"kubernetes.io/service-name": "zeroscale-activator"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [m.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "metrics", "port": m.port(), "protocol": "TCP"}],
        }))?;
        Api::<EndpointSlice>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &slice)
            .await?;
    }
    Ok(())
}

/// Sets `zeroscale.dev/min-scale` and `max-scale` of a Deployment and, when `replicas` is given,
/// its `spec.replicas`, in one merge patch (so the autoscaler's bounds agree with the count at
/// once).
pub async fn set_scale(
    client: &Client,
    ns: &str,
    name: &str,
    min: i32,
    max: i32,
    replicas: Option<i32>,
) -> anyhow::Result<()> {
    let mut patch = json!({"metadata": {"annotations": {
        "zeroscale.dev/min-scale": min.to_string(),
        "zeroscale.dev/max-scale": max.to_string(),
    }}});
    if let Some(r) = replicas {
        patch["spec"] = json!({"replicas": r});
    }
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {ns}/{name}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Requests and their outcomes.

/// What one request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Sequence number (send order of its generator).
    pub id: u64,
    /// Index of the activator it was sent to.
    pub activator: usize,
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// Time until the whole answer was read (or the failure).
    pub latency: Duration,
    /// `Ok((status, pod, body))`: `pod` from `x-pod-name`, `body` only when status is not 200;
    /// `Err` when no HTTP answer came (connect error, reset, timeout).
    pub answer: Result<(u16, String, String), String>,
    /// The activator's `zeroscale-cold-start` header (`5.21s`: seconds waited), present when the
    /// request arrived while its model had no ready pod and waited for one.
    pub cold_wait: Option<f64>,
}

impl Outcome {
    /// Whether the request got a 200.
    pub fn ok(&self) -> bool {
        matches!(self.answer, Ok((200, _, _)))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} via activator {} at {:.3}s after {:.3}s: ",
            self.id,
            self.activator,
            self.at.as_secs_f64(),
            self.latency.as_secs_f64()
        )?;
        match &self.answer {
            Ok((s, pod, body)) => write!(f, "{s} from pod {pod:?} {body}"),
            Err(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// Sends one POST with a JSON body and records what came back.
pub async fn send(
    id: u64,
    activator: usize,
    addr: SocketAddr,
    path: &str,
    body: &Value,
    start: Instant,
    timeout: Duration,
) -> Outcome {
    let sent = Instant::now();
    let r = http_client::request(addr, http::Method::POST, path, Some(body), timeout).await;
    let mut cold_wait = None;
    let answer = match r {
        Ok(r) => {
            let pod = r.header("x-pod-name").unwrap_or("").to_owned();
            cold_wait = r
                .header(zeroscale_activator::forward::COLD_START_HEADER)
                .and_then(|v| v.trim().trim_end_matches('s').parse().ok());
            let text = if r.status == 200 {
                String::new()
            } else {
                r.text()
            };
            Ok((r.status.as_u16(), pod, text))
        }
        Err(e) => Err(e.to_string()),
    };
    Outcome {
        id,
        activator,
        at: sent - start,
        latency: sent.elapsed(),
        answer,
        cold_wait,
    }
}

/// Counts and failures of a set of outcomes.
#[derive(Debug, Default)]
pub struct Summary {
    /// Requests sent.
    pub sent: usize,
    /// Answers by status (`0` = no HTTP answer).
    pub by_status: BTreeMap<u16, usize>,
    /// Every request that did not get a 200, in send order.
    pub failures: Vec<Outcome>,
    /// Latency percentiles of the 200s: p50, p99, max.
    pub latency: (Duration, Duration, Duration),
    /// Distinct pods that answered.
    pub pods: usize,
}

impl Summary {
    /// Summarises `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut s = Summary {
            sent: outcomes.len(),
            ..Default::default()
        };
        let mut lat = Vec::new();
        let mut pods = std::collections::BTreeSet::new();
        for o in outcomes {
            let code = match &o.answer {
                Ok((c, pod, _)) => {
                    pods.insert(pod.clone());
                    *c
                }
                Err(_) => 0,
            };
            *s.by_status.entry(code).or_insert(0) += 1;
            if o.ok() {
                lat.push(o.latency);
            } else {
                s.failures.push(o.clone());
            }
        }
        s.failures.sort_by_key(|o| o.id);
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        s.latency = (pct(0.5), pct(0.99), lat.last().copied().unwrap_or_default());
        s.pods = pods.len();
        s
    }

    /// Answered 200.
    pub fn ok(&self) -> usize {
        self.by_status.get(&200).copied().unwrap_or(0)
    }

    /// The failures grouped by what they say, pod addresses and numbers replaced by `<n>` (for
    /// example `502 the model server failed: <n> failed: the connection closed before an
    /// answer`), with counts.
    pub fn failure_kinds(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for o in &self.failures {
            let text = match &o.answer {
                Ok((s, _, body)) => {
                    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    let msg = v["error"]["message"]
                        .as_str()
                        .or_else(|| v["error"].as_str())
                        .map(str::to_owned)
                        .unwrap_or_else(|| body.clone());
                    format!("{s} {}", mask_numbers(&msg))
                }
                Err(e) => format!("no answer: {}", mask_numbers(&e.to_string())),
            };
            *out.entry(text).or_insert(0) += 1;
        }
        out
    }

    /// The failures, one per line (at most `max`, then a count of the rest).
    pub fn failure_lines(&self, max: usize) -> String {
        let mut out = String::new();
        for o in self.failures.iter().take(max) {
            out.push_str(&format!("  {o}\n"));
        }
        if self.failures.len() > max {
            out.push_str(&format!("  ... and {} more\n", self.failures.len() - max));
        }
        out
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p50, p99, max) = self.latency;
        write!(
            f,
            "sent {}, answered 200: {}, by status (0 = no answer): {:?}, pods that answered: {}, \
             latency of the 200s p50 {:?} p99 {:?} max {:?}",
            self.sent,
            self.ok(),
            self.by_status,
            self.pods,
            p50,
            p99,
            max
        )
    }
}

/// `text` with every run of digits, dots and colons that holds a digit replaced by `<n>`.
fn mask_numbers(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().any(|c| c.is_ascii_digit()) {
            // Keep a trailing ':' of "addr: message".
            let colon = run.ends_with(':');
            out.push_str("<n>");
            if colon {
                out.push(':');
            }
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' || c == ':' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Steady, paced load: `clients` concurrent clients, each sending one request at a time at most
/// `per_client_rps` per second (a slot missed while a request waits is skipped, not made up in
/// a burst), clients spread over `targets`, until [`SteadyLoad::stop`] or `max_duration`.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
    start: Instant,
}

impl SteadyLoad {
    /// Starts the clients.
    pub fn start(
        targets: Vec<SocketAddr>,
        clients: usize,
        per_client_rps: f64,
        path: String,
        body: Value,
        max_duration: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / per_client_rps);
        let path = Arc::new(path);
        let body = Arc::new(body);
        let tasks = (0..clients)
            .map(|c| {
                let (stop, sent, path, body) =
                    (stop.clone(), sent.clone(), path.clone(), body.clone());
                let targets = targets.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    // Stagger the clients over one period.
                    let mut next =
                        tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64);
                    let deadline = start + max_duration;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        tokio::time::sleep_until(next).await;
                        let id = sent.fetch_add(1, Ordering::SeqCst);
                        let a = (id as usize) % targets.len();
                        out.push(
                            send(
                                id,
                                a,
                                targets[a],
                                &path,
                                &body,
                                start,
                                Duration::from_secs(60),
                            )
                            .await,
                        );
                        next = (next + period).max(tokio::time::Instant::now());
                    }
                    out
                })
            })
            .collect();
        Self {
            stop,
            sent,
            tasks,
            start,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the clients and returns every outcome (each client finishes its request first).
    pub async fn stop(self) -> anyhow::Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await?);
        }
        all.sort_by_key(|o| o.id);
        Ok(all)
    }
}

// ---------------------------------------------------------------------------------------------
// Replica timeline.

/// One change of a Deployment's replica counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPoint {
    /// When it was seen, from the start of the watch.
    pub at: Duration,
    /// `spec.replicas`.
    pub spec: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// Pods of the Deployment (label `app: <name>`) that exist: starting, ready or terminating.
    pub pods: usize,
}

/// Polls a Deployment and its pods every 100 ms and records every change of
/// `(spec.replicas, readyReplicas, pods)`.
pub struct ReplicaWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<ReplicaPoint>>,
}

impl ReplicaWatch {
    /// Starts polling.
    pub fn start(client: &Client, ns: &str, name: &str) -> Self {
        let api = Api::<Deployment>::namespaced(client.clone(), ns);
        let (client, ns) = (client.clone(), ns.to_owned());
        let name = name.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut points: Vec<ReplicaPoint> = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if let Ok(d) = api.get(&name).await {
                    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let ready = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    let pods = crate::pods_of(&client, &ns, &name)
                        .await
                        .map_or_else(|_| points.last().map_or(0, |p| p.pods), |l| l.len());
                    if points
                        .last()
                        .is_none_or(|p| (p.spec, p.ready, p.pods) != (spec, ready, pods))
                    {
                        points.push(ReplicaPoint {
                            at: start.elapsed(),
                            spec,
                            ready,
                            pods,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            points
        });
        Self { stop, task }
    }

    /// Stops polling and returns the timeline.
    pub async fn stop(self) -> anyhow::Result<Vec<ReplicaPoint>> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// The timeline as `t=1.2s 0/0 -> t=1.5s 1/0 -> ...` (`spec/ready`).
pub fn timeline(points: &[ReplicaPoint]) -> String {
    points
        .iter()
        .map(|p| format!("t={:.1}s {}/{}", p.at.as_secs_f64(), p.spec, p.ready))
        .collect::<Vec<_>>()
        .join(" -> ")
}

// ---------------------------------------------------------------------------------------------
// Traces.

/// One request of an arrival trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    /// The row as written (without line ending).
    pub line: String,
    /// Arrival time, seconds since 1970 (UTC, as the trace's naive timestamps are read).
    pub at: f64,
    /// Prompt tokens.
    pub context_tokens: u32,
    /// Generated tokens.
    pub generated_tokens: u32,
}

/// Parses an Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps
/// like `2023-11-16 19:01:30.0340960`; CRLF or LF; a header line; `#` lines skipped).
pub fn parse_trace(text: &str) -> anyhow::Result<Vec<TraceRow>> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') || line.starts_with("TIMESTAMP") {
            continue;
        }
        let parse = || -> Option<TraceRow> {
            let mut f = line.split(',');
            let (ts, ctx, gen_) = (f.next()?, f.next()?, f.next()?);
            Some(TraceRow {
                line: line.to_owned(),
                at: parse_timestamp(ts)?,
                context_tokens: ctx.trim().parse().ok()?,
                generated_tokens: gen_.trim().parse().ok()?,
            })
        };
        match parse() {
            Some(r) => rows.push(r),
            None => bail!("trace line {}: cannot parse {line:?}", n + 1),
        }
    }
    Ok(rows)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` as seconds since 1970, read as UTC.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Rows with `from <= TIMESTAMP < to` (timestamps as written, compared as times).
pub fn cut(rows: &[TraceRow], from: &str, to: &str) -> anyhow::Result<Vec<TraceRow>> {
    let from = parse_timestamp(from).with_context(|| format!("bad timestamp {from}"))?;
    let to = parse_timestamp(to).with_context(|| format!("bad timestamp {to}"))?;
    Ok(rows
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .cloned()
        .collect())
}

/// Reads a trace file.
pub fn read_trace(path: &Path) -> anyhow::Result<Vec<TraceRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_trace(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The repository root (the parent of `tests/`).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}

/// Follows `spec.replicas` of the Deployments `names` in `ns` on a watch, every change in the
/// order the API server made them, and keeps the largest sum with the counts that made it:
/// a pool's exact peak, not a sample once a second. Stops watching when dropped.
pub struct PeakWatch {
    peak: Arc<std::sync::Mutex<(i32, BTreeMap<String, i32>)>>,
    task: JoinHandle<()>,
}

impl PeakWatch {
    /// Starts watching.
    pub fn start(client: Client, ns: &str, names: &[&str]) -> Self {
        use futures::StreamExt as _;
        use kube::runtime::watcher;
        let peak = Arc::new(std::sync::Mutex::new((0, BTreeMap::new())));
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let deployments: Api<Deployment> = Api::namespaced(client, ns);
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            let mut spec: BTreeMap<String, i32> = BTreeMap::new();
            let mut stream = std::pin::pin!(watcher(deployments, watcher::Config::default()));
            while let Some(ev) = stream.next().await {
                let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev else {
                    continue;
                };
                let name = d.metadata.name.clone().unwrap_or_default();
                if !names.contains(&name) {
                    continue;
                }
                spec.insert(name, d.spec.and_then(|s| s.replicas).unwrap_or(1));
                let sum: i32 = spec.values().sum();
                let mut peak = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if sum > peak.0 {
                    *peak = (sum, spec.clone());
                }
            }
        });
        Self { peak, task }
    }

    /// The largest sum of replicas so far, and each Deployment's count at that moment.
    pub fn peak(&self) -> (i32, BTreeMap<String, i32>) {
        self.peak
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for PeakWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc_seconds() {
        // 2023-11-16 00:00:00 UTC = 1700092800.
        assert_eq!(
            parse_timestamp("2023-11-16 00:00:00"),
            Some(1_700_092_800.0)
        );
        let t = parse_timestamp("2023-11-16 19:01:30.0340960").unwrap();
        assert!((t - (1_700_092_800.0 + 19.0 * 3600.0 + 60.0 + 30.034_096)).abs() < 1e-6);
        assert_eq!(parse_timestamp("not a time"), None);
    }

    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mt\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m x"),
            "t DEBUG x"
        );
    }

    #[test]
    fn failure_texts_lose_their_addresses() {
        assert_eq!(
            mask_numbers(
                "connecting to 10.244.0.15:8080 failed: Network is unreachable (os error 101)"
            ),
            "connecting to <n> failed: Network is unreachable (os error <n>)"
        );
        assert_eq!(
            mask_numbers("10.244.0.11:8080 failed: x."),
            "<n> failed: x."
        );
    }

    #[test]
    fn traces_parse_with_either_line_ending() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n\
                    2023-11-16 18:17:03.9799600,4808,10\r\n\
                    2023-11-16 18:17:04.0319600,3180,8\n";
        let rows = parse_trace(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].context_tokens, 4808);
        assert_eq!(rows[1].generated_tokens, 8);
        assert_eq!(rows[1].line, "2023-11-16 18:17:04.0319600,3180,8");
        assert!(parse_trace("2023-11-16 18:17:03,x,1\n").is_err());
        let cut = cut(&rows, "2023-11-16 18:17:04", "2023-11-16 18:18:00").unwrap();
        assert_eq!(cut.len(), 1);
    }
}
