//! Unit tests of resolution, the index and the applier, without a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use zeroscale_config::GlobalConfig;
use zeroscale_kube::endpoints::SERVICE_NAME_LABEL;

use super::*;
use crate::table::{ModelKey, Table};
use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::registry::Registry;

/// No Services (`desired` takes Services or their stored form).
const NO_SERVICES: &[Arc<Service>] = &[];
/// No EndpointSlices.
const NO_SLICES: &[Arc<EndpointSlice>] = &[];

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

fn service(ns: &str, name: &str, selector: &[(&str, &str)], ports: &[(&str, i32)]) -> Arc<Service> {
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
fn a_kserve_predictor_is_routed_by_its_inference_service() {
    // As KServe v0.20 makes them in Standard mode: Deployment and Service `<isvc>-predictor`,
    // the Service on port 80 named like it, selecting `app: isvc.<isvc>-predictor`.
    let kserve_labels = [
        ("serving.kserve.io/inferenceservice", "iris"),
        ("component", "predictor"),
        ("app", "isvc.iris-predictor"),
    ];
    let mut d = deployment(
        "models",
        "iris-predictor",
        &[("zeroscale.dev/enabled", "true")],
        &kserve_labels,
    );
    Arc::make_mut(&mut d).metadata.labels = Some(map(&kserve_labels));
    let mut transformer = deployment(
        "models",
        "iris-transformer",
        &[("zeroscale.dev/enabled", "true")],
        &[("app", "isvc.iris-transformer")],
    );
    Arc::make_mut(&mut transformer).metadata.labels = Some(map(&[
        ("serving.kserve.io/inferenceservice", "iris"),
        ("component", "transformer"),
    ]));
    let svcs = vec![service(
        "models",
        "iris-predictor",
        &[("app", "isvc.iris-predictor")],
        &[("iris-predictor", 80)],
    )];
    let slices = vec![slice(
        "models",
        "iris-predictor",
        &[("iris-predictor", 8080)],
        &[("10.0.0.1", Some(true), None)],
    )];
    let d = desired(&[d, transformer], &svcs, &slices, &GlobalConfig::default());
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let m = d
        .models
        .iter()
        .find(|m| m.spec.key.deployment == "iris-predictor")
        .unwrap();
    assert_eq!(m.spec.model_name, "iris");
    assert_eq!(
        m.spec.hostnames,
        zeroscale_config::kserve::host_keys("iris", "models")
    );
    assert_eq!(m.endpoints[0].addr.to_string(), "10.0.0.1:8080");
    let t = d
        .models
        .iter()
        .find(|m| m.spec.key.deployment == "iris-transformer")
        .unwrap();
    assert_eq!(t.spec.model_name, "iris-transformer");
    assert!(t.spec.hostnames.is_empty());
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
    let d = desired(&deps, NO_SERVICES, NO_SLICES, &GlobalConfig::default());
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
    let r = a.apply(&table, desired(&deps, NO_SERVICES, NO_SLICES, &g));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].winner.namespace, "a");
    assert_eq!(r[0].loser.namespace, "b");
    assert!(
        a.apply(&table, desired(&deps, NO_SERVICES, NO_SLICES, &g))
            .is_empty()
    );
    // One Deployment goes away: its model leaves the table.
    a.apply(&table, desired(&deps[1..], NO_SERVICES, NO_SLICES, &g));
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
        Box::new(watcher::Event::Apply(Deployment::clone(d).into())),
    ));
}

fn put_svc(ix: &mut Index, s: &Arc<Service>) {
    ix.handle(Change::Service(
        None,
        Box::new(watcher::Event::Apply(Service::clone(s).into())),
    ));
}

fn put_slice(ix: &mut Index, s: &Arc<EndpointSlice>) {
    ix.handle(Change::EndpointSlice(
        None,
        Box::new(watcher::Event::Apply(EndpointSlice::clone(s).into())),
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
        Box::new(watcher::Event::Delete(Deployment::clone(&d).into())),
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
                Box::new(watcher::Event::InitApply(Deployment::clone(&d).into())),
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
        Box::new(watcher::Event::InitApply(Deployment::clone(&d).into())),
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
        Box::new(watcher::Event::Delete(Deployment::clone(&b).into())),
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
            Box::new(watcher::Event::Delete(Service::clone(&s).into())),
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

mod oracle;

/// 20 model names each claimed in 10 namespaces. `at(ns, i)` is Deployment `i`'s creation time
/// in namespace `ns`; every one carries a resourceVersion so updates are real changes.
fn contested(at: impl Fn(usize, usize) -> i64, version: usize) -> Vec<Arc<Deployment>> {
    let mut out = Vec::new();
    for ns in 0..10 {
        for i in 0..20 {
            let name = format!("model-{i}");
            let cc = (version + 1).to_string();
            let d = deployment(
                &format!("team-{ns}"),
                &name,
                &[
                    ("zeroscale.dev/enabled", "true"),
                    ("zeroscale.dev/container-concurrency", &cc),
                ],
                &[("app", &name)],
            );
            let mut d = Arc::unwrap_or_clone(created(d, at(ns, i)));
            d.metadata.resource_version = Some(format!("{version}-{ns}-{i}"));
            out.push(Arc::new(d));
        }
    }
    out
}

#[test]
fn a_name_conflict_is_reported_once_however_many_watch_events_touch_it() {
    let mut ix = Index::default();
    let t = table();
    ix.handle(Change::ConfigMap(None, Box::new(watcher::Event::InitDone)));
    // The first list: every Deployment in one batch. Newer namespaces' claims are older, so
    // the winner changes while the batch is applied.
    let deps = contested(|ns, i| 1000 - (ns as i64) * 10 + i as i64, 0);
    ix.handle(Change::Deployment(None, Box::new(watcher::Event::Init)));
    for d in &deps {
        ix.handle(Change::Deployment(
            None,
            Box::new(watcher::Event::InitApply(Deployment::clone(d).into())),
        ));
    }
    ix.handle(Change::Deployment(None, Box::new(watcher::Event::InitDone)));
    for kind in [
        Change::Service(None, Box::new(watcher::Event::InitDone)),
        Change::EndpointSlice(None, Box::new(watcher::Event::InitDone)),
    ] {
        ix.handle(kind);
    }
    let first = ix.sync(&t);
    let mut reports = first.conflicts.clone();
    assert_eq!(
        apply::by_name(&first.conflicts).len(),
        20,
        "one warning a contested name"
    );
    // Then many watch events, each its own sync: every Deployment updated three times, a
    // Service and an EndpointSlice in every namespace changing, a re-list of everything.
    for version in 1..=3 {
        for d in contested(|ns, i| 1000 - (ns as i64) * 10 + i as i64, version) {
            put_dep(&mut ix, &d);
            reports.extend(ix.sync(&t).conflicts);
        }
    }
    for ns in 0..10 {
        let ns = format!("team-{ns}");
        put_svc(
            &mut ix,
            &service(&ns, "svc", &[("app", "model-0")], &[("http", 80)]),
        );
        reports.extend(ix.sync(&t).conflicts);
        put_slice(
            &mut ix,
            &slice(
                &ns,
                "svc",
                &[("http", 8000)],
                &[("10.0.0.1", Some(true), None)],
            ),
        );
        reports.extend(ix.sync(&t).conflicts);
    }
    ix.handle(Change::Deployment(None, Box::new(watcher::Event::Init)));
    for d in contested(|ns, i| 1000 - (ns as i64) * 10 + i as i64, 3) {
        ix.handle(Change::Deployment(
            None,
            Box::new(watcher::Event::InitApply(Deployment::clone(&d).into())),
        ));
    }
    ix.handle(Change::Deployment(None, Box::new(watcher::Event::InitDone)));
    reports.extend(ix.sync(&t).conflicts);
    // 9 losers for each of the 20 names, each reported exactly once.
    let pairs: std::collections::HashSet<(String, ModelKey)> = reports
        .iter()
        .map(|r| (r.name.clone(), r.loser.clone()))
        .collect();
    assert_eq!(reports.len(), 180, "{} reports", reports.len());
    assert_eq!(pairs.len(), 180);
    // The oldest claim (team-9) is the winner of every name, and never reported as a loser.
    for i in 0..20 {
        assert_eq!(
            t.by_name(&format!("model-{i}")).unwrap().key().namespace,
            "team-9"
        );
    }
    assert!(reports.iter().all(|r| r.loser.namespace != "team-9"));
}

#[test]
fn deployments_as_the_index_stores_them_route_as_the_whole_objects() {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    let full: Vec<Arc<Deployment>> = ["llama", "mistral"]
        .iter()
        .map(|name| {
            let mut d = (*deployment(
                "ns",
                name,
                &[("zeroscale.dev/enabled", "true")],
                &[("app", name)],
            ))
            .clone();
            let spec = d.spec.as_mut().unwrap();
            spec.replicas = Some(2);
            spec.template.spec = Some(PodSpec {
                containers: vec![Container {
                    name: "model".into(),
                    image: Some("zeroscale/sample-model:dev".into()),
                    ..Default::default()
                }],
                ..Default::default()
            });
            d.status = Some(DeploymentStatus {
                ready_replicas: Some(2),
                ..Default::default()
            });
            Arc::new(d)
        })
        .collect();
    // What the watch stores, read from the JSON as from the API's.
    let stored: Vec<Arc<RoutedDeployment>> = full
        .iter()
        .map(|d| {
            let json = serde_json::to_vec(&**d).unwrap();
            Arc::new(serde_json::from_slice(&json).unwrap())
        })
        .collect();
    assert_eq!(
        stored[0].pod_labels,
        Some(map(&[("app", "llama")])),
        "{stored:?}"
    );
    let svcs = vec![
        service("ns", "llama", &[("app", "llama")], &[("http", 80)]),
        service("ns", "mistral", &[("app", "mistral")], &[("http", 80)]),
    ];
    let slices = vec![slice(
        "ns",
        "llama",
        &[("http", 8000)],
        &[("10.0.0.1", Some(true), None)],
    )];
    let g = GlobalConfig::default();
    let a = desired(&full, &svcs, &slices, &g);
    let b = desired(&stored, &svcs, &slices, &g);
    assert_eq!(a.models.len(), 2);
    assert_eq!(format!("{:?}", a.models), format!("{:?}", b.models));
}

#[test]
fn services_and_slices_as_the_index_stores_them_route_as_the_whole_objects() {
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let deps = vec![deployment(
        "ns",
        "llama",
        &[("zeroscale.dev/enabled", "true")],
        &[("app", "llama")],
    )];
    let mut svc = (*service("ns", "llama", &[("app", "llama")], &[("http", 80)])).clone();
    svc.metadata.annotations = Some(map(&[("note", "x")]));
    let spec = svc.spec.as_mut().unwrap();
    spec.cluster_ip = Some("10.96.0.10".into());
    spec.cluster_ips = Some(vec!["10.96.0.10".into()]);
    spec.ip_families = Some(vec!["IPv4".into()]);
    spec.type_ = Some("ClusterIP".into());
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..Default::default()
    });
    let mut sl = (*slice(
        "ns",
        "llama",
        &[("http", 8000)],
        &[
            ("10.0.0.1", Some(true), None),
            ("10.0.0.2", Some(false), Some(true)),
        ],
    ))
    .clone();
    sl.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: "llama".into(),
        uid: "u".into(),
        ..Default::default()
    }]);
    sl.metadata.generate_name = Some("llama-".into());
    sl.metadata.annotations = Some(map(&[(
        "endpoints.kubernetes.io/last-change-trigger-time",
        "2026-12-01T00:00:00Z",
    )]));
    for e in sl.endpoints.iter_mut().flatten() {
        e.node_name = Some("node-1".into());
        e.zone = Some("a".into());
        let r = e.target_ref.as_mut().unwrap();
        r.namespace = Some("ns".into());
        r.uid = Some("pod-uid".into());
    }
    sl.metadata.uid = Some("slice-uid".into());
    sl.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("endpointslice.kubernetes.io/managed-by".into(), "x".into());
    // What the watch stores, read from the JSON as from the API's.
    let svc_t: RoutedService = serde_json::from_slice(&serde_json::to_vec(&svc).unwrap()).unwrap();
    let sl_t: RoutedSlice = serde_json::from_slice(&serde_json::to_vec(&sl).unwrap()).unwrap();
    assert!(svc_t.metadata.annotations.is_none() && svc_t.ports.len() == 1);
    let m = &sl_t.0.metadata;
    assert!(m.owner_references.is_none() && m.annotations.is_none());
    assert!(m.uid.is_none() && m.generate_name.is_none());
    assert_eq!(
        m.labels,
        Some(map(&[(SERVICE_NAME_LABEL, "llama")])),
        "only the Service's name stays"
    );
    let e = &sl_t.0.endpoints.as_ref().unwrap()[0];
    assert!(e.node_name.is_none() && e.zone.is_none());
    let r = e.target_ref.as_ref().unwrap();
    assert_eq!(
        (r.kind.as_deref(), r.name.is_some(), r.uid.as_deref()),
        (Some("Pod"), true, None)
    );
    let g = GlobalConfig::default();
    let a = desired(&deps, &[Arc::new(svc)], &[Arc::new(sl)], &g);
    let b = desired(&deps, &[Arc::new(svc_t)], &[Arc::new(sl_t)], &g);
    assert_eq!(a.models.len(), 1);
    assert_eq!(a.models[0].endpoints.len(), 2, "{:?}", a.models);
    assert_eq!(format!("{:?}", a.models), format!("{:?}", b.models));
}
