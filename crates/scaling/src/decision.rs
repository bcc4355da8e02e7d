//! The decider's inputs and outputs as plain values.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::idle::IdlePlan;
use crate::params::Metric;

/// One per-second observation for a Deployment, summed over all activator replicas/pods.
///
/// Negative and NaN values count as 0; values above 1,000,000 are clamped to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Average number of requests in flight during that second.
    pub concurrency: f64,
    /// Requests per second during that second.
    pub rps: f64,
}

/// The demand figures of one second, summed over all activator replicas, for
/// [`Sizing::Demand`](crate::Sizing::Demand). Rates per second; negative and NaN values count
/// as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// Requests that arrived during that second (forwarded, queued or refused).
    pub arrivals: f64,
    /// Average number of requests being served by pods (in flight at a pod, not queued).
    pub in_service: f64,
    /// Requests pods finished during that second.
    pub served: f64,
    /// The service times of those requests, summed (seconds at a pod, queueing excluded).
    pub service_seconds: f64,
}

/// How the demand model sized a decision (see [`Sizing::Demand`](crate::Sizing::Demand)).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemandInputs {
    /// Mean service time in seconds of the requests pods finished in the stable window (or
    /// the last one measured, when the window finished none). `None` before any request was
    /// served: then only the requests being served count.
    pub service_time: Option<f64>,
    /// Arrivals per second, stable window.
    pub stable_arrivals: f64,
    /// Arrivals per second over the panic window plus one service time (at most the stable
    /// window): Little's law needs a horizon longer than a request.
    pub panic_arrivals: f64,
    /// Requests being served by pods, stable-window average (a floor of the demand).
    pub stable_in_service: f64,
    /// Requests being served by pods, panic-window average.
    pub panic_in_service: f64,
    /// Requests queued now.
    pub backlog: u64,
    /// The time the backlog should drain in (the panic window).
    pub drain_time: Duration,
    /// Concurrency that drains the backlog within `drain_time`:
    /// `backlog x min(1, service_time / drain_time)` (never more than one slot per request;
    /// 0 while the service time is unknown).
    pub backlog_concurrency: f64,
    /// Knative's figures for comparison: requests held (queued + in flight), stable window.
    pub held_stable: f64,
    /// Knative's figures for comparison: requests held, panic window.
    pub held_panic: f64,
}

/// Whether the metrics behind this tick can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    /// Every source was scraped successfully for this tick.
    Fresh,
    /// Some source failed or is behind: the numbers may be too low.
    Stale,
    /// No usable data this tick.
    Missing,
}

impl DataState {
    /// Stable lowercase label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DataState::Fresh => "fresh",
            DataState::Stale => "stale",
            DataState::Missing => "missing",
        }
    }
}

/// What the caller knows at decision time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Ready replicas now.
    pub ready_pods: u32,
    /// The Deployment's `spec.replicas` now.
    pub current_scale: u32,
    /// Requests in flight now (sum over activators).
    pub in_flight: u64,
    /// Requests waiting in activator queues now.
    pub queued: u64,
    /// Whether the metrics can be trusted.
    pub data: DataState,
}

/// Why a decision came out as it did: the last rule that set the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Requests arrived while the Deployment was at zero.
    Wake,
    /// Held at initial-scale after the Deployment opted in.
    Initial,
    /// Sized from the stable window.
    Stable,
    /// Panic mode: sized from the panic window, never scaling down.
    Panic,
    /// Idle for the whole grace (and retention) period: zero. Also "staying at zero".
    ScaleToZero,
    /// Would go to zero, but has not been idle for the grace period yet.
    GracePeriod,
    /// Would go to zero, but the retention period keeps the last pod.
    PodRetention,
    /// Would go to zero, but requests are in flight or queued right now.
    InFlight,
    /// Adaptive policy: one pod just before the next request is expected.
    PreWarm,
    /// Adaptive policy: idle, keeping 1 pod for the keep-alive learned from the gaps.
    KeepAlive,
    /// Raised to min-scale (or to 1 when scale to zero is disabled).
    HeldByMin,
    /// Lowered to max-scale.
    HeldByMax,
    /// Scale-up capped by max-scale-up-rate.
    RateLimitedUp,
    /// Scale-down capped by max-scale-down-rate.
    RateLimitedDown,
    /// Scale-down postponed by scale-down-delay.
    ScaleDownDelay,
    /// Metrics stale or missing: holding the current scale.
    StaleData,
}

impl Reason {
    /// Stable snake_case label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Wake => "wake",
            Reason::Initial => "initial",
            Reason::Stable => "stable",
            Reason::Panic => "panic",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::GracePeriod => "grace_period",
            Reason::PodRetention => "pod_retention",
            Reason::InFlight => "in_flight",
            Reason::PreWarm => "pre_warm",
            Reason::KeepAlive => "keep_alive",
            Reason::HeldByMin => "held_by_min",
            Reason::HeldByMax => "held_by_max",
            Reason::RateLimitedUp => "rate_limited_up",
            Reason::RateLimitedDown => "rate_limited_down",
            Reason::ScaleDownDelay => "scale_down_delay",
            Reason::StaleData => "stale_data",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a decision was computed from, for logs, Events and tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionInputs {
    /// The metric targeted.
    pub metric: Metric,
    /// What the stable window sizes for: the metric's average, or with the demand model the
    /// demand estimate (`demand` has its parts).
    pub stable_average: f64,
    /// What the panic window sizes for (as `stable_average`).
    pub panic_average: f64,
    /// The demand model's parts, when it sized this decision; `None` for Knative sizing, the
    /// rps metric, or before the demand figures and a first served request are known.
    pub demand: Option<DemandInputs>,
    /// What panic mode compared with `panic_threshold_percentage`: `panic_wanted` (rounded
    /// up to whole pods) as a percentage of `max(1, ready_pods)`.
    pub panic_percentage: f64,
    /// `target x utilization`: the metric one pod should carry.
    pub target_per_pod: f64,
    /// Stable window used (whole seconds).
    pub stable_window: Duration,
    /// Panic window used (whole seconds).
    pub panic_window: Duration,
    /// `ceil(stable_average / target_per_pod)`, before rate limits.
    pub stable_wanted: u32,
    /// `ceil(panic_average / target_per_pod)`, before rate limits.
    pub panic_wanted: u32,
    /// Stable pods after rate limits and activation-scale.
    pub stable_desired: u32,
    /// Panic pods after rate limits and activation-scale.
    pub panic_desired: u32,
    /// Upper rate limit: `ceil(max_scale_up_rate x max(1, ready))`.
    pub max_scale_up: u32,
    /// Lower rate limit: `floor(max(1, ready) / max_scale_down_rate)`.
    pub max_scale_down: u32,
    /// From the observation.
    pub ready_pods: u32,
    /// From the observation.
    pub current_scale: u32,
    /// From the observation.
    pub in_flight: u64,
    /// From the observation.
    pub queued: u64,
    /// From the observation.
    pub data: DataState,
    /// Panic mode after this decision.
    pub in_panic: bool,
    /// How long the model has had no traffic; `None` when it has requests now or the data is
    /// not fresh (missing data never counts as idle).
    pub idle_for: Option<Duration>,
    /// Policy in force: min-scale.
    pub min_scale: u32,
    /// Policy in force: max-scale (0 = unbounded).
    pub max_scale: u32,
    /// Policy in force: initial-scale.
    pub initial_scale: u32,
    /// Policy in force: activation-scale.
    pub activation_scale: u32,
    /// Policy in force: panic threshold in percent.
    pub panic_threshold_percentage: f64,
    /// Policy in force: scale-down delay.
    pub scale_down_delay: Duration,
    /// Policy in force: whether zero is allowed at all.
    pub scale_to_zero_enabled: bool,
    /// Policy in force: scale-to-zero grace period.
    pub grace_period: Duration,
    /// The adaptive policy's plan for this idle period (`None` with the fixed policy).
    pub idle_plan: Option<IdlePlan>,
    /// Zero before the stable window emptied: a priced keep-alive shorter than the window ran
    /// out (the move to zero), or the model is held there until new demand (staying at zero).
    #[serde(default)]
    pub early_zero: bool,
    /// Policy in force: pod retention period.
    pub retention_period: Duration,
}

/// A decision is a value: the count, why, and the inputs it used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Replicas the Deployment should have.
    pub desired: u32,
    /// The rule that set `desired`.
    pub reason: Reason,
    /// What it was computed from.
    pub inputs: DecisionInputs,
}

impl Decision {
    /// "concurrency 12.0 over 60s", or with the demand model its parts: "demand 12.0 over
    /// 60s (10.0 arrivals/s x 0.50s served, + 40 queued drained in 6s)".
    fn sized(
        &self,
        f: &mut fmt::Formatter<'_>,
        value: f64,
        window: Duration,
        panic: bool,
    ) -> fmt::Result {
        let i = &self.inputs;
        let Some(d) = &i.demand else {
            return write!(f, "{} {value:.1} over {}", i.metric.as_str(), secs(window));
        };
        let (arrivals, in_service) = if panic {
            (d.panic_arrivals, d.panic_in_service)
        } else {
            (d.stable_arrivals, d.stable_in_service)
        };
        write!(f, "demand {value:.1} over {} (", secs(window))?;
        match d.service_time {
            None => write!(
                f,
                "{in_service:.1} being served; no service time measured yet"
            )?,
            Some(s) if in_service > arrivals * s => write!(f, "{in_service:.1} being served")?,
            Some(s) => write!(f, "{arrivals:.1} arrivals/s x {s:.3}s served")?,
        }
        if d.backlog > 0 && d.service_time.is_some() {
            write!(
                f,
                ", + {} queued drained in {}",
                d.backlog,
                secs(d.drain_time)
            )?;
        }
        write!(f, ")")
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn secs(d: Duration) -> String {
    // Whole seconds read best in Events; keep a fraction only when there is one.
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One human sentence, used verbatim in Kubernetes Events after "Scaled A -> B: ".
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inputs;
        let m = i.metric.as_str();
        match self.reason {
            Reason::Wake => {
                if i.queued > 0 {
                    write!(
                        f,
                        "{} {} waiting in the activator",
                        i.queued,
                        plural(i.queued, "request", "requests")
                    )?;
                    if i.in_flight > 0 {
                        write!(f, ", {} in flight", i.in_flight)?;
                    }
                } else {
                    write!(
                        f,
                        "{} {} in flight at zero replicas",
                        i.in_flight,
                        plural(i.in_flight, "request", "requests")
                    )?;
                }
                if i.activation_scale > 1 {
                    write!(f, " (activation-scale {})", i.activation_scale)?;
                }
                Ok(())
            }
            Reason::Initial => write!(
                f,
                "initial-scale {} until a full stable window of data ({})",
                i.initial_scale,
                secs(i.stable_window)
            ),
            Reason::Stable => {
                write!(f, "stable ")?;
                self.sized(f, i.stable_average, i.stable_window, false)?;
                write!(f, ", target {:.1} per pod", i.target_per_pod)
            }
            Reason::Panic => {
                let over = i.panic_percentage >= i.panic_threshold_percentage;
                if over {
                    // Say exactly what was compared: the pods the panic window wants, rounded
                    // up, against the ready pods. The rounding is why a load of 107% of one
                    // pod's target is already "200%".
                    write!(f, "panic mode: ")?;
                    self.sized(f, i.panic_average, i.panic_window, true)?;
                    write!(
                        f,
                        " = {:.2} pods at {:.1} per pod, rounded up to {} for {} ready: {:.0}% >= threshold {:.0}%{}",
                        i.panic_average / i.target_per_pod,
                        i.target_per_pod,
                        i.panic_wanted,
                        i.ready_pods,
                        i.panic_percentage,
                        i.panic_threshold_percentage,
                        if self.desired > i.ready_pods {
                            ""
                        } else {
                            ", not scaling down"
                        }
                    )
                } else {
                    // Calm again (or an autoscaler restart): panic lasts a stable window more.
                    write!(
                        f,
                        "panic mode: holding {} until the panic window has stayed under {:.0}% of ready capacity for {} (now ",
                        self.desired,
                        i.panic_threshold_percentage,
                        secs(i.stable_window),
                    )?;
                    self.sized(f, i.panic_average, i.panic_window, true)?;
                    write!(
                        f,
                        " wants {} {} = {:.0}% of {} ready)",
                        i.panic_wanted,
                        plural(u64::from(i.panic_wanted), "pod", "pods"),
                        i.panic_percentage,
                        i.ready_pods,
                    )
                }
            }
            Reason::PreWarm => write!(
                f,
                "pre-warm: idle for {}, {}",
                secs(i.idle_for.unwrap_or_default()),
                i.idle_plan.map(|p| p.to_string()).unwrap_or_default()
            ),
            Reason::KeepAlive => write!(
                f,
                "idle for {}, keeping 1 pod: {}",
                secs(i.idle_for.unwrap_or_default()),
                i.idle_plan.map(|p| p.to_string()).unwrap_or_default()
            ),
            Reason::ScaleToZero if i.current_scale > 0 && i.idle_plan.is_some() => {
                let plan = i.idle_plan.expect("checked");
                let idle = secs(i.idle_for.unwrap_or_default());
                match plan {
                    crate::idle::IdlePlan::Fixed { .. } => write!(
                        f,
                        "idle for {idle} (grace period {}; {plan})",
                        secs(i.grace_period)
                    )?,
                    _ => write!(f, "idle for {idle}: {plan}")?,
                }
                if i.early_zero {
                    write!(f, ", before the stable window's {}", secs(i.stable_window))?;
                }
                Ok(())
            }
            Reason::ScaleToZero => match (i.current_scale, i.idle_for) {
                (0, _) if i.early_zero => write!(
                    f,
                    "no request since the early zero, staying at zero (the stable window's {} still holds the traffic served before it)",
                    secs(i.stable_window)
                ),
                (0, _) => write!(f, "no traffic, staying at zero"),
                (_, Some(idle)) => write!(
                    f,
                    "idle for {} (grace period {})",
                    secs(idle),
                    secs(i.grace_period)
                ),
                (_, None) => write!(f, "idle (grace period {})", secs(i.grace_period)),
            },
            Reason::GracePeriod => write!(
                f,
                "idle for {}, keeping 1 pod until the grace period ({}) has passed",
                secs(i.idle_for.unwrap_or_default()),
                secs(i.grace_period)
            ),
            Reason::PodRetention => write!(
                f,
                "idle for {}, keeping the last pod for the retention period ({})",
                secs(i.idle_for.unwrap_or_default()),
                secs(i.retention_period)
            ),
            Reason::InFlight => write!(
                f,
                "{} in flight and {} queued, keeping 1 pod",
                i.in_flight, i.queued
            ),
            Reason::HeldByMin => {
                if i.min_scale == 0 && !i.scale_to_zero_enabled {
                    write!(f, "held at 1: scale to zero is disabled")
                } else {
                    write!(f, "held at min-scale {}", i.min_scale)
                }
            }
            Reason::HeldByMax => write!(f, "held at max-scale {}", i.max_scale),
            Reason::RateLimitedUp => write!(
                f,
                "scale-up limited to {} by max-scale-up-rate ({} {m} wants {} pods, {} ready)",
                i.max_scale_up,
                format_args!("{:.1}", i.stable_average),
                i.stable_wanted,
                i.ready_pods
            ),
            Reason::RateLimitedDown => write!(
                f,
                "scale-down limited to {} by max-scale-down-rate ({} {m} wants {} {}, {} ready)",
                i.max_scale_down,
                format_args!("{:.1}", i.stable_average),
                i.stable_wanted,
                plural(u64::from(i.stable_wanted), "pod", "pods"),
                i.ready_pods
            ),
            Reason::ScaleDownDelay => write!(
                f,
                "scale-down delayed: keeping the highest count of the last {} (scale-down-delay)",
                secs(i.scale_down_delay)
            ),
            Reason::StaleData => write!(
                f,
                "metrics are {}, holding at {} (no scale-down without fresh data)",
                i.data.as_str(),
                self.desired
            ),
        }
    }
}
