//! Per-model figures from the add-on's `/metrics` pages: requests in flight and queued summed
//! over every activator replica, and the autoscaler's window averages. Pure: text in, figures
//! out.

use std::collections::BTreeMap;

use zeroscale_config::DeploymentKey;

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

/// Adds one activator page to `into`.
pub fn add_activator(into: &mut BTreeMap<DeploymentKey, ModelFigures>, page: &str) {
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
            "zeroscale_activator_requests_in_flight" => f.in_flight += v,
            "zeroscale_activator_requests_queued" => f.queued += v,
            "zeroscale_activator_requests_total" => f.answered += v,
            _ => {}
        }
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

    const ACT: &str = r#"# TYPE zeroscale_activator_requests_in_flight gauge
zeroscale_activator_requests_in_flight{namespace="ml",deployment="llama",model="llama"} 3
zeroscale_activator_requests_queued{namespace="ml",deployment="llama",model="llama"} 2
zeroscale_activator_requests_total{namespace="ml",deployment="llama",model="llama",code="200"} 10
zeroscale_activator_requests_total{namespace="ml",deployment="llama",model="llama",code="503"} 1
zeroscale_activator_relayed_requests_total 11
"#;

    #[test]
    fn activator_pages_are_summed_per_deployment() {
        let mut m = BTreeMap::new();
        add_activator(&mut m, ACT);
        add_activator(&mut m, ACT);
        let k = DeploymentKey {
            namespace: "ml".into(),
            deployment: "llama".into(),
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[&k].in_flight, 6.0);
        assert_eq!(m[&k].queued, 4.0);
        assert_eq!(m[&k].answered, 22.0);
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
