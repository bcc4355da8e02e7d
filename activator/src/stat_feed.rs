//! The stat feed: what the autoscaler reads from this activator every scrape interval
//! (`GET /v1/feed` on the admin port; wire format and protocol in
//! [`zeroscale_config::feed`] and `docs/architecture.md`).
//!
//! Each model has one [`ConcurrencyIntegral`]: the integral of the requests it holds, its
//! queued and in-flight counts and its answered requests, all under one small mutex together
//! with the generation of its last change (its *stamp*). A read takes the next generation
//! first and then looks at every model, so a change either lands before the model is looked
//! at (and is on this page) or gets a stamp above the cursor this page hands out (and is on
//! the next page the reader asks for: those list stamps above the reader's cursor). Nothing
//! can fall between two pages; a model at rest since the reader's cursor is skipped, which is
//! what makes an idle activator's feed small.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_config::DeploymentKey;
use zeroscale_config::feed::{FeedColdStart, FeedDemand, FeedFilter, FeedKey, FeedModel, FeedPage};

/// How long a removed model is remembered for readers whose cursor predates its removal. A
/// reader with an older cursor gets a full page instead (which says the same by absence).
pub const REMOVED_RETENTION: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct CellState {
    /// Requests held (queued + forwarded and not yet answered).
    count: u64,
    /// Accumulated request-nanoseconds: integer so the sum is exact.
    acc_nanos: u128,
    last: Instant,
    in_flight: i64,
    queued: i64,
    answered: u64,
    /// Requests taken for the model (every one routed to it, refused ones included).
    arrivals: u64,
    /// Accumulated request-nanoseconds of requests at pods (`in_flight`, over the same clock
    /// as `acc_nanos`).
    pod_nanos: u128,
    /// Requests pods finished, and their summed nanoseconds at the pod.
    served: u64,
    service_nanos: u128,
    /// Generation of the last change.
    stamp: u64,
    /// When a request was last taken or let go (`None`: never).
    last_active: Option<Instant>,
    /// When a request was last taken (`None`: never).
    last_arrival: Option<Instant>,
    /// The latest cold start: when its last held request got a pod, and the longest wait.
    cold_start: Option<(Instant, Duration)>,
}

#[derive(Debug)]
struct Cell {
    state: Mutex<CellState>,
    /// The feed's generation (a private one for a cell built outside a feed).
    generation: Arc<AtomicU64>,
    incarnation: u64,
}

/// One model's counts: the integral over time of the number of requests held (queued +
/// forwarded and not yet answered), in request-seconds, plus the queued, in-flight and answered
/// counts the feed reports with it. Time is passed in (`*_at`), so it is testable without a
/// clock; [`ConcurrencyIntegral::hold`] and the feed use `tokio::time::Instant::now()`, which a
/// paused test clock controls.
#[derive(Clone, Debug)]
pub struct ConcurrencyIntegral(Arc<Cell>);

impl Default for ConcurrencyIntegral {
    fn default() -> Self {
        Self::new_at(Instant::now())
    }
}

/// A copy of one model's counts at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellSnapshot {
    /// The integral up to the instant, in request-nanoseconds.
    pub total_nanos: u128,
    /// Requests held.
    pub held: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests queued.
    pub queued: u64,
    /// Requests answered.
    pub answered: u64,
    /// Requests taken (refused ones included).
    pub arrivals: u64,
    /// The integral of the requests at pods up to the instant, in request-nanoseconds.
    pub pod_nanos: u128,
    /// Requests pods finished.
    pub served: u64,
    /// Their summed time at the pod, in nanoseconds.
    pub service_nanos: u128,
    /// Generation of the last change.
    pub stamp: u64,
    /// When a request last arrived.
    pub last_arrival: Option<Instant>,
    /// The latest cold start: when it ended, and its longest wait.
    pub cold_start: Option<(Instant, Duration)>,
}

impl ConcurrencyIntegral {
    /// A zero integral starting at `now`, outside any feed.
    pub fn new_at(now: Instant) -> Self {
        Self::in_generation(Arc::new(AtomicU64::new(0)), 0, now)
    }

    fn in_generation(generation: Arc<AtomicU64>, incarnation: u64, now: Instant) -> Self {
        Self(Arc::new(Cell {
            state: Mutex::new(CellState {
                count: 0,
                acc_nanos: 0,
                last: now,
                in_flight: 0,
                queued: 0,
                answered: 0,
                arrivals: 0,
                pod_nanos: 0,
                served: 0,
                service_nanos: 0,
                stamp: 0,
                last_active: None,
                last_arrival: None,
                cold_start: None,
            }),
            generation,
            incarnation,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, CellState> {
        // A poisoned lock only means a panic elsewhere; the counters stay meaningful.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state under the lock and stamps it with the current generation (read under
    /// the same lock: the ordering the module doc relies on).
    fn change(&self, f: impl FnOnce(&mut CellState)) {
        let mut st = self.lock();
        f(&mut st);
        st.stamp = self.0.generation.load(Ordering::SeqCst);
    }

    fn advance(st: &mut CellState, now: Instant) {
        // `saturating_duration_since`: a caller's `now` older than the last change adds nothing.
        let dt = now.saturating_duration_since(st.last);
        st.acc_nanos += u128::from(st.count) * dt.as_nanos();
        st.pod_nanos += u128::from(st.in_flight.max(0) as u64) * dt.as_nanos();
        if now > st.last {
            st.last = now;
        }
    }

    /// One more request held from `now` on: an arrival.
    pub fn inc_at(&self, now: Instant) {
        self.change(|st| {
            Self::advance(st, now);
            st.count += 1;
            st.arrivals += 1;
            st.last_active = Some(st.last_active.map_or(now, |t| t.max(now)));
            st.last_arrival = Some(st.last_arrival.map_or(now, |t| t.max(now)));
        });
    }

    /// One request fewer held from `now` on.
    pub fn dec_at(&self, now: Instant) {
        self.change(|st| {
            Self::advance(st, now);
            st.count = st.count.saturating_sub(1);
            st.last_active = Some(st.last_active.map_or(now, |t| t.max(now)));
        });
    }

    /// The queued count changed by `delta`.
    pub fn queued(&self, delta: i64) {
        self.change(|st| st.queued += delta);
    }

    /// The in-flight count changed by `delta`, now.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight_at(delta, Instant::now());
    }

    /// The in-flight count changed by `delta` at `now`.
    pub fn in_flight_at(&self, delta: i64, now: Instant) {
        self.change(|st| {
            Self::advance(st, now);
            st.in_flight += delta;
        });
    }

    /// A request a pod had for `service` ended at `now`: one fewer in flight, one more served.
    pub fn finished_at(&self, service: Duration, now: Instant) {
        self.change(|st| {
            Self::advance(st, now);
            st.in_flight -= 1;
            st.served += 1;
            st.service_nanos += service.as_nanos();
        });
    }

    /// A request that waited `waited` for the model to wake got a pod at `now`. Requests held
    /// through the same wake overlap it: one whose wait began before the latest cold start
    /// ended belongs to it (the longest wait is kept, which is the first request's, the cold
    /// start a client saw); one that began later starts a new cold start.
    pub fn cold_start_at(&self, waited: Duration, now: Instant) {
        self.change(|st| {
            let began = now.checked_sub(waited).unwrap_or(now);
            st.cold_start = Some(match st.cold_start {
                Some((end, longest)) if began <= end => (end.max(now), longest.max(waited)),
                _ => (now, waited),
            });
        });
    }

    /// One request answered.
    pub fn answered(&self) {
        self.change(|st| st.answered += 1);
    }

    /// Holds requests at `now`, or held one within `retention` before it.
    pub fn active_at(&self, now: Instant, retention: Duration) -> bool {
        let st = self.lock();
        st.count > 0
            || st
                .last_active
                .is_some_and(|t| now.saturating_duration_since(t) <= retention)
    }

    /// Requests held right now.
    pub fn current(&self) -> u64 {
        self.lock().count
    }

    /// The counts as of `now`.
    pub fn snapshot_at(&self, now: Instant) -> CellSnapshot {
        let st = self.lock();
        let dt = now.saturating_duration_since(st.last);
        CellSnapshot {
            total_nanos: st.acc_nanos + u128::from(st.count) * dt.as_nanos(),
            pod_nanos: st.pod_nanos + u128::from(st.in_flight.max(0) as u64) * dt.as_nanos(),
            arrivals: st.arrivals,
            served: st.served,
            service_nanos: st.service_nanos,
            held: st.count,
            in_flight: st.in_flight.max(0) as u64,
            queued: st.queued.max(0) as u64,
            answered: st.answered,
            stamp: st.stamp,
            last_arrival: st.last_arrival,
            cold_start: st.cold_start,
        }
    }

    /// The integral up to `now`, as an exact duration (request-nanoseconds).
    pub fn total_at(&self, now: Instant) -> Duration {
        let nanos = self.snapshot_at(now).total_nanos;
        let secs = (nanos / 1_000_000_000) as u64;
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// The integral up to `now` in request-seconds.
    pub fn seconds_at(&self, now: Instant) -> f64 {
        self.total_at(now).as_secs_f64()
    }

    /// A guard that holds one request until dropped.
    pub fn hold(&self) -> Held {
        self.inc_at(Instant::now());
        Held(self.clone())
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Holds one request in a [`ConcurrencyIntegral`] until dropped.
#[derive(Debug)]
pub struct Held(ConcurrencyIntegral);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec_at(Instant::now());
    }
}

#[derive(Debug, Default)]
struct Registry {
    cells: HashMap<DeploymentKey, ConcurrencyIntegral>,
    /// Models removed, oldest first: key, generation, when.
    removed: VecDeque<(DeploymentKey, u64, Instant)>,
    /// The newest generation of a removal no longer remembered: a cursor below it needs a
    /// full page.
    forgotten: u64,
}

/// Every model's [`ConcurrencyIntegral`], and the reads of the feed.
#[derive(Debug)]
pub struct StatFeed {
    instance: u64,
    started: Instant,
    generation: Arc<AtomicU64>,
    incarnations: AtomicU64,
    registry: Mutex<Registry>,
}

impl Default for StatFeed {
    fn default() -> Self {
        Self::new(random_instance(), Instant::now())
    }
}

/// Nanoseconds as the feed's whole microseconds (truncated: the same cumulative value always
/// truncates the same way, so differences stay exact to the microsecond).
fn micros(nanos: u128) -> u64 {
    u64::try_from(nanos / 1000).unwrap_or(u64::MAX)
}

/// A random instance id: the standard library's per-process hash keys, which the OS seeds.
fn random_instance() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

impl StatFeed {
    /// A feed with this instance id, whose clock starts at `now`.
    pub fn new(instance: u64, now: Instant) -> Self {
        Self {
            instance,
            started: now,
            // Generation 0 is "no cursor": pages hand out 1 and up.
            generation: Arc::new(AtomicU64::new(1)),
            incarnations: AtomicU64::new(0),
            registry: Mutex::default(),
        }
    }

    /// This activator's instance id.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new model's counts, not yet listed ([`StatFeed::register`] lists it).
    pub fn new_cell(&self, now: Instant) -> ConcurrencyIntegral {
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        ConcurrencyIntegral::in_generation(self.generation.clone(), incarnation, now)
    }

    /// Lists `cell` as the counts of `key` (replacing any earlier ones).
    pub fn register(&self, key: DeploymentKey, cell: ConcurrencyIntegral) {
        let mut reg = self.registry();
        // Stamped under the registry lock: a page that does not list it yet is followed by
        // one that does.
        cell.change(|_| {});
        reg.removed.retain(|(k, _, _)| *k != key);
        reg.cells.insert(key, cell);
    }

    /// Stops listing `key` if `cell` is still its counts; readers are told it is gone.
    pub fn unregister(&self, key: &DeploymentKey, cell: &ConcurrencyIntegral, now: Instant) {
        let mut reg = self.registry();
        if !reg.cells.get(key).is_some_and(|c| c.same(cell)) {
            return;
        }
        reg.cells.remove(key);
        let generation = self.generation.load(Ordering::SeqCst);
        reg.removed.push_back((key.clone(), generation, now));
        Self::forget_old(&mut reg, now);
    }

    fn forget_old(reg: &mut Registry, now: Instant) {
        while let Some((_, generation, at)) = reg.removed.front() {
            if now.saturating_duration_since(*at) < REMOVED_RETENTION {
                break;
            }
            reg.forgotten = reg.forgotten.max(*generation);
            reg.removed.pop_front();
        }
    }

    /// Models listed.
    pub fn len(&self) -> usize {
        self.registry().cells.len()
    }

    /// No model is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `t` on the clock of [`FeedPage::uptime_ns`].
    fn uptime_ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.started).as_nanos()).unwrap_or(u64::MAX)
    }

    fn model(
        &self,
        key: &DeploymentKey,
        cell: &ConcurrencyIntegral,
        s: &CellSnapshot,
    ) -> FeedModel {
        FeedModel {
            namespace: key.namespace.clone(),
            deployment: key.deployment.clone(),
            incarnation: cell.0.incarnation,
            concurrency_us: micros(s.total_nanos),
            requests: s.answered,
            in_flight: s.in_flight,
            queued: s.queued,
            demand: Some(FeedDemand {
                arrivals: s.arrivals,
                pod_us: micros(s.pod_nanos),
                served: s.served,
                service_us: micros(s.service_nanos),
            }),
            last_request_ns: s.last_arrival.map(|t| self.uptime_ns(t)),
            cold_start: s.cold_start.map(|(at, wait)| FeedColdStart {
                at_ns: self.uptime_ns(at),
                wait_us: micros(wait.as_nanos()),
            }),
        }
    }

    /// A status read (`kubectl zeroscale`): every model `filter` takes, at `now`. It hands
    /// out no cursor (generation 0) and moves none, so it cannot disturb the autoscaler's reads.
    pub fn read_filtered(&self, filter: &FeedFilter, now: Instant) -> FeedPage {
        let reg = self.registry();
        let models = reg
            .cells
            .iter()
            .filter(|(k, _)| filter.matches(&k.namespace, &k.deployment))
            .map(|(k, c)| self.model(k, c, &c.snapshot_at(now)))
            .collect();
        FeedPage {
            instance: self.instance,
            generation: 0,
            full: true,
            uptime_ns: self.uptime_ns(now),
            models,
            removed: Vec::new(),
        }
    }

    /// One page for a reader whose last page had `cursor` (`(instance, generation)`), at `now`.
    pub fn read(&self, cursor: Option<(u64, u64)>, now: Instant) -> FeedPage {
        let mut reg = self.registry();
        Self::forget_old(&mut reg, now);
        // Taken before any model is looked at (see the module doc).
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let since = match cursor {
            Some((instance, since))
                if instance == self.instance
                    && since > 0
                    && since >= reg.forgotten
                    && since <= generation =>
            {
                Some(since)
            }
            // Another instance's cursor (this activator restarted), one from the future (a
            // generation reset) or one older than what is remembered of removals: start over.
            _ => None,
        };
        let mut models = Vec::new();
        for (key, cell) in &reg.cells {
            let s = cell.snapshot_at(now);
            let listed = match since {
                None => true,
                // Held requests move the integral: such a model is always listed.
                Some(since) => s.stamp > since || s.held > 0,
            };
            if listed {
                models.push(self.model(key, cell, &s));
            }
        }
        let removed = match since {
            None => Vec::new(),
            Some(since) => reg
                .removed
                .iter()
                .filter(|(_, g, _)| *g > since)
                .map(|(k, _, _)| FeedKey {
                    namespace: k.namespace.clone(),
                    deployment: k.deployment.clone(),
                })
                .collect(),
        };
        FeedPage {
            instance: self.instance,
            generation,
            full: since.is_none(),
            uptime_ns: self.uptime_ns(now),
            models,
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_is_exact_with_injected_time() {
        let t0 = Instant::now();
        let c = ConcurrencyIntegral::new_at(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        c.inc_at(ms(0));
        c.inc_at(ms(1000)); // 1 req for 1s
        c.inc_at(ms(1500)); // 2 reqs for 0.5s
        c.dec_at(ms(2000)); // 3 reqs for 0.5s
        // at 3000: 2 reqs for 1s
        assert_eq!(
            c.total_at(ms(3000)),
            Duration::from_millis(1000 + 1000 + 1500 + 2000)
        );
        assert_eq!(c.current(), 2);
        c.dec_at(ms(3000));
        c.dec_at(ms(3000));
        // nothing held: the integral stays put.
        assert_eq!(c.total_at(ms(10_000)), Duration::from_millis(5500));
        assert!((c.seconds_at(ms(10_000)) - 5.5).abs() < 1e-12);
    }

    #[test]
    fn demand_counts_arrivals_time_at_pods_and_served_requests() {
        let t0 = Instant::now();
        let c = ConcurrencyIntegral::new_at(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Two arrive; one is refused at once (never at a pod), one waits 1 s in the queue,
        // then 2 s at a pod.
        c.inc_at(ms(0));
        c.inc_at(ms(0));
        c.dec_at(ms(0));
        c.queued(1);
        c.queued(-1);
        c.in_flight_at(1, ms(1000));
        let busy = c.snapshot_at(ms(2000));
        assert_eq!(
            (busy.arrivals, busy.pod_nanos, busy.served),
            (2, 1_000_000_000, 0)
        );
        c.finished_at(Duration::from_secs(2), ms(3000));
        c.dec_at(ms(3000));
        let s = c.snapshot_at(ms(5000));
        assert_eq!(s.arrivals, 2);
        assert_eq!(
            s.pod_nanos, 2_000_000_000,
            "queue time excluded, nothing after the end"
        );
        assert_eq!((s.served, s.service_nanos), (1, 2_000_000_000));
        assert_eq!(
            s.total_nanos, 3_000_000_000,
            "the held integral includes the queue"
        );
        assert_eq!(s.in_flight, 0);
    }

    #[test]
    fn integral_never_goes_backwards() {
        let t0 = Instant::now();
        let c = ConcurrencyIntegral::new_at(t0 + Duration::from_secs(5));
        c.inc_at(t0); // older than `last`: adds nothing, does not move `last` back.
        assert_eq!(
            c.total_at(t0 + Duration::from_secs(6)),
            Duration::from_secs(1)
        );
    }

    fn key(d: &str) -> DeploymentKey {
        DeploymentKey::new("models", d)
    }

    fn feed_with(models: &[&str], t0: Instant) -> (StatFeed, Vec<ConcurrencyIntegral>) {
        let feed = StatFeed::new(7, t0);
        let cells = models
            .iter()
            .map(|m| {
                let c = feed.new_cell(t0);
                feed.register(key(m), c.clone());
                c
            })
            .collect();
        (feed, cells)
    }

    fn names(page: &FeedPage) -> Vec<&str> {
        let mut v: Vec<&str> = page.models.iter().map(|m| m.deployment.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_first_read_is_full_and_an_idle_model_is_then_skipped() {
        let t0 = Instant::now();
        let (feed, cells) = feed_with(&["a", "b", "c"], t0);
        let first = feed.read(None, t0);
        assert!(first.full);
        assert_eq!(names(&first), ["a", "b", "c"]);
        assert_eq!(first.instance, 7);
        let cursor = Some((first.instance, first.generation));
        let idle = feed.read(cursor, t0 + Duration::from_secs(1));
        assert!(!idle.full);
        assert!(idle.models.is_empty(), "{idle:?}");
        assert_eq!(idle.uptime_ns, 1_000_000_000);
        // b takes a request: it is listed while held, and once more after it is answered.
        cells[1].inc_at(t0 + Duration::from_secs(1));
        let busy = feed.read(Some((7, idle.generation)), t0 + Duration::from_secs(2));
        assert_eq!(names(&busy), ["b"]);
        assert_eq!(busy.models[0].concurrency_us, 1_000_000);
        let busy2 = feed.read(Some((7, busy.generation)), t0 + Duration::from_secs(3));
        assert_eq!(busy2.models[0].concurrency_us, 2_000_000);
        cells[1].dec_at(t0 + Duration::from_millis(3500));
        cells[1].answered();
        let done = feed.read(Some((7, busy2.generation)), t0 + Duration::from_secs(4));
        assert_eq!(names(&done), ["b"]);
        assert_eq!(
            (done.models[0].concurrency_us, done.models[0].requests),
            (2_500_000, 1)
        );
        assert_eq!(
            done.models[0].demand,
            Some(FeedDemand {
                arrivals: 1,
                ..FeedDemand::default()
            })
        );
        let quiet = feed.read(Some((7, done.generation)), t0 + Duration::from_secs(5));
        assert!(quiet.models.is_empty(), "{quiet:?}");
    }

    #[test]
    fn the_feed_keeps_the_last_request_and_the_latest_cold_start_for_status_reads() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let (feed, cells) = feed_with(&["a", "b"], t0);
        let first = feed.read(None, t0);
        assert!(
            first
                .models
                .iter()
                .all(|m| m.last_request_ns.is_none() && m.cold_start.is_none())
        );
        // A wake at 10 s held three requests (arrived at 10, 12, 14 s) until 20 s; the longest
        // wait is the cold start. A request at 100 s that waited 5 s is a new one.
        for (arrived, waited) in [(10, 10), (12, 8), (14, 6)] {
            cells[0].inc_at(s(arrived));
            cells[0].cold_start_at(Duration::from_secs(waited), s(20));
        }
        let at = |page: &FeedPage, d: &str| page.models.iter().find(|m| m.deployment == d).cloned();
        let p = feed.read_filtered(&FeedFilter::default(), s(30));
        let a = at(&p, "a").unwrap();
        assert_eq!(
            p.uptime_ns - a.last_request_ns.unwrap(),
            16_000_000_000,
            "age 16 s"
        );
        assert_eq!(
            a.cold_start,
            Some(FeedColdStart {
                at_ns: 20_000_000_000,
                wait_us: 10_000_000
            })
        );
        assert_eq!(at(&p, "b").unwrap().last_request_ns, None);
        cells[0].inc_at(s(95));
        cells[0].cold_start_at(Duration::from_secs(5), s(100));
        let later = feed.read_filtered(&FeedFilter::default(), s(100));
        assert_eq!(
            at(&later, "a").unwrap().cold_start,
            Some(FeedColdStart {
                at_ns: 100_000_000_000,
                wait_us: 5_000_000
            })
        );
        // A status read lists only what it asks for, hands out no cursor and leaves the
        // autoscaler's deltas as they were: its next page still lists the change to a.
        let only_b = feed.read_filtered(
            &FeedFilter {
                namespace: Some("models".into()),
                deployment: Some("b".into()),
            },
            s(100),
        );
        assert_eq!(
            (names(&only_b), only_b.generation, only_b.full),
            (vec!["b"], 0, true)
        );
        let other_ns = FeedFilter {
            namespace: Some("elsewhere".into()),
            deployment: None,
        };
        assert!(feed.read_filtered(&other_ns, s(100)).models.is_empty());
        let delta = feed.read(Some((7, first.generation)), s(101));
        assert_eq!(names(&delta), ["a"]);
        assert_eq!(
            delta.models[0].cold_start,
            at(&later, "a").unwrap().cold_start
        );
    }

    #[test]
    fn an_idle_page_at_10000_models_is_a_few_bytes() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..10_000).map(|i| format!("model-{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (feed, _) = feed_with(&refs, t0);
        let full = feed.read(None, t0);
        let full_bytes = serde_json::to_vec(&full).unwrap().len();
        let day = t0 + Duration::from_secs(86_400);
        let idle = feed.read(Some((full.instance, full.generation)), day);
        let idle_bytes = serde_json::to_vec(&idle).unwrap().len();
        println!("feed at 10,000 models: full page {full_bytes} bytes, idle page {idle_bytes}");
        assert_eq!(full.models.len(), 10_000);
        assert!(idle.models.is_empty());
        assert!(idle_bytes < 128, "{idle_bytes}: {idle:?}");
    }

    #[test]
    fn a_lost_page_is_covered_by_the_next_read_and_a_repeated_read_says_the_same() {
        let t0 = Instant::now();
        let (feed, cells) = feed_with(&["a", "b"], t0);
        let first = feed.read(None, t0);
        cells[0].queued(2);
        cells[0].queued(-2);
        cells[0].answered();
        // This page is lost on the way: the reader keeps its cursor.
        let lost = feed.read(Some((7, first.generation)), t0);
        assert_eq!(names(&lost), ["a"]);
        let again = feed.read(Some((7, first.generation)), t0);
        assert_eq!(names(&again), ["a"]);
        assert_eq!(again.models, lost.models, "same cursor, same values");
        assert_eq!(again.models[0].requests, 1);
        // A change between two reads with the newest cursor is on the next page.
        cells[1].in_flight(1);
        let next = feed.read(Some((7, again.generation)), t0);
        assert_eq!(names(&next), ["b"]);
        assert_eq!(next.models[0].in_flight, 1);
    }

    #[test]
    fn another_instance_or_a_future_cursor_gets_a_full_page() {
        let t0 = Instant::now();
        let (feed, _) = feed_with(&["a", "b"], t0);
        let first = feed.read(None, t0);
        for cursor in [
            (8, first.generation),     // another instance: this activator restarted
            (7, first.generation + 5), // a cursor this feed never handed out
            (7, 0),                    // no cursor
        ] {
            let p = feed.read(Some(cursor), t0);
            assert!(p.full, "{cursor:?}");
            assert_eq!(names(&p), ["a", "b"]);
        }
    }

    #[test]
    fn removals_are_told_until_forgotten_then_the_page_is_full() {
        let t0 = Instant::now();
        let (feed, cells) = feed_with(&["a", "b"], t0);
        let first = feed.read(None, t0);
        feed.unregister(&key("a"), &cells[0], t0);
        // A stale handle (a model re-created under the same key) does not remove the new one.
        let renamed = feed.new_cell(t0);
        feed.register(key("b"), renamed.clone());
        feed.unregister(&key("b"), &cells[1], t0);
        let p = feed.read(Some((7, first.generation)), t0);
        assert_eq!(
            p.removed,
            vec![FeedKey {
                namespace: "models".into(),
                deployment: "a".into()
            }]
        );
        assert_eq!(names(&p), ["b"]);
        assert_ne!(p.models[0].incarnation, first.models[1].incarnation);
        // Past the retention, a cursor from before the removal gets a full page.
        let late = t0 + REMOVED_RETENTION + Duration::from_secs(1);
        let p = feed.read(Some((7, first.generation)), late);
        assert!(p.full && p.removed.is_empty());
        assert_eq!(names(&p), ["b"]);
        // A newer cursor still gets a delta.
        let p2 = feed.read(Some((7, p.generation)), late);
        assert!(!p2.full);
    }

    #[test]
    fn changes_racing_reads_from_other_threads_are_never_missed() {
        // Writers change counts while a reader pages with its cursor; at the end, the values
        // the reader assembled from its pages equal the cells' own.
        let t0 = Instant::now();
        let models: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = models.iter().map(String::as_str).collect();
        let (feed, cells) = feed_with(&refs, t0);
        let feed = Arc::new(feed);
        let writers: Vec<_> = cells
            .iter()
            .cloned()
            .map(|c| {
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        c.answered();
                        c.queued(1);
                        c.queued(-1);
                    }
                })
            })
            .collect();
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut cursor = None;
        let apply = |page: FeedPage, seen: &mut HashMap<String, u64>| {
            for m in page.models {
                seen.insert(m.deployment, m.requests);
            }
            Some((page.instance, page.generation))
        };
        while !writers.iter().all(|w| w.is_finished()) {
            cursor = apply(feed.read(cursor, t0), &mut seen);
        }
        for w in writers {
            w.join().unwrap();
        }
        apply(feed.read(cursor, t0), &mut seen);
        for m in &models {
            assert_eq!(seen.get(m), Some(&2000), "{m}");
        }
    }
}
