//! The dirty-tracking index: the watched objects, indexed by namespace and Service; each watch
//! event marks the models it can affect, and a sync recomputes only those and applies the
//! differences. [`desired`] works out every model from scratch with the same per-model code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::watcher;
use zeroscale_config::GlobalConfig;
use zeroscale_kube::endpoints::SERVICE_NAME_LABEL;

use super::apply::{Applier, ConflictReport};
use super::resolve::{Desired, Selectors, ServicesAndSlices};
use super::store::{Change, Kind, Names, Objects, Replaced, Scope, ns_name};
use super::stored::{RoutedDeployment, RoutedService, RoutedSlice};
use crate::table::{ModelKey, Table};

/// Works out the whole routing table from the watched objects (`k8s_openapi` objects, or
/// the forms the index keeps them in), from scratch (the sync itself is incremental, see
/// [`Index`]; this runs the same per-model code over every Deployment).
pub fn desired<D, S, E>(
    deployments: &[Arc<D>],
    services: &[Arc<S>],
    slices: &[Arc<E>],
    global: &GlobalConfig,
) -> Desired
where
    D: Clone + Into<RoutedDeployment>,
    S: Clone + Into<RoutedService>,
    E: Clone + Into<RoutedSlice>,
{
    let mut index = Index::new(global.clone());
    for s in services {
        let changed = index.services.put(Arc::new((**s).clone().into()));
        index.services_changed(changed);
    }
    for s in slices {
        let changed = index.slices.put(Arc::new((**s).clone().into()));
        index.slices_changed(changed);
    }
    let mut out = Desired::default();
    for d in deployments {
        let d: RoutedDeployment = (**d).clone().into();
        let Some(r) = index.services_and_slices().model(&d, global) else {
            continue;
        };
        if !r.errors.is_empty() {
            out.errors.push((r.model.spec.key.clone(), r.errors));
        }
        out.models.push(r.model);
    }
    out
}

/// What changed since the last sync.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    /// Every model (the global configuration changed).
    pub(super) all: bool,
    /// Every model of these namespaces (a Service changed: selection may change).
    pub(super) namespaces: HashSet<String>,
    /// The models routed through these (namespace, Service) (an EndpointSlice changed).
    pub(super) services: HashSet<(String, String)>,
    /// These models (their Deployment changed).
    pub(super) models: HashSet<ModelKey>,
}

/// What one [`Index::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// How many models were worked out again.
    pub recomputed: usize,
    /// Models whose routing changed in the table (settings, endpoints, or removal).
    pub changed: Vec<ModelKey>,
    /// New name conflicts, to report on the losers.
    pub conflicts: Vec<ConflictReport>,
    /// The ConfigMap changed: settings outside the table may need the new [`Index::global`].
    pub config_changed: bool,
}

/// The watched objects, indexed for incremental sync, and what was applied from them.
///
/// Feed it every watch event ([`Index::handle`]); [`Index::sync`] then recomputes only the
/// models those events can affect and applies the differences to the table.
#[derive(Debug)]
pub struct Index {
    pub(super) global: GlobalConfig,
    /// resourceVersion of the ConfigMap `global` was read from.
    pub(super) config_version: Option<String>,
    pub(super) deployments: Objects<RoutedDeployment>,
    pub(super) services: Objects<RoutedService>,
    pub(super) slices: Objects<RoutedSlice>,
    pub(super) configmaps: Objects<ConfigMap>,
    /// (namespace, Service) -> names of the EndpointSlices labelled with it.
    pub(super) slices_by_service: HashMap<(String, String), Names>,
    pub(super) selectors: Selectors,
    /// (namespace, Service) -> Deployments whose endpoints came from it at the last sync.
    pub(super) routed_through: HashMap<(String, String), Names>,
    /// The reverse of `routed_through`.
    pub(super) service_of: HashMap<ModelKey, String>,
    pub(super) dirty: Dirty,
    pub(super) applier: Applier,
    /// Streams whose first list has not completed.
    pub(super) pending: HashSet<(Kind, Scope)>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new(GlobalConfig::default())
    }
}

impl Index {
    /// An empty index; `global` holds until a ConfigMap is seen.
    pub fn new(global: GlobalConfig) -> Self {
        Self {
            global,
            config_version: None,
            deployments: Objects::default(),
            services: Objects::default(),
            slices: Objects::default(),
            configmaps: Objects::default(),
            slices_by_service: HashMap::new(),
            selectors: Selectors::default(),
            routed_through: HashMap::new(),
            service_of: HashMap::new(),
            dirty: Dirty::default(),
            applier: Applier::default(),
            pending: HashSet::new(),
        }
    }

    /// Registers a watch stream: [`Index::is_ready`] waits for its first complete list.
    pub fn expect(&mut self, kind: Kind, scope: Scope) {
        self.pending.insert((kind, scope));
    }

    /// Every registered stream has listed its objects once: a sync sees the whole picture
    /// (syncing a partial view would route models without their endpoints, or drop them).
    pub fn is_ready(&self) -> bool {
        self.pending.is_empty()
    }

    /// The global configuration in effect.
    pub fn global(&self) -> &GlobalConfig {
        &self.global
    }

    /// A watched Deployment.
    pub fn deployment(&self, key: &ModelKey) -> Option<Arc<RoutedDeployment>> {
        self.deployments
            .get(&key.namespace, &key.deployment)
            .cloned()
    }

    /// Takes one watch event in and marks what it can affect dirty.
    pub fn handle(&mut self, change: Change) {
        let (kind, scope, done) = match change {
            Change::Deployment(scope, ev) => {
                let done = matches!(*ev, watcher::Event::InitDone);
                for (old, new) in self.deployments.handle(&scope, *ev) {
                    if let Some(o) = old.or(new) {
                        let (namespace, deployment) = ns_name(&*o);
                        self.dirty.models.insert(ModelKey {
                            namespace,
                            deployment,
                        });
                    }
                }
                (Kind::Deployment, scope, done)
            }
            Change::Service(scope, ev) => {
                let done = matches!(*ev, watcher::Event::InitDone);
                let changed = self.services.handle(&scope, *ev);
                self.services_changed(changed);
                (Kind::Service, scope, done)
            }
            Change::EndpointSlice(scope, ev) => {
                let done = matches!(*ev, watcher::Event::InitDone);
                let changed = self.slices.handle(&scope, *ev);
                self.slices_changed(changed);
                (Kind::EndpointSlice, scope, done)
            }
            Change::ConfigMap(scope, ev) => {
                let done = matches!(*ev, watcher::Event::InitDone);
                // Read at the next sync, by resourceVersion.
                self.configmaps.handle(&scope, *ev);
                (Kind::ConfigMap, scope, done)
            }
        };
        if done {
            self.pending.remove(&(kind, scope));
        }
    }

    /// A Service may now select other pods: its namespace's models are dirty.
    pub(super) fn services_changed(
        &mut self,
        changed: impl IntoIterator<Item = Replaced<RoutedService>>,
    ) {
        for (old, new) in changed {
            if let Some(o) = &old {
                self.selectors.remove(o);
            }
            if let Some(o) = &new {
                self.selectors.insert(o);
            }
            if let Some(o) = old.or(new) {
                self.dirty.namespaces.insert(ns_name(&*o).0);
            }
        }
    }

    /// The models routed through the slices' Services are dirty.
    pub(super) fn slices_changed(
        &mut self,
        changed: impl IntoIterator<Item = Replaced<RoutedSlice>>,
    ) {
        for (old, new) in changed {
            // The Service label may change: both Services' models are affected.
            if let Some(o) = old
                && let Some(svc) = o.labels().get(SERVICE_NAME_LABEL)
            {
                let (ns, name) = ns_name(&*o);
                let k = (ns, svc.clone());
                if let Some(set) = self.slices_by_service.get_mut(&k) {
                    set.remove(&name);
                    if set.is_empty() {
                        self.slices_by_service.remove(&k);
                    }
                }
                self.dirty.services.insert(k);
            }
            if let Some(o) = new
                && let Some(svc) = o.labels().get(SERVICE_NAME_LABEL)
            {
                let (ns, name) = ns_name(&*o);
                let k = (ns, svc.clone());
                self.slices_by_service
                    .entry(k.clone())
                    .or_default()
                    .insert(name);
                self.dirty.services.insert(k);
            }
        }
    }

    pub(super) fn services_and_slices(&self) -> ServicesAndSlices<'_> {
        ServicesAndSlices {
            services: &self.services,
            slices: &self.slices,
            slices_by_service: &self.slices_by_service,
            selectors: &self.selectors,
        }
    }

    /// Reads the ConfigMap if it changed; a new global configuration makes every model dirty.
    pub(super) fn reload_config(&mut self) -> bool {
        let cm = self.configmaps.iter().next().cloned();
        let version = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        if version == self.config_version {
            return false;
        }
        let data: BTreeMap<String, String> =
            cm.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
        let (next, errors) = GlobalConfig::from_configmap(&data, &self.global);
        for e in &errors {
            tracing::warn!(error = %e, "ConfigMap value ignored; the last good value stays");
        }
        if next != self.global {
            self.global = next;
            self.dirty.all = true;
        }
        self.config_version = version;
        true
    }

    /// Recomputes the dirty models and applies what changed to `table`.
    pub fn sync(&mut self, table: &Table) -> SyncReport {
        let mut report = SyncReport {
            config_changed: self.reload_config(),
            ..SyncReport::default()
        };
        let dirty = std::mem::take(&mut self.dirty);
        // Sorted, so conflicts are reported in the same order every time.
        let mut keys: BTreeSet<ModelKey> = dirty.models.into_iter().collect();
        let model_key = |d: &Arc<RoutedDeployment>| {
            let (namespace, deployment) = ns_name(&**d);
            ModelKey {
                namespace,
                deployment,
            }
        };
        if dirty.all {
            keys.extend(self.deployments.iter().map(model_key));
            keys.extend(self.applier.keys().cloned());
        } else {
            for ns in &dirty.namespaces {
                let deps = self.deployments.namespace(ns).into_iter().flatten();
                keys.extend(deps.map(|(_, d)| model_key(d)));
            }
            for k in &dirty.services {
                for d in self.routed_through.get(k).into_iter().flatten() {
                    keys.insert(ModelKey {
                        namespace: k.0.clone(),
                        deployment: d.clone(),
                    });
                }
            }
        }
        report.recomputed = keys.len();
        for key in keys {
            let resolved = self
                .deployments
                .get(&key.namespace, &key.deployment)
                .and_then(|d| self.services_and_slices().model(d, &self.global));
            let (changed, service) = match resolved {
                Some(r) => {
                    for e in &r.errors {
                        tracing::debug!(deployment = %key, error = %e, "annotation ignored");
                    }
                    let changed = self.applier.upsert(table, r.model);
                    (changed, r.service)
                }
                None => (self.applier.remove(table, &key), None),
            };
            self.route_through(&key, service);
            if changed {
                report.changed.push(key);
            }
        }
        self.applier.conflicts_into(&mut report.conflicts);
        report
    }

    /// Records which Service a model's endpoints come from.
    pub(super) fn route_through(&mut self, key: &ModelKey, service: Option<String>) {
        if self.service_of.get(key) == service.as_ref() {
            return;
        }
        if let Some(old) = self.service_of.remove(key) {
            let k = (key.namespace.clone(), old);
            if let Some(set) = self.routed_through.get_mut(&k) {
                set.remove(&key.deployment);
                if set.is_empty() {
                    self.routed_through.remove(&k);
                }
            }
        }
        if let Some(svc) = service {
            self.routed_through
                .entry((key.namespace.clone(), svc.clone()))
                .or_default()
                .insert(key.deployment.clone());
            self.service_of.insert(key.clone(), svc);
        }
    }
}
