//! The wire format of the activator's stat feed (`GET /v1/feed` on its admin port), the one
//! the autoscaler reads every scrape interval instead of parsing `/metrics`. Both binaries use
//! these types, so the two ends cannot drift apart. `docs/architecture.md` ("Contract: the
//! stat feed") has the protocol; in short:
//!
//! - Every value is cumulative or a current gauge, never a delta: a lost or repeated read
//!   cannot miscount, the next good read covers the whole gap.
//! - The reader sends the `instance` and `generation` of the last page it applied
//!   (`?instance=I&since=G`); the page lists only models changed since, plus every model
//!   holding requests (its integral moves). A model idle since the last read costs nothing.
//! - A page for another instance (the activator restarted), an unknown or too old cursor, or no
//!   cursor is `full`: it lists every model, and the reader replaces what it knew.

use serde::{Deserialize, Serialize};

/// The feed's path on the activator's admin port.
pub const FEED_PATH: &str = "/v1/feed";

/// One answer of the feed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    /// Random per activator process: a different value means the activator restarted and
    /// every counter started again from zero.
    pub instance: u64,
    /// The cursor to send as `since` on the next read.
    pub generation: u64,
    /// The page lists every model the activator routes (else only those changed since the
    /// reader's cursor, and the ones holding requests).
    pub full: bool,
    /// The activator's monotonic clock at the read, in nanoseconds since it started: rates are
    /// taken over the activator's own time between two pages, not the reader's.
    pub uptime_ns: u64,
    /// The models listed.
    pub models: Vec<FeedModel>,
    /// Models no longer routed since the cursor (never set on a full page: absence says it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<FeedKey>,
}

/// A Deployment as the feed names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeedKey {
    /// The Deployment's namespace.
    #[serde(rename = "ns")]
    pub namespace: String,
    /// The Deployment's name.
    #[serde(rename = "dep")]
    pub deployment: String,
}

/// One model's values at the read. Short field names: a busy page lists every active model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedModel {
    /// The Deployment's namespace.
    #[serde(rename = "ns")]
    pub namespace: String,
    /// The Deployment's name.
    #[serde(rename = "dep")]
    pub deployment: String,
    /// Identifies this model's counters within the instance: a model removed and routed again
    /// (or renamed) starts new counters from zero under a new incarnation.
    #[serde(rename = "inc")]
    pub incarnation: u64,
    /// The integral over time of the requests held (queued + in flight), in request-microseconds
    /// (cumulative; an integer, so two pages' difference is exact).
    #[serde(rename = "us")]
    pub concurrency_us: u64,
    /// Requests answered (cumulative).
    #[serde(rename = "req")]
    pub requests: u64,
    /// Requests forwarded and not yet answered, now.
    #[serde(rename = "fl")]
    pub in_flight: u64,
    /// Requests waiting for capacity, now.
    #[serde(rename = "q")]
    pub queued: u64,
    /// The figures demand sizing needs (absent from an activator older than them: the reader
    /// then sizes as Knative does).
    #[serde(rename = "dm", default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<FeedDemand>,
    /// When the model's latest request arrived, on the activator's clock of
    /// [`FeedPage::uptime_ns`] (`uptime_ns - this` is its age, free of any skew between the
    /// pods' wall clocks). Absent: none since the activator started. It moves only when a
    /// request arrives, which lists the model anyway: an idle page stays empty.
    #[serde(rename = "lr", default, skip_serializing_if = "Option::is_none")]
    pub last_request_ns: Option<u64>,
    /// The model's latest cold start as this activator saw it. Absent: none since it started.
    #[serde(rename = "cs", default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<FeedColdStart>,
}

/// One cold start: requests held while the model had no ready pod, until one took them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedColdStart {
    /// When the last of its held requests got a pod, on the clock of [`FeedPage::uptime_ns`].
    #[serde(rename = "at")]
    pub at_ns: u64,
    /// The longest any of them waited, in microseconds: the cold start as a client saw it.
    #[serde(rename = "us")]
    pub wait_us: u64,
}

/// What a status read asks for (`?ns=N&dep=D`, either or both): a full page of only those
/// models, with no cursor (`generation` 0). The autoscaler never filters; `kubectl zeroscale`
/// does, so one model's status costs one small page at any number of models.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only Deployments of this name.
    pub deployment: Option<String>,
}

impl FeedFilter {
    /// The filter a query carries, if it carries one.
    pub fn parse(query: Option<&str>) -> Option<Self> {
        let mut f = Self::default();
        for pair in query?.split('&') {
            match pair.split_once('=') {
                Some(("ns", v)) if !v.is_empty() => f.namespace = Some(v.to_owned()),
                Some(("dep", v)) if !v.is_empty() => f.deployment = Some(v.to_owned()),
                _ => {}
            }
        }
        (f != Self::default()).then_some(f)
    }

    /// The path and query of a filtered read. Kubernetes names need no escaping.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("ns={ns}"));
        }
        if let Some(d) = &self.deployment {
            parts.push(format!("dep={d}"));
        }
        format!("{FEED_PATH}?{}", parts.join("&"))
    }

    /// Whether the filter takes `namespace/deployment`.
    pub fn matches(&self, namespace: &str, deployment: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.deployment.as_deref().is_none_or(|d| d == deployment)
    }
}

/// One model's demand figures, all cumulative (a difference of two pages is exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDemand {
    /// Requests taken for the model: every one routed to it, refused ones included.
    #[serde(rename = "arr")]
    pub arrivals: u64,
    /// The integral over time of the requests at pods (forwarded and not yet answered; queue
    /// time excluded), in request-microseconds.
    #[serde(rename = "pod")]
    pub pod_us: u64,
    /// Requests pods finished.
    #[serde(rename = "srv")]
    pub served: u64,
    /// The summed time those requests spent at the pod, in microseconds.
    #[serde(rename = "svc")]
    pub service_us: u64,
}

impl FeedModel {
    /// The model's key.
    pub fn key(&self) -> FeedKey {
        FeedKey {
            namespace: self.namespace.clone(),
            deployment: self.deployment.clone(),
        }
    }
}

/// The query of a read: `?instance=I&since=G`, both from the last page applied.
pub fn query(instance: u64, since: u64) -> String {
    format!("{FEED_PATH}?instance={instance}&since={since}")
}

/// The cursor a query carries: `(instance, since)` when both are present and numeric.
pub fn parse_query(query: Option<&str>) -> Option<(u64, u64)> {
    let (mut instance, mut since) = (None, None);
    for pair in query?.split('&') {
        match pair.split_once('=') {
            Some(("instance", v)) => instance = v.parse().ok(),
            Some(("since", v)) => since = v.parse().ok(),
            _ => {}
        }
    }
    Some((instance?, since?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_round_trips_and_bad_cursors_are_none() {
        let q = query(7, 42);
        assert_eq!(q, "/v1/feed?instance=7&since=42");
        assert_eq!(
            parse_query(q.split_once('?').map(|(_, q)| q)),
            Some((7, 42))
        );
        assert_eq!(parse_query(Some("since=3&instance=9&x=1")), Some((9, 3)));
        for bad in [None, Some(""), Some("since=3"), Some("instance=1&since=-1")] {
            assert_eq!(parse_query(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_filter_round_trips_and_a_cursor_query_has_none() {
        let f = FeedFilter {
            namespace: Some("ml".into()),
            deployment: Some("llama".into()),
        };
        assert_eq!(f.query(), "/v1/feed?ns=ml&dep=llama");
        assert_eq!(
            FeedFilter::parse(f.query().split_once('?').map(|(_, q)| q)),
            Some(f.clone())
        );
        assert!(f.matches("ml", "llama"));
        assert!(!f.matches("ml", "other") && !f.matches("other", "llama"));
        let ns = FeedFilter::parse(Some("ns=ml")).unwrap();
        assert!(ns.matches("ml", "anything") && !ns.matches("x", "anything"));
        for none in [None, Some(""), Some("instance=1&since=2"), Some("ns=&dep=")] {
            assert_eq!(FeedFilter::parse(none), None, "{none:?}");
        }
    }

    #[test]
    fn status_fields_are_absent_when_unknown_and_short_when_set() {
        let mut m = FeedModel::default();
        let bare = serde_json::to_string(&m).unwrap();
        assert!(!bare.contains("lr") && !bare.contains("cs"), "{bare}");
        m.last_request_ns = Some(5);
        m.cold_start = Some(FeedColdStart {
            at_ns: 7,
            wait_us: 9,
        });
        let s = serde_json::to_string(&m).unwrap();
        assert!(
            s.contains(r#""lr":5"#) && s.contains(r#""cs":{"at":7,"us":9}"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<FeedModel>(&s).unwrap(), m);
        // A page from an activator older than these fields still reads.
        assert_eq!(
            serde_json::from_str::<FeedModel>(&bare).unwrap().cold_start,
            None
        );
    }
}
