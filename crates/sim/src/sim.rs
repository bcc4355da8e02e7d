//! The discrete-event simulation of one model: the activator's queue and balancing, the pods,
//! the autoscaler's scrape and tick loops, and the Deployment's reconciliation.
//!
//! What happens, as in the add-on:
//! - **Arrival** at the activator: forwarded at once to the ready pod with the fewest requests
//!   in flight (a rotating start, like `activator/src/balance.rs`) if nobody is waiting and a
//!   pod is below `container-concurrency`; otherwise queued (FIFO) with a deadline
//!   (`activator-queue-deadline`, then **504**), or answered **503** when `activator-queue-depth`
//!   requests already wait. A request queued while no pod is ready is a **cold start**, counted
//!   once. The first such request sends a **wake signal**: after `wake_latency` the autoscaler
//!   scales the Deployment from 0 to `max(1, activation-scale)` (within min/max-scale, as
//!   `autoscaler/src/wake.rs` plans it); the signal is resent every
//!   `activator-wake-resend-interval` while requests wait and no pod is ready.
//! - **Scrape** every `scrape-interval`: the activator's counters, turned into the sample the
//!   autoscaler derives (average of queued + in flight over the interval from the exact
//!   request-seconds integral, answered requests per second, the two gauges), handed to the
//!   [`Policy`].
//! - **Tick** every `tick-interval`: the policy's count becomes `spec.replicas` when it differs.
//! - **Reconcile** (the ReplicaSet controller): more replicas create pods that become ready
//!   after a start latency (scheduling + image + model load, each drawn from its distribution);
//!   fewer delete not-yet-ready pods first, then the most recently ready ones. A deleted ready
//!   pod stops getting requests at once, finishes (drains) the ones it has, and exits
//!   `shutdown` after the last.
//!
//! Accounting is exact: integrals are kept in integer nanoseconds (request-nanoseconds for the
//! concurrency counter, pod-nanoseconds for replica-seconds), advanced at every event.

use serde::Serialize;

use crate::dist::{Latency, Rng};
use crate::event::{Class, EventQueue, Nanos, SEC};
use crate::policy::{Policy, PolicyKind, Scrape, View};
use crate::setup::ModelSettings;
use crate::stats::{Timeline, WaitStats};
use crate::trace::Request;

pub use crate::service::Service;

/// The phases of a pod start, each its own distribution; a pod is ready after their sum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodStart {
    /// Scheduling and container creation.
    pub schedule: Latency,
    /// Image pull (0 when the image is cached on the node).
    pub image: Latency,
    /// Model load until the readiness probe passes.
    pub load: Latency,
}

/// What the simulation models beyond the add-on's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Service time.
    pub service: Service,
    /// Pod start latency.
    pub start: PodStart,
    /// From the first queued request to the autoscaler's 0 -> N patch (signal + API call).
    pub wake_latency: Nanos,
    /// From a terminating pod's last request to its exit.
    pub shutdown: Nanos,
    /// `spec.replicas` at time 0 (its pods start ready).
    pub initial_replicas: u32,
    /// The Deployment opts in at time 0 (initial-scale applies) instead of being managed
    /// already.
    pub newly_enabled: bool,
    /// The end of the run: no arrivals after it, and the integrals stop there.
    pub horizon: Nanos,
    /// Width of one bin of the timeline.
    pub bin: Nanos,
    /// Seed of the random streams.
    pub seed: u64,
}

/// One scale change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ScaleEvent {
    /// When (nanoseconds).
    pub at: Nanos,
    /// `spec.replicas` before.
    pub from: u32,
    /// `spec.replicas` after.
    pub to: u32,
    /// Why (the policy's reason, or `wake` for an activator's wake signal).
    pub reason: &'static str,
}

/// What one model's run produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelOutcome {
    /// Model name.
    pub model: String,
    /// Requests that arrived.
    pub requests: u64,
    /// Requests forwarded to a pod.
    pub served: u64,
    /// Requests that arrived while no pod was ready and waited for one (a wake or a start).
    pub cold_starts: u64,
    /// Scale-ups from zero.
    pub wakes: u64,
    /// Answered 503: the queue was full.
    pub rejected_503: u64,
    /// Answered 504: the queue deadline passed.
    pub expired_504: u64,
    /// Still queued at the horizon.
    pub unfinished: u64,
    /// Time from arrival to forwarding, of the served requests.
    pub wait: WaitStats,
    /// Pod-seconds of every pod that existed (starting, ready or draining).
    pub replica_seconds: f64,
    /// Pod-seconds of ready pods with no request in flight.
    pub idle_replica_seconds: f64,
    /// Pod-seconds of ready pods.
    pub ready_replica_seconds: f64,
    /// Changes of `spec.replicas`.
    pub scale_events: u64,
    /// Of which up.
    pub scale_ups: u64,
    /// Of which down (to zero included).
    pub scale_downs: u64,
    /// Highest `spec.replicas`.
    pub peak_replicas: u32,
    /// Highest ready pods.
    pub peak_ready: u32,
    /// Ticks at which the policy was in panic mode.
    pub panic_ticks: u64,
    /// Every wait, for totals across models.
    #[serde(skip)]
    pub waits: Vec<Nanos>,
    /// Per-bin load and replicas.
    #[serde(skip)]
    pub timeline: Timeline,
    /// Every scale change.
    #[serde(skip)]
    pub events: Vec<ScaleEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodState {
    Starting,
    Ready,
    Terminating,
    Gone,
}

#[derive(Clone, Debug)]
struct Pod {
    state: PodState,
    in_flight: u32,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Arrival,
    Complete { pod: u32, service: Nanos },
    Deadline { req: u32 },
    PodReady { pod: u32 },
    PodExit { pod: u32 },
    Wake,
    WakeResend { task: u64 },
    Scrape,
    Tick,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    req: u32,
    arrived: Nanos,
    /// Counted as a cold start (it waits for a pod to start, not for a busy one).
    cold: bool,
}

struct Model<'a> {
    settings: &'a ModelSettings,
    opts: &'a Options,
    requests: &'a [Request],
    policy: Box<dyn Policy>,
    rng: Rng,
    q: EventQueue<Ev>,
    now: Nanos,
    next_arrival: usize,
    pods: Vec<Pod>,
    /// Indices of ready pods (the balancer's list).
    ready: Vec<u32>,
    /// Indices of starting pods, oldest first.
    starting: Vec<u32>,
    alive: u64,
    idle_ready: u64,
    cursor: usize,
    queue: std::collections::VecDeque<Waiter>,
    in_flight: u64,
    spec: u32,
    /// The running wake task, if any (its id, so a stale resend is ignored).
    wake_task: Option<u64>,
    wake_tasks: u64,
    // Integrals, in nanoseconds.
    held_ns: u128,
    alive_ns: u128,
    idle_ns: u128,
    ready_ns: u128,
    answered: u64,
    /// Requests arrived, and finished by pods.
    arrived: u64,
    completed: u64,
    /// Request-nanoseconds at pods (in flight, not queued).
    busy_ns: u128,
    /// Service times of the requests pods finished, summed.
    service_ns: u128,
    /// At the previous scrape: (time, held_ns, answered, arrived, completed, busy_ns,
    /// service_ns).
    last_scrape: (Nanos, u128, u64, u64, u64, u128, u128),
    out: ModelOutcome,
}

impl Model<'_> {
    /// Advances the integrals (and the timeline) to `to`.
    fn advance(&mut self, to: Nanos) {
        let to = to.min(self.opts.horizon);
        if to <= self.now {
            return;
        }
        let held = self.in_flight + self.queue.len() as u64;
        let ready = self.ready.len() as u64;
        let mut t = self.now;
        while t < to {
            let bin_end = ((t / self.opts.bin) + 1) * self.opts.bin;
            let end = bin_end.min(to);
            let dt = u128::from(end - t);
            self.out
                .timeline
                .add(t, dt, self.alive as u128, ready as u128, held as u128);
            t = end;
        }
        let dt = u128::from(to - self.now);
        self.held_ns += u128::from(held) * dt;
        self.busy_ns += u128::from(self.in_flight) * dt;
        self.alive_ns += u128::from(self.alive) * dt;
        self.idle_ns += u128::from(self.idle_ready) * dt;
        self.ready_ns += u128::from(ready) * dt;
        self.now = to;
    }

    /// The activator's balancing rule (`zeroscale_gate::balance`): least in flight among the
    /// ready pods with room, ties round-robin from the cursor.
    fn pick(&self) -> Option<usize> {
        zeroscale_gate::balance::pick_by(
            self.ready.len(),
            self.settings.container_concurrency,
            self.cursor,
            |i| Some(self.pods[self.ready[i] as usize].in_flight),
        )
    }

    fn dispatch(&mut self, req: u32, arrived: Nanos, slot: usize) {
        self.cursor = self.cursor.wrapping_add(1);
        let pod = self.ready[slot];
        let p = &mut self.pods[pod as usize];
        if p.in_flight == 0 {
            self.idle_ready -= 1;
        }
        p.in_flight += 1;
        self.in_flight += 1;
        self.out.served += 1;
        self.out.waits.push(self.now - arrived);
        let service = self.opts.service.of(&self.requests[req as usize]);
        self.q.push(
            self.now + service,
            Class::Complete,
            Ev::Complete { pod, service },
        );
    }

    /// Serves waiters in order while a pod has room.
    fn drain_queue(&mut self) {
        while let Some(w) = self.queue.front().copied() {
            let Some(slot) = self.pick() else { break };
            self.queue.pop_front();
            self.dispatch(w.req, w.arrived, slot);
        }
        if self.queue.is_empty() {
            self.wake_task = None;
        }
    }

    fn arrival(&mut self) {
        let req = self.next_arrival as u32;
        self.next_arrival += 1;
        if let Some(next) = self.requests.get(self.next_arrival) {
            self.q.push(next.at, Class::Arrival, Ev::Arrival);
        }
        self.out.requests += 1;
        self.arrived += 1;
        self.out.timeline.arrival(self.now);
        if self.queue.is_empty()
            && let Some(slot) = self.pick()
        {
            self.dispatch(req, self.now, slot);
            return;
        }
        if self.queue.len() >= self.settings.queue_depth {
            self.out.rejected_503 += 1;
            self.answered += 1;
            return;
        }
        let first = self.queue.is_empty();
        let has_ready = !self.ready.is_empty();
        self.queue.push_back(Waiter {
            req,
            arrived: self.now,
            cold: !has_ready,
        });
        self.q.push(
            self.now + self.settings.queue_deadline,
            Class::Deadline,
            Ev::Deadline { req },
        );
        if !has_ready {
            self.out.cold_starts += 1;
        }
        if first && !has_ready && self.wake_task.is_none() {
            self.wake_tasks += 1;
            self.wake_task = Some(self.wake_tasks);
            self.signal();
        }
    }

    fn signal(&mut self) {
        self.q
            .push(self.now + self.opts.wake_latency, Class::Wake, Ev::Wake);
        if let Some(task) = self.wake_task {
            self.q.push(
                self.now + self.settings.wake_resend,
                Class::Wake,
                Ev::WakeResend { task },
            );
        }
    }

    fn deadline(&mut self, req: u32) {
        // Deadlines are arrival + a constant and the queue is FIFO, so an expiring request
        // is at the front, unless it was served already.
        // Anything ahead of it has an earlier deadline (or the same, scheduled first) and has
        // expired already.
        if self.queue.front().is_some_and(|w| w.req == req) {
            self.queue.pop_front();
            self.out.expired_504 += 1;
            self.answered += 1;
            if self.queue.is_empty() {
                self.wake_task = None;
            }
        }
    }

    fn complete(&mut self, pod: u32, service: Nanos) {
        self.in_flight -= 1;
        self.answered += 1;
        self.completed += 1;
        self.service_ns += u128::from(service);
        let p = &mut self.pods[pod as usize];
        p.in_flight -= 1;
        match p.state {
            PodState::Ready => {
                if p.in_flight == 0 {
                    self.idle_ready += 1;
                }
                self.drain_queue();
            }
            PodState::Terminating if p.in_flight == 0 => {
                self.q.push(
                    self.now + self.opts.shutdown,
                    Class::Pod,
                    Ev::PodExit { pod },
                );
            }
            _ => {}
        }
    }

    fn start_pod(&mut self) {
        let s = &self.opts.start;
        let latency = s.schedule.sample(&mut self.rng)
            + s.image.sample(&mut self.rng)
            + s.load.sample(&mut self.rng);
        let pod = self.pods.len() as u32;
        self.pods.push(Pod {
            state: PodState::Starting,
            in_flight: 0,
        });
        self.starting.push(pod);
        self.alive += 1;
        self.q
            .push(self.now + latency, Class::Pod, Ev::PodReady { pod });
    }

    fn pod_ready(&mut self, pod: u32) {
        if self.pods[pod as usize].state != PodState::Starting {
            return; // deleted before it was ready
        }
        self.starting.retain(|&p| p != pod);
        self.pods[pod as usize].state = PodState::Ready;
        self.ready.push(pod);
        self.idle_ready += 1;
        self.out.peak_ready = self.out.peak_ready.max(self.ready.len() as u32);
        self.wake_task = None;
        self.drain_queue();
    }

    fn pod_exit(&mut self, pod: u32) {
        let p = &mut self.pods[pod as usize];
        if p.state == PodState::Terminating {
            p.state = PodState::Gone;
            self.alive -= 1;
        }
    }

    /// The ReplicaSet controller: pods to match `spec`.
    fn reconcile(&mut self) {
        let active = (self.starting.len() + self.ready.len()) as u32;
        for _ in active..self.spec {
            self.start_pod();
        }
        let mut excess = active.saturating_sub(self.spec);
        while excess > 0 {
            excess -= 1;
            if let Some(pod) = self.starting.pop() {
                self.pods[pod as usize].state = PodState::Gone;
                self.alive -= 1;
            } else if let Some(pod) = self.ready.pop() {
                let p = &mut self.pods[pod as usize];
                p.state = PodState::Terminating;
                if p.in_flight == 0 {
                    self.idle_ready -= 1;
                    self.q.push(
                        self.now + self.opts.shutdown,
                        Class::Pod,
                        Ev::PodExit { pod },
                    );
                }
            }
        }
        // The last ready pod went while requests wait behind it: they now wait for a start,
        // and the activator asks for a wake (as `activator/src/queue.rs` does).
        if self.ready.is_empty() && !self.queue.is_empty() {
            for w in self.queue.iter_mut().filter(|w| !w.cold) {
                w.cold = true;
                self.out.cold_starts += 1;
            }
            if self.wake_task.is_none() {
                self.wake_tasks += 1;
                self.wake_task = Some(self.wake_tasks);
                self.signal();
            }
        }
    }

    fn set_spec(&mut self, to: u32, reason: &'static str) {
        let from = self.spec;
        if to == from {
            return;
        }
        self.spec = to;
        self.out.scale_events += 1;
        if to > from {
            self.out.scale_ups += 1;
        } else {
            self.out.scale_downs += 1;
        }
        if from == 0 {
            self.out.wakes += 1;
        }
        self.out.peak_replicas = self.out.peak_replicas.max(to);
        self.out.timeline.spec(self.now, to);
        self.out.events.push(ScaleEvent {
            at: self.now,
            from,
            to,
            reason,
        });
        self.reconcile();
    }

    fn wake(&mut self) {
        if self.spec > 0 {
            return; // someone already scaled it up; a wake never scales down
        }
        let p = &self.settings.params;
        let mut to = p.activation_scale.max(1).max(p.min_scale);
        if p.max_scale > 0 {
            to = to.min(p.max_scale).max(1);
        }
        self.policy.woken(self.now);
        self.set_spec(to, "wake");
    }

    fn scrape(&mut self) {
        let (prev_at, prev_held, prev_answered, prev_arrived, prev_completed, prev_busy, prev_svc) =
            self.last_scrape;
        let dt = (self.now - prev_at) as f64;
        let per_sec = |n: u64| n as f64 * SEC as f64 / dt;
        let s = Scrape {
            at: self.now,
            concurrency: (self.held_ns - prev_held) as f64 / dt,
            rps: per_sec(self.answered - prev_answered),
            in_flight: self.in_flight,
            queued: self.queue.len() as u64,
            arrivals: per_sec(self.arrived - prev_arrived),
            in_service: (self.busy_ns - prev_busy) as f64 / dt,
            served: per_sec(self.completed - prev_completed),
            service_seconds: (self.service_ns - prev_svc) as f64 / dt,
        };
        self.last_scrape = (
            self.now,
            self.held_ns,
            self.answered,
            self.arrived,
            self.completed,
            self.busy_ns,
            self.service_ns,
        );
        self.policy.scraped(&s);
    }

    fn tick(&mut self) {
        let view = View {
            ready_pods: self.ready.len() as u32,
            spec_replicas: self.spec,
        };
        let choice = self.policy.decide(self.now, &view);
        if choice.in_panic {
            self.out.panic_ticks += 1;
        }
        self.set_spec(choice.desired, choice.reason);
        self.out.timeline.spec(self.now, self.spec);
    }

    fn run(mut self) -> ModelOutcome {
        let horizon = self.opts.horizon;
        for _ in 0..self.spec {
            let pod = self.pods.len() as u32;
            self.pods.push(Pod {
                state: PodState::Ready,
                in_flight: 0,
            });
            self.ready.push(pod);
            self.alive += 1;
            self.idle_ready += 1;
        }
        self.out.peak_replicas = self.spec;
        self.out.peak_ready = self.spec;
        if let Some(first) = self.requests.first() {
            self.q.push(first.at, Class::Arrival, Ev::Arrival);
        }
        self.q.push(self.settings.scrape, Class::Scrape, Ev::Scrape);
        self.q.push(self.settings.tick, Class::Tick, Ev::Tick);
        while let Some(at) = self.q.peek_time() {
            if at >= horizon {
                break;
            }
            let Some((at, _, ev)) = self.q.pop() else {
                break;
            };
            self.advance(at);
            match ev {
                Ev::Arrival => self.arrival(),
                Ev::Complete { pod, service } => self.complete(pod, service),
                Ev::Deadline { req } => self.deadline(req),
                Ev::PodReady { pod } => self.pod_ready(pod),
                Ev::PodExit { pod } => self.pod_exit(pod),
                Ev::Wake => self.wake(),
                Ev::WakeResend { task } => {
                    if self.wake_task == Some(task)
                        && !self.queue.is_empty()
                        && self.ready.is_empty()
                    {
                        self.signal();
                    }
                }
                Ev::Scrape => {
                    self.scrape();
                    self.q
                        .push(at + self.settings.scrape, Class::Scrape, Ev::Scrape);
                }
                Ev::Tick => {
                    self.tick();
                    self.q.push(at + self.settings.tick, Class::Tick, Ev::Tick);
                }
            }
        }
        self.advance(horizon);
        let mut out = self.out;
        out.unfinished = self.queue.len() as u64;
        out.replica_seconds = ns_to_secs(self.alive_ns);
        out.idle_replica_seconds = ns_to_secs(self.idle_ns);
        out.ready_replica_seconds = ns_to_secs(self.ready_ns);
        out.wait = WaitStats::of(&mut out.waits);
        out
    }
}

fn ns_to_secs(ns: u128) -> f64 {
    ns as f64 / 1e9
}

/// Runs one model's requests (sorted by arrival) under `policy`. `stream` picks the model's
/// random stream (its index), so each model's draws are its own.
pub fn simulate(
    model: &str,
    requests: &[Request],
    settings: &ModelSettings,
    policy: &PolicyKind,
    opts: &Options,
    stream: u64,
) -> ModelOutcome {
    let policy = policy.build(settings, opts.newly_enabled);
    simulate_with(model, requests, settings, policy, opts, stream)
}

/// [`simulate`] with a policy object of the caller's (a new policy, or a scripted one in a
/// test).
pub fn simulate_with(
    model: &str,
    requests: &[Request],
    settings: &ModelSettings,
    policy: Box<dyn Policy>,
    opts: &Options,
    stream: u64,
) -> ModelOutcome {
    let bin = opts.bin.max(1);
    let bins = opts.horizon.div_ceil(bin) as usize;
    let m = Model {
        settings,
        opts,
        requests,
        policy,
        rng: Rng::new(opts.seed, stream),
        q: EventQueue::default(),
        now: 0,
        next_arrival: 0,
        pods: Vec::new(),
        ready: Vec::new(),
        starting: Vec::new(),
        alive: 0,
        idle_ready: 0,
        cursor: 0,
        queue: Default::default(),
        in_flight: 0,
        spec: opts.initial_replicas,
        wake_task: None,
        wake_tasks: 0,
        held_ns: 0,
        alive_ns: 0,
        idle_ns: 0,
        ready_ns: 0,
        answered: 0,
        arrived: 0,
        completed: 0,
        busy_ns: 0,
        service_ns: 0,
        last_scrape: (0, 0, 0, 0, 0, 0, 0),
        out: ModelOutcome {
            model: model.to_owned(),
            timeline: Timeline::new(bin, bins),
            ..Default::default()
        },
    };
    m.run()
}

/// Sums per-model outcomes into one row named `total` (waits are pooled, so its percentiles
/// are over every served request; peaks are summed, an upper bound of the fleet's peak).
pub fn total(models: &[ModelOutcome]) -> ModelOutcome {
    let mut t = ModelOutcome {
        model: "total".into(),
        ..Default::default()
    };
    for m in models {
        t.requests += m.requests;
        t.served += m.served;
        t.cold_starts += m.cold_starts;
        t.wakes += m.wakes;
        t.rejected_503 += m.rejected_503;
        t.expired_504 += m.expired_504;
        t.unfinished += m.unfinished;
        t.replica_seconds += m.replica_seconds;
        t.idle_replica_seconds += m.idle_replica_seconds;
        t.ready_replica_seconds += m.ready_replica_seconds;
        t.scale_events += m.scale_events;
        t.scale_ups += m.scale_ups;
        t.scale_downs += m.scale_downs;
        t.panic_ticks += m.panic_ticks;
        t.waits.extend_from_slice(&m.waits);
        t.timeline.merge(&m.timeline);
    }
    // The fleet's peaks, from the summed timeline where there is one.
    t.peak_replicas = t.timeline.spec_max.iter().copied().max().unwrap_or(0);
    t.peak_ready = models.iter().map(|m| m.peak_ready).sum();
    if models.len() == 1 {
        t.peak_replicas = models[0].peak_replicas;
        t.peak_ready = models[0].peak_ready;
    }
    t.wait = WaitStats::of(&mut t.waits);
    t
}
