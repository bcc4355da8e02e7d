//! The parameters of one decider: everything the engine needs to know about a Deployment's
//! scaling policy. `zeroscale-config` builds these from the ConfigMap and annotations; the engine
//! never parses strings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::idle::AdaptiveParams;

/// Which per-pod metric the decider targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Average number of requests in flight (Knative's `concurrency`).
    Concurrency,
    /// Requests per second (Knative's `rps`).
    Rps,
}

impl Metric {
    /// Stable lowercase label: `concurrency` or `rps`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrency",
            Metric::Rps => "rps",
        }
    }
}

/// How samples inside a window are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Every second in the window weighs the same (Knative's default).
    Linear,
    /// Recent seconds weigh more (Knative's `weightedExponential`).
    WeightedExponential,
}

/// How long an idle model keeps its last pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroPolicy {
    /// The scale-to-zero grace period, the same for every idle period.
    Fixed,
    /// Learned from the model's own idle gaps ([`crate::idle`]): keep-alive from their tail,
    /// or zero at once and a pre-warm before the next expected request; the fixed grace while
    /// the gaps are not representative.
    Adaptive,
}

impl ZeroPolicy {
    /// Stable lowercase label: `fixed` or `adaptive`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ZeroPolicy::Fixed => "fixed",
            ZeroPolicy::Adaptive => "adaptive",
        }
    }
}

/// How the concurrency a Deployment must carry is estimated from the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sizing {
    /// The demand pods will see: arrival rate x measured service time (Little's law), at
    /// least the requests pods are serving, plus the concurrency that drains the queued
    /// backlog within the panic window. A backlog is work to be done once, not sustained load.
    /// Needs the demand figures ([`crate::Demand`]); without them (or before a first
    /// request was served) it sizes as [`Sizing::Knative`].
    Demand,
    /// Knative's KPA: the average of requests held (queued + in flight), so requests queued
    /// during a cold start count as concurrency for the whole window.
    Knative,
}

impl Sizing {
    /// Stable lowercase label: `demand` or `knative`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Sizing::Demand => "demand",
            Sizing::Knative => "knative",
        }
    }
}

/// The scaling policy of one Deployment. Field meanings and defaults follow Knative's
/// `config-autoscaler` where the concept is the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The metric the target refers to.
    pub metric: Metric,
    /// Target value of `metric` per pod (concurrency 100, or rps 200).
    pub target: f64,
    /// Fraction of `target` to aim for, in (0, 1]; 0.7 by default.
    pub target_utilization: f64,
    /// Window of the stable average (60s).
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window (10.0).
    pub panic_window_percentage: f64,
    /// Panic is entered when panic-window desired pods / ready pods >= this percentage (200.0).
    pub panic_threshold_percentage: f64,
    /// Max ratio desired / ready on the way up (1000.0).
    pub max_scale_up_rate: f64,
    /// Max ratio ready / desired on the way down (2.0).
    pub max_scale_down_rate: f64,
    /// Lower bound on replicas.
    pub min_scale: u32,
    /// Upper bound on replicas; 0 means unbounded.
    pub max_scale: u32,
    /// Replicas right after a Deployment opts in (1).
    pub initial_scale: u32,
    /// Replicas when waking from zero; at least 1 is always used (1).
    pub activation_scale: u32,
    /// A scale-down takes effect only after the desired count stayed lower for this long: the
    /// decider uses the max over this sliding window (0s = off).
    pub scale_down_delay: Duration,
    /// Whether the decider may return 0.
    pub enable_scale_to_zero: bool,
    /// How long a model must be idle (no traffic) before it may go to zero (30s).
    pub scale_to_zero_grace_period: Duration,
    /// Minimum time the last pod is kept after traffic stopped (0s).
    pub scale_to_zero_pod_retention_period: Duration,
    /// Window averaging.
    pub aggregation: Aggregation,
    /// How the concurrency to carry is estimated (concurrency metric only).
    pub sizing: Sizing,
    /// How long an idle model keeps its last pod.
    pub scale_to_zero_policy: ZeroPolicy,
    /// The adaptive policy's knobs.
    pub adaptive: AdaptiveParams,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            metric: Metric::Concurrency,
            target: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            activation_scale: 1,
            scale_down_delay: Duration::ZERO,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            aggregation: Aggregation::Linear,
            sizing: Sizing::Demand,
            scale_to_zero_policy: ZeroPolicy::Fixed,
            adaptive: AdaptiveParams::default(),
        }
    }
}

impl Params {
    /// The panic window, derived from the stable window and the percentage.
    pub fn panic_window(&self) -> Duration {
        self.stable_window
            .mul_f64(self.panic_window_percentage / 100.0)
    }
}
