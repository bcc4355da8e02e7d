//! Resolution: which Service, which port and which endpoints one opted-in Deployment is routed
//! to, read from the watched Services and EndpointSlices (the rules are in the [`super`] doc).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use zeroscale_config::{ConfigError, DeploymentSettings, GlobalConfig, is_opted_in, kserve};
use zeroscale_kube::endpoints::{self, Select};

use super::store::{Names, Objects, ns_name};
use super::stored::{RoutedDeployment, RoutedPort, RoutedService, RoutedSlice};
use crate::queue::{Endpoint, Limits};
use crate::table::{ModelKey, ModelSpec};

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

/// One model worked out, with what it was worked out from.
pub(super) struct Resolved {
    pub(super) model: DesiredModel,
    pub(super) errors: Vec<ConfigError>,
    /// The Service whose EndpointSlices give the endpoints, if one was found.
    pub(super) service: Option<String>,
}

/// The Services and EndpointSlices of every namespace, as one model's computation reads them.
pub(super) struct ServicesAndSlices<'a> {
    pub(super) services: &'a Objects<RoutedService>,
    pub(super) slices: &'a Objects<RoutedSlice>,
    pub(super) slices_by_service: &'a HashMap<(String, String), Names>,
    pub(super) selectors: &'a Selectors,
}

impl ServicesAndSlices<'_> {
    /// The model of one Deployment, if it is opted in. Pure: reads only its arguments.
    pub(super) fn model(&self, d: &RoutedDeployment, global: &GlobalConfig) -> Option<Resolved> {
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
                    .map(|s| &s.0)
                    .collect();
                (
                    endpoints_of(svc, &slices, settings.port.as_deref()),
                    Some(k.1),
                )
            }
            None => (Vec::new(), None),
        };
        let labels = d.metadata.labels.as_ref();
        let mut hostnames = settings.hostnames.clone();
        if let Some(isvc) = kserve::inference_service(labels) {
            for h in kserve::host_keys(isvc, &key.namespace) {
                if !hostnames.contains(&h) {
                    hostnames.push(h);
                }
            }
        }
        let spec = ModelSpec {
            model_name: kserve::routed_model_name(
                settings.model_name.as_deref(),
                &key.deployment,
                labels,
            ),
            hostnames,
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
            key,
        };
        Some(Resolved {
            model: DesiredModel { spec, endpoints },
            errors,
            service,
        })
    }
}

pub(super) fn pod_labels(d: &RoutedDeployment) -> Option<&BTreeMap<String, String>> {
    d.pod_labels.as_ref()
}

/// The Service's selector is non-empty and every pair of it is on the pod template.
pub(super) fn selects(svc: &RoutedService, d: &RoutedDeployment) -> bool {
    let Some(sel) = svc.selector.as_ref() else {
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
pub(super) struct Selectors(HashMap<String, HashMap<String, HashMap<String, Names>>>);

pub(super) fn first_pair(svc: &RoutedService) -> Option<(&String, &String)> {
    svc.selector.as_ref()?.iter().next()
}

impl Selectors {
    pub(super) fn insert(&mut self, svc: &RoutedService) {
        if let Some((k, v)) = first_pair(svc) {
            let (ns, name) = ns_name(svc);
            let by_value = self.0.entry(ns).or_default().entry(k.clone()).or_default();
            by_value.entry(v.clone()).or_default().insert(name);
        }
    }

    pub(super) fn remove(&mut self, svc: &RoutedService) {
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
    pub(super) fn candidates<'a>(
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
pub(super) enum PortChoice {
    /// The slice port with this name (`""` for an unnamed single port).
    Named(String),
    /// A pod port number used directly.
    Number(i32),
}

pub(super) fn port_choice(svc: &RoutedService, want: Option<&str>) -> Option<PortChoice> {
    let ports = svc.ports.as_slice();
    let name_of = |p: &RoutedPort| p.name.clone().unwrap_or_default();
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

pub(super) fn endpoints_of(
    svc: &RoutedService,
    slices: &[&EndpointSlice],
    want: Option<&str>,
) -> Vec<Endpoint> {
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
