//! Kubernetes glue: watches opted-in Deployments, their Services and EndpointSlices, and the
//! `zeroscale-config` ConfigMap, and feeds the [`Table`].
//!
//! Working out what should be routed ([`desired`], a pure function of the watched objects,
//! unit-tested without a cluster) is separate from applying it ([`run`]): every watch event
//! pokes one sync task, which recomputes from the reflector stores and applies only what changed.
//!
//! Which Service: the `zeroscale.dev/service` annotation, else the Service in the Deployment's
//! namespace whose (non-empty) selector matches the pod template's labels (the first by name if
//! several do). Which port: the `zeroscale.dev/port` annotation (a Service port name or number;
//! a number matching no Service port is used as the pod port directly), else the Service's first
//! port. Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use zeroscale_config::{ConfigError, DeploymentSettings, GlobalConfig, is_opted_in};

use crate::proxy::Proxy;
use crate::queue::{Endpoint, Limits};
use crate::table::{ModelKey, ModelSpec, Table};
use crate::wake::Waker;

/// The label EndpointSlices carry with their Service's name.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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

/// Works out the routing table from the watched objects.
pub fn desired(
    deployments: &[Arc<Deployment>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    global: &GlobalConfig,
) -> Desired {
    // Index by namespace once: O(objects) per recompute instead of O(models x objects).
    let mut svc_by_ns: HashMap<&str, Vec<&Service>> = HashMap::new();
    for s in services {
        svc_by_ns
            .entry(s.metadata.namespace.as_deref().unwrap_or(""))
            .or_default()
            .push(s);
    }
    for v in svc_by_ns.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    let mut slices_by_svc: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices_by_svc
                .entry((s.metadata.namespace.as_deref().unwrap_or(""), svc.as_str()))
                .or_default()
                .push(s);
        }
    }

    let mut out = Desired::default();
    for d in deployments {
        let annotations = d.annotations();
        if !is_opted_in(annotations) {
            continue;
        }
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let key = ModelKey {
            namespace: ns.clone(),
            deployment: d.name_any(),
        };
        let (settings, errors) = DeploymentSettings::resolve(global, annotations);
        if !errors.is_empty() {
            out.errors.push((key.clone(), errors));
        }
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
            },
            key,
        };
        let svcs = svc_by_ns.get(ns.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let svc = match &settings.service {
            Some(name) => svcs
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str())),
            None => svcs.iter().find(|s| selects(s, d)),
        };
        let endpoints = match svc {
            Some(svc) => {
                let svc_name = svc.metadata.name.as_deref().unwrap_or("");
                let ss = slices_by_svc
                    .get(&(ns.as_str(), svc_name))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                endpoints_of(svc, ss, settings.port.as_deref())
            }
            None => Vec::new(),
        };
        out.models.push(DesiredModel { spec, endpoints });
    }
    out
}

/// The Service's selector is non-empty and every pair of it is on the pod template.
fn selects(svc: &Service, d: &Deployment) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    let labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let Some(labels) = labels else { return false };
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
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
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            continue;
        }
        let port = match &choice {
            PortChoice::Number(n) => Some(*n),
            PortChoice::Named(name) => s.ports.as_ref().and_then(|ps| {
                ps.iter()
                    .find(|p| p.name.clone().unwrap_or_default() == *name)
                    .and_then(|p| p.port)
            }),
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let cond = e.conditions.as_ref();
            // Per the API: an unknown `ready` means ready; an unknown `terminating` means not.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let pod_name = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(Endpoint {
                    addr: SocketAddr::new(ip, port),
                    ready,
                    terminating,
                    pod_name: pod_name.clone(),
                });
            }
        }
    }
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    out
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
    /// Applies `d`; returns conflicts not reported before.
    pub fn apply(&mut self, table: &Table, d: Desired) -> Vec<ConflictReport> {
        let mut seen = HashSet::new();
        let mut reports = Vec::new();
        for (key, errs) in &d.errors {
            for e in errs {
                tracing::debug!(deployment = %key, error = %e, "annotation ignored");
            }
        }
        for m in d.models {
            let key = m.spec.key.clone();
            seen.insert(key.clone());
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
            }
            if self.endpoints.get(&key) != Some(&m.endpoints) {
                table.set_endpoints(&key, m.endpoints.clone());
                self.endpoints.insert(key, m.endpoints);
            }
        }
        let gone: Vec<ModelKey> = self
            .specs
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            tracing::info!(deployment = %k, "model no longer routed");
            table.remove_model(&k);
            self.specs.remove(&k);
            self.endpoints.remove(&k);
            self.reported.retain(|(_, l)| l != &k);
        }
        reports
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

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// Starts one reflector per API; every event pokes `notify`.
fn reflect<K>(apis: Vec<Api<K>>, cfg: watcher::Config, notify: &Arc<Notify>) -> Vec<Store<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    apis.into_iter()
        .map(|api| {
            let (store, writer) = reflector::store();
            let stream = watcher(api, cfg.clone()).default_backoff().reflect(writer);
            let notify = notify.clone();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(_) => notify.notify_one(),
                        Err(e) => tracing::warn!(
                            kind = %K::kind(&Default::default()),
                            error = %e,
                            "watch failed; retrying with backoff"
                        ),
                    }
                }
            });
            store
        })
        .collect()
}

fn all<K: Clone + Resource>(stores: &[Store<K>]) -> Vec<Arc<K>>
where
    <K as Resource>::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores.iter().flat_map(|s| s.state()).collect()
}

/// Watches and syncs until the process ends.
pub async fn run(client: Client, cfg: WatchConfig, targets: Targets) {
    let notify = Arc::new(Notify::new());
    let deps = reflect(
        apis::<Deployment>(&client, &cfg.watch_namespaces),
        watcher::Config::default().any_semantic(),
        &notify,
    );
    let svcs = reflect(
        apis::<Service>(&client, &cfg.watch_namespaces),
        watcher::Config::default().any_semantic(),
        &notify,
    );
    let slices = reflect(
        apis::<EndpointSlice>(&client, &cfg.watch_namespaces),
        watcher::Config::default()
            .any_semantic()
            .labels(SERVICE_NAME_LABEL),
        &notify,
    );
    let cms = reflect(
        vec![Api::<ConfigMap>::namespaced(client.clone(), &cfg.namespace)],
        watcher::Config::default().any_semantic().fields(&format!(
            "metadata.name={}",
            zeroscale_config::CONFIGMAP_NAME
        )),
        &notify,
    );
    let synced = Arc::new(AtomicBool::new(false));
    {
        let (deps, svcs, slices, cms) = (deps.clone(), svcs.clone(), slices.clone(), cms.clone());
        let synced = synced.clone();
        let notify = notify.clone();
        tokio::spawn(async move {
            for s in &deps {
                let _ = s.wait_until_ready().await;
            }
            for s in &svcs {
                let _ = s.wait_until_ready().await;
            }
            for s in &slices {
                let _ = s.wait_until_ready().await;
            }
            for s in &cms {
                let _ = s.wait_until_ready().await;
            }
            synced.store(true, Ordering::SeqCst);
            notify.notify_one();
        });
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zeroscale-activator".into(),
            instance: cfg.instance.clone(),
        },
    );
    let mut applier = Applier::default();
    let mut global = GlobalConfig::default();
    let mut cm_version: Option<String> = None;
    loop {
        notify.notified().await;
        if !synced.load(Ordering::SeqCst) {
            // Applying a partial view would drop models whose objects have not arrived yet.
            continue;
        }
        let cm = all(&cms).into_iter().next();
        let version = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        if version != cm_version {
            let data: BTreeMap<String, String> =
                cm.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
            let (next, errors) = GlobalConfig::from_configmap(&data, &global);
            for e in &errors {
                tracing::warn!(error = %e, "ConfigMap value ignored; the last good value stays");
            }
            targets
                .proxy
                .set_max_routing_body_bytes(next.activator.max_routing_body_bytes);
            if let Some(w) = &targets.waker {
                w.set_resend_interval(next.activator.wake_resend_interval);
            }
            global = next;
            cm_version = version;
        }
        let d = desired(&all(&deps), &all(&svcs), &all(&slices), &global);
        let deployments = all(&deps);
        for c in applier.apply(&targets.table, d) {
            tracing::warn!(deployment = %c.loser, winner = %c.winner, name = %c.name, "model name claimed twice");
            let Some(dep) = deployments.iter().find(|d| {
                d.metadata.namespace.as_deref() == Some(c.loser.namespace.as_str())
                    && d.metadata.name.as_deref() == Some(c.loser.deployment.as_str())
            }) else {
                continue;
            };
            let note = format!(
                "{:?} is also claimed by {}, which was created first (or sorts first by \
                 namespace/name); requests for it go there. Set zeroscale.dev/model-name to \
                 a unique name.",
                c.name, c.winner
            );
            // kube-runtime's Recorder folds Events with the same (type, reason, action, object)
            // into one series that keeps the first note: a digest of the note in the action
            // keeps a different conflict from hiding behind an earlier one.
            let digest = note.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            let ev = Event {
                type_: EventType::Warning,
                reason: "ModelNameConflict".into(),
                note: Some(note),
                action: format!("Route-{digest:08x}"),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &dep.object_ref(&())).await {
                tracing::warn!(error = %e, "publishing an Event failed");
            }
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
}
