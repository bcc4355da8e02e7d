//! zeroscale's scaling engine: pure, deterministic, and clock-free.
//!
//! Time enters as an argument (`now`, `at`), so every behaviour is testable without a clock,
//! tokio or Kubernetes. One [`Decider`] per Deployment: the autoscaler [`records`] one
//! [`Sample`] per second and asks for a [`Decision`] each tick with an [`Observation`] of the
//! Deployment. The rules follow Knative's KPA where the concept is the same, so its knowledge
//! carries over.
//!
//! # Windows
//! Samples land in one-second buckets of a fixed ring as long as the stable window (60s; at
//! most one hour), so memory is bounded. The **stable** window averages all of it; the
//! **panic** window (10% of it, 6s) the newest seconds. Averaging is linear by default (O(1):
//! running sums kept exactly as integers, so an idle model averages exactly 0) or Knative's
//! weighted-exponential (recent seconds weigh more; O(window)). Seconds without a sample count
//! as 0; while the data is younger than a window, the average is over the seconds seen so far
//! (Knative does the same), so a fresh decider reacts to its first sample. Duplicate, late and
//! out-of-order samples: see [`Decider::record`].
//!
//! # What a window sizes for
//! With [`Sizing::Demand`] (the default, metric concurrency, fed by [`Decider::record_with`]):
//! the concurrency pods will carry, `arrivals/s x service time` (Little's law; the service
//! time is the mean duration of the requests pods finished in the stable window, remembered
//! across idle periods; the panic window's arrivals are counted over the panic window plus one
//! service time), at least the requests being served, **plus** the concurrency that drains the
//! queued backlog within the panic window: `queued x min(1, service time / panic window)`.
//! A backlog is work done once, not load sustained for a window: Knative's reading of the
//! requests queued during a cold start as concurrency ran a model needing 4 pods up to 85.
//! Before a first request was served, only the requests being served count (the wake's
//! activation-scale pods start, and sizing follows what they measure). With
//! [`Sizing::Knative`], the metric `Sample::concurrency` (requests held: queued + in flight),
//! as Knative's KPA. Samples without the demand figures ([`Decider::record`]) size as Knative.
//!
//! # Desired pods
//! `ceil(average / (target x utilization))` for each window (concurrency 100 at 70% by
//! default, or requests per second with [`Metric::Rps`]), kept within the **rates** relative
//! to the ready pods (0 ready counts as 1): at most `ceil(ready x max-scale-up-rate)` and at
//! least `floor(ready / max-scale-down-rate)`. Any load at all gives at least
//! activation-scale.
//!
//! # Panic
//! Entered when the panic window wants `>= panic-threshold (200%) x ready` pods (whole pods,
//! rounded up, so a load of 107% of one pod's target already wants 2 = 200% of 1 ready; the
//! Event and [`DecisionInputs::panic_percentage`] give the compared figures); left only
//! once it has been below that for a full stable window (and the data is fresh). In panic the
//! decider sizes for the larger of both windows and never goes below its own high-water mark
//! or the current scale. A decider created for an already-managed Deployment
//! (`newly_enabled == false`, an autoscaler restart) starts in panic holding the ready pods if
//! more than one is ready, as Knative does: its windows are empty, and that must not look
//! like a drop in load.
//!
//! # Then, in this order
//! 1. **scale-down-delay**: the maximum over the last `scale_down_delay`.
//! 2. **initial-scale** (only when `newly_enabled` and the Deployment had replicas at the
//!    first decision): at least this until a full stable window has passed since the first
//!    sample (held while no sample has arrived). A Deployment that opts in with
//!    `spec.replicas: 0` stays at 0 until its first request wakes it.
//! 3. **zero**: a count of 0 stands only if scale to zero is enabled, nothing is in flight or
//!    queued, the data is fresh, and there has been no traffic (no sample above zero, no
//!    request in flight or queued, no stale tick) for the grace period (30s) and the retention
//!    period. Otherwise one pod stays. A Deployment already at zero stays there. With
//!    [`ZeroPolicy::Adaptive`] the grace period is what the model's idle gaps say ([`idle`]):
//!    a keep-alive from their tail, or zero at once and a **pre-warm** (one pod, at zero or
//!    not) when the next request is expected; the grace period while they are not
//!    representative. With a price on cold starts (`AdaptiveParams::cold_start_cost`), a
//!    keep-alive shorter than the stable window is honoured: the last pod, wanted only by
//!    the traffic the windows still hold (not in panic, not held by the rates, delay or
//!    initial-scale), goes once nothing was in flight, queued or in a sample for the keep-alive
//!    (0: for [`idle::MIN_GAP`]); the windows then ask for no pod until new demand
//!    ([`DecisionInputs::early_zero`]).
//! 4. **stale or missing data**: never below the current scale (no scale-down at all, hence
//!    never a move to zero); scaling up on the data there is is allowed, as missing seconds
//!    only lower the averages. A Deployment already at 0 stays at 0 unless requests wait:
//!    waking every idle model whenever a scrape fails would defeat scale-to-zero, and waiting
//!    requests reach the autoscaler through the activator's wake signal anyway.
//! 5. **wake**: requests in flight or queued while at zero give at least
//!    `max(1, activation-scale)` at once.
//! 6. **bounds**: the result is clamped to `[min-scale, max-scale]` (max 0 = unbounded), so
//!    0 is only possible with min-scale 0.
//!
//! # Invariants (property-tested)
//! - `min_scale <= desired <= max_scale` unless `desired == 0`, which needs min-scale 0.
//! - 0 never comes with requests in flight or queued, and never as a move to zero on stale or
//!   missing data (`desired >= min(current_scale, max_scale)` then).
//! - Within one panic episode `desired` never decreases.
//! - Rates: `desired >= min(floor(max(1, ready) / down_rate), max_scale)` always. The upper
//!   limit is per episode, not per call (the panic high-water mark and the delay window carry
//!   earlier counts forward), so it is stated for a steady cluster (ready = current scale,
//!   fixed): `desired <= max(min-scale, min(max-scale, max(ceil(max(1, ready) x up_rate),
//!   activation-scale, initial-scale while it applies, 1)))`.
//! - Same inputs, same outputs: no randomness, no hidden clock.
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use zeroscale_scaling::{DataState, Decider, Observation, Params, Reason, Sample};
//!
//! let t0 = Instant::now();
//! // The Deployment just opted in (`newly_enabled`).
//! let mut decider = Decider::new(Params::default(), t0, true);
//! // The autoscaler records one sample per second...
//! for s in 0..60 {
//!     let sample = Sample { concurrency: 150.0, rps: 0.0 };
//!     decider.record(t0 + Duration::from_secs(s), sample);
//! }
//! // ...and decides each tick.
//! let obs = Observation {
//!     ready_pods: 2,
//!     current_scale: 2,
//!     in_flight: 150,
//!     queued: 0,
//!     data: DataState::Fresh,
//! };
//! let decision = decider.decide(t0 + Duration::from_secs(59), &obs);
//! assert_eq!(decision.desired, 3); // ceil(150 / (100 x 0.7))
//! assert_eq!(decision.reason, Reason::Stable);
//! assert_eq!(
//!     decision.to_string(),
//!     "stable concurrency 150.0 over 60s, target 70.0 per pod"
//! );
//! ```
//!
//! [`records`]: Decider::record

mod decider;
mod decision;
mod delay;
pub mod idle;
mod params;
mod window;

pub use decider::Decider;
pub use decision::{
    DataState, Decision, DecisionInputs, Demand, DemandInputs, Observation, Reason, Sample,
};
pub use params::{Aggregation, Metric, Params, Sizing, ZeroPolicy};
