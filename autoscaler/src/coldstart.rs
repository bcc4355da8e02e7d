//! Cold starts as the autoscaler sees them: from the moment a Deployment leaves zero (a wake,
//! whoever wrote it) to its first Ready pod, per model, split into the stages the pod's status
//! can tell apart.
//!
//! `zeroscale_autoscaler_wake_to_ready_seconds{namespace, deployment, stage}`:
//! - `ready`: the watch saw `spec.replicas` go from 0 to N, then `status.readyReplicas` reach
//!   1 (both as this replica's watch saw them; exact to the watch's latency);
//! - `scheduled`: to the first Ready pod's `PodScheduled` condition;
//! - `started`: to the last of its containers' `state.running.startedAt` (the image pulled, the
//!   process started; what remains to `ready` is the model loading until its readiness probe
//!   passes).
//!
//! The two split stages come from the pod's timestamps, which the API server keeps in whole
//! seconds, so they may read up to a second early (never below 0). They need `list` on pods in
//! the model's namespace, which the manifests do not grant (least privilege: the autoscaler
//! reads no pods); without it only `ready` is recorded (one refused list per wake, logged at
//! debug). `autoscaler/README.md` shows the Role that turns the split on. Each autoscaler
//! replica records what its own watch saw (standbys too), like the other per-Deployment series.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::DeploymentKey;
use crate::metrics::Metrics;

/// Labels of the cold-start histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub deployment: String,
    /// `scheduled`, `started` or `ready`.
    pub stage: String,
}

/// The stages, in order.
pub const STAGES: [&str; 3] = ["scheduled", "started", "ready"];

fn cold_start_histogram() -> Histogram {
    // Model loads take from a second to many minutes.
    Histogram::new([
        0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    ])
}

/// `zeroscale_autoscaler_wake_to_ready_seconds`.
#[derive(Debug)]
pub struct ColdStartMetrics {
    /// Wake to each stage, per Deployment.
    pub wake_to_ready: Family<StageLabels, Histogram, fn() -> Histogram>,
}

impl Default for ColdStartMetrics {
    fn default() -> Self {
        Self {
            wake_to_ready: Family::new_with_constructor(cold_start_histogram),
        }
    }
}

impl ColdStartMetrics {
    /// Registers the histogram (the registry is already prefixed `zeroscale_autoscaler`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wake_to_ready_seconds",
            "From a Deployment leaving zero to its first Ready pod, by stage (scheduled, started, ready)",
            self.wake_to_ready.clone(),
        );
    }

    /// Observes one stage of one wake.
    pub fn observe(&self, key: &DeploymentKey, stage: &str, d: Duration) {
        self.wake_to_ready
            .get_or_create(&StageLabels {
                namespace: key.namespace.clone(),
                deployment: key.deployment.clone(),
                stage: stage.to_owned(),
            })
            .observe(d.as_secs_f64());
    }

    /// Drops a Deployment's series.
    pub fn forget(&self, key: &DeploymentKey) {
        for stage in STAGES {
            self.wake_to_ready.remove(&StageLabels {
                namespace: key.namespace.clone(),
                deployment: key.deployment.clone(),
                stage: stage.to_owned(),
            });
        }
    }
}

/// A wake whose first Ready pod was just seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    /// The Deployment.
    pub key: DeploymentKey,
    /// When the watch saw it leave zero (wall clock, to compare with pod timestamps).
    pub woke_at: SystemTime,
    /// Wake to the first Ready replica, as the watch saw both.
    pub to_ready: Duration,
}

struct Waking {
    at: Instant,
    wall: SystemTime,
}

/// Follows each Deployment's replicas and ready replicas through the watch (pure: times are
/// arguments).
#[derive(Default)]
pub struct Tracker {
    last_spec: HashMap<DeploymentKey, u32>,
    waking: HashMap<DeploymentKey, Waking>,
}

impl Tracker {
    /// One watch event's view of a Deployment. Returns the wake it completes, if any.
    pub fn observe(
        &mut self,
        key: &DeploymentKey,
        spec: u32,
        ready: u32,
        at: Instant,
        wall: SystemTime,
    ) -> Option<Completed> {
        let before = self.last_spec.insert(key.clone(), spec);
        if spec == 0 {
            // Back to zero before it was ready: that wake is over, unmeasured.
            self.waking.remove(key);
            return None;
        }
        // Found running at start-up (`before` unknown) is no wake.
        if before == Some(0) {
            self.waking.insert(key.clone(), Waking { at, wall });
        }
        if ready >= 1 {
            let w = self.waking.remove(key)?;
            return Some(Completed {
                key: key.clone(),
                woke_at: w.wall,
                to_ready: at.saturating_duration_since(w.at),
            });
        }
        None
    }

    /// Forgets a deleted Deployment.
    pub fn forget(&mut self, key: &DeploymentKey) {
        self.last_spec.remove(key);
        self.waking.remove(key);
    }
}

/// From a wake at `woke_at`: to the pod's `PodScheduled` condition and to its last container
/// start, when its status has them (whole seconds; never below zero).
pub fn pod_stages(pod: &Pod, woke_at: SystemTime) -> (Option<Duration>, Option<Duration>) {
    let since = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0))
            + Duration::from_nanos(u64::from(t.0.subsec_nanosecond().unsigned_abs()));
        at.duration_since(woke_at).unwrap_or(Duration::ZERO)
    };
    let status = pod.status.as_ref();
    let scheduled = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(since);
    let started = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.running.as_ref())
                        .and_then(|r| r.started_at.as_ref())
                        .map(since)
                })
                .collect::<Option<Vec<Duration>>>()
        })
        .and_then(|v| v.into_iter().max());
    (scheduled, started)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Records a completed wake: `ready` at once; `scheduled` and `started` from the earliest
/// Ready pod of the Deployment's selector (one list call), off the control loop's task.
pub fn record(client: Client, metrics: Arc<Metrics>, d: &Deployment, done: Completed) {
    metrics
        .cold_starts
        .observe(&done.key, "ready", done.to_ready);
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        });
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return;
    };
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &done.key.namespace);
        let list = tokio::time::timeout(
            Duration::from_secs(10),
            pods.list(&ListParams::default().labels(&selector)),
        )
        .await;
        let pods = match list {
            Ok(Ok(l)) => l.items,
            Ok(Err(e)) => {
                tracing::debug!(deployment = %done.key, error = %e, "cold start stages: pods not listed");
                return;
            }
            Err(_) => return,
        };
        // The first pod to become Ready is the one that ended the wake.
        let first = pods.iter().filter(|p| is_ready(p)).min_by_key(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.as_second())
        });
        if let Some(pod) = first {
            let (scheduled, started) = pod_stages(pod, done.woke_at);
            for (stage, d) in [("scheduled", scheduled), ("started", started)] {
                if let Some(d) = d {
                    metrics
                        .cold_starts
                        .observe(&done.key, stage, d.min(done.to_ready));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeploymentKey {
        DeploymentKey::new("models", "llama")
    }

    #[test]
    fn a_wake_is_timed_from_leaving_zero_to_the_first_ready_pod() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut t = Tracker::default();
        let s = |n| Duration::from_secs(n);
        assert_eq!(t.observe(&key(), 0, 0, t0, w0), None);
        assert_eq!(t.observe(&key(), 1, 0, t0 + s(1), w0 + s(1)), None);
        assert_eq!(
            t.observe(&key(), 1, 0, t0 + s(3), w0 + s(3)),
            None,
            "Pending"
        );
        let done = t.observe(&key(), 1, 1, t0 + s(9), w0 + s(9));
        assert_eq!(
            done,
            Some(Completed {
                key: key(),
                woke_at: w0 + s(1),
                to_ready: s(8),
            })
        );
        // Later status updates are not another wake.
        assert_eq!(t.observe(&key(), 2, 2, t0 + s(20), w0 + s(20)), None);
    }

    #[test]
    fn found_running_or_back_to_zero_before_ready_is_not_measured() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let s = |n| Duration::from_secs(n);
        let mut t = Tracker::default();
        assert_eq!(t.observe(&key(), 2, 2, t0, w0), None, "found at start-up");
        let mut t = Tracker::default();
        t.observe(&key(), 0, 0, t0, w0);
        t.observe(&key(), 1, 0, t0 + s(1), w0 + s(1));
        t.observe(&key(), 0, 0, t0 + s(2), w0 + s(2));
        // The next wake is timed from its own start, not the abandoned one's.
        t.observe(&key(), 1, 0, t0 + s(10), w0 + s(10));
        let done = t
            .observe(&key(), 1, 1, t0 + s(12), w0 + s(12))
            .expect("a wake");
        assert_eq!((done.woke_at, done.to_ready), (w0 + s(10), s(2)));
    }

    #[test]
    fn stages_come_from_the_pod_status() {
        let woke = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "1970-01-12T13:46:42Z"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "1970-01-12T13:46:50Z"},
                ],
                "containerStatuses": [
                    {"name": "a", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                     "state": {"running": {"startedAt": "1970-01-12T13:46:45Z"}}},
                    {"name": "b", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                     "state": {"running": {"startedAt": "1970-01-12T13:46:47Z"}}},
                ],
            },
        }))
        .unwrap();
        // 1970-01-12T13:46:40Z is 1,000,000 s.
        let (scheduled, started) = pod_stages(&pod, woke);
        assert_eq!(scheduled, Some(Duration::from_secs(2)));
        assert_eq!(started, Some(Duration::from_secs(7)), "the last container");
        assert!(is_ready(&pod));
        // A timestamp before the wake (whole seconds) reads as 0, never negative.
        let (scheduled, _) = pod_stages(&pod, woke + Duration::from_secs(5));
        assert_eq!(scheduled, Some(Duration::ZERO));
    }
}
