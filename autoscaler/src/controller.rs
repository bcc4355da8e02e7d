//! The control loop: watch events (forwarded here, with their health kept on the board), the
//! scrape loops' samples ([`crate::scrapers`]) and applied patches feed the index; a tick
//! asks it for intents, and the applier carries them out while this replica holds the Lease
//! ([`crate::lease`]). The `app` module wires it all together (it imports this one, not the
//! other way round).
//!
//! One task owns the [`Index`]; everything else talks to it through a channel, so the index
//! stays a plain value with no locks.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::Stream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::runtime::events::EventType;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tracing::Instrument;
use zeroscale_config::GlobalConfig;

use crate::DeploymentKey;
use crate::apply::Applier;
use crate::beat;
use crate::health::{Health, WatchHealth};
use crate::index::{DeploymentView, Index, Notice, PodTarget, Source};
use crate::metrics::Metrics;
use crate::now;
use crate::scrapers::Scraped;

pub use crate::config::Settings;

/// Why the autoscaler stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

pub(crate) enum Input {
    Deployment(Option<String>, Box<Event<Deployment>>),
    ConfigMap(Box<Event<ConfigMap>>),
    Hpa(Option<String>, Box<Event<HorizontalPodAutoscaler>>),
    Scraped(Scraped),
    Applied(DeploymentKey, u32, bool),
    /// A wake signal for a pooled Deployment (the wake API leaves those to the tick).
    Wake(DeploymentKey, u64),
    /// A learned-state shard was read ([`crate::learned_store::load`]).
    LearnedLoaded(crate::learned_store::Loaded),
    /// A learned-state shard write ended: shard, digest of what was written, result.
    LearnedWritten(usize, u64, Result<(), crate::learned_store::StoreError>),
}

impl From<crate::learned_store::Loaded> for Input {
    fn from(l: crate::learned_store::Loaded) -> Self {
        Input::LearnedLoaded(l)
    }
}

impl From<Scraped> for Input {
    fn from(s: Scraped) -> Self {
        Input::Scraped(s)
    }
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

pub(crate) fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// A client for the watch `what`: registered on the health board, its successful responses
/// and their chunks mark the watch alive.
pub(crate) fn watch_client(client: &Client, health: &Arc<Health>, what: &str) -> Client {
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

/// Drops from a watched Deployment what the autoscaler never reads, before the store keeps it:
/// of the pod spec only each container's name and resources stay (what a replica counts in a
/// pool), of the status only the counts (not the conditions). [`view`] and the wake path read
/// the rest: metadata, replicas, the selector (cold-start stages), ready replicas. At 10,000
/// Deployments the containers' commands, env, probes and images are most of the store.
pub fn keep_scaling_fields(d: &mut Deployment) {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    fn keep(c: &Container) -> Container {
        Container {
            name: c.name.clone(),
            resources: c.resources.clone(),
            ..Default::default()
        }
    }
    if let Some(spec) = d.spec.as_mut()
        && let Some(pod) = spec.template.spec.as_mut()
    {
        *pod = PodSpec {
            containers: pod.containers.iter().map(keep).collect(),
            init_containers: pod
                .init_containers
                .as_ref()
                .map(|cs| cs.iter().map(keep).collect()),
            ..Default::default()
        };
    }
    if let Some(status) = d.status.as_mut() {
        status.conditions = None;
    }
}

/// The copy of a watched Deployment the wake cache keeps (`server::DeploymentCache`): what
/// [`crate::wake::plan`] reads, its metadata and `spec.replicas`. The control loop gets the
/// event's own object ([`keep_scaling_fields`]), which [`view`] and the cold-start stages read;
/// the cache need not hold a second copy of the pod template (at 10,000 Deployments its
/// containers alone, 2 KB each in memory, were 20 MiB).
pub fn wake_cache_fields(d: &Deployment) -> Deployment {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    Deployment {
        metadata: d.metadata.clone(),
        spec: d.spec.as_ref().map(|s| DeploymentSpec {
            replicas: s.replicas,
            ..Default::default()
        }),
        status: None,
    }
}

/// A watch event as the wake cache stores it: its objects cut to [`wake_cache_fields`].
pub(crate) fn wake_cache_event(ev: &Event<Deployment>) -> Event<Deployment> {
    match ev {
        Event::Apply(d) => Event::Apply(wake_cache_fields(d)),
        Event::Delete(d) => Event::Delete(wake_cache_fields(d)),
        Event::Init => Event::Init,
        Event::InitApply(d) => Event::InitApply(wake_cache_fields(d)),
        Event::InitDone => Event::InitDone,
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
        resources: d
            .spec
            .as_ref()
            .map(|s| crate::pools::PodResources::from_template(&s.template))
            .unwrap_or_default(),
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
pub(crate) async fn forward<K, S>(
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

pub(crate) struct ControlLoop {
    pub(crate) index: Index,
    pub(crate) settings: Settings,
    pub(crate) applier: Applier,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) global: Arc<RwLock<GlobalConfig>>,
    /// Readiness and the write gate (leadership within the renew deadline).
    pub(crate) health: Arc<Health>,
    /// Last `is_synced` put on the board.
    pub(crate) synced: bool,
    pub(crate) tx: mpsc::Sender<Input>,
    /// The ConfigMap as listed during a re-list, applied at its end.
    pub(crate) buffered_configmap: Option<Option<BTreeMap<String, String>>>,
    /// Pod-sourced Deployments, for the pod scrape loop (refreshed every tick).
    pub(crate) pod_targets: Arc<RwLock<Vec<PodTarget>>>,
    /// Wakes on their way to a first Ready pod.
    pub(crate) cold_starts: crate::coldstart::Tracker,
    /// For listing a woken Deployment's pods (cold-start stages) and writing learned state.
    pub(crate) client: Client,
    /// When each learned-state shard is written ([`crate::learned`]).
    pub(crate) flusher: crate::learned::Flusher,
}

impl ControlLoop {
    pub(crate) async fn run(mut self, rx: &mut mpsc::Receiver<Input>) {
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
                    let wall = std::time::SystemTime::now();
                    if let Some(done) = self.cold_starts.observe(
                        &v.key,
                        v.spec_replicas,
                        v.ready_replicas,
                        now,
                        wall,
                    ) {
                        crate::coldstart::record(
                            self.client.clone(),
                            self.metrics.clone(),
                            &d,
                            done,
                        );
                    }
                    if !zeroscale_config::is_opted_in(&v.annotations) {
                        self.metrics.forget(&v.key);
                    }
                    let notices = self.index.apply_deployment(v, now);
                    self.notices(notices);
                }
                Event::Delete(d) => {
                    if let Some(v) = view(&d) {
                        self.cold_starts.forget(&v.key);
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
            Input::Scraped(Scraped::Round(round)) => self.index.record_round(&round),
            Input::Scraped(Scraped::Pod(key, at, value)) => {
                self.index.record_pod_metric(&key, at, value)
            }
            Input::Applied(key, to, ok) => self.index.scale_done(&key, to, ok),
            Input::LearnedLoaded(crate::learned_store::Loaded { shard, data }) => {
                self.flusher.loaded(shard, data.is_some());
                let data = data.unwrap_or_default();
                let entries = data.len();
                self.index.restore_learned(data);
                tracing::debug!(
                    configmap = %crate::learned::shard_name(shard),
                    entries, "learned state read"
                );
                if self.flusher.all_loaded() {
                    tracing::info!("learned state read from every shard");
                }
            }
            Input::LearnedWritten(shard, digest, result) => {
                let name = crate::learned::shard_name(shard);
                let ok = result.is_ok();
                let label = result.as_ref().err().map_or("success", |e| e.result());
                self.metrics.learned_write(label);
                let log = self.flusher.written(shard, digest, ok);
                match result {
                    Ok(()) if log => {
                        tracing::info!(configmap = %name, "learned state written again")
                    }
                    Ok(()) => tracing::debug!(configmap = %name, "learned state written"),
                    Err(e) if log => tracing::warn!(
                        configmap = %name, error = %e,
                        "writing learned state failed; retried at its next turn (every {}), \
                         not logged again until it succeeds",
                        zeroscale_config::format_duration(self.index.global().learned_state_flush_interval)
                    ),
                    Err(e) => {
                        tracing::debug!(configmap = %name, error = %e, "writing learned state failed again")
                    }
                }
            }
            Input::Wake(key, queued) => {
                self.index.wake_requested(&key, queued);
                // The leader admits it at once rather than at the next tick.
                if self.health.may_write_at(crate::now()) {
                    self.tick();
                }
            }
        }
    }

    /// A wake that has to wait for room in its pool is told once, on its Deployment.
    fn pool_waits(&self, reports: &[crate::pools::PoolReport]) {
        for report in reports {
            for key in &report.newly_waiting {
                let note = crate::pools::waiting_message(report);
                tracing::info!(deployment = %key, pool = report.pool, "{note}");
                let applier = self.applier.clone();
                let regarding = crate::apply::deployment_ref(key);
                tokio::spawn(async move {
                    applier
                        .event(&regarding, EventType::Normal, "PoolWait", note)
                        .await
                });
            }
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

    /// The learned-state shards whose turn it is: written by the leader when changed, each
    /// on its own task (the loop never waits for the API server).
    fn flush_learned(&mut self) {
        let at = now();
        self.metrics
            .learned_restored
            .inc_by(self.index.take_restored());
        self.flusher
            .set_interval(self.index.global().learned_state_flush_interval, at);
        let leading = self.health.may_write_at(at);
        for shard in self.flusher.due(at, leading, self.index.is_synced()) {
            let (data, dropped) = crate::learned::shard_data(self.index.learned_shard(shard));
            if dropped > 0 {
                self.metrics.learned_dropped.inc_by(dropped as u64);
                tracing::warn!(
                    configmap = %crate::learned::shard_name(shard), dropped,
                    "learned state over {} bytes: the models with the fewest gaps left out",
                    crate::learned::SHARD_BYTES_LIMIT
                );
            }
            let digest = crate::learned::digest(&data);
            if self.flusher.turn(shard, digest, at) == crate::learned::Flush::Unchanged {
                continue;
            }
            let (client, tx, health) = (self.client.clone(), self.tx.clone(), self.health.clone());
            let ns = self.settings.namespace.clone();
            let timeout = self.settings.api_timeout;
            tokio::spawn(async move {
                // Checked again right before the write, as for scale patches.
                if !health.may_write_at(now()) {
                    return;
                }
                let result = crate::learned_store::write(client, &ns, shard, data, timeout).await;
                let _ = tx.send(Input::LearnedWritten(shard, digest, result)).await;
            });
        }
    }

    fn tick(&mut self) {
        let span = tracing::debug_span!("tick", managed = tracing::field::Empty);
        let _g = span.enter();
        self.flush_learned();
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
        self.metrics.pools.observe(&out.pools);
        let leading = self.health.may_write_at(now());
        if leading {
            self.pool_waits(&out.pools);
        }
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
    use super::*;

    #[test]
    fn deployments_trimmed_as_the_store_keeps_them_look_the_same() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "llama",
                         "annotations": {"zeroscale.dev/enabled": "true", "zeroscale.dev/pool": "a100"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "llama"}},
                "template": {
                    "metadata": {"labels": {"app": "llama"}},
                    "spec": {
                        "initContainers": [{"name": "fetch", "image": "x", "resources": {"requests": {"cpu": "2"}}}],
                        "containers": [{
                            "name": "model", "image": "vllm", "command": ["serve"],
                            "env": [{"name": "A", "value": "b"}],
                            "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
                        }],
                    },
                },
            },
            "status": {"replicas": 2, "readyReplicas": 1,
                       "conditions": [{"type": "Available", "status": "False"}]},
        }))
        .unwrap();
        let mut t = d.clone();
        keep_scaling_fields(&mut t);
        assert_eq!(view(&d), view(&t));
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.selector, d.spec.as_ref().unwrap().selector);
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].command, None);
        assert_eq!(pod.containers[0].image, None);
        assert_eq!(pod.init_containers.as_ref().unwrap()[0].name, "fetch");
        assert_eq!(t.status.as_ref().unwrap().conditions, None);
        assert_eq!(t.status.as_ref().unwrap().ready_replicas, Some(1));

        // The wake cache's copy plans the same wake, at 0 replicas and at 2, with no pod
        // template.
        let req = crate::wake::WakeRequest {
            namespace: "ns".into(),
            deployment: "llama".into(),
            queued: 1,
        };
        let g = GlobalConfig::default();
        let mut idle = t.clone();
        idle.spec.as_mut().unwrap().replicas = Some(0);
        idle.metadata.resource_version = Some("7".into());
        for d in [&t, &idle] {
            let c = wake_cache_fields(d);
            assert_eq!(c.spec.as_ref().unwrap().template.spec, None);
            assert_eq!(
                crate::wake::plan(&req, Some(&c), &g).unwrap(),
                crate::wake::plan(&req, Some(d), &g).unwrap()
            );
        }
        let Event::Apply(c) = wake_cache_event(&Event::Apply(d.clone())) else {
            panic!("an Apply stays an Apply");
        };
        assert_eq!(c, wake_cache_fields(&d));
    }
}
