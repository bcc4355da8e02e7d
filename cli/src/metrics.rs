//! Per-model figures from the add-on's own pages. Pure: pages in, figures out.
//!
//! - Each activator's stat feed (`/v1/feed`, read with a `?ns=&dep=` filter: one small page per
//!   activator at any number of models): requests in flight, queued and answered, summed over
//!   the activators; the latest request and the latest cold start over all of them. The feed
//!   keeps these for every routed model, idle or not; the activator's per-model `/metrics`
//!   series exist only while a model is active (and `--idle-series-retention` after), so they
//!   could not say "last request 3 h ago".
//! - The leader autoscaler's `/metrics`: its window averages and desired replicas.
//!
//! Ages are taken on each activator's own monotonic clock (a feed page carries its uptime and
//! the uptime of each event), so the pods' wall clocks never meet.

use std::collections::BTreeMap;

use zeroscale_config::DeploymentKey;
use zeroscale_config::feed::FeedPage;

/// What the activators and the autoscaler report for one Deployment.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelFigures {
    /// Requests forwarded and not yet answered, over all activators.
    pub in_flight: f64,
    /// Requests waiting for a pod, over all activators.
    pub queued: f64,
    /// Requests answered so far, over all activators (since each started).
    pub answered: f64,
    /// The autoscaler's stable-window average concurrency (the leader's).
    pub stable_concurrency: Option<f64>,
    /// Its panic-window average.
    pub panic_concurrency: Option<f64>,
    /// Whether it is in panic mode.
    pub in_panic: Option<bool>,
    /// Its desired replicas.
    pub desired: Option<f64>,
    /// Seconds since the latest request to any activator (`None`: none since they started).
    pub last_request_age_seconds: Option<f64>,
    /// The latest cold start any activator saw.
    pub last_cold_start: Option<ColdStart>,
}

/// One cold start, as the requests it held saw it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ColdStart {
    /// The longest wait of a request held through it, in seconds.
    pub seconds: f64,
    /// Seconds since it ended (its last held request got a pod).
    pub age_seconds: f64,
}

/// The newer of two: the one with the smaller age.
fn newest<T: Copy>(a: Option<T>, b: Option<T>, age: impl Fn(&T) -> f64) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if age(&y) < age(&x) { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// Nanoseconds between two readings of one activator's clock, in seconds.
fn since(now_ns: u64, then_ns: u64) -> f64 {
    now_ns.saturating_sub(then_ns) as f64 / 1e9
}

/// Adds one activator's feed page to `into`: counts summed, the newest request and cold start
/// kept.
pub fn add_feed(into: &mut BTreeMap<DeploymentKey, ModelFigures>, page: &FeedPage) {
    for m in &page.models {
        let f = into
            .entry(DeploymentKey {
                namespace: m.namespace.clone(),
                deployment: m.deployment.clone(),
            })
            .or_default();
        f.in_flight += m.in_flight as f64;
        f.queued += m.queued as f64;
        f.answered += m.requests as f64;
        let last = m.last_request_ns.map(|t| since(page.uptime_ns, t));
        f.last_request_age_seconds = newest(f.last_request_age_seconds, last, |a| *a);
        let cold = m.cold_start.map(|c| ColdStart {
            seconds: c.wait_us as f64 / 1e6,
            age_seconds: since(page.uptime_ns, c.at_ns),
        });
        f.last_cold_start = newest(f.last_cold_start, cold, |c| c.age_seconds);
    }
}

fn key(labels: &prometheus_parse::Labels) -> Option<DeploymentKey> {
    Some(DeploymentKey {
        namespace: labels.get("namespace")?.to_owned(),
        deployment: labels.get("deployment")?.to_owned(),
    })
}

fn value(v: &prometheus_parse::Value) -> Option<f64> {
    match v {
        prometheus_parse::Value::Counter(x)
        | prometheus_parse::Value::Gauge(x)
        | prometheus_parse::Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// Adds the leader autoscaler's page to `into` (a standby reports no per-Deployment series).
pub fn add_autoscaler(into: &mut BTreeMap<DeploymentKey, ModelFigures>, page: &str) {
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return;
    };
    for s in scrape.samples {
        let (Some(k), Some(v)) = (key(&s.labels), value(&s.value)) else {
            continue;
        };
        let f = into.entry(k).or_default();
        match s.metric.as_str() {
            "zeroscale_autoscaler_stable_concurrency" => f.stable_concurrency = Some(v),
            "zeroscale_autoscaler_panic_concurrency" => f.panic_concurrency = Some(v),
            "zeroscale_autoscaler_panic_mode" => f.in_panic = Some(v >= 1.0),
            "zeroscale_autoscaler_desired_replicas" => f.desired = Some(v),
            _ => {}
        }
    }
}

/// Whether an autoscaler page is the leader's (`zeroscale_autoscaler_leader 1`).
pub fn is_leader(page: &str) -> bool {
    page.lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["zeroscale_autoscaler_leader", "1"])
}

#[cfg(test)]
mod tests {
    use super::*;

    use zeroscale_config::feed::{FeedColdStart, FeedModel};

    fn llama(
        uptime_s: u64,
        counts: [u64; 3],
        last_s: Option<u64>,
        cold: Option<(u64, u64)>,
    ) -> FeedPage {
        FeedPage {
            uptime_ns: uptime_s * 1_000_000_000,
            full: true,
            models: vec![FeedModel {
                namespace: "ml".into(),
                deployment: "llama".into(),
                in_flight: counts[0],
                queued: counts[1],
                requests: counts[2],
                last_request_ns: last_s.map(|s| s * 1_000_000_000),
                cold_start: cold.map(|(at, us)| FeedColdStart {
                    at_ns: at * 1_000_000_000,
                    wait_us: us,
                }),
                ..FeedModel::default()
            }],
            ..FeedPage::default()
        }
    }

    #[test]
    fn activator_feeds_are_summed_and_the_newest_request_and_cold_start_kept() {
        let k = DeploymentKey {
            namespace: "ml".into(),
            deployment: "llama".into(),
        };
        // Two activators with clocks far apart: only each one's own differences count.
        // A: last request 40 s ago, cold start of 4.5 s that ended 100 s ago.
        // B: last request 7 s ago, cold start of 2 s that ended 30 s ago.
        let a = llama(1_000, [3, 2, 10], Some(960), Some((900, 4_500_000)));
        let b = llama(50, [1, 0, 5], Some(43), Some((20, 2_000_000)));
        for pages in [[&a, &b], [&b, &a]] {
            let mut m = BTreeMap::new();
            for p in pages {
                add_feed(&mut m, p);
            }
            assert_eq!(m.len(), 1);
            let f = &m[&k];
            assert_eq!((f.in_flight, f.queued, f.answered), (4.0, 2.0, 15.0));
            assert_eq!(f.last_request_age_seconds, Some(7.0));
            assert_eq!(
                f.last_cold_start,
                Some(ColdStart {
                    seconds: 2.0,
                    age_seconds: 30.0
                })
            );
        }
        // An activator that never saw a request for it leaves the others' figures, and with
        // none at all the figures say so.
        let never = llama(5, [0, 0, 0], None, None);
        let mut m = BTreeMap::new();
        add_feed(&mut m, &never);
        assert_eq!(
            (m[&k].last_request_age_seconds, m[&k].last_cold_start),
            (None, None)
        );
        add_feed(&mut m, &a);
        assert_eq!(m[&k].last_request_age_seconds, Some(40.0));
    }

    #[test]
    fn the_leader_page_gives_the_window_averages() {
        let page = "zeroscale_autoscaler_leader 1\nzeroscale_autoscaler_stable_concurrency{namespace=\"ml\",deployment=\"llama\"} 4.5\nzeroscale_autoscaler_panic_mode{namespace=\"ml\",deployment=\"llama\"} 1\n";
        assert!(is_leader(page));
        assert!(!is_leader("zeroscale_autoscaler_leader 0\n"));
        let mut m = BTreeMap::new();
        add_autoscaler(&mut m, page);
        let f = m.values().next().unwrap();
        assert_eq!(f.stable_concurrency, Some(4.5));
        assert_eq!(f.in_panic, Some(true));
        assert_eq!(f.panic_concurrency, None);
    }
}
