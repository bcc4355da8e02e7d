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
    /// For listing a woken Deployment's pods (cold-start stages).
    pub(crate) client: Client,
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
    }
}
