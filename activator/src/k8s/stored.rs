//! The forms the activator watches and keeps Deployments, Services and EndpointSlices in:
//! what resolution reads of them and nothing else (issue 14: 10,000 models).
//!
//! They are read from the API's JSON directly: a field not named here is skipped as it is
//! parsed, never held. A `k8s_openapi` `Deployment` is 2.4 KB before any of its fields is set
//! (its pod template holds a whole `PodSpec` inline), a `Service` 0.8 KB, and decoding either
//! builds its `managedFields` as JSON trees; a first list of 10,000 of them, decoded whole
//! before any could be trimmed, made the largest peak of the activator's memory, and the stored
//! objects were half of what stayed. This file is the one place that says what is kept:
//!
//! - a Deployment ([`RoutedDeployment`]): name, namespace, resourceVersion, uid (Events name
//!   it), creationTimestamp (name conflicts), the annotations (settings) but kubectl's copy of
//!   the object, the labels KServe routing reads, and the pod template's labels (which Services
//!   select its pods);
//! - a Service ([`RoutedService`]): name, namespace, resourceVersion, its selector and its
//!   ports' names and numbers;
//! - an EndpointSlice ([`RoutedSlice`]): name, namespace, resourceVersion, the label naming its
//!   Service, its address type, its ports' names and numbers, and of each endpoint its
//!   addresses, conditions and the kind and name of its target (the pod name).
//!
//! Each also converts from the `k8s_openapi` object (tests, [`super::desired`]) through the
//! same reading of its JSON.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::Deserialize;
use zeroscale_config::kserve;
use zeroscale_kube::endpoints::SERVICE_NAME_LABEL;

/// The metadata fields any of the three kinds keeps.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    uid: Option<String>,
    creation_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl WireMeta {
    /// Name, namespace and resourceVersion, and `labels` (`None` if empty).
    fn into_meta(self, labels: impl Fn(&str) -> bool) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            resource_version: self.resource_version,
            labels: self
                .labels
                .map(|mut l| {
                    l.retain(|k, _| labels(k));
                    l
                })
                .filter(|l| !l.is_empty()),
            ..Default::default()
        }
    }
}

/// What routing reads of a Deployment (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "WireDeployment")]
pub struct RoutedDeployment {
    /// Its metadata, as far as kept.
    pub metadata: ObjectMeta,
    /// The pod template's labels.
    pub pod_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireDeployment {
    metadata: WireMeta,
    spec: Option<WireDeploymentSpec>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireDeploymentSpec {
    template: Option<WireTemplate>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireTemplate {
    metadata: Option<WireLabels>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireLabels {
    labels: Option<BTreeMap<String, String>>,
}

impl From<WireDeployment> for RoutedDeployment {
    fn from(mut d: WireDeployment) -> Self {
        let (uid, created, annotations) = (
            d.metadata.uid.take(),
            d.metadata.creation_timestamp.take(),
            d.metadata.annotations.take(),
        );
        let mut metadata = d
            .metadata
            .into_meta(|k| kserve::ROUTING_LABELS.contains(&k));
        metadata.uid = uid;
        metadata.creation_timestamp = created;
        metadata.annotations = annotations;
        let mut out = Self {
            metadata,
            pod_labels: d
                .spec
                .and_then(|s| s.template)
                .and_then(|t| t.metadata)
                .and_then(|m| m.labels),
        };
        // kubectl's copy of the last applied object: the rule both binaries share.
        zeroscale_kube::watch::slim(&mut out);
        out
    }
}

/// What routing reads of a Service (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "WireService")]
pub struct RoutedService {
    /// Name, namespace and resourceVersion.
    pub metadata: ObjectMeta,
    /// `spec.selector`.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.ports`, in order.
    pub ports: Vec<RoutedPort>,
}

/// A Service port's name and number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RoutedPort {
    /// Its name (`None` for the one unnamed port a Service may have).
    pub name: Option<String>,
    /// Its number.
    pub port: i32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireService {
    metadata: WireMeta,
    spec: Option<WireServiceSpec>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireServiceSpec {
    selector: Option<BTreeMap<String, String>>,
    ports: Option<Vec<RoutedPort>>,
}

impl From<WireService> for RoutedService {
    fn from(s: WireService) -> Self {
        let spec = s.spec.unwrap_or_default();
        Self {
            metadata: s.metadata.into_meta(|_| false),
            selector: spec.selector,
            ports: tight(spec.ports.unwrap_or_default()),
        }
    }
}

/// What routing reads of an EndpointSlice (see the module doc), as the `k8s_openapi` object
/// that [`zeroscale_kube::endpoints`] reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "WireSlice")]
pub struct RoutedSlice(pub EndpointSlice);

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WireSlice {
    metadata: WireMeta,
    address_type: String,
    endpoints: Option<Vec<WireEndpoint>>,
    ports: Option<Vec<WireSlicePort>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WireEndpoint {
    addresses: Vec<String>,
    conditions: Option<EndpointConditions>,
    target_ref: Option<WireTarget>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireTarget {
    kind: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSlicePort {
    name: Option<String>,
    port: Option<i32>,
}

impl From<WireSlice> for RoutedSlice {
    fn from(s: WireSlice) -> Self {
        let endpoints = s.endpoints.map(|eps| {
            tight(
                eps.into_iter()
                    .map(|e| Endpoint {
                        addresses: e.addresses,
                        conditions: e.conditions,
                        target_ref: e.target_ref.map(|r| ObjectReference {
                            kind: r.kind,
                            name: r.name,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            )
        });
        let ports = s.ports.map(|ps| {
            tight(
                ps.into_iter()
                    .map(|p| EndpointPort {
                        name: p.name,
                        port: p.port,
                        ..Default::default()
                    })
                    .collect(),
            )
        });
        Self(EndpointSlice {
            metadata: s.metadata.into_meta(|k| k == SERVICE_NAME_LABEL),
            address_type: s.address_type,
            endpoints,
            ports,
        })
    }
}

/// `v` without spare room (a decoded list has room for more).
fn tight<T>(v: Vec<T>) -> Vec<T> {
    v.into_boxed_slice().into_vec()
}

/// The stored form of a `k8s_openapi` object, read from its JSON as from the API's.
fn reread<K: serde::Serialize, T: serde::de::DeserializeOwned>(o: &K) -> T {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .expect("a k8s-openapi object reads back as its stored form")
}

impl From<Deployment> for RoutedDeployment {
    fn from(d: Deployment) -> Self {
        reread(&d)
    }
}

impl From<Service> for RoutedService {
    fn from(s: Service) -> Self {
        reread(&s)
    }
}

impl From<EndpointSlice> for RoutedSlice {
    fn from(s: EndpointSlice) -> Self {
        reread(&s)
    }
}

/// `Resource` by the Kubernetes kind a stored form stands for (so `ResourceExt` and
/// `object_ref` work on it as on the object itself).
macro_rules! resource_as {
    ($stored:ty, $kind:ty) => {
        impl Resource for $stored {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(dt: &()) -> Cow<'_, str> {
                <$kind as Resource>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$kind as Resource>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$kind as Resource>::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$kind as Resource>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource_as!(RoutedDeployment, Deployment);
resource_as!(RoutedService, Service);

impl Resource for RoutedSlice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_routed_deployment_keeps_what_routing_and_events_read_only() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "llama", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3,
                "annotations": {"zeroscale.dev/enabled": "true", "other": "x",
                                "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "labels": {"app": "llama", (kserve::INFERENCE_SERVICE_LABEL): "isvc",
                           (kserve::COMPONENT_LABEL): "predictor"},
                "finalizers": ["f"],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "selector": {"matchLabels": {"app": "llama"}},
                "template": {"metadata": {"labels": {"app": "llama"},
                                          "annotations": {"a": "b"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}]}},
            },
            "status": {"replicas": 1},
        }))
        .unwrap();
        let r = RoutedDeployment::from(d.clone());
        let direct: RoutedDeployment =
            serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(r, direct);
        let m = &r.metadata;
        assert_eq!(m.name.as_deref(), Some("llama"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        assert_eq!(m.uid.as_deref(), Some("u-1"));
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(m.creation_timestamp, d.metadata.creation_timestamp);
        assert!(matches!(m.creation_timestamp, Some(Time(_))));
        assert_eq!(
            m.annotations,
            Some(pairs(&[("zeroscale.dev/enabled", "true"), ("other", "x")]))
        );
        assert_eq!(m.managed_fields, None);
        assert_eq!(
            m.labels,
            Some(pairs(&[
                (kserve::INFERENCE_SERVICE_LABEL, "isvc"),
                (kserve::COMPONENT_LABEL, "predictor"),
            ]))
        );
        assert_eq!((m.generation, m.finalizers.as_ref()), (None, None));
        assert_eq!(r.pod_labels, Some(pairs(&[("app", "llama")])));
        assert_eq!(r.object_ref(&()), d.object_ref(&()));

        let plain: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m", "labels": {"app": "m"}},
        }))
        .unwrap();
        let r = RoutedDeployment::from(plain);
        assert_eq!((r.metadata.labels, r.pod_labels), (None, None));
    }

    #[test]
    fn a_routed_service_keeps_its_selector_and_port_names_and_numbers() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "llama", "namespace": "ns", "resourceVersion": "9",
                         "labels": {"app": "llama"}, "uid": "u"},
            "spec": {
                "selector": {"app": "llama"},
                "clusterIP": "10.96.0.1",
                "ports": [{"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"},
                          {"port": 9090, "appProtocol": "h2c"}],
            },
        }))
        .unwrap();
        let r = RoutedService::from(s);
        assert_eq!(r.metadata.name.as_deref(), Some("llama"));
        assert_eq!(r.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(r.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!((r.metadata.labels, r.metadata.uid), (None, None));
        assert_eq!(r.selector, Some(pairs(&[("app", "llama")])));
        let ports: Vec<(Option<&str>, i32)> = r
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(ports, [(Some("http"), 80), (None, 9090)]);
        assert_eq!(r.ports.capacity(), 2);
    }

    #[test]
    fn a_routed_slice_keeps_its_service_ports_and_endpoints() {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "llama-x1", "namespace": "ns", "resourceVersion": "4",
                         "generateName": "llama-", "uid": "u",
                         "labels": {(SERVICE_NAME_LABEL): "llama",
                                    "endpointslice.kubernetes.io/managed-by": "c"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                              "name": "llama", "uid": "s"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n", "zone": "z",
                           "conditions": {"ready": false, "terminating": true},
                           "targetRef": {"kind": "Pod", "name": "p", "uid": "pu",
                                         "namespace": "ns"}}],
        }))
        .unwrap();
        let RoutedSlice(r) = RoutedSlice::from(s);
        let m = &r.metadata;
        assert_eq!(
            (
                m.name.as_deref(),
                m.namespace.as_deref(),
                m.resource_version.as_deref()
            ),
            (Some("llama-x1"), Some("ns"), Some("4"))
        );
        assert_eq!(m.labels, Some(pairs(&[(SERVICE_NAME_LABEL, "llama")])));
        assert_eq!((&m.uid, &m.generate_name), (&None, &None));
        assert_eq!(m.owner_references, None);
        assert_eq!(r.address_type, "IPv4");
        let p = &r.ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, &p.protocol),
            (Some("http"), Some(8000), &None)
        );
        let e = &r.endpoints.as_ref().unwrap()[0];
        assert_eq!(e.addresses, ["10.0.0.1"]);
        let c = e.conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.terminating), (Some(false), Some(true)));
        let t = e.target_ref.as_ref().unwrap();
        assert_eq!(
            (t.kind.as_deref(), t.name.as_deref()),
            (Some("Pod"), Some("p"))
        );
        assert_eq!((&t.uid, &e.node_name, &e.zone), (&None, &None, &None));
    }
}
