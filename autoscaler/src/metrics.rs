//! The autoscaler's own metrics, registered into a registry handed down from `main`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::DeploymentKey;
use crate::index::Report;

/// Labels of per-Deployment series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub deployment: String,
}

impl From<&DeploymentKey> for DeploymentLabels {
    fn from(k: &DeploymentKey) -> Self {
        Self {
            namespace: k.namespace.clone(),
            deployment: k.deployment.clone(),
        }
    }
}

/// Labels of decision counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub deployment: String,
    /// `Reason::as_str()`.
    pub reason: String,
}

/// Labels carrying an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success`, `failure`, `timeout`, `conflict`, ...
    pub result: String,
}

/// Labels of scrape errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `activator` or `pod`.
    pub source: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// All metrics of the autoscaler. `Default` so tests can build and read them.
#[derive(Debug)]
pub struct Metrics {
    /// Desired replicas per Deployment (last decision).
    pub desired_replicas: Family<DeploymentLabels, Gauge>,
    /// `spec.replicas` per Deployment.
    pub actual_replicas: Family<DeploymentLabels, Gauge>,
    /// 1 while the Deployment's decider is in panic mode.
    pub panic_mode: Family<DeploymentLabels, Gauge>,
    /// Stable-window average concurrency.
    pub stable_concurrency: Family<DeploymentLabels, FloatGauge>,
    /// Panic-window average concurrency.
    pub panic_concurrency: Family<DeploymentLabels, FloatGauge>,
    /// The concurrency the ready pods are sized for (target x utilization per pod x ready
    /// pods): the line the stable average crosses when more pods are wanted.
    pub target_concurrency: Family<DeploymentLabels, FloatGauge>,
    /// What panic mode compares with panic-threshold-percentage: the pods the panic window
    /// wants (rounded up) as a percentage of the ready pods.
    pub panic_percentage: Family<DeploymentLabels, FloatGauge>,
    /// The panic threshold in force, in percent, beside the figure compared with it.
    pub panic_threshold_percentage: Family<DeploymentLabels, FloatGauge>,
    /// Decisions that changed the count, by reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Failed scrapes.
    pub scrape_errors: Family<TargetLabels, Counter>,
    /// Scale patches by result.
    pub patches: Family<ResultLabels, Counter>,
    /// Latency of steady-state scale patches.
    pub patch_latency: Histogram,
    /// Rejected configuration values (ConfigMap keys and annotations).
    pub config_errors: Counter,
    /// Wake requests by result.
    pub wakes: Family<ResultLabels, Counter>,
    /// Wake request received -> scale PATCH about to be sent.
    pub wake_to_patch: Histogram,
    /// 1 while this replica holds the leader Lease and renewed it within the renew deadline.
    pub leader: Gauge,
    /// Times this replica stopped writing because it could not renew the Lease in time.
    pub leader_lost: Counter,
    /// Ticks skipped because a watch was re-listing.
    pub ticks_skipped_unsynced: Counter,
    /// Managed (opted-in) Deployments.
    pub managed_deployments: Gauge,
    /// Capacity pools: capacity, used, waiting wakes, evictions.
    pub pools: crate::pools::PoolMetrics,
    /// Wake to first Ready pod, per Deployment and stage.
    pub cold_starts: crate::coldstart::ColdStartMetrics,
    /// Learned-state shard writes by result (`success`, `failure`, `timeout`).
    pub learned_writes: Family<ResultLabels, Counter>,
    /// Models' learned state left out of a full shard.
    pub learned_dropped: Counter,
    /// Models whose learned state was restored from the shards.
    pub learned_restored: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            desired_replicas: Default::default(),
            actual_replicas: Default::default(),
            panic_mode: Default::default(),
            stable_concurrency: Default::default(),
            panic_concurrency: Default::default(),
            target_concurrency: Default::default(),
            panic_percentage: Default::default(),
            panic_threshold_percentage: Default::default(),
            decisions: Default::default(),
            scrape_errors: Default::default(),
            patches: Default::default(),
            patch_latency: latency_histogram(),
            config_errors: Default::default(),
            wakes: Default::default(),
            wake_to_patch: latency_histogram(),
            leader: Default::default(),
            leader_lost: Default::default(),
            ticks_skipped_unsynced: Default::default(),
            managed_deployments: Default::default(),
            pools: Default::default(),
            cold_starts: Default::default(),
            learned_writes: Default::default(),
            learned_dropped: Default::default(),
            learned_restored: Default::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `zeroscale_autoscaler` prefix. The process-wide counters
    /// start at 0 for their known label values, so `rate()` and alerts have a baseline from the
    /// first scrape (a series that appears only with its first error hides that error from a
    /// rate over it).
    pub fn register(&self, registry: &mut Registry) {
        for source in ["activator", "pod"] {
            drop(self.scrape_errors.get_or_create(&TargetLabels {
                source: source.to_owned(),
            }));
        }
        for result in ["success", "failure", "timeout"] {
            drop(self.patches.get_or_create(&ResultLabels {
                result: result.to_owned(),
            }));
        }
        for result in ["scaled", "already_scaled", "pooled"] {
            drop(self.wakes.get_or_create(&ResultLabels {
                result: result.to_owned(),
            }));
        }
        let r = registry.sub_registry_with_prefix("zeroscale_autoscaler");
        r.register(
            "desired_replicas",
            "Desired replicas per Deployment",
            self.desired_replicas.clone(),
        );
        r.register(
            "actual_replicas",
            "spec.replicas per Deployment",
            self.actual_replicas.clone(),
        );
        r.register(
            "panic_mode",
            "1 while in panic mode",
            self.panic_mode.clone(),
        );
        r.register(
            "stable_concurrency",
            "Stable-window average concurrency",
            self.stable_concurrency.clone(),
        );
        r.register(
            "panic_concurrency",
            "Panic-window average concurrency",
            self.panic_concurrency.clone(),
        );
        r.register(
            "target_concurrency",
            "Target x utilization per pod x ready pods: above it the stable window wants more pods (same unit as stable_concurrency)",
            self.target_concurrency.clone(),
        );
        r.register(
            "panic_percentage",
            "Pods the panic window wants (rounded up) as a percentage of ready pods: the figure compared with the panic threshold",
            self.panic_percentage.clone(),
        );
        r.register(
            "panic_threshold_percentage",
            "The panic threshold in force, in percent of ready pods",
            self.panic_threshold_percentage.clone(),
        );
        r.register(
            "decisions",
            "Scale changes decided, by reason",
            self.decisions.clone(),
        );
        r.register(
            "scrape_errors",
            "Failed metric scrapes",
            self.scrape_errors.clone(),
        );
        r.register(
            "scale_patches",
            "Scale patches by result",
            self.patches.clone(),
        );
        r.register(
            "patch_latency_seconds",
            "Latency of scale patches",
            self.patch_latency.clone(),
        );
        r.register(
            "config_errors",
            "Rejected configuration values",
            self.config_errors.clone(),
        );
        r.register("wakes", "Wake requests by result", self.wakes.clone());
        r.register(
            "wake_to_patch_seconds",
            "Wake received to scale PATCH sent",
            self.wake_to_patch.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and renewed it within the renew deadline",
            self.leader.clone(),
        );
        r.register(
            "leader_lost",
            "Leaderships lost because the Lease was not renewed within the renew deadline",
            self.leader_lost.clone(),
        );
        r.register(
            "ticks_skipped_unsynced",
            "Ticks skipped while a watch re-lists",
            self.ticks_skipped_unsynced.clone(),
        );
        r.register(
            "managed_deployments",
            "Opted-in Deployments",
            self.managed_deployments.clone(),
        );
        r.register(
            "learned_state_writes",
            "Learned-state ConfigMap shard writes, by result",
            self.learned_writes.clone(),
        );
        r.register(
            "learned_state_dropped",
            "Models' learned state left out of a shard that was full",
            self.learned_dropped.clone(),
        );
        r.register(
            "learned_state_restored",
            "Models whose learned state was restored from the shards",
            self.learned_restored.clone(),
        );
        self.pools.register(r);
        self.cold_starts.register(r);
    }

    /// Records one tick's per-Deployment state.
    pub fn observe_report(&self, report: &Report) {
        let labels = DeploymentLabels::from(&report.key);
        self.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(report.decision.desired));
        self.actual_replicas
            .get_or_create(&labels)
            .set(i64::from(report.actual));
        self.panic_mode
            .get_or_create(&labels)
            .set(i64::from(report.in_panic));
        self.stable_concurrency
            .get_or_create(&labels)
            .set(report.decision.inputs.stable_average);
        self.panic_concurrency
            .get_or_create(&labels)
            .set(report.decision.inputs.panic_average);
        let inputs = &report.decision.inputs;
        self.target_concurrency
            .get_or_create(&labels)
            .set(inputs.target_per_pod * f64::from(inputs.ready_pods));
        self.panic_percentage
            .get_or_create(&labels)
            .set(report.decision.inputs.panic_percentage);
        self.panic_threshold_percentage
            .get_or_create(&labels)
            .set(report.decision.inputs.panic_threshold_percentage);
    }

    /// Drops the series of a Deployment that is gone or no longer managed.
    pub fn forget(&self, key: &DeploymentKey) {
        let labels = DeploymentLabels::from(key);
        self.desired_replicas.remove(&labels);
        self.actual_replicas.remove(&labels);
        self.panic_mode.remove(&labels);
        self.stable_concurrency.remove(&labels);
        self.panic_concurrency.remove(&labels);
        self.target_concurrency.remove(&labels);
        self.panic_percentage.remove(&labels);
        self.panic_threshold_percentage.remove(&labels);
        self.cold_starts.forget(key);
    }

    /// Counts a patch outcome.
    pub fn patch_result(&self, result: &str) {
        self.patches
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a learned-state shard write's outcome.
    pub fn learned_write(&self, result: &str) {
        self.learned_writes
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a wake outcome.
    pub fn wake_result(&self, result: &str) {
        self.wakes
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a decision that changed the count.
    pub fn decision(&self, key: &DeploymentKey, reason: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                namespace: key.namespace.clone(),
                deployment: key.deployment.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failed scrape.
    pub fn scrape_error(&self, source: &str) {
        self.scrape_errors
            .get_or_create(&TargetLabels {
                source: source.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_wide_counters_start_at_zero_for_their_known_labels() {
        let mut registry = Registry::default();
        Metrics::default().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            r#"zeroscale_autoscaler_scrape_errors_total{source="activator"} 0"#,
            r#"zeroscale_autoscaler_scrape_errors_total{source="pod"} 0"#,
            r#"zeroscale_autoscaler_scale_patches_total{result="failure"} 0"#,
            r#"zeroscale_autoscaler_wakes_total{result="scaled"} 0"#,
        ] {
            assert!(text.contains(want), "no `{want}` in\n{text}");
        }
    }

    #[test]
    fn panic_exports_the_compared_figures() {
        use std::time::{Duration, Instant};
        use zeroscale_scaling::{DataState, Decider, Observation, Params, Sample};
        // 6.0 concurrent at 5.6 per pod is 107% of one pod, rounded up to 2 pods: 200% of 1
        // ready, which is what meets the 200% threshold.
        let params = Params {
            target: 8.0,
            ..Params::default()
        };
        let t0 = Instant::now();
        let mut d = Decider::new(params, t0, false);
        for s in 0..6 {
            let sample = Sample {
                concurrency: 6.0,
                rps: 0.0,
            };
            d.record(t0 + Duration::from_secs(s), sample);
        }
        let obs = Observation {
            ready_pods: 1,
            current_scale: 1,
            in_flight: 6,
            queued: 0,
            data: DataState::Fresh,
        };
        let decision = d.decide(t0 + Duration::from_secs(5), &obs);
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe_report(&Report {
            key: DeploymentKey::new("ns", "m"),
            actual: 1,
            decision: decision.clone(),
            in_panic: true,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            r#"zeroscale_autoscaler_panic_percentage{namespace="ns",deployment="m"} 200.0"#,
            r#"zeroscale_autoscaler_panic_threshold_percentage{namespace="ns",deployment="m"} 200.0"#,
        ] {
            assert!(text.contains(want), "no `{want}` in\n{text}");
        }
        // The target line: 8 x 0.7 per pod x 1 ready pod; the stable average (6) is above it,
        // which is why the stable window wants 2 pods.
        let target = metrics
            .target_concurrency
            .get_or_create(&DeploymentLabels::from(&DeploymentKey::new("ns", "m")))
            .get();
        assert!((target - 5.6).abs() < 1e-9, "{target}");
        assert_eq!(decision.inputs.stable_wanted, 2);
        metrics.forget(&DeploymentKey::new("ns", "m"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            !text.contains("zeroscale_autoscaler_target_concurrency{"),
            "{text}"
        );
    }
}
