//! The routing table: which models exist, how they are addressed, and each model's [`Gate`].
//!
//! Fed through a small interface that knows nothing of Kubernetes ([`Table::upsert_model`],
//! [`Table::remove_model`], [`Table::set_endpoints`]); read on every request through lock-free
//! (sharded) lookups.
//!
//! Addressing, checked in this order by the router:
//! - Host `{model}.{namespace}`, with any port and any domain suffix after it
//!   (`llama.models`, `llama.models:8080`, `llama.models.svc.cluster.local`,
//!   `llama.models.example.com`), or exactly one of the model's extra hostnames;
//! - the model name alone (KServe paths, OpenAI `model` field).
//!
//! Two Deployments claiming the same name (or host): the one created first wins (oldest
//! `creationTimestamp`; a missing timestamp counts as newest), ties broken by namespace then
//! Deployment name. [`Table::upsert_model`] reports the conflict so the caller can put a
//! Warning Event on the losers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::metrics::{Metrics, ModelLabels};
use crate::queue::{Admit, Endpoint, Gate, Limits, QueueError};
use crate::route::{self, PathRoute};
use crate::upstream::Upstream;

/// A model's identity: its Deployment (the key type both binaries share).
pub use zeroscale_config::DeploymentKey as ModelKey;

/// Everything the data path needs to know about one opted-in Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The Deployment.
    pub key: ModelKey,
    /// The routed model name (`zeroscale_config::kserve::routed_model_name`: the annotation
    /// `zeroscale.dev/model-name`, else a KServe predictor's InferenceService, else the
    /// Deployment name).
    pub model_name: String,
    /// Extra Host names routed to this model; a name ending in `.*` matches any host whose
    /// first label is the part before it (KServe's host names).
    pub hostnames: Vec<String>,
    /// The Deployment's creationTimestamp in Unix seconds; decides name conflicts.
    pub created: Option<i64>,
    /// Queue and concurrency limits.
    pub limits: Limits,
}

/// A name claimed by more than one Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The contested model name or host.
    pub name: String,
    /// The Deployment that gets the traffic.
    pub winner: ModelKey,
    /// The Deployments that do not.
    pub losers: Vec<ModelKey>,
}

/// One routed model.
#[derive(Debug)]
pub struct Model {
    key: ModelKey,
    spec: RwLock<ModelSpec>,
    gate: Arc<Gate>,
    /// A wake task is running for this model.
    pub(crate) waking: AtomicBool,
    /// Pokes a running wake task to signal again at once.
    pub(crate) wake_now: Notify,
}

impl Model {
    /// The Deployment.
    pub fn key(&self) -> &ModelKey {
        &self.key
    }

    /// The model's gate (pods, queue).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The routed model name.
    pub fn name(&self) -> String {
        self.spec
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .model_name
            .clone()
    }

    /// The model's queue deadline.
    pub fn queue_deadline(&self) -> Duration {
        self.gate.limits().queue_deadline
    }
}

/// Something that starts a wake signal for a model (`wake::Waker` is the real one).
pub trait WakeSink: Send + Sync {
    /// Requests are waiting and the model has no eligible pod.
    fn wake(&self, model: &Arc<Model>);
}

/// A [`WakeSink`] that does nothing (tests, or no autoscaler configured).
#[derive(Debug, Default)]
pub struct NoWake;

impl WakeSink for NoWake {
    fn wake(&self, _model: &Arc<Model>) {}
}

/// One model's claim of a name or host. Its rank is the conflict rule (oldest first, then by
/// namespace and Deployment name), read from the model's key rather than copied.
#[derive(Clone, Debug)]
struct Claim {
    /// creationTimestamp in Unix seconds; missing counts as newest.
    created: i64,
    model: Arc<Model>,
}

impl Claim {
    fn rank(&self) -> (i64, &str, &str) {
        let k = &self.model.key;
        (self.created, &k.namespace, &k.deployment)
    }
}

/// The routing table.
pub struct Table {
    metrics: Arc<Metrics>,
    models: DashMap<ModelKey, Arc<Model>>,
    names: DashMap<String, Vec<Claim>>,
    hosts: DashMap<String, Vec<Claim>>,
    wake: Arc<dyn WakeSink>,
    /// Serializes writers so index updates are consistent; readers never take it.
    write: Mutex<()>,
    /// Proxy worker threads: a pod's connection pools are split for them.
    proxy_workers: AtomicUsize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("models", &self.models.len())
            .finish()
    }
}

fn host_keys(spec: &ModelSpec) -> Vec<String> {
    let mut v = vec![format!(
        "{}.{}",
        spec.model_name.to_ascii_lowercase(),
        spec.key.namespace.to_ascii_lowercase()
    )];
    for h in &spec.hostnames {
        let h = normalize_host(h).to_string();
        if !h.is_empty() && !v.contains(&h) {
            v.push(h);
        }
    }
    v
}

/// Lower-cases and strips the port and a trailing dot from a Host value.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let h = if h.starts_with('[') {
        h // an IPv6 literal: never a model host
    } else {
        h.rsplit_once(':').map_or(h, |(name, _port)| name)
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// What a request's Host and path address; the proxy and the parking of new connections both
/// route through [`Table::addressed`], so they cannot disagree.
#[derive(Debug)]
pub enum Addressed {
    /// A routed model.
    Model(Arc<Model>),
    /// A KServe path naming a model that is not routed.
    Unknown(String),
    /// An OpenAI-style path: the body names the model.
    Body,
    /// Nothing names a model.
    Nothing,
}

impl Table {
    /// An empty table. `wake` is told when requests wait for a model with no eligible pod.
    pub fn new(metrics: Arc<Metrics>, wake: Arc<dyn WakeSink>) -> Self {
        Self {
            metrics,
            models: DashMap::new(),
            names: DashMap::new(),
            hosts: DashMap::new(),
            wake,
            write: Mutex::new(()),
            proxy_workers: AtomicUsize::new(1),
        }
    }

    /// Declares that the proxy runs on `workers` threads (`server::spawn_proxy_workers` does);
    /// pods added afterwards keep one connection pool per worker.
    pub fn set_proxy_workers(&self, workers: usize) {
        self.proxy_workers.store(workers.max(1), Ordering::Relaxed);
    }

    /// The metrics every model's handles come from.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds a model or updates its settings (queue and pods are kept). Returns the name
    /// conflicts that involve this model.
    pub fn upsert_model(&self, spec: ModelSpec) -> Vec<Conflict> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.models.get(&spec.key).map(|m| m.clone());
        let model = match existing {
            Some(m) => {
                let old = m.spec.read().unwrap_or_else(|e| e.into_inner()).clone();
                if old == spec {
                    return self.conflicts_of(&spec);
                }
                if old.model_name != spec.model_name {
                    // The metric labels carry the name: a renamed model is a new model.
                    drop(m);
                    self.remove_locked(&spec.key);
                    return self.insert_locked(spec);
                }
                self.unindex(&old, &m);
                *m.spec.write().unwrap_or_else(|e| e.into_inner()) = spec.clone();
                m.gate.set_limits(spec.limits.clone());
                m
            }
            None => return self.insert_locked(spec),
        };
        self.index(&spec, &model);
        self.conflicts_of(&spec)
    }

    fn insert_locked(&self, spec: ModelSpec) -> Vec<Conflict> {
        let metrics = self.metrics.model(ModelLabels {
            namespace: spec.key.namespace.clone(),
            deployment: spec.key.deployment.clone(),
            model: spec.model_name.clone(),
        });
        let model = Arc::new(Model {
            key: spec.key.clone(),
            gate: Gate::new(spec.limits.clone(), metrics),
            spec: RwLock::new(spec.clone()),
            waking: AtomicBool::new(false),
            wake_now: Notify::new(),
        });
        self.models.insert(spec.key.clone(), model.clone());
        self.index(&spec, &model);
        self.conflicts_of(&spec)
    }

    fn index(&self, spec: &ModelSpec, model: &Arc<Model>) {
        let claim = Claim {
            created: spec.created.unwrap_or(i64::MAX),
            model: model.clone(),
        };
        let add = |map: &DashMap<String, Vec<Claim>>, k: String| {
            let mut v = map.entry(k).or_default();
            // Most names have one claimant: no room for more (a Vec's first push makes four).
            v.reserve_exact(1);
            v.push(claim.clone());
            v.sort_by(|a, b| a.rank().cmp(&b.rank()));
        };
        add(&self.names, spec.model_name.clone());
        for h in host_keys(spec) {
            add(&self.hosts, h);
        }
    }

    fn unindex(&self, spec: &ModelSpec, model: &Arc<Model>) {
        let del = |map: &DashMap<String, Vec<Claim>>, k: &String| {
            let empty = match map.get_mut(k) {
                Some(mut v) => {
                    v.retain(|c| !Arc::ptr_eq(&c.model, model));
                    v.is_empty()
                }
                None => false,
            };
            if empty {
                map.remove_if(k, |_, v| v.is_empty());
            }
        };
        del(&self.names, &spec.model_name);
        for h in host_keys(spec) {
            del(&self.hosts, &h);
        }
    }

    fn conflicts_of(&self, spec: &ModelSpec) -> Vec<Conflict> {
        let mut out = Vec::new();
        let mut check = |map: &DashMap<String, Vec<Claim>>, k: String| {
            if let Some(v) = map.get(&k)
                && v.len() > 1
            {
                out.push(Conflict {
                    name: k.clone(),
                    winner: v[0].model.key.clone(),
                    losers: v[1..].iter().map(|c| c.model.key.clone()).collect(),
                });
            }
        };
        check(&self.names, spec.model_name.clone());
        for h in host_keys(spec) {
            check(&self.hosts, h);
        }
        out
    }

    /// Stops routing a model; its waiting requests fail with 503.
    pub fn remove_model(&self, key: &ModelKey) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.remove_locked(key);
    }

    fn remove_locked(&self, key: &ModelKey) {
        if let Some((_, m)) = self.models.remove(key) {
            let spec = m.spec.read().unwrap_or_else(|e| e.into_inner()).clone();
            self.unindex(&spec, &m);
            m.gate.close();
            m.gate.set_endpoints(&[], |addr| Upstream::new(addr, 1));
            m.gate.metrics().remove();
        }
    }

    /// Fails every waiting request of every model with 503 (shutdown); returns how many.
    /// The models stay routed; new requests still queue.
    pub fn fail_waiting(&self) -> usize {
        let models: Vec<Arc<Model>> = self.models.iter().map(|e| e.value().clone()).collect();
        models.iter().map(|m| m.gate.fail_waiting()).sum()
    }

    /// Replaces a model's endpoints. Unknown models are ignored (the caller upserts first).
    pub fn set_endpoints(&self, key: &ModelKey, endpoints: Vec<Endpoint>) {
        let Some(m) = self.models.get(key).map(|m| m.clone()) else {
            return;
        };
        let workers = self.proxy_workers.load(Ordering::Relaxed);
        if m.gate
            .set_endpoints(&endpoints, |addr| Upstream::new(addr, workers))
        {
            self.wake.wake(&m);
        }
    }

    /// Admits a request whose body accounts for `bytes` to `model`'s gate. The first request
    /// to wait while the model has no eligible pod starts the model's wake signal here; with
    /// [`Table::set_endpoints`] (the last eligible pod gone while requests wait) this is the
    /// only place a wake starts.
    pub fn admit(&self, model: &Arc<Model>, bytes: u64) -> Result<Admit, QueueError> {
        self.admit_keyed(model, bytes, None)
    }

    /// [`Table::admit`] for a request with a prompt prefix key (prefix-hash balancing).
    pub fn admit_keyed(
        &self,
        model: &Arc<Model>,
        bytes: u64,
        key: Option<u64>,
    ) -> Result<Admit, QueueError> {
        let admitted = model.gate.admit_keyed(bytes, key)?;
        if let Admit::Queued(t) = &admitted
            && t.needs_wake()
        {
            self.wake.wake(model);
        }
        Ok(admitted)
    }

    /// The model of a Deployment.
    pub fn get(&self, key: &ModelKey) -> Option<Arc<Model>> {
        self.models.get(key).map(|m| m.clone())
    }

    /// Every model's key.
    pub fn keys(&self) -> Vec<ModelKey> {
        self.models.iter().map(|e| e.key().clone()).collect()
    }

    /// The model addressed by a Host header value, if any.
    pub fn by_host(&self, host: &str) -> Option<Arc<Model>> {
        let h = normalize_host(host);
        if h.is_empty() {
            return None;
        }
        if let Some(v) = self.hosts.get(h.as_ref()) {
            return v.first().map(|c| c.model.clone());
        }
        // `{model}.{namespace}.<any suffix>`: the first two labels.
        let mut dots = h.match_indices('.').map(|(i, _)| i);
        let first = dots.next()?;
        if let Some(second) = dots.next()
            && let Some(v) = self.hosts.get(&h[..second])
        {
            return v.first().map(|c| c.model.clone());
        }
        self.by_first_label(&h[..first])
    }

    /// A host key `{label}.*` (KServe's `<isvc>-<namespace>.<domain>` for any domain, see
    /// `zeroscale_config::kserve::host_keys`), looked up without allocating.
    fn by_first_label(&self, label: &str) -> Option<Arc<Model>> {
        let mut key = [0u8; 65];
        let end = label.len() + 2;
        // A DNS label is at most 63 bytes: a longer one names no model.
        key.get_mut(..end)?[..label.len()].copy_from_slice(label.as_bytes());
        key[label.len()..end].copy_from_slice(b".*");
        let key = std::str::from_utf8(&key[..end]).ok()?;
        self.hosts.get(key)?.first().map(|c| c.model.clone())
    }

    /// [`Table::addressed`] for a request that may carry KServe's `KServe-Isvc-Name` and
    /// `KServe-Isvc-Namespace` headers (`isvc`: name, namespace; KServe's HTTPRoutes set them):
    /// the InferenceService they name comes first, else Host and path as usual.
    pub fn addressed_with_isvc(
        &self,
        isvc: Option<(&str, &str)>,
        host: Option<&str>,
        path: &str,
    ) -> Addressed {
        if let Some((name, namespace)) = isvc
            && let Some(m) = self.by_host(&format!("{name}.{namespace}"))
        {
            return Addressed::Model(m);
        }
        self.addressed(host, path)
    }

    /// The model a request addresses: by Host first (a Host naming no model falls through),
    /// then by KServe path (see [`crate::route`]).
    pub fn addressed(&self, host: Option<&str>, path: &str) -> Addressed {
        if let Some(m) = host.and_then(|h| self.by_host(h)) {
            return Addressed::Model(m);
        }
        match route::classify_path(path) {
            PathRoute::Named(name) => self
                .by_name(name)
                .map_or_else(|| Addressed::Unknown(name.to_string()), Addressed::Model),
            PathRoute::Body => Addressed::Body,
            PathRoute::None => Addressed::Nothing,
        }
    }

    /// The model with this name, if any. A name no model claims that reads `{namespace}/{name}`
    /// is the claim of `name` by that namespace, winner or not: the way a tenant reaches its own
    /// model when another namespace claimed the same name first. An exact claim comes first,
    /// so model names that contain `/` themselves (`org/model`) keep working.
    pub fn by_name(&self, name: &str) -> Option<Arc<Model>> {
        if let Some(v) = self.names.get(name) {
            return v.first().map(|c| c.model.clone());
        }
        let (namespace, name) = name.split_once('/')?;
        let v = self.names.get(name)?;
        v.iter()
            .find(|c| c.model.key.namespace == namespace)
            .map(|c| c.model.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn table() -> Table {
        Table::new(
            Metrics::register(&mut Registry::default()),
            Arc::new(NoWake),
        )
    }

    pub(crate) fn spec(ns: &str, dep: &str, name: &str, created: Option<i64>) -> ModelSpec {
        ModelSpec {
            key: ModelKey {
                namespace: ns.into(),
                deployment: dep.into(),
            },
            model_name: name.into(),
            hostnames: vec![],
            created,
            limits: Limits::with_queue(0, 10, 1000, Duration::from_secs(300)),
        }
    }

    #[test]
    fn host_forms() {
        let t = table();
        let mut s = spec("models", "llama-dep", "llama", Some(1));
        s.hostnames = vec!["LLM.Example.com".into()];
        assert!(t.upsert_model(s).is_empty());
        for h in [
            "llama.models",
            "llama.models:8080",
            "LLAMA.models.svc.cluster.local",
            "llama.models.example.com.",
            "llm.example.com",
            "llm.example.com:443",
        ] {
            assert_eq!(
                t.by_host(h).map(|m| m.name()),
                Some("llama".to_string()),
                "{h}"
            );
        }
        for h in [
            "llama",
            "models.llama",
            "x.llm.example.com",
            "",
            "[::1]:80",
            "llama-dep.models",
        ] {
            assert!(t.by_host(h).is_none(), "{h}");
        }
        assert_eq!(t.by_name("llama").unwrap().key().deployment, "llama-dep");
        assert!(t.by_name("llama-dep").is_none());
    }

    #[test]
    fn kserve_host_names_and_headers() {
        let t = table();
        let mut s = spec("models", "iris-predictor", "iris", Some(1));
        s.hostnames = zeroscale_config::kserve::host_keys("iris", "models");
        assert!(t.upsert_model(s).is_empty());
        t.upsert_model(spec("models", "other", "other", Some(2)));
        for h in [
            "iris-models.example.com",
            "iris-predictor-models.example.com:80",
            "IRIS-MODELS.kserve.internal.",
            "iris-predictor.models.svc.cluster.local",
            "iris.models",
        ] {
            assert_eq!(t.by_host(h).map(|m| m.name()), Some("iris".into()), "{h}");
        }
        for h in [
            "iris-models",
            "x.iris-models.example.com",
            "iris-other.example.com",
            "other-models.example.com",
            &format!("{}.example.com", "a".repeat(70)),
        ] {
            assert!(t.by_host(h).is_none(), "{h}");
        }
        let name = |a: Addressed| match a {
            Addressed::Model(m) => m.name(),
            other => format!("{other:?}"),
        };
        // The headers come before Host and path; headers naming nothing fall through.
        assert_eq!(
            name(t.addressed_with_isvc(Some(("iris", "models")), Some("other.models"), "/")),
            "iris"
        );
        assert_eq!(
            name(t.addressed_with_isvc(Some(("iris", "elsewhere")), Some("other.models"), "/")),
            "other"
        );
        assert_eq!(
            name(t.addressed_with_isvc(None, None, "/v1/models/iris:predict")),
            "iris"
        );
    }

    #[test]
    fn oldest_claim_wins_and_conflicts_are_reported() {
        let t = table();
        assert!(t.upsert_model(spec("b", "m", "m", Some(20))).is_empty());
        let c = t.upsert_model(spec("a", "m", "m", Some(30)));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].winner.namespace, "b");
        assert_eq!(c[0].losers[0].namespace, "a");
        assert_eq!(t.by_name("m").unwrap().key().namespace, "b");
        // Same timestamp: namespace order decides.
        let c = t.upsert_model(spec("a", "m", "m", Some(20)));
        assert_eq!(c[0].winner.namespace, "a");
        assert_eq!(t.by_name("m").unwrap().key().namespace, "a");
        // The winner leaves: the other takes over.
        t.remove_model(&ModelKey {
            namespace: "a".into(),
            deployment: "m".into(),
        });
        assert_eq!(t.by_name("m").unwrap().key().namespace, "b");
        // Hosts stay per namespace and do not conflict.
        assert_eq!(t.by_host("m.b").unwrap().key().namespace, "b");
        assert!(t.by_host("m.a").is_none());
    }

    #[test]
    fn a_namespace_prefix_picks_that_namespaces_claim() {
        let t = table();
        t.upsert_model(spec("team-a", "llama", "llama", Some(1)));
        t.upsert_model(spec("team-b", "llama", "llama", Some(2)));
        t.upsert_model(spec("team-b", "hf", "org/model", Some(3)));
        let ns = |name: &str| t.by_name(name).map(|m| m.key().namespace.clone());
        assert_eq!(ns("llama").as_deref(), Some("team-a"), "the oldest claim");
        assert_eq!(
            ns("team-b/llama").as_deref(),
            Some("team-b"),
            "the loser, scoped"
        );
        assert_eq!(ns("team-a/llama").as_deref(), Some("team-a"));
        assert_eq!(ns("team-c/llama"), None, "no such claim");
        assert_eq!(
            ns("org/model").as_deref(),
            Some("team-b"),
            "an exact name with a slash"
        );
        assert_eq!(ns("team-b/org/model").as_deref(), Some("team-b"));
        assert_eq!(ns("/llama"), None);
    }

    #[test]
    fn rename_reindexes() {
        let t = table();
        t.upsert_model(spec("ns", "d", "old", Some(1)));
        t.upsert_model(spec("ns", "d", "new", Some(1)));
        assert!(t.by_name("old").is_none());
        assert!(t.by_host("old.ns").is_none());
        assert!(t.by_name("new").is_some());
        assert_eq!(t.keys().len(), 1);
    }
}
