//! The watch runtime: starts the watches, moves their events into the [`Index`], syncs the
//! table after each batch, and reports name conflicts as Events.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;
use zeroscale_kube::endpoints::SERVICE_NAME_LABEL;
use zeroscale_kube::events::Publisher;
use zeroscale_kube::watch::{WatchBackoff, forward, scoped_api, slim};

use super::apply;
use super::index::Index;
use super::store::{Change, Kind, Scope};
use super::stored::{RoutedDeployment, RoutedService, RoutedSlice};
use crate::proxy::Proxy;
use crate::table::Table;
use crate::wake::Waker;

/// What the watchers feed.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The routing table.
    pub table: Arc<Table>,
    /// The proxy (for the body-routing limit).
    pub proxy: Arc<Proxy>,
    /// The waker (for the resend interval), if any.
    pub waker: Option<Waker>,
    /// Set true after the first full sync.
    pub ready: Arc<AtomicBool>,
}

/// Where to watch.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The add-on's own namespace (the ConfigMap lives there).
    pub namespace: String,
    /// Namespaces with models; empty = all.
    pub watch_namespaces: Vec<String>,
    /// Name of this instance, for Events.
    pub instance: Option<String>,
}

/// Starts one watcher; its events go to the sync task, tagged by `wrap`. Deployments, Services
/// and EndpointSlices are read in their stored forms (`super::stored`: what routing reads);
/// every object is slimmed ([`slim`]) before it is stored.
fn watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    scope: Scope,
    tx: &mpsc::Sender<Change>,
    wrap: fn(Scope, Box<watcher::Event<K>>) -> Change,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default,
{
    let tx = tx.clone();
    let what = format!(
        "{}/{}",
        K::plural(&Default::default()),
        scope.as_deref().unwrap_or("*")
    );
    tokio::spawn(async move {
        let stream = watcher(api, cfg)
            .backoff(WatchBackoff::default())
            .modify(slim);
        forward(
            &what,
            stream,
            tx,
            |_| {},
            |ev| Some(wrap(scope.clone(), Box::new(ev))),
        )
        .await;
    });
}

/// Watches and syncs until the process ends.
pub async fn run(client: Client, cfg: WatchConfig, targets: Targets) {
    // Bounded: a slow sync pushes back on the watchers instead of buffering without limit.
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let mut index = Index::default();
    let scopes: Vec<Scope> = if cfg.watch_namespaces.is_empty() {
        vec![None]
    } else {
        let set: BTreeSet<&String> = cfg.watch_namespaces.iter().collect();
        set.into_iter().map(|ns| Some(ns.clone())).collect()
    };
    for scope in &scopes {
        index.expect(Kind::Deployment, scope.clone());
        watch(
            scoped_api::<RoutedDeployment>(client.clone(), scope.as_deref()),
            watcher::Config::default().any_semantic(),
            scope.clone(),
            &tx,
            Change::Deployment,
        );
        index.expect(Kind::Service, scope.clone());
        watch(
            scoped_api::<RoutedService>(client.clone(), scope.as_deref()),
            watcher::Config::default().any_semantic(),
            scope.clone(),
            &tx,
            Change::Service,
        );
        index.expect(Kind::EndpointSlice, scope.clone());
        watch(
            scoped_api::<RoutedSlice>(client.clone(), scope.as_deref()),
            watcher::Config::default()
                .any_semantic()
                .labels(SERVICE_NAME_LABEL),
            scope.clone(),
            &tx,
            Change::EndpointSlice,
        );
    }
    let cm_scope = Some(cfg.namespace.clone());
    index.expect(Kind::ConfigMap, cm_scope.clone());
    watch(
        scoped_api::<ConfigMap>(client.clone(), cm_scope.as_deref()),
        watcher::Config::default().any_semantic().fields(&format!(
            "metadata.name={}",
            zeroscale_config::CONFIGMAP_NAME
        )),
        cm_scope,
        &tx,
        Change::ConfigMap,
    );
    drop(tx);
    let events = Publisher::new(
        client.clone(),
        "zeroscale-activator",
        cfg.instance.clone(),
        zeroscale_kube::events::DEFAULT_TIMEOUT,
    );
    while let Some(change) = rx.recv().await {
        index.handle(change);
        // Everything that arrived meanwhile goes into the same sync.
        while let Ok(change) = rx.try_recv() {
            index.handle(change);
        }
        if !index.is_ready() {
            continue;
        }
        let report = index.sync(&targets.table);
        tracing::trace!(
            recomputed = report.recomputed,
            changed = report.changed.len(),
            "synced"
        );
        if report.config_changed {
            let g = index.global();
            targets
                .proxy
                .set_max_routing_body_bytes(g.activator.max_routing_body_bytes);
            targets
                .proxy
                .set_cold_start_header(g.activator.cold_start_header);
            targets
                .proxy
                .set_stream_heartbeat_interval(g.activator.stream_heartbeat_interval);
            if let Some(w) = &targets.waker {
                w.set_resend_interval(g.activator.wake_resend_interval);
            }
        }
        for c in apply::by_name(&report.conflicts) {
            let shown: Vec<String> = c.losers.iter().take(5).map(|k| k.to_string()).collect();
            tracing::warn!(
                name = %c.name,
                winner = %c.winner,
                losers = c.losers.len(),
                first = %shown.join(", "),
                "model name claimed by more than one Deployment; requests go to the winner (a \
                 Warning Event on each loser)"
            );
        }
        for c in report.conflicts {
            let Some(dep) = index.deployment(&c.loser) else {
                continue;
            };
            let note = format!(
                "{:?} is also claimed by {}, which was created first (or sorts first by \
                 namespace/name); requests for it go there. Set zeroscale.dev/model-name to \
                 a unique name.",
                c.name, c.winner
            );
            // Off the sync task: routing never waits for the API server.
            events.spawn(
                dep.object_ref(&()),
                EventType::Warning,
                "ModelNameConflict",
                note,
            );
        }
        if !targets.ready.swap(true, Ordering::SeqCst) {
            tracing::info!(
                models = targets.table.keys().len(),
                "first full sync done; ready"
            );
        }
    }
}
