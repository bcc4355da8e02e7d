//! The wiring: watchers and reflectors feed the index, a scrape loop feeds it samples, a tick
//! asks it for intents, the applier carries them out while this replica holds the Lease.
//!
//! One task owns the [`Index`]; everything else talks to it through a channel, so the index
//! stays a plain value with no locks.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;
use zeroscale_config::GlobalConfig;
use zeroscale_kube::endpoints::{self, Select};
use zeroscale_kube::events::Publisher;

use crate::DeploymentKey;
use crate::apply::Applier;
use crate::beat;
use crate::health::{self, Health, LeaderStatus, WatchHealth};
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
    /// A leader that has not renewed the Lease for this long stops writing (and a replica whose
    /// API server has not answered for this long reports not ready). Below `lease_duration`.
    pub renew_deadline: Duration,
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

/// Server-side timeout of every watch call: a healthy watch is re-established (a fresh 2xx
/// response, a sign of life) at least this often. kube-runtime also drops a watch silent for
/// longer (plus a margin) and reconnects.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// A watch without any sign of life for this long is hung: two re-watches missed, roughly.
pub const WATCH_SILENT_AFTER: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 30);

/// A read timeout for the Kubernetes client that never fires on a healthy watch (the server
/// ends those after [`WATCH_TIMEOUT_SECS`]) but bounds every call that hangs, including the
/// Lease renewals kube-lease-manager makes without a timeout of their own.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 15);

pub use zeroscale_kube::watch::WatchBackoff;

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// A client for the watch `what`: registered on the health board, its successful responses
/// and their chunks mark the watch alive.
fn watch_client(client: &Client, health: &Arc<Health>, what: &str) -> Client {
    health.with(|b| b.watches.insert(what.to_owned(), WatchHealth::new(now())));
    let (board, name) = (health.clone(), what.to_owned());
    beat::client(
        client,
        Arc::new(move || {
            let at = now();
            board.with(|b| {
                if let Some(w) = b.watches.get_mut(&name) {
                    w.alive(at);
                }
            });
        }),
    )
}

/// An error item of watch `what` starts (or continues) its failing streak; events need no
/// bookkeeping here, the watch's client saw them arrive.
fn observe<T>(health: &Health, what: &str, item: &Result<T, watcher::Error>) {
    if let Err(e) = item {
        health.with(|b| {
            if let Some(w) = b.watches.get_mut(what) {
                w.error(now(), e.to_string());
            }
        });
    }
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

/// Forwards a watch stream into the control loop (what `wrap` turns into an input) and keeps
/// the watch's health on the board ([`zeroscale_kube::watch::forward`] logs its failures).
async fn forward<K, S>(
    what: String,
    stream: S,
    health: Arc<Health>,
    tx: mpsc::Sender<Input>,
    wrap: impl FnMut(Event<K>) -> Option<Input>,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    zeroscale_kube::watch::forward(
        &what,
        stream,
        tx,
        |item| observe(&health, &what, item),
        wrap,
    )
    .await;
}

/// Activator metrics URLs from the EndpointSlices of the activator Service: ready endpoints,
/// and terminating ones (not ready: an activator turns its readiness off on SIGTERM), which
/// still hold queued and in-flight requests while they drain. Leaving those out would read
/// their requests as gone and could scale a busy model down during a rollout.
pub fn activator_urls(slices: &[Arc<EndpointSlice>], port: &str) -> Vec<String> {
    let port = endpoints::Port::NameOrNumber(port.to_owned());
    let mut urls: Vec<String> =
        endpoints::endpoints(slices.iter().map(|s| &**s), &port, Select::Draining)
            .into_iter()
            .map(|e| format!("http://{}/metrics", e.addr))
            .collect();
    urls.sort();
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

/// The pod addresses of a Service to scrape on `port`, from its EndpointSlices (listed from
/// the API: pod-sourced Deployments are expected to be few): ready pods and draining ones,
/// whose in-flight requests still count ([`Select::Draining`]).
async fn ready_addresses(
    client: &Client,
    namespace: &str,
    service: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp = kube::api::ListParams::default()
        .labels(&format!("{}={service}", endpoints::SERVICE_NAME_LABEL));
    let slices = api.list(&lp).await?.items;
    let port = endpoints::Port::Number(i32::from(port));
    Ok(endpoints::endpoints(&slices, &port, Select::Draining)
        .into_iter()
        .map(|e| e.addr)
        .collect())
}

/// One scrape of a pod-sourced Deployment: the gauge summed over its ready pods, or None when
/// any of them (or the EndpointSlice list) failed.
async fn scrape_pods(
    client: &Client,
    http: &scrape::HttpClient,
    target: &PodTarget,
    timeout: Duration,
) -> Option<f64> {
    let addresses = match ready_addresses(
        client,
        &target.key.namespace,
        &target.service,
        target.port,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(deployment = %target.key, error = %e, "listing pod endpoints failed");
            return None;
        }
    };
    let fetches = addresses.iter().map(|addr| {
        let url = format!("http://{addr}{}", target.path);
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

/// How often the leader renews the Lease (and every replica reads it): a few times per renew
/// deadline, so one slow or failed call does not cost the leadership.
pub fn renew_interval(renew_deadline: Duration) -> Duration {
    (renew_deadline / 4).max(Duration::from_millis(200))
}

/// Builds the leader election, retrying while the API server is unreachable.
async fn start_lease(
    client: &Client,
    settings: &Settings,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let duration = settings.lease_duration.as_secs().max(2);
    // kube-lease-manager renews `grace` seconds before expiry, i.e. `duration - grace` after
    // the last renewal: keep that well inside the renew deadline.
    let every = renew_interval(settings.renew_deadline)
        .as_secs()
        .clamp(1, duration - 1);
    let grace = duration - every;
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

/// The time the health board is judged in: tokio's clock, so tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Reads the Lease every [`renew_interval`], each read with a timeout, and records on the
/// board whether the API server answered and when this replica last renewed. This is how
/// renewals become visible: kube-lease-manager reports only changes of holder.
async fn poll_lease(client: Client, settings: Settings, health: Arc<Health>, wake: Arc<Notify>) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let every = renew_interval(settings.renew_deadline);
    let timeout = settings.api_timeout.min(every.max(Duration::from_secs(1)));
    loop {
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, api.get_opt(&settings.lease_name)).await {
            Ok(Ok(lease)) => {
                let at = now();
                let spec = lease.and_then(|l| l.spec);
                let ours = spec
                    .as_ref()
                    .is_some_and(|s| s.holder_identity.as_deref() == Some(&settings.identity));
                let renewed = spec
                    .and_then(|s| s.renew_time)
                    .filter(|_| ours)
                    .map(|t| health::renewed_at(at, SystemTime::now(), t.0.into()));
                health.with(|b| b.lease.record_read(sent.into_std(), at, renewed));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the Lease failed"),
            Err(_) => tracing::debug!(?timeout, "reading the Lease timed out"),
        }
        wake.notify_one();
        tokio::time::sleep_until(sent + every).await;
    }
}

/// Turns leader election and Lease reads into what the rest of the process sees: the leader
/// gauge, the lost-leadership counter, and one log line per change of leadership or
/// readiness. Wakes up at each renew deadline so a lapse is acted on at once.
async fn supervise_lease(
    mut elected: watch::Receiver<bool>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    identity: String,
) {
    let mut status = LeaderStatus::Standby;
    let mut reasons: Vec<String> = Vec::new();
    let mut election_open = true;
    let initially = *elected.borrow_and_update();
    health.with(|b| b.lease.set_elected(initially, now()));
    loop {
        let at = now();
        let (next, next_reasons, deadline, renew_deadline) = health.with(|b| {
            (
                b.lease.status_at(at),
                b.not_ready_at(at),
                b.lease.next_deadline(at),
                b.lease.renew_deadline,
            )
        });
        if !next.same_as(status) {
            metrics.leader.set(i64::from(next.may_write()));
            match (status, next) {
                (LeaderStatus::Leading, LeaderStatus::Lost { unrenewed_for }) => {
                    metrics.leader_lost.inc();
                    tracing::warn!(%identity, "{}", health::lost_message(unrenewed_for, renew_deadline));
                }
                (LeaderStatus::Lost { .. }, LeaderStatus::Leading) => {
                    tracing::info!(%identity, "leadership regained: lease renewed; writing again");
                }
                (_, LeaderStatus::Leading) => tracing::info!(%identity, "leadership acquired"),
                (_, LeaderStatus::Standby) => {
                    tracing::info!(%identity, "standing by: another replica holds the Lease")
                }
                (_, LeaderStatus::Lost { unrenewed_for }) => {
                    tracing::warn!(%identity, "{}", health::lost_message(unrenewed_for, renew_deadline));
                }
            }
        }
        status = next;
        let keys: Vec<String> = next_reasons.iter().map(|r| r.key.clone()).collect();
        if keys != reasons {
            if next_reasons.is_empty() {
                tracing::info!(%identity, "ready");
            } else {
                let texts: Vec<&str> = next_reasons.iter().map(|r| r.text.as_str()).collect();
                tracing::warn!(%identity, reasons = %texts.join("; "), "not ready");
            }
            reasons = keys;
        }
        let deadline = deadline.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            changed = elected.changed(), if election_open => {
                let leading = changed.is_ok() && *elected.borrow_and_update();
                if changed.is_err() {
                    tracing::warn!("leader election ended; acting as standby");
                    election_open = false;
                }
                health.with(|b| b.lease.set_elected(leading, now()));
            }
            () = wake.notified() => {}
            () = tokio::time::sleep_until(deadline) => {}
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
    // Watches failing for as long as a leader may go unrenewed are stale: one knob for both.
    let health = Arc::new(Health::new(
        settings.renew_deadline,
        settings.renew_deadline,
        WATCH_SILENT_AFTER,
        now(),
    ));
    let global = Arc::new(RwLock::new(GlobalConfig::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let events = Publisher::new(
        client.clone(),
        "zeroscale-autoscaler",
        Some(settings.identity.clone()),
        settings.api_timeout,
    );
    let applier = Applier::new(
        client.clone(),
        events,
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
        let in_scope = scope.as_deref().unwrap_or("*");
        let what = format!("deployments/{in_scope}");
        let c = watch_client(&client, &health, &what);
        let deployments: Api<Deployment> = match scope {
            Some(ns) => Api::namespaced(c, ns),
            None => Api::all(c),
        };
        let (reader, writer) = reflector::store();
        stores.push((scope.clone(), reader));
        let stream = reflect(
            writer,
            watcher(deployments, watch_config()).backoff(WatchBackoff::default()),
        );
        let s = scope.clone();
        tasks.push(tokio::spawn(forward(
            what,
            stream,
            health.clone(),
            tx.clone(),
            move |e| Some(Input::Deployment(s.clone(), Box::new(e))),
        )));

        let what = format!("hpas/{in_scope}");
        let c = watch_client(&client, &health, &what);
        let hpas: Api<HorizontalPodAutoscaler> = match scope {
            Some(ns) => Api::namespaced(c, ns),
            None => Api::all(c),
        };
        let s = scope.clone();
        let stream = watcher(hpas, watch_config()).backoff(WatchBackoff::default());
        tasks.push(tokio::spawn(forward(
            what,
            stream,
            health.clone(),
            tx.clone(),
            move |e| Some(Input::Hpa(s.clone(), Box::new(e))),
        )));
    }
    let what = "configmap".to_owned();
    let configmaps: Api<ConfigMap> =
        Api::namespaced(watch_client(&client, &health, &what), &settings.namespace);
    let cm_config = watch_config().fields(&format!(
        "metadata.name={}",
        zeroscale_config::CONFIGMAP_NAME
    ));
    tasks.push(tokio::spawn(forward(
        what,
        watcher(configmaps, cm_config).backoff(WatchBackoff::default()),
        health.clone(),
        tx.clone(),
        |e| Some(Input::ConfigMap(Box::new(e))),
    )));

    let (act_ns, act_name) = settings.activator_service.clone();
    let what = "activator-endpointslices".to_owned();
    let slices_api: Api<EndpointSlice> =
        Api::namespaced(watch_client(&client, &health, &what), &act_ns);
    let slice_config = watch_config().labels(&format!("kubernetes.io/service-name={act_name}"));
    let (slice_reader, slice_writer) = reflector::store();
    let slice_stream = reflect(
        slice_writer,
        watcher(slices_api, slice_config).backoff(WatchBackoff::default()),
    );
    // Only the reflector store is used; nothing goes to the control loop.
    tasks.push(tokio::spawn(forward(
        what,
        slice_stream,
        health.clone(),
        tx.clone(),
        |_| None,
    )));
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
    let mut servers = vec![tokio::spawn(server::serve_api(
        api_listener,
        wake_state,
        stopped(),
    ))];
    let admin_state = AdminState {
        registry,
        health: health.clone(),
    };
    servers.push(tokio::spawn(server::serve_admin(
        metrics_listener,
        admin_state,
        stopped(),
    )));

    let wake_supervisor = Arc::new(Notify::new());
    tasks.push(tokio::spawn(poll_lease(
        client.clone(),
        settings.clone(),
        health.clone(),
        wake_supervisor.clone(),
    )));
    let (elected_rx, lease_task) = start_lease(&client, &settings).await;
    // Holds the election's receiver: aborting it at shutdown releases the Lease.
    tasks.push(tokio::spawn(supervise_lease(
        elected_rx,
        health.clone(),
        metrics.clone(),
        wake_supervisor,
        settings.identity.clone(),
    )));

    let control = ControlLoop {
        index: Index::new(&scopes),
        settings: settings.clone(),
        applier,
        metrics: metrics.clone(),
        global,
        health,
        synced: false,
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
    // The servers stop accepting and let requests in flight finish (bounded by their drain
    // timeout).
    for s in servers {
        let _ = s.await;
    }
    // Aborting the supervisor dropped the election's receiver, which makes the lease task
    // release the Lease so a standby takes over at once; give it a moment.
    let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    Ok(())
}

struct ControlLoop {
    index: Index,
    settings: Settings,
    applier: Applier,
    metrics: Arc<Metrics>,
    global: Arc<RwLock<GlobalConfig>>,
    /// Readiness and the write gate (leadership within the renew deadline).
    health: Arc<Health>,
    /// Last `is_synced` put on the board.
    synced: bool,
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
            }
            let every = self.index.global().tick_interval;
            if every != tick_every {
                tick_every = every;
                ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let synced = self.index.is_synced();
            if synced != self.synced {
                self.synced = synced;
                self.health.with(|b| b.synced = synced);
            }
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
        let leading = self.health.may_write_at(now());
        for intent in out.intents {
            if !leading {
                // A standby decides (to keep its state warm) but never writes.
                self.index.scale_done(&intent.key, intent.to, false);
                continue;
            }
            let applier = self.applier.clone();
            let tx = self.tx.clone();
            let health = self.health.clone();
            let span = tracing::info_span!("apply", deployment = %intent.key, from = intent.from, to = intent.to);
            tokio::spawn(
                async move {
                    // Checked again right before the write: the renew deadline may have passed
                    // since the tick.
                    let leading = health.may_write_at(now());
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

    /// Lets spawned tasks run; on the paused clock this also moves time by `d`.
    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_writing_and_counts_it() {
        let deadline = Duration::from_secs(10);
        let health = Arc::new(Health::new(deadline, deadline, WATCH_SILENT_AFTER, now()));
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(Notify::new());
        let (elected_tx, elected_rx) = watch::channel(false);
        let task = tokio::spawn(supervise_lease(
            elected_rx,
            health.clone(),
            metrics.clone(),
            wake.clone(),
            "me".into(),
        ));
        health.with(|b| b.synced = true);

        elected_tx.send(true).unwrap();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 1);
        assert!(health.may_write_at(now()));

        // No renewal and no Lease read: the deadline passes with no other input.
        settle(Duration::from_secs(10)).await;
        assert_eq!(
            metrics.leader.get(),
            0,
            "still leader past the renew deadline"
        );
        assert_eq!(metrics.leader_lost.get(), 1);
        assert!(!health.may_write_at(now()));
        let reasons = health.not_ready_at(now());
        assert!(
            reasons.iter().any(|r| r.key == "lost-leadership"
                && r.text.starts_with("lost leadership: lease not renewed for")),
            "{reasons:?}"
        );

        // A renewal seen again: writing resumes and readiness returns.
        let at = now();
        health.with(|b| b.lease.record_read(at, at, Some(at)));
        wake.notify_one();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 1);
        assert_eq!(metrics.leader_lost.get(), 1, "counted once per loss");
        assert!(health.may_write_at(now()));
        assert!(health.not_ready_at(now()).is_empty());

        // Losing the election is not a lost leadership.
        elected_tx.send(false).unwrap();
        settle(Duration::from_millis(10)).await;
        assert_eq!(metrics.leader.get(), 0);
        assert_eq!(metrics.leader_lost.get(), 1);
        task.abort();
    }

    #[test]
    fn renewals_come_well_inside_the_renew_deadline() {
        assert_eq!(
            renew_interval(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            renew_interval(Duration::from_millis(400)),
            Duration::from_millis(200)
        );
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

    #[test]
    fn a_terminating_activator_is_still_scraped_while_it_drains() {
        let mut s = (*slice(
            &[("10.88.0.2", Some(false)), ("10.88.0.3", Some(false))],
            &[("metrics", 9090)],
        ))
        .clone();
        // .2 is draining (SIGTERM: readiness off); .3 is starting and not ready yet.
        s.endpoints.as_mut().unwrap()[0].conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(true),
        });
        assert_eq!(
            activator_urls(&[Arc::new(s)], "metrics"),
            vec!["http://10.88.0.2:9090/metrics"]
        );
    }
}
