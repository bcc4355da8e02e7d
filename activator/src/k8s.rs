//! Kubernetes glue: watches opted-in Deployments, their Services and EndpointSlices, and the
//! `zeroscale-config` ConfigMap, and feeds the [`Table`].
//!
//! Working out what should be routed is separate from applying it. [`Index`] holds the watched
//! objects, indexed by namespace and Service, and is fed watch events ([`Change`]); each event
//! marks what it can affect dirty (a Deployment: its model; a Service: its namespace's models;
//! an EndpointSlice: the models routed through its Service; a re-list: what it added, changed
//! or removed; a ConfigMap change: every model), and [`Index::sync`] recomputes only the dirty
//! models and applies what changed ([`Applier`]). So one pod becoming Ready costs the models of
//! one Service, not every watched object. Both are synchronous and unit-tested without a
//! cluster; [`run`] only moves watch events into the index. [`desired`] computes every model
//! from scratch with the same per-model code, for tests and comparisons.
//!
//! Which Service: the `zeroscale.dev/service` annotation, else the Service in the Deployment's
//! namespace whose (non-empty) selector matches the pod template's labels (the first by name if
//! several do). Which port: the `zeroscale.dev/port` annotation (a Service port name or number;
//! a number matching no Service port is used as the pod port directly), else the Service's first
//! port. Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use zeroscale_config::{ConfigError, DeploymentSettings, GlobalConfig, is_opted_in};
use zeroscale_kube::endpoints::{self, SERVICE_NAME_LABEL, Select};
use zeroscale_kube::events::Publisher;
use zeroscale_kube::watch::{WatchBackoff, forward};

use crate::proxy::Proxy;
use crate::queue::{Endpoint, Limits};
use crate::table::{ModelKey, ModelSpec, Table};
use crate::wake::Waker;

/// One model as it should be routed.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredModel {
    /// Routing settings.
    pub spec: ModelSpec,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// What should be routed, and the problems found on the way.
#[derive(Debug, Default)]
pub struct Desired {
    /// Every opted-in Deployment's model.
    pub models: Vec<DesiredModel>,
    /// Bad annotations per Deployment (the autoscaler reports them as Events; logged here).
    pub errors: Vec<(ModelKey, Vec<ConfigError>)>,
}

/// Works out the whole routing table from the watched objects, from scratch (the sync itself
/// is incremental, see [`Index`]; this runs the same per-model code over every Deployment).
pub fn desired(
    deployments: &[Arc<Deployment>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    global: &GlobalConfig,
) -> Desired {
    let mut index = Index::new(global.clone());
    for s in services {
        let changed = index.services.put(s.clone());
        index.services_changed(changed);
    }
    for s in slices {
        let changed = index.slices.put(s.clone());
        index.slices_changed(changed);
    }
    let mut out = Desired::default();
    for d in deployments {
        let Some(r) = index.services_and_slices().model(d, global) else {
            continue;
        };
        if !r.errors.is_empty() {
            out.errors.push((r.model.spec.key.clone(), r.errors));
        }
        out.models.push(r.model);
    }
    out
}

/// One model worked out, with what it was worked out from.
struct Resolved {
    model: DesiredModel,
    errors: Vec<ConfigError>,
    /// The Service whose EndpointSlices give the endpoints, if one was found.
    service: Option<String>,
}

/// The Services and EndpointSlices of every namespace, as one model's computation reads them.
struct ServicesAndSlices<'a> {
    services: &'a Objects<Service>,
    slices: &'a Objects<EndpointSlice>,
    slices_by_service: &'a HashMap<(String, String), BTreeSet<String>>,
    selectors: &'a Selectors,
}

impl ServicesAndSlices<'_> {
    /// The model of one Deployment, if it is opted in. Pure: reads only its arguments.
    fn model(&self, d: &Deployment, global: &GlobalConfig) -> Option<Resolved> {
        let annotations = d.annotations();
        if !is_opted_in(annotations) {
            return None;
        }
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let key = ModelKey {
            namespace: ns,
            deployment: d.name_any(),
        };
        let (settings, errors) = DeploymentSettings::resolve(global, annotations);
        let svcs = self.services.namespace(&key.namespace);
        let svc = match &settings.service {
            Some(name) => svcs.and_then(|s| s.get(name)),
            // The first by name of those that select the pods: only Services whose
            // selector's first pair is on the pod template can.
            None => pod_labels(d).and_then(|labels| {
                self.selectors
                    .candidates(&key.namespace, labels)
                    .filter_map(|name| svcs?.get(name))
                    .filter(|s| selects(s, d))
                    .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
            }),
        };
        let (endpoints, service) = match svc {
            Some(svc) => {
                let name = svc.name_any();
                let k = (key.namespace.clone(), name);
                let slices: Vec<&EndpointSlice> = self
                    .slices_by_service
                    .get(&k)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.slices.get(&key.namespace, n))
                    .map(|s| &**s)
                    .collect();
                (
                    endpoints_of(svc, &slices, settings.port.as_deref()),
                    Some(k.1),
                )
            }
            None => (Vec::new(), None),
        };
        let spec = ModelSpec {
            model_name: settings
                .model_name
                .clone()
                .unwrap_or_else(|| key.deployment.clone()),
            hostnames: settings.hostnames.clone(),
            created: d
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            limits: Limits {
                container_concurrency: settings.container_concurrency,
                queue_depth: global.activator.queue_depth,
                queue_bytes: global.activator.queue_bytes,
                queue_deadline: settings.queue_deadline,
                response_timeout: settings.response_timeout,
                idle_timeout: settings.idle_timeout,
            },
            key,
        };
        Some(Resolved {
            model: DesiredModel { spec, endpoints },
            errors,
            service,
        })
    }
}

fn pod_labels(d: &Deployment) -> Option<&BTreeMap<String, String>> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
}

/// The Service's selector is non-empty and every pair of it is on the pod template.
fn selects(svc: &Service, d: &Deployment) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    let Some(labels) = pod_labels(d) else {
        return false;
    };
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Services by namespace and the first (key, value) pair of their selector, so finding the
/// Services that select a pod template looks at its few labels instead of every Service of
/// its namespace. A Service selects only if all its pairs are on the template, the first too.
#[derive(Debug, Default)]
struct Selectors(HashMap<String, HashMap<String, HashMap<String, BTreeSet<String>>>>);

fn first_pair(svc: &Service) -> Option<(&String, &String)> {
    svc.spec.as_ref()?.selector.as_ref()?.iter().next()
}

impl Selectors {
    fn insert(&mut self, svc: &Service) {
        if let Some((k, v)) = first_pair(svc) {
            let (ns, name) = ns_name(svc);
            let by_value = self.0.entry(ns).or_default().entry(k.clone()).or_default();
            by_value.entry(v.clone()).or_default().insert(name);
        }
    }

    fn remove(&mut self, svc: &Service) {
        let Some((k, v)) = first_pair(svc) else {
            return;
        };
        let (ns, name) = ns_name(svc);
        let Some(by_key) = self.0.get_mut(&ns) else {
            return;
        };
        if let Some(by_value) = by_key.get_mut(k) {
            if let Some(names) = by_value.get_mut(v) {
                names.remove(&name);
                if names.is_empty() {
                    by_value.remove(v);
                }
            }
            if by_value.is_empty() {
                by_key.remove(k);
            }
        }
        if by_key.is_empty() {
            self.0.remove(&ns);
        }
    }

    /// Names of the Services of `ns` that may select pods labelled `labels`.
    fn candidates<'a>(
        &'a self,
        ns: &str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a String> {
        let by_key = self.0.get(ns);
        labels
            .iter()
            .filter_map(move |(k, v)| by_key?.get(k)?.get(v))
            .flatten()
    }
}

/// Which EndpointSlice port to use.
enum PortChoice {
    /// The slice port with this name (`""` for an unnamed single port).
    Named(String),
    /// A pod port number used directly.
    Number(i32),
}

fn port_choice(svc: &Service, want: Option<&str>) -> Option<PortChoice> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    let ports = ports.map(Vec::as_slice).unwrap_or(&[]);
    let name_of = |p: &k8s_openapi::api::core::v1::ServicePort| p.name.clone().unwrap_or_default();
    match want {
        None => ports.first().map(|p| PortChoice::Named(name_of(p))),
        Some(w) => {
            if let Some(p) = ports.iter().find(|p| p.name.as_deref() == Some(w)) {
                return Some(PortChoice::Named(name_of(p)));
            }
            let n: i32 = w.parse().ok()?;
            match ports.iter().find(|p| p.port == n) {
                Some(p) => Some(PortChoice::Named(name_of(p))),
                None => Some(PortChoice::Number(n)),
            }
        }
    }
}

fn endpoints_of(svc: &Service, slices: &[&EndpointSlice], want: Option<&str>) -> Vec<Endpoint> {
    let Some(choice) = port_choice(svc, want) else {
        return Vec::new();
    };
    let port = match choice {
        PortChoice::Named(name) => endpoints::Port::Named(name),
        PortChoice::Number(n) => endpoints::Port::Number(n),
    };
    // Every endpoint, with its conditions: the gate tells ready pods from draining ones.
    endpoints::endpoints(slices.iter().copied(), &port, Select::All)
        .into_iter()
        .map(|e| Endpoint {
            addr: e.addr,
            ready: e.conditions.ready,
            terminating: e.conditions.terminating,
            pod_name: e.pod_name,
        })
        .collect()
}

/// Applies [`Desired`] states to a table, touching only what changed.
#[derive(Debug, Default)]
pub struct Applier {
    specs: HashMap<ModelKey, ModelSpec>,
    endpoints: HashMap<ModelKey, Vec<Endpoint>>,
    reported: HashSet<(String, ModelKey)>,
}

/// A name conflict to report on a losing Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    /// The Deployment that does not get the traffic.
    pub loser: ModelKey,
    /// The one that does.
    pub winner: ModelKey,
    /// The contested name or host.
    pub name: String,
}

impl Applier {
    /// Applies the whole of `d`: models not in it leave the table. Returns conflicts not
    /// reported before.
    pub fn apply(&mut self, table: &Table, d: Desired) -> Vec<ConflictReport> {
        let mut seen = HashSet::new();
        let mut reports = Vec::new();
        for (key, errs) in &d.errors {
            for e in errs {
                tracing::debug!(deployment = %key, error = %e, "annotation ignored");
            }
        }
        for m in d.models {
            seen.insert(m.spec.key.clone());
            self.upsert(table, m, &mut reports);
        }
        let gone: Vec<ModelKey> = self
            .specs
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove(table, &k);
        }
        reports
    }

    /// Routes one model as `m` says, touching the table only where it differs from what was
    /// applied last. Pushes conflicts not reported before; returns whether the table changed.
    ///
    /// Name conflicts span namespaces; the table arbitrates them over every model it holds
    /// ([`Table::upsert_model`]), so applying one model alone picks the same winner as
    /// applying all of them.
    pub fn upsert(
        &mut self,
        table: &Table,
        m: DesiredModel,
        reports: &mut Vec<ConflictReport>,
    ) -> bool {
        let key = m.spec.key.clone();
        let mut changed = false;
        if self.specs.get(&key) != Some(&m.spec) {
            for c in table.upsert_model(m.spec.clone()) {
                for loser in c.losers {
                    if self.reported.insert((c.name.clone(), loser.clone())) {
                        reports.push(ConflictReport {
                            loser,
                            winner: c.winner.clone(),
                            name: c.name.clone(),
                        });
                    }
                }
            }
            self.specs.insert(key.clone(), m.spec);
            // A renamed model is re-created: push its endpoints again.
            self.endpoints.remove(&key);
            changed = true;
        }
        if self.endpoints.get(&key) != Some(&m.endpoints) {
            table.set_endpoints(&key, m.endpoints.clone());
            self.endpoints.insert(key, m.endpoints);
            changed = true;
        }
        changed
    }

    /// Stops routing a model; returns whether it was routed.
    pub fn remove(&mut self, table: &Table, key: &ModelKey) -> bool {
        if self.specs.remove(key).is_none() {
            return false;
        }
        tracing::info!(deployment = %key, "model no longer routed");
        table.remove_model(key);
        self.endpoints.remove(key);
        self.reported.retain(|(_, l)| l != key);
        true
    }

    /// Every model applied.
    fn keys(&self) -> impl Iterator<Item = &ModelKey> {
        self.specs.keys()
    }
}

/// Which watch stream an event comes from: the namespace its API watches, or `None` for all
/// namespaces. A re-list replaces the objects of its stream's scope only.
pub type Scope = Option<String>;

/// The kinds of object the activator watches.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    /// `apps/v1` Deployments.
    Deployment,
    /// `v1` Services.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlice,
    /// The `zeroscale-config` ConfigMap.
    ConfigMap,
}

/// One watch event, with its stream's scope. Boxed: the objects differ much in size, and
/// the channel to the sync task holds many.
#[derive(Debug)]
pub enum Change {
    /// A Deployment event.
    Deployment(Scope, Box<watcher::Event<Deployment>>),
    /// A Service event.
    Service(Scope, Box<watcher::Event<Service>>),
    /// An EndpointSlice event.
    EndpointSlice(Scope, Box<watcher::Event<EndpointSlice>>),
    /// A ConfigMap event.
    ConfigMap(Scope, Box<watcher::Event<ConfigMap>>),
}

/// An object before and after one change (`None`: absent).
type Replaced<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// Objects of one kind by namespace and name, and the re-list in progress per stream.
#[derive(Debug)]
struct Objects<K> {
    by_ns: HashMap<String, BTreeMap<String, Arc<K>>>,
    relist: HashMap<Scope, Vec<K>>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            by_ns: HashMap::new(),
            relist: HashMap::new(),
        }
    }
}

fn ns_name<K: Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

impl<K: Resource> Objects<K> {
    fn get(&self, ns: &str, name: &str) -> Option<&Arc<K>> {
        self.by_ns.get(ns)?.get(name)
    }

    /// One namespace's objects, by name.
    fn namespace(&self, ns: &str) -> Option<&BTreeMap<String, Arc<K>>> {
        self.by_ns.get(ns)
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<K>> {
        self.by_ns.values().flat_map(BTreeMap::values)
    }

    /// Applies one watch event; returns what changed.
    fn handle(&mut self, scope: &Scope, ev: watcher::Event<K>) -> Vec<Replaced<K>> {
        match ev {
            watcher::Event::Apply(o) => self.put(Arc::new(o)).into_iter().collect(),
            watcher::Event::Delete(o) => {
                let (ns, name) = ns_name(&o);
                self.delete(&ns, &name).into_iter().collect()
            }
            watcher::Event::Init => {
                self.relist.insert(scope.clone(), Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                self.relist.entry(scope.clone()).or_default().push(o);
                Vec::new()
            }
            watcher::Event::InitDone => {
                // The listed objects replace the scope's: what was not listed is gone.
                let listed = self.relist.remove(scope).unwrap_or_default();
                let keep: HashSet<(String, String)> = listed.iter().map(ns_name).collect();
                let gone: Vec<(String, String)> = self
                    .by_ns
                    .iter()
                    .filter(|(ns, _)| scope.as_ref().is_none_or(|s| s == *ns))
                    .flat_map(|(ns, m)| m.keys().map(|n| (ns.clone(), n.clone())))
                    .filter(|k| !keep.contains(k))
                    .collect();
                let mut out: Vec<Replaced<K>> = gone
                    .iter()
                    .filter_map(|(ns, name)| self.delete(ns, name))
                    .collect();
                out.extend(listed.into_iter().filter_map(|o| self.put(Arc::new(o))));
                out
            }
        }
    }

    /// Stores `o`; `None` if the stored object has the same resourceVersion (no change).
    fn put(&mut self, o: Arc<K>) -> Option<Replaced<K>> {
        let (ns, name) = ns_name(&*o);
        let m = self.by_ns.entry(ns).or_default();
        if let Some(old) = m.get(&name)
            && old.meta().resource_version.is_some()
            && old.meta().resource_version == o.meta().resource_version
        {
            return None;
        }
        let old = m.insert(name, o.clone());
        Some((old, Some(o)))
    }

    fn delete(&mut self, ns: &str, name: &str) -> Option<Replaced<K>> {
        let m = self.by_ns.get_mut(ns)?;
        let old = m.remove(name)?;
        if m.is_empty() {
            self.by_ns.remove(ns);
        }
        Some((Some(old), None))
    }
}

/// What changed since the last sync.
#[derive(Debug, Default)]
struct Dirty {
    /// Every model (the global configuration changed).
    all: bool,
    /// Every model of these namespaces (a Service changed: selection may change).
    namespaces: HashSet<String>,
    /// The models routed through these (namespace, Service) (an EndpointSlice changed).
    services: HashSet<(String, String)>,
    /// These models (their Deployment changed).
    models: HashSet<ModelKey>,
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
    global: GlobalConfig,
    /// resourceVersion of the ConfigMap `global` was read from.
    config_version: Option<String>,
    deployments: Objects<Deployment>,
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    configmaps: Objects<ConfigMap>,
    /// (namespace, Service) -> names of the EndpointSlices labelled with it.
    slices_by_service: HashMap<(String, String), BTreeSet<String>>,
    selectors: Selectors,
    /// (namespace, Service) -> Deployments whose endpoints came from it at the last sync.
    routed_through: HashMap<(String, String), BTreeSet<String>>,
    /// The reverse of `routed_through`.
    service_of: HashMap<ModelKey, String>,
    dirty: Dirty,
    applier: Applier,
    /// Streams whose first list has not completed.
    pending: HashSet<(Kind, Scope)>,
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
    pub fn deployment(&self, key: &ModelKey) -> Option<Arc<Deployment>> {
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
    fn services_changed(&mut self, changed: impl IntoIterator<Item = Replaced<Service>>) {
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
    fn slices_changed(&mut self, changed: impl IntoIterator<Item = Replaced<EndpointSlice>>) {
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

    fn services_and_slices(&self) -> ServicesAndSlices<'_> {
        ServicesAndSlices {
            services: &self.services,
            slices: &self.slices,
            slices_by_service: &self.slices_by_service,
            selectors: &self.selectors,
        }
    }

    /// Reads the ConfigMap if it changed; a new global configuration makes every model dirty.
    fn reload_config(&mut self) -> bool {
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
        let model_key = |d: &Arc<Deployment>| {
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
                    let changed = self.applier.upsert(table, r.model, &mut report.conflicts);
                    (changed, r.service)
                }
                None => (self.applier.remove(table, &key), None),
            };
            self.route_through(&key, service);
            if changed {
                report.changed.push(key);
            }
        }
        report
    }

    /// Records which Service a model's endpoints come from.
    fn route_through(&mut self, key: &ModelKey, service: Option<String>) {
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

/// Starts one watcher; its events go to the sync task, tagged by `wrap`.
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
        let stream = watcher(api, cfg).backoff(WatchBackoff::default());
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

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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
            api::<Deployment>(&client, scope),
            watcher::Config::default().any_semantic(),
            scope.clone(),
            &tx,
            Change::Deployment,
        );
        index.expect(Kind::Service, scope.clone());
        watch(
            api::<Service>(&client, scope),
            watcher::Config::default().any_semantic(),
            scope.clone(),
            &tx,
            Change::Service,
        );
        index.expect(Kind::EndpointSlice, scope.clone());
        watch(
            api::<EndpointSlice>(&client, scope),
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
        api::<ConfigMap>(&client, &cm_scope),
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
            if let Some(w) = &targets.waker {
                w.set_resend_interval(g.activator.wake_resend_interval);
            }
        }
        for c in report.conflicts {
            tracing::warn!(deployment = %c.loser, winner = %c.winner, name = %c.name, "model name claimed twice");
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use prometheus_client::registry::Registry;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn deployment(
        ns: &str,
        name: &str,
        ann: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> Arc<Deployment> {
        Arc::new(Deployment {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                annotations: Some(map(ann)),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(map(labels)),
                        ..Default::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            status: None,
        })
    }

    fn service(
        ns: &str,
        name: &str,
        selector: &[(&str, &str)],
        ports: &[(&str, i32)],
    ) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(map(selector)),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn slice(
        ns: &str,
        svc: &str,
        ports: &[(&str, i32)],
        eps: &[(&str, Option<bool>, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some(map(&[(SERVICE_NAME_LABEL, svc)])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
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
            endpoints: Some(
                eps.iter()
                    .map(|(ip, ready, term)| SliceEndpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            terminating: *term,
                            serving: None,
                        }),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: Some(format!("pod-{ip}")),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        })
    }

    #[test]
    fn opted_in_deployments_get_their_selecting_services_endpoints() {
        let deps = vec![
            deployment(
                "ns",
                "llama",
                &[("zeroscale.dev/enabled", "true")],
                &[("app", "llama")],
            ),
            deployment("ns", "off", &[], &[("app", "off")]),
        ];
        let svcs = vec![
            service("ns", "other", &[("app", "x")], &[("http", 80)]),
            service(
                "ns",
                "llama-svc",
                &[("app", "llama")],
                &[("http", 80), ("grpc", 81)],
            ),
        ];
        let slices = vec![slice(
            "ns",
            "llama-svc",
            &[("grpc", 9001), ("http", 8000)],
            &[
                ("10.0.0.2", Some(true), None),
                ("10.0.0.1", None, None),
                ("10.0.0.3", Some(false), Some(true)),
            ],
        )];
        let d = desired(&deps, &svcs, &slices, &GlobalConfig::default());
        assert_eq!(d.models.len(), 1);
        let m = &d.models[0];
        assert_eq!(m.spec.model_name, "llama");
        assert_eq!(m.spec.key.deployment, "llama");
        let got: Vec<(String, bool, bool)> = m
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.ready, e.terminating))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:8000".to_string(), true, false),
                ("10.0.0.2:8000".to_string(), true, false),
                ("10.0.0.3:8000".to_string(), false, true),
            ]
        );
        assert_eq!(m.endpoints[0].pod_name.as_deref(), Some("pod-10.0.0.1"));
    }

    #[test]
    fn annotations_pick_name_service_and_port() {
        let deps = vec![deployment(
            "ns",
            "dep",
            &[
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/model-name", "gpt"),
                ("zeroscale.dev/service", "chosen"),
                ("zeroscale.dev/port", "grpc"),
                ("zeroscale.dev/container-concurrency", "4"),
            ],
            &[("app", "dep")],
        )];
        let svcs = vec![
            service("ns", "a-selecting", &[("app", "dep")], &[("http", 80)]),
            service("ns", "chosen", &[], &[("http", 80), ("grpc", 81)]),
        ];
        let slices = vec![slice(
            "ns",
            "chosen",
            &[("grpc", 9001), ("http", 8000)],
            &[("10.0.0.1", Some(true), None)],
        )];
        let d = desired(&deps, &svcs, &slices, &GlobalConfig::default());
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let m = &d.models[0];
        assert_eq!(m.spec.model_name, "gpt");
        assert_eq!(m.spec.limits.container_concurrency, 4);
        assert_eq!(m.endpoints[0].addr.to_string(), "10.0.0.1:9001");
    }

    #[test]
    fn no_service_means_no_endpoints_but_still_routed() {
        let deps = vec![deployment(
            "ns",
            "m",
            &[("zeroscale.dev/enabled", "true")],
            &[("app", "m")],
        )];
        let d = desired(&deps, &[], &[], &GlobalConfig::default());
        assert_eq!(d.models.len(), 1);
        assert!(d.models[0].endpoints.is_empty());
    }

    #[test]
    fn applier_touches_only_changes_and_reports_conflicts_once() {
        let table = Table::new(
            crate::Metrics::register(&mut Registry::default()),
            Arc::new(crate::table::NoWake),
        );
        let mut a = Applier::default();
        let g = GlobalConfig::default();
        let deps = vec![
            deployment("a", "m", &[("zeroscale.dev/enabled", "true")], &[]),
            deployment("b", "m", &[("zeroscale.dev/enabled", "true")], &[]),
        ];
        let r = a.apply(&table, desired(&deps, &[], &[], &g));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].winner.namespace, "a");
        assert_eq!(r[0].loser.namespace, "b");
        assert!(a.apply(&table, desired(&deps, &[], &[], &g)).is_empty());
        // One Deployment goes away: its model leaves the table.
        a.apply(&table, desired(&deps[1..], &[], &[], &g));
        assert_eq!(table.keys().len(), 1);
        assert_eq!(table.by_name("m").unwrap().key().namespace, "b");
    }

    fn table() -> Table {
        Table::new(
            crate::Metrics::register(&mut Registry::default()),
            Arc::new(crate::table::NoWake),
        )
    }

    fn key(ns: &str, dep: &str) -> ModelKey {
        ModelKey {
            namespace: ns.into(),
            deployment: dep.into(),
        }
    }

    fn created(d: Arc<Deployment>, at: i64) -> Arc<Deployment> {
        let mut d = Arc::unwrap_or_clone(d);
        d.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(at).unwrap(),
        ));
        Arc::new(d)
    }

    fn put_dep(ix: &mut Index, d: &Arc<Deployment>) {
        ix.handle(Change::Deployment(
            None,
            Box::new(watcher::Event::Apply(Deployment::clone(d))),
        ));
    }

    fn put_svc(ix: &mut Index, s: &Arc<Service>) {
        ix.handle(Change::Service(
            None,
            Box::new(watcher::Event::Apply(Service::clone(s))),
        ));
    }

    fn put_slice(ix: &mut Index, s: &Arc<EndpointSlice>) {
        ix.handle(Change::EndpointSlice(
            None,
            Box::new(watcher::Event::Apply(EndpointSlice::clone(s))),
        ));
    }

    /// Model `m-{ns}` in each namespace, served by Service `svc` with one pod, not ready.
    fn namespaces(names: &[&str]) -> (Index, Table) {
        let mut ix = Index::default();
        for (i, ns) in names.iter().enumerate() {
            let dep = format!("m-{ns}");
            put_dep(
                &mut ix,
                &deployment(
                    ns,
                    &dep,
                    &[("zeroscale.dev/enabled", "true")],
                    &[("app", "m")],
                ),
            );
            put_svc(
                &mut ix,
                &service(ns, "svc", &[("app", "m")], &[("http", 80)]),
            );
            let ip = format!("10.0.{i}.1");
            put_slice(
                &mut ix,
                &slice(ns, "svc", &[("http", 8000)], &[(&ip, Some(false), None)]),
            );
        }
        let t = table();
        let r = ix.sync(&t);
        assert_eq!(r.recomputed, names.len());
        assert_eq!(r.changed.len(), names.len());
        (ix, t)
    }

    /// What the table routes: per model, its name's winner, readiness and queue depth.
    fn snapshot(t: &Table) -> Vec<(ModelKey, String, ModelKey, bool, usize)> {
        let mut keys = t.keys();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let m = t.get(&k).unwrap();
                let name = m.name();
                let winner = t.by_name(&name).unwrap().key().clone();
                let ready = m.gate().has_ready();
                let depth = m.gate().limits().queue_depth;
                (k, name, winner, ready, depth)
            })
            .collect()
    }

    /// The incremental result equals a full recompute applied to a fresh table.
    fn assert_same_as_full(ix: &Index, t: &Table) {
        let deps: Vec<_> = ix.deployments.iter().cloned().collect();
        let svcs: Vec<_> = ix.services.iter().cloned().collect();
        let slices: Vec<_> = ix.slices.iter().cloned().collect();
        let fresh = table();
        Applier::default().apply(&fresh, desired(&deps, &svcs, &slices, ix.global()));
        assert_eq!(snapshot(t), snapshot(&fresh));
    }

    #[test]
    fn a_slice_change_touches_only_the_models_of_its_service() {
        let (mut ix, t) = namespaces(&["a", "b"]);
        put_slice(
            &mut ix,
            &slice(
                "a",
                "svc",
                &[("http", 8000)],
                &[("10.0.0.1", Some(true), None)],
            ),
        );
        let r = ix.sync(&t);
        assert_eq!(r.recomputed, 1);
        assert_eq!(r.changed, vec![key("a", "m-a")]);
        assert!(t.get(&key("a", "m-a")).unwrap().gate().has_ready());
        assert!(!t.get(&key("b", "m-b")).unwrap().gate().has_ready());
        // A slice of a Service no model uses: nothing to recompute.
        put_slice(
            &mut ix,
            &slice(
                "b",
                "unused",
                &[("http", 8000)],
                &[("10.0.9.1", None, None)],
            ),
        );
        assert_eq!(ix.sync(&t).recomputed, 0);
        // Nothing new: nothing recomputed.
        assert_eq!(ix.sync(&t).recomputed, 0);
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn a_service_change_recomputes_its_namespace_only() {
        let (mut ix, t) = namespaces(&["a", "b"]);
        // A Service sorting first by name now selects the pods too: it is chosen.
        put_svc(
            &mut ix,
            &service("a", "a-first", &[("app", "m")], &[("http", 80)]),
        );
        put_slice(
            &mut ix,
            &slice(
                "a",
                "a-first",
                &[("http", 8000)],
                &[("10.0.5.1", None, None)],
            ),
        );
        let r = ix.sync(&t);
        assert_eq!(r.recomputed, 1);
        assert_eq!(r.changed, vec![key("a", "m-a")]);
        assert!(t.get(&key("a", "m-a")).unwrap().gate().has_ready());
        // Its slices now move the model; the old Service's do not.
        put_slice(
            &mut ix,
            &slice(
                "a",
                "svc",
                &[("http", 8000)],
                &[("10.0.0.1", Some(true), None)],
            ),
        );
        assert_eq!(ix.sync(&t).recomputed, 0);
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn a_deleted_deployment_leaves_the_table() {
        let (mut ix, t) = namespaces(&["a", "b"]);
        let d = deployment("a", "m-a", &[], &[]);
        ix.handle(Change::Deployment(
            None,
            Box::new(watcher::Event::Delete(Deployment::clone(&d))),
        ));
        let r = ix.sync(&t);
        assert_eq!(r.recomputed, 1);
        assert_eq!(r.changed, vec![key("a", "m-a")]);
        assert!(t.get(&key("a", "m-a")).is_none());
        assert!(t.get(&key("b", "m-b")).is_some());
        // Its Service's slices no longer lead to it.
        put_slice(
            &mut ix,
            &slice(
                "a",
                "svc",
                &[("http", 8000)],
                &[("10.0.0.1", Some(true), None)],
            ),
        );
        assert_eq!(ix.sync(&t).recomputed, 0);
        // Opting out is leaving too.
        put_dep(
            &mut ix,
            &deployment("b", "m-b", &[("zeroscale.dev/enabled", "false")], &[]),
        );
        assert_eq!(ix.sync(&t).changed, vec![key("b", "m-b")]);
        assert!(t.keys().is_empty());
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn a_relist_replaces_its_scope_and_removes_what_was_not_listed() {
        let mut ix = Index::default();
        ix.expect(Kind::Deployment, Some("a".into()));
        ix.expect(Kind::Deployment, Some("b".into()));
        assert!(!ix.is_ready());
        let on = [("zeroscale.dev/enabled", "true")];
        for ns in ["a", "b"] {
            let scope = Some(ns.to_string());
            ix.handle(Change::Deployment(
                scope.clone(),
                Box::new(watcher::Event::Init),
            ));
            for name in ["x", "y"] {
                let d = deployment(ns, &format!("{name}-{ns}"), &on, &[]);
                ix.handle(Change::Deployment(
                    scope.clone(),
                    Box::new(watcher::Event::InitApply(Deployment::clone(&d))),
                ));
            }
            ix.handle(Change::Deployment(
                scope,
                Box::new(watcher::Event::InitDone),
            ));
        }
        assert!(ix.is_ready());
        let t = table();
        assert_eq!(ix.sync(&t).changed.len(), 4);
        // Namespace a is listed again without x: only a's x goes; b's stream is not touched.
        let scope = Some("a".to_string());
        ix.handle(Change::Deployment(
            scope.clone(),
            Box::new(watcher::Event::Init),
        ));
        let d = deployment("a", "y-a", &on, &[]);
        ix.handle(Change::Deployment(
            scope.clone(),
            Box::new(watcher::Event::InitApply(Deployment::clone(&d))),
        ));
        // Until the list is complete, nothing is removed.
        assert_eq!(ix.sync(&t).recomputed, 0);
        ix.handle(Change::Deployment(
            scope,
            Box::new(watcher::Event::InitDone),
        ));
        let r = ix.sync(&t);
        assert_eq!(r.changed, vec![key("a", "x-a")]);
        let mut keys = t.keys();
        keys.sort();
        assert_eq!(
            keys,
            vec![key("a", "y-a"), key("b", "x-b"), key("b", "y-b")]
        );
    }

    #[test]
    fn a_configmap_change_recomputes_every_model() {
        let (mut ix, t) = namespaces(&["a", "b", "c"]);
        let cm = |version: &str, depth: &str| ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("zeroscale-system".into()),
                name: Some(zeroscale_config::CONFIGMAP_NAME.into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            data: Some(map(&[("activator-queue-depth", depth)])),
            ..Default::default()
        };
        ix.handle(Change::ConfigMap(
            None,
            Box::new(watcher::Event::Apply(cm("1", "7"))),
        ));
        let r = ix.sync(&t);
        assert!(r.config_changed);
        assert_eq!(r.recomputed, 3);
        assert_eq!(r.changed.len(), 3);
        assert_eq!(ix.global().activator.queue_depth, 7);
        for ns in ["a", "b", "c"] {
            let m = t.get(&key(ns, &format!("m-{ns}"))).unwrap();
            assert_eq!(m.gate().limits().queue_depth, 7);
        }
        // A new version with the same values: read, but nothing to recompute.
        ix.handle(Change::ConfigMap(
            None,
            Box::new(watcher::Event::Apply(cm("2", "7"))),
        ));
        let r = ix.sync(&t);
        assert!(r.config_changed);
        assert_eq!(r.recomputed, 0);
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn incremental_sync_keeps_the_oldest_claim_across_namespaces() {
        let on = [
            ("zeroscale.dev/enabled", "true"),
            ("zeroscale.dev/model-name", "m"),
        ];
        let mut ix = Index::default();
        let t = table();
        // b's claim is older than a's, though a sorts first.
        let a = created(deployment("a", "d", &on, &[("app", "m")]), 200);
        let b = created(deployment("b", "d", &on, &[("app", "m")]), 100);
        for ns in ["a", "b"] {
            put_svc(
                &mut ix,
                &service(ns, "svc", &[("app", "m")], &[("http", 80)]),
            );
        }
        put_dep(&mut ix, &a);
        assert!(ix.sync(&t).conflicts.is_empty());
        assert_eq!(t.by_name("m").unwrap().key().namespace, "a");
        // b arrives alone in a sync of namespace b: it still wins, and a is reported.
        put_dep(&mut ix, &b);
        let r = ix.sync(&t);
        assert_eq!(r.recomputed, 1);
        assert_eq!(
            r.conflicts,
            vec![ConflictReport {
                loser: key("a", "d"),
                winner: key("b", "d"),
                name: "m".into(),
            }]
        );
        assert_eq!(t.by_name("m").unwrap().key().namespace, "b");
        assert_same_as_full(&ix, &t);
        // Changes in a alone (endpoints, then settings) leave b the winner, reported once.
        put_slice(
            &mut ix,
            &slice("a", "svc", &[("http", 8000)], &[("10.0.0.1", None, None)]),
        );
        assert!(ix.sync(&t).conflicts.is_empty());
        let mut a2 = Arc::unwrap_or_clone(a.clone());
        a2.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("zeroscale.dev/container-concurrency".into(), "3".into());
        put_dep(&mut ix, &Arc::new(a2));
        let r = ix.sync(&t);
        assert_eq!(r.changed, vec![key("a", "d")]);
        assert!(r.conflicts.is_empty());
        assert_eq!(t.by_name("m").unwrap().key().namespace, "b");
        assert_same_as_full(&ix, &t);
        // The winner goes: a takes over.
        ix.handle(Change::Deployment(
            None,
            Box::new(watcher::Event::Delete(Deployment::clone(&b))),
        ));
        ix.sync(&t);
        assert_eq!(t.by_name("m").unwrap().key().namespace, "a");
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn the_first_selecting_service_by_name_is_chosen() {
        let mut ix = Index::default();
        let t = table();
        let labels = [("app", "m"), ("tier", "gpu")];
        put_dep(
            &mut ix,
            &deployment("ns", "m", &[("zeroscale.dev/enabled", "true")], &labels),
        );
        let svcs = [
            ("a-wrong", vec![("app", "m"), ("tier", "cpu")], "10.0.0.1"),
            ("b-both", vec![("app", "m"), ("tier", "gpu")], "10.0.0.2"),
            ("c-tier", vec![("tier", "gpu")], "10.0.0.3"),
            ("d-none", vec![], "10.0.0.4"),
            ("z-app", vec![("app", "m")], "10.0.0.5"),
        ];
        for (name, sel, ip) in &svcs {
            put_svc(&mut ix, &service("ns", name, sel, &[("http", 80)]));
            put_slice(
                &mut ix,
                &slice("ns", name, &[("http", 8000)], &[(ip, None, None)]),
            );
        }
        let routed = |ix: &mut Index, t: &Table| {
            ix.sync(t);
            ix.applier.endpoints[&key("ns", "m")][0].addr.to_string()
        };
        assert_eq!(routed(&mut ix, &t), "10.0.0.2:8000");
        assert_same_as_full(&ix, &t);
        for (gone, next) in [("b-both", "10.0.0.3:8000"), ("c-tier", "10.0.0.5:8000")] {
            let s = service("ns", gone, &[], &[]);
            ix.handle(Change::Service(
                None,
                Box::new(watcher::Event::Delete(Service::clone(&s))),
            ));
            assert_eq!(routed(&mut ix, &t), next);
        }
        // The selector changes: the index follows.
        put_svc(
            &mut ix,
            &service("ns", "a-wrong", &[("tier", "gpu")], &[("http", 80)]),
        );
        assert_eq!(routed(&mut ix, &t), "10.0.0.1:8000");
        put_svc(
            &mut ix,
            &service("ns", "a-wrong", &[("tier", "cpu")], &[("http", 80)]),
        );
        assert_eq!(routed(&mut ix, &t), "10.0.0.5:8000");
        assert_same_as_full(&ix, &t);
    }

    #[test]
    fn an_unchanged_resource_version_is_not_a_change() {
        let mut ix = Index::default();
        let t = table();
        let mut d = Arc::unwrap_or_clone(deployment(
            "a",
            "m",
            &[("zeroscale.dev/enabled", "true")],
            &[],
        ));
        d.metadata.resource_version = Some("5".into());
        let d = Arc::new(d);
        put_dep(&mut ix, &d);
        assert_eq!(ix.sync(&t).recomputed, 1);
        put_dep(&mut ix, &d);
        assert_eq!(ix.sync(&t).recomputed, 0);
    }
}
