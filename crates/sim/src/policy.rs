//! Scaling policies: what decides a model's replica count from the autoscaler's scrapes.
//!
//! A [`Policy`] sees exactly what the autoscaler sees: one [`Scrape`] per scrape interval (the
//! time-weighted concurrency from the request-seconds counter, requests per second, the
//! in-flight and queued gauges), the wake of a Deployment from zero by an activator, and, each
//! tick, the Deployment ([`View`]: ready pods and `spec.replicas`). It answers a replica count.
//! The sweep compares policies, so a new one (an adaptive scale-to-zero policy, for example)
//! is a new [`PolicyKind`] and an implementation of this trait; the simulation does not change.
//!
//! [`EnginePolicy`] is the add-on's policy: the real [`Decider`] of `zeroscale-scaling`, fed
//! the way `autoscaler/src/index.rs` feeds it. Kept in step with that file by hand (it pulls in
//! Kubernetes and tokio, which a simulator must not): a sample also fills the whole seconds
//! since the previous one, data is stale after `max(3 x scrape-interval, 3s)` without a scrape
//! and from a wake until the next scrape, and on fresh data the decision is taken as of the
//! newest sample.

use std::time::{Duration, Instant};

use zeroscale_scaling::{DataState, Decider, Demand, Observation, Sample};

use crate::event::{Nanos, SEC};
use crate::setup::ModelSettings;

/// One scrape round of the activators, for one model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scrape {
    /// When the round finished.
    pub at: Nanos,
    /// Average requests held (queued + in flight) since the previous round.
    pub concurrency: f64,
    /// Requests answered per second since the previous round.
    pub rps: f64,
    /// Requests in flight at `at`.
    pub in_flight: u64,
    /// Requests queued at `at`.
    pub queued: u64,
    /// Requests that arrived per second since the previous round (forwarded, queued or
    /// refused).
    pub arrivals: f64,
    /// Average requests at pods (in flight, not queued) since the previous round.
    pub in_service: f64,
    /// Requests pods finished per second since the previous round.
    pub served: f64,
    /// Service times of those requests, summed, per second.
    pub service_seconds: f64,
}

/// The Deployment at a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// `status.readyReplicas`.
    pub ready_pods: u32,
    /// `spec.replicas`.
    pub spec_replicas: u32,
}

/// A policy's answer at a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Desired replicas.
    pub desired: u32,
    /// Why (a stable label, such as the engine's `Reason`).
    pub reason: &'static str,
    /// Whether the policy is in panic mode (the engine's notion; false for others).
    pub in_panic: bool,
}

/// A scaling policy for one model. See the module docs.
pub trait Policy: Send {
    /// A scrape round.
    fn scraped(&mut self, scrape: &Scrape);
    /// An activator's wake signal scaled the Deployment from zero at `at`.
    fn woken(&mut self, at: Nanos);
    /// The tick at `now`: the replica count the Deployment should have.
    fn decide(&mut self, now: Nanos, view: &View) -> Choice;
}

/// Which policy to simulate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// The add-on's engine (`zeroscale-scaling`'s [`Decider`]) with the configured Params.
    #[default]
    Engine,
}

impl PolicyKind {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::Engine => "engine",
        }
    }

    /// A fresh policy for one model. `newly_enabled`: the Deployment opts in at the start of
    /// the run (initial-scale applies) rather than being managed already.
    pub fn build(&self, settings: &ModelSettings, newly_enabled: bool) -> Box<dyn Policy> {
        match self {
            PolicyKind::Engine => Box::new(EnginePolicy::new(settings, newly_enabled)),
        }
    }
}

/// The engine as the autoscaler's index drives it.
pub struct EnginePolicy {
    decider: Decider,
    /// Simulated time 0.
    origin: Instant,
    scrape_interval: Nanos,
    stable_window_secs: u64,
    in_flight: u64,
    queued: u64,
    last_round: Option<Nanos>,
    last_sample: Option<Nanos>,
    woken_at: Option<Nanos>,
}

impl EnginePolicy {
    /// A decider created at time 0.
    pub fn new(settings: &ModelSettings, newly_enabled: bool) -> Self {
        // Any instant works: the decider only ever uses differences.
        let origin = Instant::now();
        Self {
            decider: Decider::new(settings.params.clone(), origin, newly_enabled),
            origin,
            scrape_interval: settings.scrape,
            stable_window_secs: settings.params.stable_window.as_secs().max(1),
            in_flight: 0,
            queued: 0,
            last_round: None,
            last_sample: None,
            woken_at: None,
        }
    }

    fn instant(&self, t: Nanos) -> Instant {
        self.origin + Duration::from_nanos(t)
    }

    /// Whether the decider is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.decider.in_panic()
    }
}

impl Policy for EnginePolicy {
    fn scraped(&mut self, s: &Scrape) {
        self.in_flight = s.in_flight;
        self.queued = s.queued;
        self.last_round = Some(s.at);
        let sample = Sample {
            concurrency: s.concurrency,
            rps: s.rps,
        };
        let demand = Some(Demand {
            arrivals: s.arrivals,
            in_service: s.in_service,
            served: s.served,
            service_seconds: s.service_seconds,
        });
        // index.rs `Managed::record`: the sample also covers every whole second since the
        // previous one.
        if let Some(prev) = self.last_sample
            && s.at > prev
        {
            let mut fill = prev + SEC;
            let mut n = 0;
            while fill < s.at && n < self.stable_window_secs {
                self.decider.record_with(self.instant(fill), sample, demand);
                fill += SEC;
                n += 1;
            }
        }
        self.decider.record_with(self.instant(s.at), sample, demand);
        self.last_sample = Some(self.last_sample.map_or(s.at, |p| p.max(s.at)));
    }

    fn woken(&mut self, at: Nanos) {
        self.woken_at = Some(at);
    }

    fn decide(&mut self, now: Nanos, view: &View) -> Choice {
        let stale_after = (self.scrape_interval * 3).max(3 * SEC);
        let data = match self.last_round {
            None => DataState::Missing,
            Some(at) if now.saturating_sub(at) > stale_after => DataState::Stale,
            Some(at) if self.woken_at.is_some_and(|w| at <= w) => DataState::Stale,
            Some(_) => DataState::Fresh,
        };
        let obs = Observation {
            ready_pods: view.ready_pods,
            current_scale: view.spec_replicas,
            in_flight: self.in_flight,
            queued: self.queued,
            data,
        };
        let decide_at = match self.last_sample {
            Some(s) if data == DataState::Fresh && s <= now => s,
            _ => now,
        };
        let d = self.decider.decide(self.instant(decide_at), &obs);
        Choice {
            desired: d.desired,
            reason: d.reason.as_str(),
            in_panic: self.decider.in_panic(),
        }
    }
}
