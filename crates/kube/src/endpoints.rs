//! The one rule for the endpoints of a Service, read from its EndpointSlices: which slices
//! count (address type), which port, and which endpoints a reader wants (conditions).
//!
//! Conditions follow the API's defaults: an unset `ready` means ready, an unset `serving`
//! means what `ready` says, an unset `terminating` means not terminating. Only `IPv4` and
//! `IPv6` slices count (an `FQDN` slice names hosts, not pods), and only addresses that parse
//! as IPs. Endpoints are sorted by address; an address listed twice counts once (the first).
//!
//! Readers pick what they need with [`Select`]: the activator routes new requests to
//! [`Select::All`] with their conditions (its gate tells ready from draining pods); the
//! autoscaler scrapes [`Select::Draining`] endpoints, so a pod or activator that is shutting
//! down is still counted while it holds requests.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};

/// The label EndpointSlices carry with their Service's name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An endpoint's conditions, with the API's defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// Ready for new requests (unset: true).
    pub ready: bool,
    /// Serving, even while terminating (unset: as `ready`).
    pub serving: bool,
    /// Shutting down (unset: false).
    pub terminating: bool,
}

impl Conditions {
    /// The conditions as the API means them when some are unset.
    pub fn of(c: Option<&EndpointConditions>) -> Self {
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        Self {
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        }
    }
}

/// Which endpoints a reader wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Every endpoint, with its conditions (the caller decides).
    All,
    /// Those ready for new requests.
    Serving,
    /// Those ready, and those terminating: a draining pod still holds queued and in-flight
    /// requests, so its metrics still count.
    Draining,
}

impl Select {
    /// Whether an endpoint with these conditions is wanted.
    pub fn wants(self, c: Conditions) -> bool {
        match self {
            Select::All => true,
            Select::Serving => c.ready,
            Select::Draining => c.ready || c.terminating,
        }
    }
}

/// Which port of the slices to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    /// The slice port with this name (`""` for an unnamed port); slices without it are skipped.
    Named(String),
    /// This pod port, whatever the slices list.
    Number(i32),
    /// The slice port with this name, or with this number, else the number itself (a flag
    /// value such as `metrics` or `9090`).
    NameOrNumber(String),
}

impl Port {
    fn in_slice(&self, s: &EndpointSlice) -> Option<i32> {
        let ports = s.ports.iter().flatten();
        match self {
            Port::Number(n) => Some(*n),
            Port::Named(name) => ports
                .into_iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == name)
                .and_then(|p| p.port),
            Port::NameOrNumber(want) => ports
                .into_iter()
                .find_map(|p| {
                    let by_name = p.name.as_deref() == Some(want.as_str());
                    let by_number = p.port.is_some_and(|n| n.to_string() == *want);
                    (by_name || by_number).then_some(p.port).flatten()
                })
                .or_else(|| want.parse().ok()),
        }
    }
}

/// One endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Pod IP and the chosen port.
    pub addr: SocketAddr,
    /// Its conditions.
    pub conditions: Conditions,
    /// The pod behind it, when the slice names one.
    pub pod_name: Option<String>,
}

/// The endpoints of `slices` (the slices of one Service) on `port` that `select` wants.
pub fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &Port,
    select: Select,
) -> Vec<SliceEndpoint> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            continue;
        }
        let Some(number) = port.in_slice(s).and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let conditions = Conditions::of(e.conditions.as_ref());
            if !select.wants(conditions) {
                continue;
            }
            let pod_name = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(SliceEndpoint {
                    addr: SocketAddr::new(ip, number),
                    conditions,
                    pod_name: pod_name.clone(),
                });
            }
        }
    }
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};

    use super::*;

    type Cond = (Option<bool>, Option<bool>, Option<bool>);

    fn slice(kind: &str, eps: &[(&str, Cond)], ports: &[(Option<&str>, i32)]) -> EndpointSlice {
        EndpointSlice {
            address_type: kind.into(),
            endpoints: Some(
                eps.iter()
                    .map(|(a, (ready, serving, terminating))| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            serving: *serving,
                            terminating: *terminating,
                        }),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: Some(format!("pod-{a}")),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: n.map(str::to_owned),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            metadata: Default::default(),
        }
    }

    fn addrs(eps: &[SliceEndpoint]) -> Vec<String> {
        eps.iter().map(|e| e.addr.to_string()).collect()
    }

    const UNSET: Cond = (None, None, None);
    const READY: Cond = (Some(true), Some(true), Some(false));
    const STARTING: Cond = (Some(false), Some(false), Some(false));
    const DRAINING: Cond = (Some(false), Some(true), Some(true));

    #[test]
    fn unset_conditions_mean_ready_serving_and_not_terminating() {
        let c = Conditions::of(None);
        assert_eq!(
            c,
            Conditions {
                ready: true,
                serving: true,
                terminating: false
            }
        );
        let not_ready = EndpointConditions {
            ready: Some(false),
            ..Default::default()
        };
        assert!(!Conditions::of(Some(&not_ready)).serving);
    }

    #[test]
    fn each_selection_takes_its_endpoints() {
        let s = slice(
            "IPv4",
            &[
                ("10.0.0.4", DRAINING),
                ("10.0.0.1", READY),
                ("10.0.0.2", UNSET),
                ("10.0.0.3", STARTING),
            ],
            &[(Some("http"), 8000)],
        );
        let port = Port::Named("http".into());
        assert_eq!(
            addrs(&endpoints([&s], &port, Select::All)),
            [
                "10.0.0.1:8000",
                "10.0.0.2:8000",
                "10.0.0.3:8000",
                "10.0.0.4:8000"
            ]
        );
        assert_eq!(
            addrs(&endpoints([&s], &port, Select::Serving)),
            ["10.0.0.1:8000", "10.0.0.2:8000"]
        );
        assert_eq!(
            addrs(&endpoints([&s], &port, Select::Draining)),
            ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.4:8000"]
        );
        let all = endpoints([&s], &port, Select::All);
        assert!(all[3].conditions.terminating && !all[3].conditions.ready);
        assert_eq!(all[0].pod_name.as_deref(), Some("pod-10.0.0.1"));
    }

    #[test]
    fn only_ip_slices_and_ip_addresses_count() {
        let fqdn = slice("FQDN", &[("model.example.com", READY)], &[(None, 80)]);
        let v6 = slice(
            "IPv6",
            &[("fd00::1", READY), ("not-an-ip", READY)],
            &[(None, 80)],
        );
        let port = Port::Named(String::new());
        assert_eq!(
            addrs(&endpoints([&fqdn, &v6], &port, Select::All)),
            ["[fd00::1]:80"]
        );
    }

    #[test]
    fn ports_by_name_by_number_or_either() {
        let a = slice(
            "IPv4",
            &[("10.0.0.1", READY)],
            &[(Some("http"), 8080), (Some("metrics"), 9090)],
        );
        let b = slice("IPv4", &[("10.0.0.2", READY)], &[(Some("http"), 8081)]);
        let both = [&a, &b];
        // A name that one slice lacks skips that slice.
        assert_eq!(
            addrs(&endpoints(
                both,
                &Port::Named("metrics".into()),
                Select::All
            )),
            ["10.0.0.1:9090"]
        );
        assert_eq!(
            addrs(&endpoints(both, &Port::Number(7000), Select::All)),
            ["10.0.0.1:7000", "10.0.0.2:7000"]
        );
        // By number: a listed number, else the number as given.
        assert_eq!(
            addrs(&endpoints(
                both,
                &Port::NameOrNumber("8081".into()),
                Select::All
            )),
            ["10.0.0.1:8081", "10.0.0.2:8081"]
        );
        assert!(endpoints(both, &Port::NameOrNumber("nope".into()), Select::All).is_empty());
        assert!(endpoints(both, &Port::Number(70000), Select::All).is_empty());
    }

    #[test]
    fn an_address_in_two_slices_counts_once() {
        let a = slice("IPv4", &[("10.0.0.1", READY)], &[(None, 80)]);
        let b = slice("IPv4", &[("10.0.0.1", STARTING)], &[(None, 80)]);
        let got = endpoints([&a, &b], &Port::Named(String::new()), Select::All);
        assert_eq!(got.len(), 1);
        assert!(got[0].conditions.ready, "the first listing is kept");
    }
}
