//! The decider: one per Deployment. See the crate docs for the model.

use std::time::{Duration, Instant};

use crate::decision::{
    DataState, Decision, DecisionInputs, Demand, DemandInputs, Observation, Reason, Sample,
};
use crate::delay::MaxWindow;
use crate::idle::{IdleHistogram, IdlePlan, KeepAliveBy, MIN_GAP};
use crate::params::{Metric, Params, Sizing, ZeroPolicy};
use crate::window::{MAX_WINDOW_SECS, Pair, Windows, to_micros};

/// Smallest `target x utilization` used, so a zero or negative target (which config validation
/// rejects anyway) yields "very many pods", capped by the rates and max-scale, not a NaN.
const MIN_TARGET_PER_POD: f64 = 1e-6;

/// The scaling state of one Deployment: sample windows, panic state, the scale-down delay
/// window and idle tracking. Feed it with [`Decider::record`], ask with [`Decider::decide`].
#[derive(Clone, Debug)]
pub struct Decider {
    params: Params,
    /// Second 0 of the buckets: the instant the decider was created.
    origin: Instant,
    newly_enabled: bool,
    windows: Windows,
    delay: MaxWindow,
    /// Knative's `panicTime`: the last time the panic window was over the threshold.
    panic_time: Option<Instant>,
    /// The highest count returned in the current panic episode.
    panic_high: u32,
    /// Whether `decide` has run once (the restart rule looks at the first observation).
    started: bool,
    /// When the first sample was recorded: the initial-scale hold lasts a stable window from it.
    first_sample_at: Option<Instant>,
    initial_over: bool,
    /// The last moment the model was seen busy (or could not be seen at all).
    last_busy: Instant,
    /// The newest seconds with a sample that carried the demand figures, and with one that
    /// did not: a source that stops sending them sends the decider back to Knative sizing.
    /// Seconds, not call order, so the order samples arrive in does not matter.
    demand_at: Option<i64>,
    plain_at: Option<i64>,
    /// The model's idle gaps (learned under either policy, so switching to adaptive uses what
    /// was seen), and the last moment traffic was seen (samples or requests, not stale data).
    idle: IdleHistogram,
    last_traffic: Option<Instant>,
    /// The last service time measured (seconds), kept across idle periods: a wake from zero
    /// sizes its backlog with the service time of the model's previous traffic.
    service_time: Option<f64>,
    /// When a priced keep-alive scaled the model to zero before its stable window emptied
    /// (the early zero): until new demand (a request in flight or queued, a sample with
    /// traffic after it), the samples still in the windows ask for no pod.
    zeroed_early: Option<Instant>,
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Stable and panic window lengths in seconds (the bucket counts).
fn window_lens(p: &Params) -> (u64, u64) {
    let stable = ceil_secs(p.stable_window).clamp(1, MAX_WINDOW_SECS);
    let pct = if p.panic_window_percentage.is_finite() && p.panic_window_percentage > 0.0 {
        p.panic_window_percentage.min(100.0)
    } else {
        10.0
    };
    let panic = ((stable as f64 * pct / 100.0).ceil() as u64).clamp(1, stable);
    (stable, panic)
}

/// How long a model must be idle before an early zero at keep-alive `k`: k, and at least
/// [`MIN_GAP`] (two samples without traffic: a shorter pause is no idle gap to the histogram,
/// and it is what "zero at once", k = 0, means) and the retention period.
fn early_zero_after(k: Duration, p: &Params) -> Duration {
    k.max(MIN_GAP).max(p.scale_to_zero_pod_retention_period)
}

/// A rate, or 1 (no change allowed) when it is not a number >= 1.
fn rate(r: f64) -> f64 {
    if r.is_nan() { 1.0 } else { r.max(1.0) }
}

/// Float pod count to `u32`; `as` saturates and maps NaN to 0.
fn pods(x: f64) -> u32 {
    x as u32
}

impl Decider {
    /// A decider for one Deployment, created at `now`.
    ///
    /// `newly_enabled`: true when the Deployment just opted in (initial-scale applies), false
    /// when the autoscaler (re)started and found it already managed (initial-scale is never
    /// re-applied then; instead, like Knative, the first decision starts in panic mode if more
    /// than one pod is ready, so a restart with empty windows does not scale down).
    pub fn new(params: Params, now: Instant, newly_enabled: bool) -> Self {
        let (stable, panic) = window_lens(&params);
        let idle = IdleHistogram::new(params.adaptive.histogram_range);
        Self {
            params,
            origin: now,
            newly_enabled,
            windows: Windows::new(stable, panic),
            delay: MaxWindow::default(),
            panic_time: None,
            panic_high: 0,
            started: false,
            first_sample_at: None,
            initial_over: false,
            last_busy: now,
            demand_at: None,
            plain_at: None,
            idle,
            last_traffic: None,
            service_time: None,
            zeroed_early: None,
        }
    }

    /// Hot reload of the policy; keeps the recorded samples (the newest seconds that fit the
    /// new window), the panic state and the idle clock.
    pub fn set_params(&mut self, params: Params) {
        let (stable, panic) = window_lens(&params);
        if params.adaptive.histogram_range != self.params.adaptive.histogram_range {
            // Other bins mean other gaps: start learning again.
            self.idle = IdleHistogram::new(params.adaptive.histogram_range);
        }
        self.windows.resize(stable, panic);
        if params.scale_down_delay.is_zero() {
            self.delay.clear();
        }
        self.params = params;
    }

    /// The idle gaps learned so far (to keep them across restarts: [`IdleHistogram::encode`]).
    pub fn idle_histogram(&self) -> &IdleHistogram {
        &self.idle
    }

    /// Replaces the learned idle gaps, for example with what a previous leader stored. A
    /// histogram of another range is ignored (its bins mean other gaps).
    pub fn restore_idle_histogram(&mut self, histogram: IdleHistogram) {
        if histogram.bin() == self.idle.bin() {
            self.idle = histogram;
        }
    }

    /// Traffic seen at `at`: an idle gap ends. Gaps are learned in the order they are seen
    /// (a sample for an earlier second than the newest traffic is no new gap).
    fn traffic(&mut self, at: Instant) {
        match self.last_traffic {
            Some(prev) if at <= prev => {}
            Some(prev) => {
                self.idle.add(at - prev);
                self.last_traffic = Some(at);
            }
            None => self.last_traffic = Some(at),
        }
    }

    /// The policy in force.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Whether the decider is in panic mode after the last [`Decider::decide`].
    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    /// Samples dropped so far because they were older than the stable window.
    pub fn dropped_samples(&self) -> u64 {
        self.windows.dropped()
    }

    /// The bucket (second) an instant falls in, counted from the decider's creation; negative
    /// before it.
    fn second(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.origin) {
            Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            None => {
                let d = self.origin - t;
                -i64::try_from(ceil_secs(d)).unwrap_or(i64::MAX / 2)
            }
        }
    }

    /// Records one sample taken at `at`. Samples fall into one-second buckets (counted from the
    /// decider's creation):
    ///
    /// - **Duplicate** (another sample for a second that already has one): the bucket's value
    ///   is the *mean* of its samples. Each sample is already a whole-cluster figure (summed
    ///   over activators by the caller), so two scrapes in one second are two estimates of the
    ///   same quantity, not two parts of it.
    /// - **Out of order** but inside the stable window: placed in its own bucket; the averages
    ///   include it from the next decision on.
    /// - **Late**: older than the stable window (relative to the newest sample or decision
    ///   seen): dropped and counted in [`Decider::dropped_samples`].
    /// - **Gaps**: a second without a sample counts as zero.
    /// - **Future**: a sample newer than the last decision moves the windows forward; a later
    ///   `decide` with an earlier `now` treats that sample's second as the present (time never
    ///   runs backwards inside the decider).
    ///
    /// Any sample with traffic (concurrency or rps above zero) also restarts the idle clock at
    /// `at`, even if it is dropped as late.
    pub fn record(&mut self, at: Instant, sample: Sample) {
        self.record_with(at, sample, None);
    }

    /// [`Decider::record`] with the demand figures of the same second, which
    /// [`Sizing::Demand`] sizes from. A sample without them (`None`) sends the decider back
    /// to Knative sizing until the next one that has them.
    pub fn record_with(&mut self, at: Instant, sample: Sample, demand: Option<Demand>) {
        let d = demand.unwrap_or_default();
        let pair = Pair {
            concurrency: to_micros(sample.concurrency),
            rps: to_micros(sample.rps),
            arrivals: to_micros(d.arrivals),
            in_service: to_micros(d.in_service),
            served: to_micros(d.served),
            service: to_micros(d.service_seconds),
        };
        if pair != Pair::default() {
            self.last_busy = self.last_busy.max(at);
            self.traffic(at);
            if self.zeroed_early.is_some_and(|z| at > z) {
                self.zeroed_early = None;
            }
        }
        let sec = self.second(at);
        let newest = if demand.is_some() {
            &mut self.demand_at
        } else {
            &mut self.plain_at
        };
        *newest = (*newest).max(Some(sec));
        if self.windows.record(sec, pair) == crate::window::Recorded::Placed
            && self.first_sample_at.is_none()
        {
            self.first_sample_at = Some(at);
        }
    }

    /// Whether the initial-scale hold is still on at `now`.
    fn initial_active(&mut self, now: Instant) -> bool {
        if !self.newly_enabled || self.initial_over {
            return false;
        }
        match self.first_sample_at {
            // No data yet: keep holding.
            None => true,
            Some(first) if now < first + self.params.stable_window => true,
            Some(_) => {
                self.initial_over = true;
                false
            }
        }
    }

    /// The demand model's estimate for the windows ending at `end`, or `None` when it does
    /// not apply (Knative sizing, the rps metric, no demand figures, no service time yet).
    fn demand(&mut self, end: i64, queued: u64, held: (f64, f64)) -> Option<DemandInputs> {
        let p = &self.params;
        // A second with both kinds counts as reported (order-independent).
        let reported = self.demand_at.is_some() && self.demand_at >= self.plain_at;
        if p.sizing != Sizing::Demand || p.metric != Metric::Concurrency || !reported {
            return None;
        }
        let (stable, panic) = self.windows.demand_averages(end);
        // The mean duration of the requests that finished: exact even while load ramps up,
        // when requests in service / requests finished would count requests not yet done.
        if stable.served > 0.0 {
            self.service_time = Some(stable.service / stable.served);
        }
        // Little's law holds over a horizon longer than a request: the panic window's
        // arrivals are taken over the panic window plus one service time (within the stable
        // window), the horizon Knative's requests held average over too. Over the bare panic
        // window, a model whose requests take longer than it would see every few extra
        // arrivals of a Poisson stream as a burst.
        let panic_arrivals = match self.service_time {
            Some(s) => {
                let horizon = self.windows.panic_len().saturating_add(s.ceil() as u64);
                self.windows.arrivals_over(end, horizon)
            }
            None => panic.arrivals,
        };
        // Before a first request was served nothing says what the backlog costs: the requests
        // being served are all that counts, so a first wake starts activation-scale pods and
        // sizing follows once they answer (Knative's reading of the backlog as load is what
        // this model replaces, so it is no fallback here).
        let service_time = self.service_time;
        let drain_time = Duration::from_secs(self.windows.panic_len());
        let drain = drain_time.as_secs_f64();
        // Each queued request needs `service_time` of one slot: draining N of them within
        // `drain` takes N x s / drain slots, and never more than N (one slot each).
        let backlog_concurrency =
            service_time.map_or(0.0, |s| queued as f64 * (s / drain).min(1.0));
        Some(DemandInputs {
            service_time,
            stable_arrivals: stable.arrivals,
            panic_arrivals,
            stable_in_service: stable.in_service,
            panic_in_service: panic.in_service,
            backlog: queued,
            drain_time,
            backlog_concurrency,
            held_stable: held.0,
            held_panic: held.1,
        })
    }

    /// Decides the replica count at `now`. Pure given (state, `now`, `obs`); updates the panic,
    /// delay and idle state. See the crate docs for the rules and their order.
    pub fn decide(&mut self, now: Instant, obs: &Observation) -> Decision {
        let p = &self.params;
        let fresh = obs.data == DataState::Fresh;
        let busy = obs.in_flight > 0 || obs.queued > 0;

        // 1. Window averages, ending at the newest second seen.
        let end = self.windows.advance(self.second(now));
        let held = self.windows.averages(end, p.metric, p.aggregation);
        let demand = self.demand(end, obs.queued, held);
        // Little's law: arrivals x service time is the concurrency pods will carry; the
        // requests they serve now are a floor (a long request outlives the arrivals window).
        let (stable_average, panic_average) = match &demand {
            Some(d) => {
                let s = d.service_time.unwrap_or(0.0);
                (
                    (d.stable_arrivals * s).max(d.stable_in_service) + d.backlog_concurrency,
                    (d.panic_arrivals * s).max(d.panic_in_service) + d.backlog_concurrency,
                )
            }
            None => held,
        };
        let p = &self.params;

        // 2. Knative's core: pods wanted by each window, kept within the rates.
        let tpp = p.target * p.target_utilization;
        let tpp = if tpp.is_finite() && tpp > MIN_TARGET_PER_POD {
            tpp
        } else {
            MIN_TARGET_PER_POD
        };
        let ready = f64::from(obs.ready_pods.max(1));
        let max_up = (rate(p.max_scale_up_rate) * ready).ceil();
        let max_down = (ready / rate(p.max_scale_down_rate)).floor();
        let dspc = (stable_average / tpp).ceil();
        let dppc = (panic_average / tpp).ceil();
        let mut stable_desired = pods(dspc.max(max_down).min(max_up));
        let mut panic_desired = pods(dppc.max(max_down).min(max_up));
        // Activation-scale is a floor whenever there is any load at all.
        let act = p.activation_scale.max(1);
        if dspc > 0.0 && stable_desired < act {
            stable_desired = act;
        }
        if dppc > 0.0 && panic_desired < act {
            panic_desired = act;
        }

        // 3. Panic state (Knative): enter or extend when the panic window wants
        //    >= threshold x ready pods; leave only after a full stable window below it. Leaving
        //    needs fresh data: a gap in the data would look like a calm period.
        if !self.started {
            self.started = true;
            // Opted in at zero replicas: it stays at zero until its first request (a wake),
            // so a model that holds GPUs costs nothing until used. Initial-scale is for
            // Deployments that opt in with replicas.
            if self.newly_enabled && obs.current_scale == 0 {
                self.initial_over = true;
            }
            if !self.newly_enabled && obs.ready_pods > 1 {
                // Restarted autoscaler, empty windows: hold the ready pods for a stable window.
                self.panic_time = Some(self.origin);
                self.panic_high = obs.ready_pods;
            }
        }
        let threshold = if p.panic_threshold_percentage.is_nan() {
            2.0
        } else {
            p.panic_threshold_percentage / 100.0
        };
        if dppc / ready >= threshold {
            self.panic_time = Some(self.panic_time.map_or(now, |t| t.max(now)));
        } else if let Some(t) = self.panic_time
            && fresh
            && t + p.stable_window < now
        {
            self.panic_time = None;
            self.panic_high = 0;
        }
        let in_panic = self.panic_time.is_some();

        let (mut want, mut reason) = if in_panic {
            // Provision for the larger of the two windows, and never below what panic already
            // asked for or what is already running.
            let w = stable_desired
                .max(panic_desired)
                .max(self.panic_high)
                .max(obs.current_scale);
            (w, Reason::Panic)
        } else if dspc > max_up && f64::from(stable_desired) == max_up {
            (stable_desired, Reason::RateLimitedUp)
        } else if dspc < max_down {
            (stable_desired, Reason::RateLimitedDown)
        } else {
            (stable_desired, Reason::Stable)
        };

        // 4. Scale-down delay: the max over the last `scale_down_delay`.
        let delay = ceil_secs(p.scale_down_delay);
        if delay > 0 {
            let held = self.delay.record(end, want, delay);
            if held > want {
                want = held;
                if !in_panic {
                    reason = Reason::ScaleDownDelay;
                }
            }
        }

        // 5. Initial-scale, for a stable window of data after opting in.
        let initial = p.initial_scale;
        if want < initial && self.initial_active(now) {
            want = initial;
            reason = Reason::Initial;
        }

        // 6. Zero: only when idle (fresh data, nothing in flight or queued, no traffic in the
        //    samples) for the grace period and the retention period. Missing or stale data
        //    never counts as idle.
        if busy {
            self.traffic(now);
            // New demand: the model wakes (step 8) and is sized as any other.
            self.zeroed_early = None;
        }
        let p = &self.params;
        if busy || !fresh {
            self.last_busy = self.last_busy.max(now);
        }
        let idle_for = (!busy && fresh).then(|| now.saturating_duration_since(self.last_busy));
        // The early zero (priced keep-alive only): the last pod, wanted by nothing but the
        // samples of past traffic still in the stable window, may go at a keep-alive shorter
        // than the window. Not in panic, not against the scale-down rate, delay or
        // initial-scale (their reasons would show), and never for more than one pod.
        let early_candidate = p.scale_to_zero_policy == ZeroPolicy::Adaptive
            && p.adaptive.cold_start_cost.is_some()
            && p.enable_scale_to_zero
            && p.scale_down_delay.is_zero()
            && idle_for.is_some()
            && want == 1
            && matches!(reason, Reason::Stable | Reason::RateLimitedDown)
            && pods(max_down) == 0;
        // The adaptive policy replaces the grace period by what the model's gaps say.
        // Planned only when the windows want no pod (the only case it decides) or for an
        // early zero, so a busy model never pays the pass over the bins.
        let idle_plan = (p.scale_to_zero_policy == ZeroPolicy::Adaptive
            && (want == 0 || early_candidate))
            .then(|| self.idle.plan(&p.adaptive));
        let mut early_zero = false;
        if early_candidate
            && let Some(IdlePlan::KeepAlive {
                keep_alive,
                by: KeepAliveBy::Cost { .. },
                ..
            }) = idle_plan
            && keep_alive < Duration::from_secs(self.windows.stable_len())
            && idle_for.unwrap_or_default() >= early_zero_after(keep_alive, p)
        {
            want = 0;
            reason = Reason::ScaleToZero;
            early_zero = true;
        }
        let grace = match idle_plan {
            None | Some(IdlePlan::Fixed { .. }) => p.scale_to_zero_grace_period,
            Some(IdlePlan::KeepAlive { keep_alive, .. }) => keep_alive,
            Some(IdlePlan::PreWarm { .. }) => Duration::ZERO,
        };
        let prewarm = match (idle_plan, idle_for) {
            (
                Some(IdlePlan::PreWarm {
                    prewarm_at, until, ..
                }),
                Some(idle),
            ) => idle >= prewarm_at && idle < until,
            _ => false,
        };
        if early_zero {
            // Decided above.
        } else if want == 0 {
            // The early zero is not forgotten here: the windows can want a pod again without
            // new traffic (a source that stops sending demand figures switches the sizing).
            let idle = idle_for.unwrap_or_default();
            if !p.enable_scale_to_zero {
                want = 1;
                reason = Reason::HeldByMin;
            } else if prewarm {
                // The next request is expected soon: one pod, at zero or not, so it is ready.
                want = 1;
                reason = Reason::PreWarm;
            } else if obs.current_scale == 0 {
                // Already at zero: staying there needs no grace period (a wake is step 8).
                reason = Reason::ScaleToZero;
            } else if busy {
                want = 1;
                reason = Reason::InFlight;
            } else if !fresh {
                // Step 7 holds the current scale.
            } else if idle < grace {
                want = 1;
                reason = if matches!(idle_plan, Some(IdlePlan::KeepAlive { .. })) {
                    Reason::KeepAlive
                } else {
                    Reason::GracePeriod
                };
            } else if idle < p.scale_to_zero_pod_retention_period {
                want = 1;
                reason = Reason::PodRetention;
            } else {
                reason = Reason::ScaleToZero;
            }
        } else if self.zeroed_early.is_some() && obs.current_scale == 0 && !busy {
            // At zero after an early zero, no new demand: the past samples still in the
            // windows were served, and only a new request brings the model back (the rule
            // capacity pools apply to an evicted model).
            want = 0;
            reason = Reason::ScaleToZero;
            early_zero = true;
        }

        // 7. Stale or missing data: never below the current scale. Scaling up on the data we do
        //    have is fine: missing samples only make the averages lower, never higher.
        if !fresh && want <= obs.current_scale {
            want = obs.current_scale;
            reason = Reason::StaleData;
        }

        // 8. Wake: requests while at zero get max(1, activation-scale) at once.
        let waking = obs.current_scale == 0 && busy;
        if waking {
            want = want.max(act);
            reason = Reason::Wake;
        }

        // The high-water mark includes every raise above (delay, stale hold, wake), so nothing
        // returned during one panic episode is ever lowered while it lasts.
        if in_panic {
            self.panic_high = want;
        }

        // 9. Bounds always win. 0 survives only if min-scale is 0.
        let hi = if p.max_scale == 0 {
            u32::MAX
        } else {
            p.max_scale
        };
        let lo = p.min_scale.min(hi);
        if want > hi {
            want = hi;
            reason = Reason::HeldByMax;
        } else if want < lo {
            want = lo;
            reason = Reason::HeldByMin;
        }
        if waking {
            reason = Reason::Wake;
        }
        if early_zero && want == 0 {
            self.zeroed_early = Some(self.zeroed_early.unwrap_or(now));
        }
        let early_zero = early_zero && want == 0 && reason == Reason::ScaleToZero;

        Decision {
            desired: want,
            reason,
            inputs: DecisionInputs {
                metric: p.metric,
                stable_average,
                panic_average,
                demand,
                panic_percentage: dppc / ready * 100.0,
                target_per_pod: tpp,
                stable_window: Duration::from_secs(self.windows.stable_len()),
                panic_window: Duration::from_secs(self.windows.panic_len()),
                stable_wanted: pods(dspc),
                panic_wanted: pods(dppc),
                stable_desired,
                panic_desired,
                max_scale_up: pods(max_up),
                max_scale_down: pods(max_down),
                ready_pods: obs.ready_pods,
                current_scale: obs.current_scale,
                in_flight: obs.in_flight,
                queued: obs.queued,
                data: obs.data,
                in_panic,
                idle_for,
                min_scale: p.min_scale,
                max_scale: p.max_scale,
                initial_scale: p.initial_scale,
                activation_scale: p.activation_scale,
                panic_threshold_percentage: p.panic_threshold_percentage,
                scale_down_delay: p.scale_down_delay,
                scale_to_zero_enabled: p.enable_scale_to_zero,
                grace_period: p.scale_to_zero_grace_period,
                idle_plan,
                early_zero,
                retention_period: p.scale_to_zero_pod_retention_period,
            },
        }
    }
}
