//! The wiring: watchers and reflectors feed the index, a scrape loop feeds it samples, a tick
//! asks it for intents, the applier carries them out while this replica holds the Lease.
//!
//! One task owns the [`Index`]; everything else talks to it through a channel, so the index
//! stays a plain value with no locks.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use zeroscale_config::GlobalConfig;

use crate::DeploymentKey;
use crate::apply::Applier;
use crate::index::{DeploymentView, Index, Notice, PodTarget, Source};
use crate::metrics::Metrics;
use crate::scrape::{self, Deriver, EndpointScrape, Round};
use crate::server::{self, AdminState, DeploymentCache, WakeState};

/// Everything the autoscaler is configured with (built by `main` from flags and env).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The autoscaler's own namespace (ConfigMap, Lease, Events on the ConfigMap).
    pub namespace: String,
    /// Namespaces whose Deployments are managed; empty means all.
    pub namespaces: Vec<String>,
    /// The activator Service: namespace and name.
    pub activator_service: (String, String),
    /// The activator's metrics port: a port name of the EndpointSlice or a number.
    pub activator_metrics_port: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// Lease duration: a standby takes over at most this long after the leader dies.
    pub lease_duration: Duration,
    /// This replica's identity in the Lease and in Events.
    pub identity: String,
    /// Timeout of one API write (scale patch, wake, Event).
    pub api_timeout: Duration,
}

/// Why the autoscaler stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

enum Input {
    Deployment(Option<String>, Box<Event<Deployment>>),
    ConfigMap(Box<Event<ConfigMap>>),
    Hpa(Option<String>, Box<Event<HorizontalPodAutoscaler>>),
    Round(Round),
    PodMetric(DeploymentKey, Instant, Option<f64>),
    Applied(DeploymentKey, u32, bool),
}

fn view(d: &Deployment) -> Option<DeploymentView> {
    Some(DeploymentView {
        key: DeploymentKey::new(d.metadata.namespace.clone()?, d.metadata.name.clone()?),
        annotations: d.metadata.annotations.clone().unwrap_or_default(),
        spec_replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
        ready_replicas: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            .max(0) as u32,
    })
}

fn hpa_key(h: &HorizontalPodAutoscaler) -> Option<(DeploymentKey, Option<DeploymentKey>)> {
    let ns = h.metadata.namespace.clone()?;
    let key = DeploymentKey::new(ns.clone(), h.metadata.name.clone()?);
    let r = &h.spec.scale_target_ref;
    let target = (r.kind == "Deployment").then(|| DeploymentKey::new(ns, r.name.clone()));
    Some((key, target))
}

/// Forwards a watch stream into the control loop; errors are logged (the watcher retries with
/// backoff on its own).
async fn forward<K, S>(
    what: &'static str,
    stream: S,
    tx: mpsc::Sender<Input>,
    wrap: impl Fn(Event<K>) -> Input,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => {
                if failing {
                    tracing::info!(watch = what, "watch recovered");
                    failing = false;
                }
                if tx.send(wrap(ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(watch = what, error = %e, "watch failed; retrying with backoff");
                }
                failing = true;
            }
        }
    }
}

/// Activator metrics URLs from the EndpointSlices of the activator Service (ready endpoints).
pub fn activator_urls(slices: &[Arc<EndpointSlice>], port: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for slice in slices {
        let number = slice.ports.iter().flatten().find_map(|p| {
            let by_name = p.name.as_deref() == Some(port);
            let by_number = p.port.is_some_and(|n| n.to_string() == port);
            (by_name || by_number).then_some(p.port).flatten()
        });
        let number = number.or_else(|| port.parse::<i32>().ok());
        let Some(number) = number else { continue };
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                let host = match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                    _ => addr.clone(),
                };
                urls.push(format!("http://{host}:{number}/metrics"));
            }
        }
    }
    urls.sort();
    urls.dedup();
    urls
}

async fn scrape_loop(
    slices: Store<EndpointSlice>,
    port: String,
    global: Arc<RwLock<GlobalConfig>>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Input>,
) {
    let client = scrape::http_client();
    let mut deriver = Deriver::default();
    loop {
        let (interval, timeout) = {
            let g = global.read().unwrap_or_else(|e| e.into_inner());
            (g.scrape_interval, g.scrape_timeout)
        };
        let started = tokio::time::Instant::now();
        let urls = activator_urls(&slices.state(), &port);
        let scrapes = futures::future::join_all(urls.into_iter().map(|url| {
            let client = client.clone();
            async move {
                let result = scrape::fetch(&client, &url, timeout)
                    .await
                    .and_then(|t| scrape::parse_activator(&t));
                EndpointScrape {
                    endpoint: url,
                    at: Instant::now(),
                    result,
                }
            }
        }))
        .await;
        let round = deriver.round(Instant::now(), scrapes);
        for (endpoint, reason) in &round.failures {
            metrics.scrape_error("activator");
            tracing::debug!(endpoint, reason, "activator scrape failed");
        }
        if tx.send(Input::Round(round)).await.is_err() {
            return;
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Ready pod addresses of a Service, from its EndpointSlices (listed from the API: pod-sourced
/// Deployments are expected to be few).
async fn ready_addresses(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp =
        kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut out = Vec::new();
    for slice in api.list(&lp).await?.items {
        for ep in slice.endpoints.into_iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            out.extend(ep.addresses);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One scrape of a pod-sourced Deployment: the gauge summed over its ready pods, or None when
/// any of them (or the EndpointSlice list) failed.
async fn scrape_pods(
    client: &Client,
    http: &scrape::HttpClient,
    target: &PodTarget,
    timeout: Duration,
) -> Option<f64> {
    let addresses = match ready_addresses(client, &target.key.namespace, &target.service).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(deployment = %target.key, error = %e, "listing pod endpoints failed");
            return None;
        }
    };
    let fetches = addresses.iter().map(|addr| {
        let host = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => addr.clone(),
        };
        let url = format!("http://{host}:{}{}", target.port, target.path);
        async move {
            let text = scrape::fetch(http, &url, timeout)
                .await
                .map_err(|e| e.to_string())?;
            scrape::parse_gauge_sum(&text, &target.metric)
                .ok_or_else(|| format!("{url} has no {}", target.metric))
        }
    });
    let mut sum = 0.0;
    for result in futures::future::join_all(fetches).await {
        match result {
            Ok(v) => sum += v,
            Err(reason) => {
                tracing::debug!(deployment = %target.key, reason, "pod scrape failed");
                return None;
            }
        }
    }
    Some(sum)
}

async fn pod_scrape_loop(
    client: Client,
    targets: Arc<RwLock<Vec<PodTarget>>>,
    global: Arc<RwLock<GlobalConfig>>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Input>,
) {
    let http = scrape::http_client();
    loop {
        let (interval, timeout) = {
            let g = global.read().unwrap_or_else(|e| e.into_inner());
            (g.scrape_interval, g.scrape_timeout)
        };
        let started = tokio::time::Instant::now();
        let current = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        let results = futures::future::join_all(
            current
                .iter()
                .map(|t| scrape_pods(&client, &http, t, timeout)),
        )
        .await;
        let at = Instant::now();
        for (target, value) in current.into_iter().zip(results) {
            if value.is_none() {
                metrics.scrape_error("pod");
            }
            if tx
                .send(Input::PodMetric(target.key, at, value))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Builds the leader election, retrying while the API server is unreachable.
async fn start_lease(
    client: &Client,
    settings: &Settings,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let duration = settings.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let mut backoff = Duration::from_millis(200);
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await;
        match built {
            Ok(manager) => {
                let (rx, handle) = manager.watch().await;
                let task = tokio::spawn(async move {
                    match handle.await {
                        Ok(Ok(_)) => tracing::info!("leader lease released"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "leader election stopped"),
                        Err(e) => tracing::warn!(error = %e, "leader election task failed"),
                    }
                });
                return (rx, task);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start leader election yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs the autoscaler until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    api_listener: TcpListener,
    metrics_listener: TcpListener,
    mut registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let ready = Arc::new(AtomicBool::new(false));
    let global = Arc::new(RwLock::new(GlobalConfig::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zeroscale-autoscaler".into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let applier = Applier::new(
        client.clone(),
        recorder,
        metrics.clone(),
        settings.api_timeout,
    );

    // Watches. One channel into the control loop; bounded so a stuck loop pushes back.
    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    for scope in &scopes {
        let deployments: Api<Deployment> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (reader, writer) = reflector::store();
        stores.push((scope.clone(), reader));
        let stream = reflect(
            writer,
            watcher(deployments, watcher::Config::default()).default_backoff(),
        );
        let s = scope.clone();
        tasks.push(tokio::spawn(forward(
            "deployments",
            stream,
            tx.clone(),
            move |e| Input::Deployment(s.clone(), Box::new(e)),
        )));

        let hpas: Api<HorizontalPodAutoscaler> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let s = scope.clone();
        let stream = watcher(hpas, watcher::Config::default()).default_backoff();
        tasks.push(tokio::spawn(forward(
            "hpas",
            stream,
            tx.clone(),
            move |e| Input::Hpa(s.clone(), Box::new(e)),
        )));
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &settings.namespace);
    let cm_config = watcher::Config::default().fields(&format!(
        "metadata.name={}",
        zeroscale_config::CONFIGMAP_NAME
    ));
    tasks.push(tokio::spawn(forward(
        "configmap",
        watcher(configmaps, cm_config).default_backoff(),
        tx.clone(),
        |e| Input::ConfigMap(Box::new(e)),
    )));

    let (act_ns, act_name) = settings.activator_service.clone();
    let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &act_ns);
    let slice_config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={act_name}"));
    let (slice_reader, slice_writer) = reflector::store();
    let slice_stream = reflect(
        slice_writer,
        watcher(slices_api, slice_config).default_backoff(),
    );
    tasks.push(tokio::spawn(async move {
        let mut s = std::pin::pin!(slice_stream);
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                tracing::warn!(error = %e, "activator EndpointSlice watch failed; retrying with backoff");
            }
        }
    }));
    let pod_targets = Arc::new(RwLock::new(Vec::new()));
    tasks.push(tokio::spawn(pod_scrape_loop(
        client.clone(),
        pod_targets.clone(),
        global.clone(),
        metrics.clone(),
        tx.clone(),
    )));
    tasks.push(tokio::spawn(scrape_loop(
        slice_reader,
        settings.activator_metrics_port.clone(),
        global.clone(),
        metrics.clone(),
        tx.clone(),
    )));

    // Servers.
    let wake_state = WakeState {
        client: client.clone(),
        cache: DeploymentCache { stores },
        global: global.clone(),
        metrics: metrics.clone(),
        applier: applier.clone(),
        timeout: settings.api_timeout,
    };
    tasks.push(tokio::spawn(server::serve(
        api_listener,
        move |req| server::api(wake_state.clone(), req),
        stopped(),
    )));
    let admin_state = AdminState {
        registry,
        ready: ready.clone(),
    };
    tasks.push(tokio::spawn(server::serve(
        metrics_listener,
        move |req| server::admin(admin_state.clone(), req),
        stopped(),
    )));

    let (leader_rx, lease_task) = start_lease(&client, &settings).await;

    let control = ControlLoop {
        index: Index::new(&scopes),
        settings: settings.clone(),
        applier,
        metrics: metrics.clone(),
        global,
        ready,
        leader: leader_rx,
        tx: tx.clone(),
        buffered_configmap: None,
        pod_targets,
    };
    drop(tx);
    tokio::select! {
        () = control.run(&mut rx) => {}
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
    for t in &tasks {
        t.abort();
    }
    // Dropping the leader receiver (inside the control loop) makes the lease task release
    // the Lease so a standby takes over at once; give it a moment.
    let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    Ok(())
}

struct ControlLoop {
    index: Index,
    settings: Settings,
    applier: Applier,
    metrics: Arc<Metrics>,
    global: Arc<RwLock<GlobalConfig>>,
    ready: Arc<AtomicBool>,
    leader: watch::Receiver<bool>,
    tx: mpsc::Sender<Input>,
    /// The ConfigMap as listed during a re-list, applied at its end.
    buffered_configmap: Option<Option<BTreeMap<String, String>>>,
    /// Pod-sourced Deployments, for the pod scrape loop (refreshed every tick).
    pod_targets: Arc<RwLock<Vec<PodTarget>>>,
}

impl ControlLoop {
    async fn run(mut self, rx: &mut mpsc::Receiver<Input>) {
        let mut tick_every = self.index.global().tick_interval;
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                _ = ticker.tick() => self.tick(),
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        tracing::warn!("leader election ended; acting as standby");
                        self.metrics.leader.set(0);
                        // Keep serving wakes and metrics, but never steady-state writes.
                        let (_tx, rx) = watch::channel(false);
                        self.leader = rx;
                    } else {
                        let leading = *self.leader.borrow();
                        self.metrics.leader.set(i64::from(leading));
                        tracing::info!(identity = %self.settings.identity, leading, "leadership changed");
                    }
                }
            }
            let every = self.index.global().tick_interval;
            if every != tick_every {
                tick_every = every;
                ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            self.ready.store(self.index.is_synced(), Ordering::Relaxed);
        }
    }

    fn notices(&self, notices: Vec<Notice>) {
        for notice in notices {
            let applier = self.applier.clone();
            let ns = self.settings.namespace.clone();
            tokio::spawn(async move { applier.notice(&notice, &ns).await });
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Deployment(scope, ev) => match *ev {
                Event::Init => self.index.begin_relist(Source::Deployments(scope)),
                Event::InitApply(d) | Event::Apply(d) => {
                    let Some(v) = view(&d) else { return };
                    let span = tracing::debug_span!("deployment", deployment = %v.key);
                    let _g = span.enter();
                    if !zeroscale_config::is_opted_in(&v.annotations) {
                        self.metrics.forget(&v.key);
                    }
                    let notices = self.index.apply_deployment(v, now);
                    self.notices(notices);
                }
                Event::Delete(d) => {
                    if let Some(v) = view(&d) {
                        self.index.delete_deployment(&v.key);
                        self.metrics.forget(&v.key);
                    }
                }
                Event::InitDone => {
                    for key in self.index.end_relist(&Source::Deployments(scope)) {
                        self.metrics.forget(&key);
                    }
                    self.metrics
                        .managed_deployments
                        .set(self.index.managed_count() as i64);
                }
            },
            Input::Hpa(scope, ev) => match *ev {
                Event::Init => self.index.begin_relist(Source::Hpas(scope)),
                Event::InitApply(h) | Event::Apply(h) => {
                    if let Some((key, target)) = hpa_key(&h) {
                        let notices = self.index.apply_hpa(key, target);
                        self.notices(notices);
                    }
                }
                Event::Delete(h) => {
                    if let Some((key, _)) = hpa_key(&h) {
                        self.index.delete_hpa(&key);
                    }
                }
                Event::InitDone => {
                    self.index.end_relist(&Source::Hpas(scope));
                }
            },
            Input::ConfigMap(ev) => match *ev {
                Event::Init => {
                    self.index.begin_relist(Source::ConfigMap);
                    self.buffered_configmap = Some(None);
                }
                Event::InitApply(cm) => {
                    self.buffered_configmap = Some(Some(cm.data.unwrap_or_default()))
                }
                Event::InitDone => {
                    let data = self.buffered_configmap.take().flatten();
                    self.configmap(data);
                    self.index.end_relist(&Source::ConfigMap);
                }
                Event::Apply(cm) => self.configmap(Some(cm.data.unwrap_or_default())),
                Event::Delete(_) => self.configmap(None),
            },
            Input::Round(round) => self.index.record_round(&round),
            Input::PodMetric(key, at, value) => self.index.record_pod_metric(&key, at, value),
            Input::Applied(key, to, ok) => self.index.scale_done(&key, to, ok),
        }
    }

    fn configmap(&mut self, data: Option<BTreeMap<String, String>>) {
        let before = self.index.global().clone();
        let notices = self.index.apply_configmap(data.as_ref());
        self.notices(notices);
        if *self.index.global() != before {
            tracing::info!(
                configmap = zeroscale_config::CONFIGMAP_NAME,
                "configuration reloaded"
            );
            *self.global.write().unwrap_or_else(|e| e.into_inner()) = self.index.global().clone();
        }
    }

    fn tick(&mut self) {
        let span = tracing::debug_span!("tick", managed = tracing::field::Empty);
        let _g = span.enter();
        let targets = self.index.pod_targets();
        if *self.pod_targets.read().unwrap_or_else(|e| e.into_inner()) != targets {
            *self.pod_targets.write().unwrap_or_else(|e| e.into_inner()) = targets;
        }
        let out = self.index.tick(Instant::now());
        if out.skipped_unsynced {
            self.metrics.ticks_skipped_unsynced.inc();
            tracing::debug!("watches re-listing; no decisions this tick");
            return;
        }
        span.record("managed", out.reports.len());
        self.metrics
            .managed_deployments
            .set(out.reports.len() as i64);
        for report in &out.reports {
            self.metrics.observe_report(report);
        }
        let leading = *self.leader.borrow();
        for intent in out.intents {
            if !leading {
                // A standby decides (to keep its state warm) but never writes.
                self.index.scale_done(&intent.key, intent.to, false);
                continue;
            }
            let applier = self.applier.clone();
            let tx = self.tx.clone();
            let leader = self.leader.clone();
            let span = tracing::info_span!("apply", deployment = %intent.key, from = intent.from, to = intent.to);
            tokio::spawn(
                async move {
                    let leading = *leader.borrow();
                    let ok = applier.apply(&intent, leading).await.is_ok();
                    let _ = tx
                        .send(Input::Applied(intent.key.clone(), intent.to, ok))
                        .await;
                }
                .instrument(span),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    use super::*;

    fn slice(addresses: &[(&str, Option<bool>)], ports: &[(&str, i32)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(
                addresses
                    .iter()
                    .map(|(a, ready)| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            metadata: Default::default(),
        })
    }

    #[test]
    fn activator_urls_use_ready_endpoints_and_the_named_port() {
        let slices = vec![
            slice(
                &[
                    ("10.244.0.5", Some(true)),
                    ("10.244.0.6", Some(false)),
                    ("10.244.0.7", None),
                ],
                &[("http", 8080), ("metrics", 9090)],
            ),
            slice(&[("fd00::1", Some(true))], &[("metrics", 9091)]),
        ];
        assert_eq!(
            activator_urls(&slices, "metrics"),
            vec![
                "http://10.244.0.5:9090/metrics",
                "http://10.244.0.7:9090/metrics",
                "http://[fd00::1]:9091/metrics"
            ]
        );
        assert_eq!(
            activator_urls(&slices[..1], "8080"),
            vec![
                "http://10.244.0.5:8080/metrics",
                "http://10.244.0.7:8080/metrics"
            ]
        );
        assert!(activator_urls(&slices[..1], "nope").is_empty());
    }
}
