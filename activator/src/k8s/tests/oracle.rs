//! An honest oracle for the incremental index: random sequences of watch events (Deployments,
//! Services and EndpointSlices added, changed and deleted; re-lists, some cut by a sync; the
//! ConfigMap changed and deleted) go into the [`Index`], and after every sync what the table
//! was given is compared, whole entry by whole entry (settings and endpoints), with a naive
//! recomputation written here from the rules in the module doc.
//!
//! The recomputation keeps its own copy of the world (the last state of every object, a
//! re-list replacing its scope) and uses nothing of the index: no store, no selector index,
//! no resolution helper, no shared endpoint reader. It only shares the configuration crate's
//! parsing of annotations and ConfigMap values, which is not what is under test.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::watcher;
use proptest::prelude::*;
use zeroscale_config::{DeploymentSettings, GlobalConfig};

use super::super::{Change, Index, Scope};
use crate::queue::{Endpoint, Limits};
use crate::table::{ModelKey, ModelSpec, NoWake, Table};

const NAMESPACES: [&str; 2] = ["a", "b"];
const CONFIG_NS: &str = "zeroscale-system";

// ---------------------------------------------------------------------------------------------
// Generated objects.

#[derive(Clone, Debug)]
struct DepGen {
    ns: usize,
    name: usize,
    enabled: bool,
    app: Option<&'static str>,
    tier: Option<&'static str>,
    service: Option<&'static str>,
    port: Option<&'static str>,
    model_name: Option<&'static str>,
    created: Option<i64>,
    concurrency: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct SvcGen {
    ns: usize,
    name: usize,
    app: Option<&'static str>,
    tier: Option<&'static str>,
    ports: Vec<(&'static str, i32)>,
}

#[derive(Clone, Debug)]
struct SliceGen {
    ns: usize,
    name: usize,
    service: Option<usize>,
    address_type: &'static str,
    ports: Vec<(&'static str, i32)>,
    endpoints: Vec<(usize, Option<bool>, Option<bool>)>,
}

#[derive(Clone, Debug)]
enum Obj {
    Dep(DepGen),
    Svc(SvcGen),
    Slice(SliceGen),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindGen {
    Dep,
    Svc,
    Slice,
}

#[derive(Clone, Debug)]
enum Op {
    Put(Obj),
    Delete(KindGen, usize, usize),
    /// A re-list of one kind: kept objects (by mask over the current ones of the scope, same
    /// resourceVersion), new ones, and whether a sync runs before the list is complete.
    Relist {
        kind: KindGen,
        ns: usize,
        keep: u8,
        new: Vec<Obj>,
        sync_midway: bool,
    },
    Config(Option<&'static str>),
    Sync,
}

fn opt<T: Clone + std::fmt::Debug + 'static>(
    values: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(proptest::sample::select(values))
}

/// Present with probability `p`: rarer annotations leave more Deployments to the selector
/// rule, so several Services compete for the same pods more often.
fn sometimes<T: Clone + std::fmt::Debug + 'static>(
    p: f64,
    values: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(p, proptest::sample::select(values))
}

fn dep_gen() -> impl Strategy<Value = DepGen> {
    (
        (0..2usize, 0..3usize, proptest::bool::weighted(0.85)),
        (opt(&["m", "n"]), opt(&["gpu", "cpu"])),
        (
            sometimes(0.25, &["s0", "s1", "s2", "missing"]),
            sometimes(0.3, &["http", "grpc", "80", "81", "8000", "9999", "x", ""]),
            opt(&["alpha", "beta"]),
        ),
        (opt(&[100i64, 200, 300]), opt(&["1", "4", "zero"])),
    )
        .prop_map(
            |((ns, name, enabled), (app, tier), (service, port, model_name), (created, cc))| {
                DepGen {
                    ns,
                    name,
                    enabled,
                    app,
                    tier,
                    service,
                    port,
                    model_name,
                    created,
                    concurrency: cc,
                }
            },
        )
}

fn ports(
    options: &'static [(&'static str, i32)],
) -> impl Strategy<Value = Vec<(&'static str, i32)>> {
    (
        proptest::sample::subsequence(options, 0..=options.len()),
        any::<bool>(),
    )
        .prop_map(|(mut p, reverse)| {
            if reverse {
                p.reverse();
            }
            p
        })
}

fn svc_gen() -> impl Strategy<Value = SvcGen> {
    (
        0..2usize,
        0..3usize,
        sometimes(0.8, &["m", "n"]),
        sometimes(0.3, &["gpu", "cpu"]),
        ports(&[("http", 80), ("grpc", 81), ("", 82)]),
    )
        .prop_map(|(ns, name, app, tier, ports)| SvcGen {
            ns,
            name,
            app,
            tier,
            ports,
        })
}

fn slice_gen() -> impl Strategy<Value = SliceGen> {
    (
        (
            0..2usize,
            0..4usize,
            proptest::option::weighted(0.9, 0..3usize),
        ),
        prop_oneof![8 => Just("IPv4"), 1 => Just("IPv6"), 1 => Just("FQDN")],
        ports(&[("http", 8000), ("grpc", 9000), ("", 8080)]),
        proptest::collection::vec(
            (
                0..5usize,
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
            ),
            0..4,
        ),
    )
        .prop_map(
            |((ns, name, service), address_type, ports, endpoints)| SliceGen {
                ns,
                name,
                service,
                address_type,
                ports,
                endpoints,
            },
        )
}

fn obj_gen(kind: KindGen) -> BoxedStrategy<Obj> {
    match kind {
        KindGen::Dep => dep_gen().prop_map(Obj::Dep).boxed(),
        KindGen::Svc => svc_gen().prop_map(Obj::Svc).boxed(),
        KindGen::Slice => slice_gen().prop_map(Obj::Slice).boxed(),
    }
}

fn kind_gen() -> impl Strategy<Value = KindGen> {
    prop_oneof![Just(KindGen::Dep), Just(KindGen::Svc), Just(KindGen::Slice)]
}

fn op_gen() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => kind_gen().prop_flat_map(obj_gen).prop_map(Op::Put),
        1 => (kind_gen(), 0..2usize, 0..4usize).prop_map(|(k, ns, n)| Op::Delete(k, ns, n)),
        1 => kind_gen()
            .prop_flat_map(|kind| (
                Just(kind),
                0..2usize,
                any::<u8>(),
                proptest::collection::vec(obj_gen(kind), 0..4),
                any::<bool>(),
            ))
            .prop_map(|(kind, ns, keep, new, sync_midway)| Op::Relist { kind, ns, keep, new, sync_midway }),
        1 => opt(&["3", "7", "50"]).prop_map(Op::Config),
        2 => Just(Op::Sync),
    ]
}

// ---------------------------------------------------------------------------------------------
// Building Kubernetes objects from the generated values.

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn meta(ns: &str, name: String, rv: u64) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name),
        resource_version: Some(rv.to_string()),
        ..Default::default()
    }
}

fn labels(app: Option<&str>, tier: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(a) = app {
        m.insert("app".to_owned(), a.to_owned());
    }
    if let Some(t) = tier {
        m.insert("tier".to_owned(), t.to_owned());
    }
    m
}

fn build_dep(g: &DepGen, ns: &str, rv: u64) -> Deployment {
    let mut ann = vec![(
        "zeroscale.dev/enabled",
        if g.enabled { "true" } else { "false" },
    )];
    if let Some(s) = g.service {
        ann.push(("zeroscale.dev/service", s));
    }
    if let Some(p) = g.port {
        ann.push(("zeroscale.dev/port", p));
    }
    if let Some(m) = g.model_name {
        ann.push(("zeroscale.dev/model-name", m));
    }
    if let Some(c) = g.concurrency {
        ann.push(("zeroscale.dev/container-concurrency", c));
    }
    let pod_labels = labels(g.app, g.tier);
    let mut metadata = meta(ns, format!("d{}", g.name), rv);
    metadata.annotations = Some(map(&ann));
    metadata.creation_timestamp = g
        .created
        .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: (!pod_labels.is_empty()).then_some(pod_labels),
                    ..Default::default()
                }),
                spec: None,
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn build_svc(g: &SvcGen, ns: &str, rv: u64) -> Service {
    Service {
        metadata: meta(ns, format!("s{}", g.name), rv),
        spec: Some(ServiceSpec {
            selector: Some(labels(g.app, g.tier)),
            ports: Some(
                g.ports
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
    }
}

fn address(address_type: &str, i: usize) -> String {
    match (address_type, i) {
        (_, 4) => "not-an-address".into(),
        ("IPv6", i) => format!("fd00::{}", i + 1),
        ("FQDN", i) => format!("host{i}.example.com"),
        (_, i) => format!("10.0.0.{}", i + 1),
    }
}

fn build_slice(g: &SliceGen, ns: &str, rv: u64) -> EndpointSlice {
    let mut metadata = meta(ns, format!("x{}", g.name), rv);
    if let Some(s) = g.service {
        metadata.labels = Some(map(&[("kubernetes.io/service-name", &format!("s{s}"))]));
    }
    EndpointSlice {
        metadata,
        address_type: g.address_type.into(),
        ports: Some(
            g.ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some(n.to_string()),
                    port: Some(*p),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: Some(
            g.endpoints
                .iter()
                .map(|(i, ready, terminating)| SliceEndpoint {
                    addresses: vec![address(g.address_type, *i)],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: None,
                        terminating: *terminating,
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(format!("pod-{i}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The world as the oracle keeps it, and the naive recomputation.

type Key = (String, String);

#[derive(Default)]
struct World {
    deps: BTreeMap<Key, Deployment>,
    svcs: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    config: Option<BTreeMap<String, String>>,
}

fn key_of(m: &ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Which slice port to read: by name, or a pod port number used as is.
enum WantPort {
    Name(String),
    Number(i32),
}

/// The Service port rule of the module doc, from scratch.
fn want_port(svc: &Service, annotation: Option<&str>) -> Option<WantPort> {
    let ports: Vec<&ServicePort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    let name = |p: &ServicePort| p.name.clone().unwrap_or_default();
    match annotation {
        None => ports.first().map(|p| WantPort::Name(name(p))),
        Some(a) => {
            if let Some(p) = ports.iter().find(|p| p.name.as_deref() == Some(a)) {
                Some(WantPort::Name(name(p)))
            } else if let Ok(n) = a.parse::<i32>() {
                match ports.iter().find(|p| p.port == n) {
                    Some(p) => Some(WantPort::Name(name(p))),
                    None => Some(WantPort::Number(n)),
                }
            } else {
                None
            }
        }
    }
}

fn naive_endpoints(
    world: &World,
    ns: &str,
    svc: &Service,
    annotation: Option<&str>,
) -> Vec<Endpoint> {
    let Some(want) = want_port(svc, annotation) else {
        return Vec::new();
    };
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let mut found: Vec<Endpoint> = Vec::new();
    for ((slice_ns, _), s) in &world.slices {
        let labelled = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            == Some(&svc_name);
        if slice_ns != ns || !labelled {
            continue;
        }
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            continue;
        }
        let number = match &want {
            WantPort::Number(n) => Some(*n),
            WantPort::Name(n) => s
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == *n)
                .and_then(|p| p.port),
        };
        let Some(number) = number.filter(|n| (0..=65535).contains(n)) else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, number as u16);
                // Listed twice (in two slices): the first listing, in slice-name order, counts.
                if found.iter().any(|f| f.addr == addr) {
                    continue;
                }
                found.push(Endpoint {
                    addr,
                    ready: c.ready != Some(false),
                    terminating: c.terminating == Some(true),
                    pod_name: e.target_ref.as_ref().and_then(|r| r.name.clone()),
                });
            }
        }
    }
    found.sort_by_key(|e| e.addr);
    found
}

/// Every model with its endpoints, worked out from the world alone.
fn naive(world: &World) -> BTreeMap<ModelKey, (ModelSpec, Vec<Endpoint>)> {
    let (global, _) = GlobalConfig::from_configmap(
        &world.config.clone().unwrap_or_default(),
        &GlobalConfig::default(),
    );
    let mut out = BTreeMap::new();
    for ((ns, name), d) in &world.deps {
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        if annotations.get("zeroscale.dev/enabled").map(String::as_str) != Some("true") {
            continue;
        }
        let (settings, _) = DeploymentSettings::resolve(&global, &annotations);
        let pod_labels = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let chosen: Option<&Service> = match &settings.service {
            Some(wanted) => world.svcs.get(&(ns.clone(), wanted.clone())),
            None => world
                .svcs
                .iter()
                .filter(|((svc_ns, _), _)| svc_ns == ns)
                .map(|(_, s)| s)
                .find(|s| {
                    let sel = s
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.clone())
                        .unwrap_or_default();
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                }),
        };
        let endpoints = chosen
            .map(|s| naive_endpoints(world, ns, s, settings.port.as_deref()))
            .unwrap_or_default();
        let key = ModelKey::new(ns.clone(), name.clone());
        let spec = ModelSpec {
            model_name: settings.model_name.clone().unwrap_or_else(|| name.clone()),
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
                balance: crate::queue::strategy(&settings, &global.activator),
                hold_streams: settings.hold_streams,
            },
            key: key.clone(),
        };
        out.insert(key, (spec, endpoints));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Driving the index and the world with the same events.

struct Run {
    index: Index,
    table: Table,
    world: World,
    per_namespace: bool,
    rv: u64,
}

impl Run {
    fn scope(&self, ns: &str) -> Scope {
        self.per_namespace.then(|| ns.to_owned())
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn ns_of(o: &Obj) -> usize {
        match o {
            Obj::Dep(g) => g.ns,
            Obj::Svc(g) => g.ns,
            Obj::Slice(g) => g.ns,
        }
    }

    fn change(&self, kind: KindGen, scope: Scope, ev: watcher::Event<Built>) -> Change {
        match (kind, ev) {
            (KindGen::Dep, ev) => {
                Change::Deployment(scope, Box::new(ev.map(|b| Built::dep(b).into())))
            }
            (KindGen::Svc, ev) => {
                Change::Service(scope, Box::new(ev.map(|b| Built::svc(b).into())))
            }
            (KindGen::Slice, ev) => {
                Change::EndpointSlice(scope, Box::new(ev.map(|b| Built::slice(b).into())))
            }
        }
    }

    fn build(&mut self, o: &Obj, ns_override: Option<usize>) -> Built {
        let ns = NAMESPACES[ns_override.unwrap_or_else(|| Self::ns_of(o))];
        let rv = self.next_rv();
        match o {
            Obj::Dep(g) => Built::Dep(build_dep(g, ns, rv)),
            Obj::Svc(g) => Built::Svc(build_svc(g, ns, rv)),
            Obj::Slice(g) => Built::Slice(build_slice(g, ns, rv)),
        }
    }

    fn remember(&mut self, b: &Built) {
        match b {
            Built::Dep(d) => {
                self.world.deps.insert(key_of(&d.metadata), d.clone());
            }
            Built::Svc(s) => {
                self.world.svcs.insert(key_of(&s.metadata), s.clone());
            }
            Built::Slice(s) => {
                self.world.slices.insert(key_of(&s.metadata), s.clone());
            }
        }
    }

    fn current(&self, kind: KindGen, ns: Option<&str>) -> Vec<Built> {
        let keep = |k: &Key| ns.is_none_or(|n| k.0 == n);
        match kind {
            KindGen::Dep => self
                .world
                .deps
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(_, d)| Built::Dep(d.clone()))
                .collect(),
            KindGen::Svc => self
                .world
                .svcs
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(_, s)| Built::Svc(s.clone()))
                .collect(),
            KindGen::Slice => self
                .world
                .slices
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(_, s)| Built::Slice(s.clone()))
                .collect(),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Put(o) => {
                let kind = match o {
                    Obj::Dep(_) => KindGen::Dep,
                    Obj::Svc(_) => KindGen::Svc,
                    Obj::Slice(_) => KindGen::Slice,
                };
                let b = self.build(o, None);
                self.remember(&b);
                let scope = self.scope(&b.key().0);
                let change = self.change(kind, scope, watcher::Event::Apply(b));
                self.index.handle(change);
            }
            Op::Delete(kind, ns, n) => {
                let ns = NAMESPACES[*ns];
                let name = match kind {
                    KindGen::Dep => format!("d{}", n % 3),
                    KindGen::Svc => format!("s{}", n % 3),
                    KindGen::Slice => format!("x{n}"),
                };
                let k = (ns.to_owned(), name);
                let gone = match kind {
                    KindGen::Dep => self.world.deps.remove(&k).map(Built::Dep),
                    KindGen::Svc => self.world.svcs.remove(&k).map(Built::Svc),
                    KindGen::Slice => self.world.slices.remove(&k).map(Built::Slice),
                };
                // A delete comes only for an object the watch had seen.
                if let Some(b) = gone {
                    let change = self.change(*kind, self.scope(ns), watcher::Event::Delete(b));
                    self.index.handle(change);
                }
            }
            Op::Relist {
                kind,
                ns,
                keep,
                new,
                sync_midway,
            } => {
                let ns_name = NAMESPACES[*ns];
                let scope = self.scope(ns_name);
                let in_scope = scope.as_deref();
                let mut listed: BTreeMap<Key, Built> = BTreeMap::new();
                for (i, b) in self.current(*kind, in_scope).into_iter().enumerate() {
                    if keep & (1 << (i % 8)) != 0 {
                        listed.insert(b.key(), b);
                    }
                }
                for o in new {
                    let b = self.build(o, scope.as_ref().map(|_| *ns));
                    listed.insert(b.key(), b);
                }
                let init = self.change(*kind, scope.clone(), watcher::Event::Init);
                self.index.handle(init);
                for b in listed.values() {
                    let ev =
                        self.change(*kind, scope.clone(), watcher::Event::InitApply(b.clone()));
                    self.index.handle(ev);
                }
                if *sync_midway {
                    // Until the list is complete, the world is the old one.
                    self.check()?;
                }
                // The list replaces the scope in the world.
                match kind {
                    KindGen::Dep => self
                        .world
                        .deps
                        .retain(|k, _| in_scope.is_some_and(|n| k.0 != n)),
                    KindGen::Svc => self
                        .world
                        .svcs
                        .retain(|k, _| in_scope.is_some_and(|n| k.0 != n)),
                    KindGen::Slice => self
                        .world
                        .slices
                        .retain(|k, _| in_scope.is_some_and(|n| k.0 != n)),
                }
                for b in listed.values() {
                    self.remember(b);
                }
                let done = self.change(*kind, scope, watcher::Event::InitDone);
                self.index.handle(done);
            }
            Op::Config(depth) => {
                let scope = Some(CONFIG_NS.to_owned());
                let rv = self.next_rv();
                let mut cm = ConfigMap {
                    metadata: meta(CONFIG_NS, zeroscale_config::CONFIGMAP_NAME.into(), rv),
                    ..Default::default()
                };
                let ev = match depth {
                    Some(d) => {
                        let data = map(&[("activator-queue-depth", d)]);
                        cm.data = Some(data.clone());
                        self.world.config = Some(data);
                        watcher::Event::Apply(cm)
                    }
                    None => {
                        self.world.config = None;
                        watcher::Event::Delete(cm)
                    }
                };
                self.index.handle(Change::ConfigMap(scope, Box::new(ev)));
            }
            Op::Sync => self.check()?,
        }
        Ok(())
    }

    /// Syncs, then compares what the table was given with the naive recomputation.
    fn check(&mut self) -> Result<(), TestCaseError> {
        self.index.sync(&self.table);
        let want = naive(&self.world);
        let applier = &self.index.applier;
        let got: BTreeMap<ModelKey, (ModelSpec, Vec<Endpoint>)> = applier
            .specs
            .iter()
            .map(|(k, s)| {
                let eps = applier.endpoints.get(k).cloned().unwrap_or_default();
                (k.clone(), (s.clone(), eps))
            })
            .collect();
        prop_assert_eq!(&got, &want);
        // The table itself: the same models, each with its settings and readiness, and each
        // name routed to its oldest claimant.
        let mut keys = self.table.keys();
        keys.sort();
        prop_assert_eq!(keys, want.keys().cloned().collect::<Vec<_>>());
        for (k, (spec, eps)) in &want {
            let m = self.table.get(k).expect("listed");
            prop_assert_eq!(&m.name(), &spec.model_name);
            prop_assert_eq!(&m.gate().limits(), &spec.limits);
            let eligible = eps.iter().any(|e| e.ready && !e.terminating);
            prop_assert_eq!(m.gate().has_ready(), eligible, "readiness of {}", k);
        }
        let mut names: BTreeMap<&str, Vec<(&ModelKey, Option<i64>)>> = BTreeMap::new();
        for (k, (spec, _)) in &want {
            names
                .entry(&spec.model_name)
                .or_default()
                .push((k, spec.created));
        }
        for (name, claims) in names {
            let winner = claims
                .iter()
                .min_by_key(|(k, created)| (created.is_none(), *created, (*k).clone()))
                .map(|(k, _)| (*k).clone());
            let routed = self.table.by_name(name).map(|m| m.key().clone());
            prop_assert_eq!(routed, winner, "owner of name {}", name);
        }
        Ok(())
    }
}

/// A built object of any kind, so one event type carries them all (test-only: size matters
/// less than one shape for all kinds).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Built {
    Dep(Deployment),
    Svc(Service),
    Slice(EndpointSlice),
}

impl Built {
    fn key(&self) -> Key {
        match self {
            Built::Dep(d) => key_of(&d.metadata),
            Built::Svc(s) => key_of(&s.metadata),
            Built::Slice(s) => key_of(&s.metadata),
        }
    }

    fn dep(self) -> Deployment {
        match self {
            Built::Dep(d) => d,
            other => panic!("not a Deployment: {other:?}"),
        }
    }

    fn svc(self) -> Service {
        match self {
            Built::Svc(s) => s,
            other => panic!("not a Service: {other:?}"),
        }
    }

    fn slice(self) -> EndpointSlice {
        match self {
            Built::Slice(s) => s,
            other => panic!("not an EndpointSlice: {other:?}"),
        }
    }
}

trait MapEvent<A> {
    fn map<B>(self, f: impl Fn(A) -> B) -> watcher::Event<B>;
}

impl<A> MapEvent<A> for watcher::Event<A> {
    fn map<B>(self, f: impl Fn(A) -> B) -> watcher::Event<B> {
        match self {
            watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

fn table() -> Table {
    Table::new(
        crate::Metrics::register(&mut prometheus_client::registry::Registry::default()),
        Arc::new(NoWake),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_index_routes_what_a_naive_recomputation_says(
        per_namespace in any::<bool>(),
        ops in proptest::collection::vec(op_gen(), 1..50),
    ) {
        let mut run = Run {
            index: Index::default(),
            table: table(),
            world: World::default(),
            per_namespace,
            rv: 0,
        };
        for op in &ops {
            run.apply(op)?;
        }
        run.check()?;
    }
}
