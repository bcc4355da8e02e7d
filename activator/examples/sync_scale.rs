//! How long the routing-table sync takes with many models, in memory (no cluster).
//!
//! ```text
//! cargo run --release -p zeroscale-activator --example sync_scale -- 10000 [CHANGES] [NAMESPACES]
//! ```
//! Builds N opted-in Deployments, N Services and N EndpointSlices in 100 namespaces (or
//! NAMESPACES), then times
//! (a) the full recompute + apply (what every watch event cost before the sync was incremental),
//! (b) one EndpointSlice change (one endpoint becomes ready) through the incremental index,
//! (c) one Service change (its namespace's models) and (d) one ConfigMap change (which
//! legitimately recomputes every model). One line each; CHANGES (300) sets the runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use prometheus_client::registry::Registry;
use zeroscale_activator::k8s::{Applier, Change, Index, desired};
use zeroscale_activator::table::NoWake;
use zeroscale_activator::{Metrics, Table};
use zeroscale_config::{CONFIGMAP_NAME, ENABLED_ANNOTATION, GlobalConfig};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How many namespaces the objects are spread over (the third argument, 100 by default).
static NAMESPACES: AtomicUsize = AtomicUsize::new(100);

fn ns_of(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES.load(Ordering::Relaxed))
}

fn deployment(i: usize) -> Deployment {
    let app = format!("model-{i}");
    Deployment {
        metadata: ObjectMeta {
            namespace: Some(ns_of(i)),
            name: Some(app.clone()),
            annotations: Some(map(&[(ENABLED_ANNOTATION, "true")])),
            creation_timestamp: Some(Time(
                Timestamp::from_second(1_700_000_000 + i as i64).expect("in range"),
            )),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(map(&[("app", &app)])),
                    ..Default::default()
                }),
                spec: None,
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns_of(i)),
            name: Some(format!("svc-{i}")),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(map(&[("app", &format!("model-{i}"))])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Service `i`'s slice with two endpoints; the second is ready when `ready` is.
fn slice(i: usize, ready: bool, version: u64) -> EndpointSlice {
    let svc = format!("svc-{i}");
    let ep = |ip: String, ready: bool| SliceEndpoint {
        addresses: vec![ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(format!("pod-{ip}")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (hi, lo) = ((i / 250) % 250, i % 250);
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns_of(i)),
            name: Some(format!("{svc}-abcde")),
            labels: Some(map(&[(SERVICE_NAME_LABEL, &svc)])),
            resource_version: Some(version.to_string()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8000),
            ..Default::default()
        }]),
        endpoints: Some(vec![
            ep(format!("10.1.{hi}.{lo}"), true),
            ep(format!("10.2.{hi}.{lo}"), ready),
        ]),
    }
}

fn configmap(queue_depth: usize, version: u64) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("zeroscale-system".into()),
            name: Some(CONFIGMAP_NAME.into()),
            resource_version: Some(version.to_string()),
            ..Default::default()
        },
        data: Some(map(&[("activator-queue-depth", &queue_depth.to_string())])),
        ..Default::default()
    }
}

fn table() -> Table {
    Table::new(
        Metrics::register(&mut Registry::default()),
        Arc::new(NoWake),
    )
}

/// Median and p99 of `samples`, as one line.
fn line(what: &str, n: usize, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<48} n={n:<6} runs={:<4} median={:>10.3?} p99={:>10.3?} max={:>10.3?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1],
    );
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: sync_scale [N]"))
        .unwrap_or(10_000);
    let changes: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("usage: sync_scale [N] [CHANGES]"))
        .unwrap_or(300);
    if let Some(ns) = std::env::args().nth(3) {
        let ns: usize = ns
            .parse()
            .expect("usage: sync_scale [N] [CHANGES] [NAMESPACES]");
        NAMESPACES.store(ns.max(1), Ordering::Relaxed);
    }
    let global = GlobalConfig::default();

    // (a) The full recompute from reflector stores, as every watch event did before.
    {
        let (deps, mut dw) = reflector::store::<Deployment>();
        let (svcs, mut sw) = reflector::store::<Service>();
        let (slices, mut lw) = reflector::store::<EndpointSlice>();
        for i in 0..n {
            dw.apply_watcher_event(&Event::Apply(deployment(i)));
            sw.apply_watcher_event(&Event::Apply(service(i)));
            lw.apply_watcher_event(&Event::Apply(slice(i, false, 1)));
        }
        let table = table();
        let mut applier = Applier::default();
        applier.apply(
            &table,
            desired(&deps.state(), &svcs.state(), &slices.state(), &global),
        );
        let runs = (changes / 10).max(5);
        let mut samples = Vec::with_capacity(runs);
        let mut ready = vec![false; n];
        for r in 0..runs {
            let i = (r * 7919) % n;
            ready[i] = !ready[i];
            lw.apply_watcher_event(&Event::Apply(slice(i, ready[i], 2 + r as u64)));
            let t = Instant::now();
            let d = desired(&deps.state(), &svcs.state(), &slices.state(), &global);
            // The old loop listed the Deployments a second time for conflict Events.
            let _deployments = deps.state();
            applier.apply(&table, d);
            samples.push(t.elapsed());
        }
        line("full recompute + apply (one slice change)", n, samples);
    }

    // (b) and (c): the incremental index, as the sync task runs it.
    let mut ix = Index::new(global);
    for i in 0..n {
        ix.handle(Change::Deployment(
            None,
            Box::new(Event::Apply(deployment(i).into())),
        ));
        ix.handle(Change::Service(
            None,
            Box::new(Event::Apply(service(i).into())),
        ));
        ix.handle(Change::EndpointSlice(
            None,
            Box::new(Event::Apply(slice(i, false, 1).into())),
        ));
    }
    let table = table();
    let t = Instant::now();
    let r = ix.sync(&table);
    assert_eq!(r.recomputed, n);
    line("first sync (every model)", n, vec![t.elapsed()]);

    let mut samples = Vec::with_capacity(changes);
    let mut ready = vec![false; n];
    for r in 0..changes {
        let i = (r * 7919) % n;
        ready[i] = !ready[i];
        // Built outside the timing: the watcher hands over a decoded object.
        let change = Change::EndpointSlice(
            None,
            Box::new(Event::Apply(slice(i, ready[i], 2 + r as u64).into())),
        );
        let t = Instant::now();
        ix.handle(change);
        let report = ix.sync(&table);
        samples.push(t.elapsed());
        assert_eq!((report.recomputed, report.changed.len()), (1, 1));
    }
    line("one EndpointSlice change (incremental)", n, samples);

    let runs = (changes / 10).max(3);
    let mut samples = Vec::with_capacity(runs);
    let per_ns = n.div_ceil(NAMESPACES.load(Ordering::Relaxed));
    for r in 0..runs {
        let i = (r * 7919) % n;
        let mut svc = service(i);
        svc.metadata.resource_version = Some((2 + r).to_string());
        let t = Instant::now();
        ix.handle(Change::Service(None, Box::new(Event::Apply(svc.into()))));
        let report = ix.sync(&table);
        samples.push(t.elapsed());
        assert!(report.recomputed <= per_ns);
    }
    line("one Service change (its namespace's models)", n, samples);

    let runs = (changes / 30).max(3);
    let mut samples = Vec::with_capacity(runs);
    for r in 0..runs {
        let change = Change::ConfigMap(
            None,
            Box::new(Event::Apply(configmap(100 + r, 2 + r as u64))),
        );
        let t = Instant::now();
        ix.handle(change);
        let report = ix.sync(&table);
        samples.push(t.elapsed());
        assert_eq!(report.recomputed, n);
    }
    line("one ConfigMap change (every model)", n, samples);
}
