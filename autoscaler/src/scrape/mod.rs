//! Scraping activators (and, optionally, pods) and turning their counters into samples.
//!
//! Parsing and derivation are pure (time is an argument) so counter deltas, resets, new
//! replicas and failures are unit-tested without sockets; [`fetch`] is the only I/O here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::DeploymentKey;

/// Name of the activator's request-seconds counter (see docs/architecture.md).
pub const CONCURRENCY_SECONDS: &str = "zeroscale_activator_request_concurrency_seconds_total";
/// Name of the activator's answered-requests counter.
pub const REQUESTS: &str = "zeroscale_activator_requests_total";
/// Name of the activator's in-flight gauge.
pub const IN_FLIGHT: &str = "zeroscale_activator_requests_in_flight";
/// Name of the activator's queued gauge.
pub const QUEUED: &str = "zeroscale_activator_requests_queued";

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The exposition text could not be parsed.
    #[error("unparsable metrics: {0}")]
    Parse(String),
    /// The HTTP request failed.
    #[error("request to {url} failed: {reason}")]
    Http {
        /// The scraped URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The endpoint answered with a non-200 status.
    #[error("{url} answered {status}")]
    Status {
        /// The scraped URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// No answer within the scrape timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The scraped URL.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
    },
}

/// The raw per-model values one activator replica exposes at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelCounters {
    /// `request_concurrency_seconds_total`.
    pub concurrency_seconds: f64,
    /// `requests_total`, summed over `code`.
    pub requests: f64,
    /// `requests_in_flight`.
    pub in_flight: f64,
    /// `requests_queued`.
    pub queued: f64,
}

/// Everything one activator replica said in one scrape, keyed by Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivatorSnapshot {
    /// Per-model values; a model the replica never saw is absent (counts as zero).
    pub models: HashMap<DeploymentKey, ModelCounters>,
}

fn parse_samples(text: &str) -> Result<prometheus_parse::Scrape, ScrapeError> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).map_err(|e| ScrapeError::Parse(e.to_string()))
}

fn scalar(value: &prometheus_parse::Value) -> Option<f64> {
    match value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(*v),
        _ => None,
    }
}

/// Parses an activator's `/metrics` text into per-Deployment counters.
///
/// Series without `namespace`/`deployment` labels and unknown metrics are ignored, so the
/// activator may add metrics freely.
pub fn parse_activator(text: &str) -> Result<ActivatorSnapshot, ScrapeError> {
    let scrape = parse_samples(text)?;
    let mut snapshot = ActivatorSnapshot::default();
    for sample in &scrape.samples {
        let field: fn(&mut ModelCounters) -> &mut f64 = match sample.metric.as_str() {
            CONCURRENCY_SECONDS => |c| &mut c.concurrency_seconds,
            REQUESTS => |c| &mut c.requests,
            IN_FLIGHT => |c| &mut c.in_flight,
            QUEUED => |c| &mut c.queued,
            _ => continue,
        };
        let (Some(namespace), Some(name), Some(value)) = (
            sample.labels.get("namespace"),
            sample.labels.get("deployment"),
            scalar(&sample.value),
        ) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let key = DeploymentKey::new(namespace, name);
        // Sum: `requests_total` has one series per code, and two routed model names may map to
        // the same Deployment.
        *field(snapshot.models.entry(key).or_default()) += value;
    }
    Ok(snapshot)
}

/// Sums every series of gauge `metric` in a pod's exposition text (pod metric source).
/// `None` when the pod does not expose the metric at all.
///
/// Read by hand rather than with prometheus-parse because model servers use metric names with
/// colons (`vllm:num_requests_running`), which that parser skips.
pub fn parse_gauge_sum(text: &str, metric: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().map(str::trim_start) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            match labels.rfind('}') {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(char::is_whitespace) {
            rest
        } else {
            // A longer name that merely starts with `metric`.
            continue;
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| v.is_finite()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The result of scraping one activator replica.
#[derive(Debug)]
pub struct EndpointScrape {
    /// Stable identity of the replica (its address).
    pub endpoint: String,
    /// When the answer arrived.
    pub at: Instant,
    /// The parsed snapshot, or why there is none.
    pub result: Result<ActivatorSnapshot, ScrapeError>,
}

/// One Deployment's values derived from a round, summed over activator replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelSample {
    /// Time-weighted average concurrency since the previous scrape.
    pub concurrency: f64,
    /// Requests answered per second since the previous scrape.
    pub rps: f64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests queued now.
    pub queued: u64,
}

/// What one scrape round of every activator replica yielded.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// When the round finished.
    pub at: Instant,
    /// True when every known activator replica answered (and there was at least one). Only a
    /// complete round may count as evidence of idleness.
    pub complete: bool,
    /// Per-Deployment sums over the replicas that answered.
    pub models: HashMap<DeploymentKey, ModelSample>,
    /// Replicas that failed, with the reason.
    pub failures: Vec<(String, String)>,
}

/// Turns successive snapshots of each activator replica into rates.
///
/// Keeps the previous snapshot per replica. A counter lower than before means the replica
/// restarted: the new value is the increase since the restart (Prometheus `rate()` semantics).
/// A replica seen for the first time has no previous value: its gauges (in flight + queued)
/// stand in for its average concurrency, and its rps counts as zero, for that one round.
#[derive(Debug, Default)]
pub struct Deriver {
    previous: HashMap<String, (Instant, ActivatorSnapshot)>,
}

fn increase(previous: f64, current: f64) -> f64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

impl Deriver {
    /// Combines one round of scrapes. Replicas absent from `scrapes` are forgotten (they left
    /// the Service); failed replicas keep their previous snapshot so the next successful scrape
    /// averages over the whole gap.
    pub fn round(&mut self, at: Instant, scrapes: Vec<EndpointScrape>) -> Round {
        let mut models: HashMap<DeploymentKey, ModelSample> = HashMap::new();
        let mut failures = Vec::new();
        let complete = !scrapes.is_empty();
        let mut complete = complete;
        let present: std::collections::HashSet<&str> =
            scrapes.iter().map(|s| s.endpoint.as_str()).collect();
        self.previous.retain(|k, _| present.contains(k.as_str()));
        let mut updates = Vec::new();
        for scrape in scrapes {
            let snapshot = match scrape.result {
                Ok(s) => s,
                Err(e) => {
                    complete = false;
                    failures.push((scrape.endpoint, e.to_string()));
                    continue;
                }
            };
            let previous = self.previous.get(&scrape.endpoint);
            for (key, now) in &snapshot.models {
                let sample = models.entry(key.clone()).or_default();
                sample.in_flight += now.in_flight.max(0.0).round() as u64;
                sample.queued += now.queued.max(0.0).round() as u64;
                match previous {
                    Some((then_at, then)) if scrape.at > *then_at => {
                        let dt = scrape.at.duration_since(*then_at).as_secs_f64();
                        let before = then.models.get(key).copied().unwrap_or_default();
                        sample.concurrency +=
                            increase(before.concurrency_seconds, now.concurrency_seconds) / dt;
                        sample.rps += increase(before.requests, now.requests) / dt;
                    }
                    _ => sample.concurrency += (now.in_flight + now.queued).max(0.0),
                }
            }
            updates.push((scrape.endpoint, scrape.at, snapshot));
        }
        for (endpoint, at, snapshot) in updates {
            self.previous.insert(endpoint, (at, snapshot));
        }
        Round {
            at,
            complete,
            models,
            failures,
        }
    }
}

/// An HTTP client for scrapes (plain HTTP: activators and pods are in-cluster).
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Builds the scrape client.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `url` and returns the body as text, within `timeout`.
pub async fn fetch(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    let http_err = |reason: String| ScrapeError::Http {
        url: url.to_owned(),
        reason,
    };
    let work = async {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| http_err(e.to_string()))?;
        let response = client.get(uri).await.map_err(|e| http_err(e.to_string()))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(ScrapeError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http_err(e.to_string()))?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| http_err(e.to_string()))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ScrapeError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(
        ns: &str,
        dep: &str,
        seconds: f64,
        requests: f64,
        in_flight: f64,
        queued: f64,
    ) -> String {
        format!(
            "# HELP {CONCURRENCY_SECONDS} x\n# TYPE {CONCURRENCY_SECONDS} counter\n\
             {CONCURRENCY_SECONDS}{{namespace=\"{ns}\",deployment=\"{dep}\",model=\"m\"}} {seconds}\n\
             {REQUESTS}{{namespace=\"{ns}\",deployment=\"{dep}\",model=\"m\",code=\"200\"}} {requests}\n\
             {REQUESTS}{{namespace=\"{ns}\",deployment=\"{dep}\",model=\"m\",code=\"503\"}} 0\n\
             {IN_FLIGHT}{{namespace=\"{ns}\",deployment=\"{dep}\",model=\"m\"}} {in_flight}\n\
             {QUEUED}{{namespace=\"{ns}\",deployment=\"{dep}\",model=\"m\"}} {queued}\n\
             # EOF\n"
        )
    }

    fn ok(endpoint: &str, at: Instant, text: &str) -> EndpointScrape {
        EndpointScrape {
            endpoint: endpoint.into(),
            at,
            result: parse_activator(text),
        }
    }

    fn key() -> DeploymentKey {
        DeploymentKey::new("models", "llama")
    }

    #[test]
    fn parses_the_contract_metrics_and_sums_codes() {
        let text = exposition("models", "llama", 12.5, 40.0, 3.0, 2.0)
            + "zeroscale_activator_requests_total{namespace=\"models\",deployment=\"llama\",model=\"m\",code=\"504\"} 2\n\
               unrelated_metric{namespace=\"models\",deployment=\"llama\"} 99\n\
               zeroscale_activator_requests_queued{model=\"nolabels\"} 7\n";
        let snapshot = parse_activator(&text).unwrap();
        assert_eq!(snapshot.models.len(), 1);
        let c = snapshot.models[&key()];
        assert_eq!(
            c,
            ModelCounters {
                concurrency_seconds: 12.5,
                requests: 42.0,
                in_flight: 3.0,
                queued: 2.0
            }
        );
    }

    #[test]
    fn concurrency_is_the_counter_delta_over_time() {
        let t0 = Instant::now();
        let mut d = Deriver::default();
        let first = d.round(
            t0,
            vec![ok(
                "a",
                t0,
                &exposition("models", "llama", 100.0, 10.0, 4.0, 1.0),
            )],
        );
        // First sight of a replica: gauges stand in for the average.
        assert_eq!(first.models[&key()].concurrency, 5.0);
        assert_eq!(first.models[&key()].rps, 0.0);
        assert!(first.complete);
        let t1 = t0 + Duration::from_secs(2);
        let second = d.round(
            t1,
            vec![ok(
                "a",
                t1,
                &exposition("models", "llama", 107.0, 30.0, 0.0, 0.0),
            )],
        );
        let s = second.models[&key()];
        assert!((s.concurrency - 3.5).abs() < 1e-9, "{s:?}");
        assert!((s.rps - 10.0).abs() < 1e-9);
        assert_eq!((s.in_flight, s.queued), (0, 0));
    }

    #[test]
    fn a_counter_reset_counts_the_value_since_restart() {
        let t0 = Instant::now();
        let mut d = Deriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                &exposition("models", "llama", 500.0, 90.0, 0.0, 0.0),
            )],
        );
        let t1 = t0 + Duration::from_secs(1);
        let r = d.round(
            t1,
            vec![ok(
                "a",
                t1,
                &exposition("models", "llama", 0.75, 2.0, 1.0, 0.0),
            )],
        );
        let s = r.models[&key()];
        assert!((s.concurrency - 0.75).abs() < 1e-9);
        assert!((s.rps - 2.0).abs() < 1e-9);
    }

    #[test]
    fn replicas_are_summed_and_a_new_replica_uses_its_gauges() {
        let t0 = Instant::now();
        let mut d = Deriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                &exposition("models", "llama", 0.0, 0.0, 0.0, 0.0),
            )],
        );
        let t1 = t0 + Duration::from_secs(1);
        let r = d.round(
            t1,
            vec![
                ok("a", t1, &exposition("models", "llama", 2.0, 4.0, 2.0, 0.0)),
                ok(
                    "b",
                    t1,
                    &exposition("models", "llama", 900.0, 900.0, 1.0, 3.0),
                ),
            ],
        );
        let s = r.models[&key()];
        assert!(
            (s.concurrency - 6.0).abs() < 1e-9,
            "2 from a's delta + 4 from b's gauges: {s:?}"
        );
        assert!((s.rps - 4.0).abs() < 1e-9);
        assert_eq!((s.in_flight, s.queued), (3, 3));
        assert!(r.complete);
    }

    #[test]
    fn a_failed_replica_makes_the_round_incomplete_and_keeps_its_baseline() {
        let t0 = Instant::now();
        let mut d = Deriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                &exposition("models", "llama", 10.0, 0.0, 0.0, 0.0),
            )],
        );
        let t1 = t0 + Duration::from_secs(1);
        let failed = EndpointScrape {
            endpoint: "a".into(),
            at: t1,
            result: Err(ScrapeError::Timeout {
                url: "http://a".into(),
                timeout: Duration::from_secs(1),
            }),
        };
        let r = d.round(t1, vec![failed]);
        assert!(!r.complete);
        assert_eq!(r.failures.len(), 1);
        assert!(r.models.is_empty());
        // The next success averages over the whole 4s gap since the last good scrape.
        let t2 = t0 + Duration::from_secs(4);
        let r = d.round(
            t2,
            vec![ok(
                "a",
                t2,
                &exposition("models", "llama", 18.0, 0.0, 0.0, 0.0),
            )],
        );
        assert!(r.complete);
        assert!((r.models[&key()].concurrency - 2.0).abs() < 1e-9);
    }

    #[test]
    fn no_replicas_is_never_a_complete_round() {
        let mut d = Deriver::default();
        let r = d.round(Instant::now(), vec![]);
        assert!(!r.complete);
    }

    #[test]
    fn garbage_is_not_a_snapshot_with_data() {
        // prometheus-parse skips lines it does not understand; what matters is that nothing
        // made up comes out.
        let snapshot = parse_activator("<html>not metrics</html>").unwrap();
        assert!(snapshot.models.is_empty());
    }

    #[test]
    fn pod_gauge_is_summed_over_series() {
        let text = "# TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model=\"a\",x=\"}\"} 2\n\
                    vllm:num_requests_running{model=\"b\"} 3 1700000000\n\
                    vllm:num_requests_running_total 100\n\
                    other 9\n";
        assert_eq!(
            parse_gauge_sum(text, "vllm:num_requests_running"),
            Some(5.0)
        );
        assert_eq!(parse_gauge_sum("plain 4\n", "plain"), Some(4.0));
        assert_eq!(parse_gauge_sum(text, "missing"), None);
    }
}
