//! Reading activators (their stat feed, [`feed`]) and, optionally, pods (a gauge from their
//! metrics page), and turning what they said into samples.
//!
//! Parsing and derivation are pure (time is an argument) so counter deltas, restarts, new
//! replicas and failures are unit-tested without sockets; [`fetch`] is the only I/O here.

pub mod feed;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::DeploymentKey;

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The answer could not be parsed.
    #[error("unparsable answer: {0}")]
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
    /// The demand figures since the previous scrape, as rates (meaningful when the round's
    /// [`Round::demand`] is set).
    pub demand: zeroscale_scaling::Demand,
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
    /// Every replica that answered reports the demand figures (activators older than them do
    /// not: the models are then sized as Knative does).
    pub demand: bool,
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
