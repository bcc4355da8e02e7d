//! The two scrape loops: every scrape interval, the activators (found through their
//! Service's EndpointSlices; their stat feed, `GET /v1/feed` on the admin port) and the pods
//! of pod-sourced Deployments are read, and what they said goes to the control loop as
//! [`Scraped`] values.
//!
//! Which endpoints count is the shared rule ([`zeroscale_kube::endpoints`]) with
//! [`Select::Draining`]: a terminating activator or pod still holds requests while it drains.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::mpsc;
use zeroscale_config::GlobalConfig;
use zeroscale_config::feed::{self, FeedPage};
use zeroscale_kube::endpoints::{self, Select};

use crate::DeploymentKey;
use crate::index::PodTarget;
use crate::metrics::Metrics;
use crate::scrape::Round;
use crate::scrape::feed::{FeedDeriver, FeedRead};
use crate::scrape::{self, ScrapeError};

/// What a scrape loop reports to the control loop.
#[derive(Debug)]
pub enum Scraped {
    /// One round over every activator.
    Round(Round),
    /// One pod-sourced Deployment's gauge summed over its pods, or `None` when any failed.
    Pod(DeploymentKey, Instant, Option<f64>),
}

/// Activator admin addresses (`http://ip:port`) from the EndpointSlices of the activator
/// Service: ready endpoints,
/// and terminating ones (not ready: an activator turns its readiness off on SIGTERM), which
/// still hold queued and in-flight requests while they drain. Leaving those out would read
/// their requests as gone and could scale a busy model down during a rollout.
pub fn activator_urls(slices: &[Arc<EndpointSlice>], port: &str) -> Vec<String> {
    let port = endpoints::Port::NameOrNumber(port.to_owned());
    let mut urls: Vec<String> =
        endpoints::endpoints(slices.iter().map(|s| &**s), &port, Select::Draining)
            .into_iter()
            .map(|e| format!("http://{}", e.addr))
            .collect();
    urls.sort();
    urls
}

/// Reads every activator's stat feed each scrape interval; each round goes to `tx`.
pub async fn activator_loop<T: From<Scraped>>(
    slices: Store<EndpointSlice>,
    port: String,
    global: Arc<RwLock<GlobalConfig>>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<T>,
) {
    let client = scrape::http_client();
    let mut deriver = FeedDeriver::default();
    loop {
        let (interval, timeout) = {
            let g = global.read().unwrap_or_else(|e| e.into_inner());
            (g.scrape_interval, g.scrape_timeout)
        };
        let started = tokio::time::Instant::now();
        let endpoints = activator_urls(&slices.state(), &port);
        let reads = futures::future::join_all(endpoints.into_iter().map(|endpoint| {
            let client = client.clone();
            let cursor = deriver.cursor(&endpoint);
            async move {
                let result = read_feed(&client, &endpoint, cursor, timeout).await;
                FeedRead {
                    endpoint,
                    at: Instant::now(),
                    result,
                }
            }
        }))
        .await;
        let round = deriver.round(Instant::now(), reads);
        for (endpoint, reason) in &round.failures {
            metrics.scrape_error("activator");
            tracing::debug!(endpoint, reason, "activator feed read failed");
        }
        if tx.send(Scraped::Round(round).into()).await.is_err() {
            return;
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// One page of `endpoint`'s stat feed after `cursor` (none: a full page).
pub async fn read_feed(
    client: &scrape::HttpClient,
    endpoint: &str,
    cursor: Option<(u64, u64)>,
    timeout: Duration,
) -> Result<FeedPage, ScrapeError> {
    let (instance, since) = cursor.unwrap_or((0, 0));
    let url = format!("{endpoint}{}", feed::query(instance, since));
    let text = scrape::fetch(client, &url, timeout).await?;
    serde_json::from_str(&text).map_err(|e| ScrapeError::Parse(format!("{url}: {e}")))
}

/// The pod addresses of a Service to scrape on `port`, from its EndpointSlices (listed from
/// the API: pod-sourced Deployments are expected to be few): ready pods and draining ones,
/// whose in-flight requests still count ([`Select::Draining`]).
async fn ready_addresses(
    client: &Client,
    namespace: &str,
    service: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp = kube::api::ListParams::default()
        .labels(&format!("{}={service}", endpoints::SERVICE_NAME_LABEL));
    let slices = api.list(&lp).await?.items;
    let port = endpoints::Port::Number(i32::from(port));
    Ok(endpoints::endpoints(&slices, &port, Select::Draining)
        .into_iter()
        .map(|e| e.addr)
        .collect())
}

/// One scrape of a pod-sourced Deployment: the gauge summed over its ready pods, or None when
/// any of them (or the EndpointSlice list) failed.
async fn scrape_pods(
    client: &Client,
    http: &scrape::HttpClient,
    target: &PodTarget,
    timeout: Duration,
) -> Option<f64> {
    let addresses = match ready_addresses(
        client,
        &target.key.namespace,
        &target.service,
        target.port,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(deployment = %target.key, error = %e, "listing pod endpoints failed");
            return None;
        }
    };
    let fetches = addresses.iter().map(|addr| {
        let url = format!("http://{addr}{}", target.path);
        async move {
            let text = scrape::fetch(http, &url, timeout)
                .await
                .map_err(|e| e.to_string())?;
            scrape::parse_gauge_sum(&text, &target.metric)
                .ok_or_else(|| format!("{url} has no {}", target.metric))
        }
    });
    let mut sum = 0.0;
    for result in futures::future::join_all(fetches).await {
        match result {
            Ok(v) => sum += v,
            Err(reason) => {
                tracing::debug!(deployment = %target.key, reason, "pod scrape failed");
                return None;
            }
        }
    }
    Some(sum)
}

/// Scrapes the pods of every pod-sourced Deployment in `targets` each scrape interval.
pub async fn pod_loop<T: From<Scraped>>(
    client: Client,
    targets: Arc<RwLock<Vec<PodTarget>>>,
    global: Arc<RwLock<GlobalConfig>>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<T>,
) {
    let http = scrape::http_client();
    loop {
        let (interval, timeout) = {
            let g = global.read().unwrap_or_else(|e| e.into_inner());
            (g.scrape_interval, g.scrape_timeout)
        };
        let started = tokio::time::Instant::now();
        let current = targets.read().unwrap_or_else(|e| e.into_inner()).clone();
        let results = futures::future::join_all(
            current
                .iter()
                .map(|t| scrape_pods(&client, &http, t, timeout)),
        )
        .await;
        let at = Instant::now();
        for (target, value) in current.into_iter().zip(results) {
            if value.is_none() {
                metrics.scrape_error("pod");
            }
            if tx
                .send(Scraped::Pod(target.key, at, value).into())
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    use super::*;

    fn slice(addresses: &[(&str, Option<bool>)], ports: &[(&str, i32)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(
                addresses
                    .iter()
                    .map(|(a, ready)| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
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
                        name: Some(n.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            metadata: Default::default(),
        })
    }

    #[test]
    fn activator_urls_use_ready_endpoints_and_the_named_port() {
        let slices = vec![
            slice(
                &[
                    ("10.244.0.5", Some(true)),
                    ("10.244.0.6", Some(false)),
                    ("10.244.0.7", None),
                ],
                &[("http", 8080), ("metrics", 9090)],
            ),
            slice(&[("fd00::1", Some(true))], &[("metrics", 9091)]),
        ];
        assert_eq!(
            activator_urls(&slices, "metrics"),
            vec![
                "http://10.244.0.5:9090",
                "http://10.244.0.7:9090",
                "http://[fd00::1]:9091"
            ]
        );
        assert_eq!(
            activator_urls(&slices[..1], "8080"),
            vec!["http://10.244.0.5:8080", "http://10.244.0.7:8080"]
        );
        assert!(activator_urls(&slices[..1], "nope").is_empty());
    }

    #[test]
    fn a_terminating_activator_is_still_scraped_while_it_drains() {
        let mut s = (*slice(
            &[("10.88.0.2", Some(false)), ("10.88.0.3", Some(false))],
            &[("metrics", 9090)],
        ))
        .clone();
        // .2 is draining (SIGTERM: readiness off); .3 is starting and not ready yet.
        s.endpoints.as_mut().unwrap()[0].conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(true),
        });
        assert_eq!(
            activator_urls(&[Arc::new(s)], "metrics"),
            vec!["http://10.88.0.2:9090"]
        );
    }
}
