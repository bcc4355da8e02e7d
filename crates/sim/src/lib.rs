//! `zeroscale-sim`: replays request traces through zeroscale's real scaling engine on
//! simulated time, to see what a configuration costs (replica-seconds) and what users pay
//! (cold starts, waits, 503/504) before deploying it.
//!
//! Pure and deterministic: simulated time in integer nanoseconds, one binary heap of events
//! per model ([`event`]), seeded random streams ([`dist`]), no clock, no threads inside a run,
//! no tokio. Decisions come from `zeroscale-scaling`'s `Decider`, with the `Params` that
//! `zeroscale-config` resolves from the same ConfigMap keys and annotations the add-on reads
//! ([`setup`]), fed the way the autoscaler feeds it ([`policy`]). Models are independent in
//! the add-on (one decider and one queue each), so each model is its own simulation
//! ([`sim`]) and a fleet is the sum ([`sim::total`]).
//!
//! Modules:
//! - [`event`]: the event queue and simulated time.
//! - [`dist`]: seeded random streams and latency distributions.
//! - [`trace`]: reading CSV traces; compression and spreading over models.
//! - [`workload`]: the multi-model generator (Shahrad et al., ATC 2020).
//! - [`setup`]: ConfigMap keys and annotations to a model's settings, via zeroscale-config.
//! - [`policy`]: the pluggable scaling policy; the engine as the autoscaler drives it.
//! - [`sim`]: the simulation of one model: activator queue, pods, scrapes and ticks.
//! - [`stats`]: percentiles, timelines, totals, and the demand of a trace.
//! - [`sweep`]: many policies over one trace in parallel; the frontier and a recommendation.
//! - [`report`]: the table, JSON and the HTML report with inline SVG.

pub mod dist;
pub mod event;
pub mod policy;
pub mod report;
pub mod service;
pub mod setup;
pub mod sim;
pub mod stats;
pub mod sweep;
pub mod trace;
pub mod workload;

use serde::Serialize;

use crate::event::{Nanos, SEC};
use crate::policy::PolicyKind;
use crate::setup::ModelSettings;
use crate::sim::{ModelOutcome, Options, simulate};
use crate::trace::{Request, Trace};

/// One policy's run over a whole trace.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    /// What was varied (`scale-to-zero-grace-period=30s`), or `base`.
    pub label: String,
    /// The policy.
    pub policy: &'static str,
    /// The fleet.
    pub total: ModelOutcome,
    /// Per model, in the trace's order.
    pub models: Vec<ModelOutcome>,
}

/// The requests of each model of `trace`, indexed like `trace.models`.
pub fn per_model(trace: &Trace) -> Vec<Vec<Request>> {
    let mut out = vec![Vec::new(); trace.models.len()];
    for r in &trace.requests {
        out[r.model as usize].push(*r);
    }
    out
}

/// The end of a run over `trace`: the last arrival plus `tail`, rounded up to a second.
pub fn horizon(trace: &Trace, tail: Nanos) -> Nanos {
    (trace.duration() + tail).div_ceil(SEC).max(1) * SEC
}

/// Runs every model of `trace` under one policy, one after the other.
pub fn run(
    trace: &Trace,
    label: &str,
    settings: &ModelSettings,
    policy: &PolicyKind,
    opts: &Options,
) -> RunOutcome {
    let models: Vec<ModelOutcome> = per_model(trace)
        .iter()
        .enumerate()
        .map(|(i, reqs)| simulate(&trace.models[i], reqs, settings, policy, opts, i as u64))
        .collect();
    RunOutcome {
        label: label.to_owned(),
        policy: policy.name(),
        total: sim::total(&models),
        models,
    }
}
