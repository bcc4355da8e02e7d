//! A model's gate: its pods with their in-flight counts, and a FIFO of requests waiting for
//! capacity, bounded by count and bytes, each with a deadline.
//!
//! All state sits behind one per-model mutex (never a global one), held only for a few
//! instructions. A request either gets a [`Permit`] at once (no one is waiting and a pod has
//! room) or a [`Ticket`] in the queue; whenever capacity appears (a permit drops, endpoints
//! change) waiters are served strictly in arrival order. Dropping a [`Ticket`] (the client went
//! away) removes it from the queue; if a slot was handed to it in the same instant, the slot is
//! given back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::balance::{self, Balance, Slot};
use crate::metrics::{GateMetrics, PodGauge};

/// A pod's connections, as the gate keeps them: made by the caller for each new pod
/// ([`Gate::set_endpoints`]), handed out with every [`Permit`] on that pod.
pub trait Pool: Send + Sync + 'static {
    /// The pod left the endpoints or is no longer eligible: close its idle connections, so
    /// none of them takes a request.
    fn drop_idle(&self);
}

/// Limits of one model's gate.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Max requests in flight per pod; 0 = unlimited.
    pub container_concurrency: u32,
    /// Max requests waiting.
    pub queue_depth: usize,
    /// Max request-body bytes accounted to waiting requests.
    pub queue_bytes: u64,
    /// How long a request may wait.
    pub queue_deadline: Duration,
    /// How long a pod may take to start its answer (504 before the head).
    pub response_timeout: Duration,
    /// Longest pause within a request or answer body (a cut stream after the head).
    pub idle_timeout: Duration,
    /// How requests are spread over the pods.
    pub balance: Balance,
    /// A streamed request still queued after this long is answered at once and held open with
    /// heartbeats by the caller; `None`: never (`zeroscale.dev/hold-streams`).
    pub hold_streams: Option<Duration>,
}

impl Limits {
    /// Limits with the global defaults of `zeroscale-config` and these queue bounds.
    pub fn with_queue(
        container_concurrency: u32,
        queue_depth: usize,
        queue_bytes: u64,
        queue_deadline: Duration,
    ) -> Self {
        let d = zeroscale_config::ActivatorConfig::default();
        Self {
            container_concurrency,
            queue_depth,
            queue_bytes,
            queue_deadline,
            response_timeout: d.response_timeout,
            idle_timeout: d.idle_timeout,
            balance: Balance::LeastRequest,
            hold_streams: d.hold_streams,
        }
    }
}

/// One endpoint of a model, as the table is told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Pod IP and port.
    pub addr: SocketAddr,
    /// The endpoint is ready.
    pub ready: bool,
    /// The pod is terminating.
    pub terminating: bool,
    /// The pod's name, when known.
    pub pod_name: Option<String>,
}

/// Why a request got no capacity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is at its count or byte limit.
    #[error("the model's queue is full ({queued} requests, {bytes} bytes waiting)")]
    Full {
        /// Requests waiting.
        queued: usize,
        /// Bytes waiting.
        bytes: u64,
        /// Suggested Retry-After in seconds.
        retry_after: u64,
    },
    /// The deadline passed before a pod had room.
    #[error("no pod had capacity within {0:?}")]
    Deadline(Duration),
    /// The model stopped being routed, or the activator is shutting down, while the request
    /// waited.
    #[error("the model was removed or the activator is shutting down while the request waited")]
    Closed,
}

struct Pod<M: GateMetrics, P> {
    addr: SocketAddr,
    pool: Arc<P>,
    eligible: bool,
    /// Kept (ineligible) after it left the endpoint list while requests are still on it.
    gone: bool,
    /// Refused a connection: takes no new request for a moment ([`EJECT_FOR`]).
    ejected: bool,
    in_flight: u32,
    /// [`balance::pod_hash`] of the address.
    hash: u64,
    gauge: M::Pod,
}

/// How long a pod that refused a connection gets no new request. A pod that stopped listening
/// (shutting down, crashed) stays in the EndpointSlice for a moment after; without this, the
/// requests of that moment would keep trying it.
pub const EJECT_FOR: Duration = Duration::from_secs(2);

impl<M: GateMetrics, P> Slot for Pod<M, P> {
    fn eligible(&self) -> bool {
        self.eligible && !self.ejected
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// The pod a request was given.
#[derive(Debug)]
struct Assigned<P> {
    addr: SocketAddr,
    pool: Arc<P>,
    /// When the request was counted on the pod.
    at: Instant,
}

struct Waiter<P> {
    id: u64,
    bytes: u64,
    /// The request's prefix key, for prefix-hash balancing.
    key: Option<u64>,
    tx: oneshot::Sender<Assigned<P>>,
}

struct State<M: GateMetrics, P> {
    limits: Limits,
    pods: Vec<Pod<M, P>>,
    queue: VecDeque<Waiter<P>>,
    queued_bytes: u64,
    next_id: u64,
    cursor: usize,
    closed: bool,
}

/// The per-model gate: `M` counts, `P` is a pod's connection pool.
pub struct Gate<M: GateMetrics, P> {
    state: Mutex<State<M, P>>,
    metrics: M,
    /// The limits' timeouts in nanoseconds, readable per request without the lock.
    response_timeout: AtomicU64,
    idle_timeout: AtomicU64,
    /// The prefix length of prefix-hash balancing, 0 for least-request: read per request to
    /// decide whether to take a prefix, without the lock.
    prefix_chars: AtomicU32,
    /// [`Limits::hold_streams`] in nanoseconds, [`HOLD_OFF`] for `None`: read per queued
    /// request, without the lock.
    hold_streams: AtomicU64,
}

/// [`Gate::hold_streams`] is off.
const HOLD_OFF: u64 = u64::MAX;

impl<M: GateMetrics, P> std::fmt::Debug for Gate<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// The outcome of [`Gate::admit`].
#[derive(Debug)]
pub enum Admit<M: GateMetrics, P: Pool> {
    /// A pod has room now.
    Ready(Permit<M, P>),
    /// The request waits in the queue.
    Queued(Ticket<M, P>),
}

impl<M: GateMetrics, P: Pool> Gate<M, P> {
    /// A gate without pods.
    pub fn new(limits: Limits, metrics: M) -> Arc<Self> {
        Arc::new(Self {
            response_timeout: AtomicU64::new(nanos(limits.response_timeout)),
            idle_timeout: AtomicU64::new(nanos(limits.idle_timeout)),
            prefix_chars: AtomicU32::new(prefix_chars(limits.balance)),
            hold_streams: AtomicU64::new(hold_nanos(limits.hold_streams)),
            state: Mutex::new(State {
                limits,
                pods: Vec::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                next_id: 0,
                cursor: 0,
                closed: false,
            }),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<M, P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This model's metric handles.
    pub fn metrics(&self) -> &M {
        &self.metrics
    }

    /// Changes the limits; a raised limit serves waiters at once.
    pub fn set_limits(&self, limits: Limits) {
        self.response_timeout
            .store(nanos(limits.response_timeout), Ordering::Relaxed);
        self.idle_timeout
            .store(nanos(limits.idle_timeout), Ordering::Relaxed);
        self.prefix_chars
            .store(prefix_chars(limits.balance), Ordering::Relaxed);
        self.hold_streams
            .store(hold_nanos(limits.hold_streams), Ordering::Relaxed);
        let mut st = self.lock();
        st.limits = limits;
        self.dispatch(&mut st);
    }

    /// Current limits.
    pub fn limits(&self) -> Limits {
        self.lock().limits.clone()
    }

    /// The response and idle timeouts, without taking the gate's lock.
    pub fn timeouts(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.response_timeout.load(Ordering::Relaxed)),
            Duration::from_nanos(self.idle_timeout.load(Ordering::Relaxed)),
        )
    }

    /// How many characters of a prompt make the key of prefix-hash balancing; 0 when the
    /// model balances by least requests (then a request's prompt is not read). Lock-free.
    pub fn prefix_chars(&self) -> u32 {
        self.prefix_chars.load(Ordering::Relaxed)
    }

    /// After how long a queued streamed request is held open with heartbeats
    /// ([`Limits::hold_streams`]); `None`: never. Lock-free.
    pub fn hold_streams(&self) -> Option<Duration> {
        match self.hold_streams.load(Ordering::Relaxed) {
            HOLD_OFF => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Replaces the endpoints, keeping in-flight counts (and pools) of pods that stay; a new pod
    /// gets the pool `new_pool` makes for its address. Serves waiters if capacity appeared.
    /// Returns true when this change took the last eligible pod away while requests wait (the
    /// caller should start a wake signal; while there was none before, one is already under
    /// way).
    pub fn set_endpoints(
        &self,
        endpoints: &[Endpoint],
        mut new_pool: impl FnMut(SocketAddr) -> Arc<P>,
    ) -> bool {
        let mut st = self.lock();
        let had_ready = st.pods.iter().any(Slot::eligible);
        let mut old = std::mem::take(&mut st.pods);
        let mut pods = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            if pods.iter().any(|p: &Pod<M, P>| p.addr == ep.addr) {
                continue; // the same address in two slices: one pod
            }
            let eligible = ep.ready && !ep.terminating;
            if let Some(i) = old.iter().position(|p| p.addr == ep.addr) {
                let mut p = old.swap_remove(i);
                if !eligible {
                    // A pod leaving closes its idle connections; none of them takes a request.
                    p.pool.drop_idle();
                }
                p.eligible = eligible;
                p.gone = false;
                pods.push(p);
            } else {
                pods.push(Pod {
                    addr: ep.addr,
                    pool: new_pool(ep.addr),
                    eligible,
                    gone: false,
                    ejected: false,
                    in_flight: 0,
                    hash: balance::pod_hash(ep.addr),
                    gauge: self.metrics.pod(ep.addr),
                });
            }
        }
        for mut p in old {
            if p.in_flight > 0 {
                p.eligible = false;
                p.gone = true;
                pods.push(p);
            } else if !pods.iter().any(|q| q.addr.ip() == p.addr.ip()) {
                self.metrics.remove_pod(p.addr);
            }
        }
        st.pods = pods;
        self.dispatch(&mut st);
        had_ready && !st.queue.is_empty() && !st.pods.iter().any(Slot::eligible)
    }

    /// True when a pod is ready and not terminating.
    pub fn has_ready(&self) -> bool {
        self.lock().pods.iter().any(Slot::eligible)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// In-flight count per pod address (for tests and debugging).
    pub fn in_flight(&self) -> Vec<(SocketAddr, u32)> {
        self.lock()
            .pods
            .iter()
            .map(|p| (p.addr, p.in_flight))
            .collect()
    }

    /// Fails every waiter with [`QueueError::Closed`] and refuses new ones.
    pub fn close(&self) {
        self.lock().closed = true;
        self.fail_waiting();
    }

    /// Fails every current waiter with [`QueueError::Closed`]; returns how many.
    pub fn fail_waiting(&self) -> usize {
        let mut st = self.lock();
        let n = st.queue.len();
        st.queue.clear(); // dropping the senders wakes the waiters with an error
        st.queued_bytes = 0;
        self.metrics.queued(-(n as i64));
        n
    }

    /// A permit now, when no one is waiting and a pod has room; never queues.
    pub fn try_admit(self: &Arc<Self>) -> Option<Permit<M, P>> {
        let mut st = self.lock();
        if st.closed || !st.queue.is_empty() {
            return None;
        }
        let a = self.take_slot(&mut st, None)?;
        Some(Permit {
            gate: self.clone(),
            addr: a.addr,
            pool: a.pool,
            cold_wait: None,
            granted: a.at,
        })
    }

    /// Admits a request whose body accounts for `bytes`: a permit now, or a place in the queue.
    pub fn admit(self: &Arc<Self>, bytes: u64) -> Result<Admit<M, P>, QueueError> {
        self.admit_keyed(bytes, None)
    }

    /// [`Gate::admit`] for a request with prefix `key` ([`balance::PrefixKey`]): under
    /// prefix-hash balancing its pod is chosen by the key, now or when it leaves the queue.
    pub fn admit_keyed(
        self: &Arc<Self>,
        bytes: u64,
        key: Option<u64>,
    ) -> Result<Admit<M, P>, QueueError> {
        let mut st = self.lock();
        if st.closed {
            return Err(QueueError::Closed);
        }
        if st.queue.is_empty()
            && let Some(a) = self.take_slot(&mut st, key)
        {
            return Ok(Admit::Ready(Permit {
                gate: self.clone(),
                addr: a.addr,
                pool: a.pool,
                cold_wait: None,
                granted: a.at,
            }));
        }
        let has_ready = st.pods.iter().any(Slot::eligible);
        if st.queue.len() >= st.limits.queue_depth
            || st.queued_bytes.saturating_add(bytes) > st.limits.queue_bytes
        {
            return Err(QueueError::Full {
                queued: st.queue.len(),
                bytes: st.queued_bytes,
                // Pods busy: capacity frees soon. None at all: a cold start takes a while.
                retry_after: if has_ready { 1 } else { 10 },
            });
        }
        let first = st.queue.is_empty();
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        st.queue.push_back(Waiter { id, bytes, key, tx });
        st.queued_bytes += bytes;
        self.metrics.queued(1);
        let now = Instant::now();
        Ok(Admit::Queued(Ticket {
            gate: self.clone(),
            id,
            rx,
            deadline: now + st.limits.queue_deadline,
            wait_limit: st.limits.queue_deadline,
            enqueued: now,
            needs_wake: first && !has_ready,
            cold: !has_ready,
            done: false,
        }))
    }

    /// Picks a pod with room (by `key` under prefix-hash balancing) and counts the request on it.
    fn take_slot(&self, st: &mut State<M, P>, key: Option<u64>) -> Option<Assigned<P>> {
        let limit = st.limits.container_concurrency;
        let i = match (st.limits.balance, key) {
            (Balance::PrefixHash { load_factor, .. }, Some(key)) => {
                let pods = &st.pods;
                balance::pick_keyed_by(pods.len(), limit, key, load_factor, |i| {
                    let p = &pods[i];
                    p.eligible().then_some((p.in_flight, p.hash))
                })?
            }
            _ => balance::pick(&st.pods, limit, st.cursor)?,
        };
        st.cursor = st.cursor.wrapping_add(1);
        let p = &mut st.pods[i];
        p.in_flight += 1;
        p.gauge.inc();
        let at = Instant::now();
        self.metrics.started(at);
        Some(Assigned {
            addr: p.addr,
            pool: p.pool.clone(),
            at,
        })
    }

    /// `served`: when the request was counted on the pod and when it ended, if it reached it
    /// (a slot handed back unused is no served request).
    fn put_slot(&self, st: &mut State<M, P>, addr: SocketAddr, served: Option<(Instant, Instant)>) {
        match served {
            Some((from, to)) => self
                .metrics
                .finished(to.saturating_duration_since(from), to),
            None => self.metrics.in_flight(-1),
        }
        if let Some(i) = st.pods.iter().position(|p| p.addr == addr) {
            let p = &mut st.pods[i];
            p.in_flight = p.in_flight.saturating_sub(1);
            p.gauge.dec();
            if p.gone && p.in_flight == 0 {
                st.pods.swap_remove(i);
            }
        }
    }

    /// Serves waiters in order while a pod has room.
    fn dispatch(&self, st: &mut State<M, P>) {
        while let Some(key) = st.queue.front().map(|w| w.key) {
            let Some(a) = self.take_slot(st, key) else {
                break;
            };
            let w = st.queue.pop_front().expect("checked non-empty");
            st.queued_bytes -= w.bytes;
            self.metrics.queued(-1);
            if let Err(a) = w.tx.send(a) {
                // The ticket is dropped only after it left the queue (its Drop takes this
                // lock), so this is unreachable in practice; give the slot back regardless.
                self.put_slot(st, a.addr, None);
            }
        }
    }

    /// Takes `addr` out of rotation for [`EJECT_FOR`]: it refused a connection.
    fn eject(self: &Arc<Self>, addr: SocketAddr) {
        let mut st = self.lock();
        let Some(p) = st.pods.iter_mut().find(|p| p.addr == addr && !p.ejected) else {
            return;
        };
        p.ejected = true;
        self.metrics.ejected(addr, EJECT_FOR);
        drop(st);
        let gate = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(EJECT_FOR).await;
            if let Some(gate) = gate.upgrade() {
                let mut st = gate.lock();
                if let Some(p) = st.pods.iter_mut().find(|p| p.addr == addr) {
                    p.ejected = false;
                }
                gate.dispatch(&mut st);
            }
        });
    }

    fn release(&self, addr: SocketAddr, served: (Instant, Instant)) {
        let mut st = self.lock();
        self.put_slot(&mut st, addr, Some(served));
        self.dispatch(&mut st);
    }

    /// Takes a waiter out of the queue; false if it was already served.
    fn remove_waiter(&self, st: &mut State<M, P>, id: u64) -> bool {
        // Ids grow monotonically along the queue.
        match st.queue.binary_search_by_key(&id, |w| w.id) {
            Ok(i) => {
                let w = st.queue.remove(i).expect("index from search");
                st.queued_bytes -= w.bytes;
                self.metrics.queued(-1);
                true
            }
            Err(_) => false,
        }
    }
}

/// A request counted on a pod. Dropping it frees the slot and serves the next waiter.
pub struct Permit<M: GateMetrics, P: Pool> {
    gate: Arc<Gate<M, P>>,
    addr: SocketAddr,
    pool: Arc<P>,
    /// How long the request waited for a wake: it was queued while the model had no eligible
    /// pod. `None` for a request that found a pod, or queued only behind busy ones.
    cold_wait: Option<Duration>,
    /// When the request was counted on the pod: its time there is reported when it ends.
    granted: Instant,
}

impl<M: GateMetrics, P: Pool> std::fmt::Debug for Permit<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("addr", &self.addr).finish()
    }
}

impl<M: GateMetrics, P: Pool> Permit<M, P> {
    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model's metric handles.
    pub fn metrics(&self) -> &M {
        self.gate.metrics()
    }

    /// How long this request waited for its model to wake (it was queued while the model had
    /// no eligible pod), else `None`.
    pub fn cold_wait(&self) -> Option<Duration> {
        self.cold_wait
    }

    /// The pod's connections.
    pub fn pool(&self) -> &Arc<P> {
        &self.pool
    }

    /// Takes this permit's pod out of rotation for a moment ([`EJECT_FOR`]): it refused the
    /// connection.
    pub fn eject(&self) {
        self.gate.eject(self.addr);
    }

    /// Another pod with room right now, not one of `exclude`; used to retry a request whose
    /// connection failed before any byte was sent. Does not queue.
    pub fn try_other(&self, exclude: &[SocketAddr]) -> Option<Self> {
        let gate = &self.gate;
        let mut st = gate.lock();
        let limit = st.limits.container_concurrency;
        let cursor = st.cursor;
        // Pick among pods not excluded: temporarily view them as ineligible.
        let saved: Vec<bool> = st.pods.iter().map(|p| p.eligible).collect();
        for p in st.pods.iter_mut() {
            if exclude.contains(&p.addr) {
                p.eligible = false;
            }
        }
        let i = balance::pick(&st.pods, limit, cursor);
        for (p, e) in st.pods.iter_mut().zip(saved) {
            p.eligible = e;
        }
        let i = i?;
        st.cursor = st.cursor.wrapping_add(1);
        let p = &mut st.pods[i];
        p.in_flight += 1;
        p.gauge.inc();
        let at = Instant::now();
        gate.metrics.started(at);
        Some(Permit {
            gate: gate.clone(),
            addr: p.addr,
            pool: p.pool.clone(),
            cold_wait: None,
            granted: at,
        })
    }
}

impl<M: GateMetrics, P: Pool> Drop for Permit<M, P> {
    fn drop(&mut self) {
        // One instant for the service time and the metrics' clock, so both say the same.
        let now = Instant::now();
        self.gate.release(self.addr, (self.granted, now));
    }
}

/// A place in a model's queue. Dropping it before it is served leaves the queue.
pub struct Ticket<M: GateMetrics, P: Pool> {
    gate: Arc<Gate<M, P>>,
    id: u64,
    rx: oneshot::Receiver<Assigned<P>>,
    deadline: Instant,
    wait_limit: Duration,
    enqueued: Instant,
    needs_wake: bool,
    /// Queued while the model had no eligible pod: it waits for a wake.
    cold: bool,
    done: bool,
}

impl<M: GateMetrics, P: Pool> std::fmt::Debug for Ticket<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

impl<M: GateMetrics, P: Pool> Ticket<M, P> {
    /// True for the first request queued while the model had no eligible pod: the caller
    /// should signal the autoscaler.
    pub fn needs_wake(&self) -> bool {
        self.needs_wake
    }

    /// Waits for a pod with room, until the deadline.
    pub async fn wait(mut self) -> Result<Permit<M, P>, QueueError> {
        let res = tokio::time::timeout_at(self.deadline, &mut self.rx).await;
        let assigned = match res {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => {
                self.done = true;
                return Err(QueueError::Closed);
            }
            Err(_elapsed) => {
                let mut st = self.gate.lock();
                if self.gate.remove_waiter(&mut st, self.id) {
                    self.done = true;
                    return Err(QueueError::Deadline(self.wait_limit));
                }
                drop(st);
                // Served in the same instant the deadline passed: take the slot.
                match self.rx.try_recv() {
                    Ok(a) => a,
                    Err(_) => {
                        self.done = true;
                        return Err(QueueError::Closed);
                    }
                }
            }
        };
        self.done = true;
        let waited = self.enqueued.elapsed();
        self.gate.metrics.waited(waited);
        if self.needs_wake {
            self.gate.metrics.cold_start(waited);
        }
        Ok(Permit {
            gate: self.gate.clone(),
            addr: assigned.addr,
            pool: assigned.pool,
            cold_wait: self.cold.then_some(waited),
            granted: assigned.at,
        })
    }
}

fn prefix_chars(s: Balance) -> u32 {
    match s {
        Balance::LeastRequest => 0,
        Balance::PrefixHash { prefix_chars, .. } => prefix_chars,
    }
}

fn hold_nanos(d: Option<Duration>) -> u64 {
    // Below HOLD_OFF: the configuration allows at most an hour.
    d.map_or(HOLD_OFF, |d| nanos(d).min(HOLD_OFF - 1))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
impl<M: GateMetrics, P: Pool> Ticket<M, P> {
    /// The permit, if this ticket was served already (tests drive the queue synchronously).
    fn try_take(&mut self) -> Option<Permit<M, P>> {
        let a = self.rx.try_recv().ok()?;
        self.done = true;
        Some(Permit {
            gate: self.gate.clone(),
            addr: a.addr,
            pool: a.pool,
            cold_wait: None,
            granted: a.at,
        })
    }
}

impl<M: GateMetrics, P: Pool> Drop for Ticket<M, P> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.gate.lock();
        if self.gate.remove_waiter(&mut st, self.id) {
            self.gate.metrics.abandoned();
            return;
        }
        // Already served: the slot sits in the channel; hand it back.
        if let Ok(a) = self.rx.try_recv() {
            self.gate.metrics.abandoned();
            self.gate.put_slot(&mut st, a.addr, None);
            self.gate.dispatch(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counts;

    /// A pod's pool in these tests: counts how often its idle connections were dropped.
    #[derive(Debug, Default)]
    struct TestPool(std::sync::atomic::AtomicUsize);

    impl Pool for TestPool {
        fn drop_idle(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    type Gate = super::Gate<Counts, TestPool>;
    type Permit = super::Permit<Counts, TestPool>;
    type Ticket = super::Ticket<Counts, TestPool>;
    type Admit = super::Admit<Counts, TestPool>;

    fn gate(cc: u32, depth: usize, bytes: u64) -> Arc<Gate> {
        Gate::new(
            Limits::with_queue(cc, depth, bytes, Duration::from_secs(60)),
            Counts::default(),
        )
    }

    #[test]
    fn hold_streams_is_read_without_the_lock_and_follows_set_limits() {
        let g = gate(0, 1, 1);
        assert_eq!(g.hold_streams(), None, "off by default");
        for hold in [Some(Duration::ZERO), Some(Duration::from_secs(3600)), None] {
            g.set_limits(Limits {
                hold_streams: hold,
                ..g.limits()
            });
            assert_eq!(g.hold_streams(), hold);
        }
    }

    /// The endpoints of `g` become `eps`, each new pod with a fresh pool.
    trait SetEndpoints {
        fn set(&self, eps: &[Endpoint]) -> bool;
    }

    impl SetEndpoints for Gate {
        fn set(&self, eps: &[Endpoint]) -> bool {
            self.set_endpoints(eps, |_| Arc::default())
        }
    }

    fn ep(port: u16, ready: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ready,
            terminating: false,
            pod_name: None,
        }
    }

    fn queued(a: Admit) -> Ticket {
        match a {
            Admit::Queued(t) => t,
            Admit::Ready(_) => panic!("expected queued"),
        }
    }

    fn ready(a: Admit) -> Permit {
        match a {
            Admit::Ready(p) => p,
            Admit::Queued(_) => panic!("expected ready"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_waited_for_a_wake_know_how_long() {
        let g = gate(1, 10, 1000);
        let first = queued(g.admit(0).unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = queued(g.admit(0).unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        g.set(&[ep(1, true), ep(2, true)]);
        let (a, b) = (first.wait().await.unwrap(), second.wait().await.unwrap());
        assert_eq!(a.cold_wait(), Some(Duration::from_secs(5)));
        assert_eq!(b.cold_wait(), Some(Duration::from_secs(3)));
        // One cold start: the request that asked for the wake.
        assert_eq!(g.metrics().cold_starts(), 1);
        // Queued behind busy pods, not a wake: no cold wait.
        let behind = queued(g.admit(0).unwrap());
        drop(a);
        let c = behind.wait().await.unwrap();
        assert_eq!(c.cold_wait(), None);
        drop(c);
        assert_eq!(ready(g.admit(0).unwrap()).cold_wait(), None);
        assert_eq!(g.metrics().cold_starts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_when_endpoints_appear() {
        let g = gate(1, 10, 1000);
        let t1 = queued(g.admit(0).unwrap());
        assert!(t1.needs_wake());
        let t2 = queued(g.admit(0).unwrap());
        assert!(!t2.needs_wake());
        let t3 = queued(g.admit(0).unwrap());
        let h1 = tokio::spawn(t1.wait());
        let h2 = tokio::spawn(t2.wait());
        let h3 = tokio::spawn(t3.wait());
        tokio::task::yield_now().await;
        assert_eq!(g.queued(), 3);
        // One pod with room for one: only the first is served.
        assert!(!g.set(&[ep(1, true)]));
        let p1 = h1.await.unwrap().unwrap();
        assert_eq!(g.queued(), 2);
        assert!(!h2.is_finished());
        drop(p1);
        let p2 = h2.await.unwrap().unwrap();
        assert!(!h3.is_finished());
        drop(p2);
        let _p3 = h3.await.unwrap().unwrap();
        assert_eq!(g.queued(), 0);
        assert_eq!(g.in_flight(), vec![(ep(1, true).addr, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_by_count_and_bytes() {
        let g = gate(1, 2, 100);
        let _a = queued(g.admit(10).unwrap());
        assert!(matches!(g.admit(91), Err(QueueError::Full { .. })));
        let _b = queued(g.admit(90).unwrap());
        assert!(matches!(
            g.admit(0),
            Err(QueueError::Full {
                queued: 2,
                bytes: 100,
                retry_after: 10
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_leaves_the_queue() {
        let g = gate(1, 2, 100);
        let t = queued(g.admit(5).unwrap());
        let h = tokio::spawn(t.wait());
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!h.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            h.await.unwrap().unwrap_err(),
            QueueError::Deadline(Duration::from_secs(60))
        );
        assert_eq!(g.queued(), 0);
        // The bytes were given back too.
        let _a = queued(g.admit(100).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_ticket_leaves_the_queue_and_is_counted() {
        let g = gate(1, 10, 1000);
        let t1 = queued(g.admit(0).unwrap());
        let t2 = queued(g.admit(0).unwrap());
        drop(t1);
        assert_eq!(g.queued(), 1);
        assert_eq!(g.metrics().abandoned(), 1);
        g.set(&[ep(1, true)]);
        let p = t2.wait().await.unwrap();
        assert_eq!(p.addr(), ep(1, true).addr);
    }

    #[tokio::test(start_paused = true)]
    async fn slot_handed_to_a_dropped_ticket_goes_to_the_next() {
        let g = gate(1, 10, 1000);
        let t1 = queued(g.admit(0).unwrap());
        let t2 = queued(g.admit(0).unwrap());
        g.set(&[ep(1, true)]); // t1 is served (slot in its channel)
        drop(t1); // never received: the slot must pass to t2
        let p = t2.wait().await.unwrap();
        assert_eq!(g.in_flight(), vec![(p.addr(), 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_and_least_loaded() {
        let g = gate(2, 10, 1000);
        g.set(&[ep(1, true), ep(2, true), ep(3, false)]);
        let ps: Vec<Permit> = (0..4).map(|_| ready(g.admit(0).unwrap())).collect();
        let mut counts = g.in_flight();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                (ep(1, true).addr, 2),
                (ep(2, true).addr, 2),
                (ep(3, true).addr, 0)
            ]
        );
        let t = queued(g.admit(0).unwrap());
        assert!(!t.needs_wake(), "pods are ready, only busy");
        drop(ps);
        let p = t.wait().await.unwrap();
        assert_ne!(p.addr(), ep(3, true).addr, "unready pods get nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn terminating_pod_keeps_its_count_until_done() {
        let g = gate(1, 10, 1000);
        g.set(&[ep(1, true)]);
        let p = ready(g.admit(0).unwrap());
        let mut term = ep(1, true);
        term.terminating = true;
        assert!(!g.set(&[term]), "nobody waits");
        let t = queued(g.admit(0).unwrap());
        assert!(t.needs_wake());
        // The pod leaves entirely while the request is still on it: no eligible pod before
        // either, so no new wake is asked for.
        assert!(!g.set(&[]));
        assert_eq!(g.in_flight(), vec![(ep(1, true).addr, 1)]);
        drop(p);
        assert_eq!(g.in_flight(), vec![]);
        g.set(&[ep(2, true)]);
        assert_eq!(t.wait().await.unwrap().addr(), ep(2, true).addr);
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_last_ready_pod_with_waiters_asks_for_a_wake() {
        let g = gate(1, 10, 1000);
        g.set(&[ep(1, true)]);
        let _busy = ready(g.admit(0).unwrap());
        let t = queued(g.admit(0).unwrap());
        assert!(!t.needs_wake(), "a pod is ready, only busy");
        assert!(!g.set(&[ep(1, true), ep(2, false)]), "still a ready pod");
        assert!(g.set(&[ep(2, false)]), "last ready pod gone, one waiting");
        assert!(!g.set(&[ep(3, false)]), "already without a ready pod");
    }

    #[tokio::test(start_paused = true)]
    async fn try_other_excludes_failed_pods() {
        let g = gate(0, 10, 1000);
        g.set(&[ep(1, true), ep(2, true)]);
        let p = ready(g.admit(0).unwrap());
        let other = p.try_other(&[p.addr()]).unwrap();
        assert_ne!(other.addr(), p.addr());
        assert!(
            other
                .try_other(&[ep(1, true).addr, ep(2, true).addr])
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_keeps_its_pool_and_drops_idle_connections_when_it_leaves() {
        let g = gate(1, 10, 1000);
        g.set(&[ep(1, true)]);
        let first = ready(g.admit(0).unwrap());
        let pool = first.pool().clone();
        drop(first);
        let mut term = ep(1, true);
        term.terminating = true;
        g.set(&[term, ep(2, true)]);
        assert_eq!(
            pool.0.load(Ordering::Relaxed),
            1,
            "idle connections dropped"
        );
        g.set(&[ep(1, true), ep(2, true)]);
        let ps: Vec<Permit> = (0..2).map(|_| ready(g.admit(0).unwrap())).collect();
        let again = ps.iter().find(|p| p.addr() == ep(1, true).addr).unwrap();
        assert!(Arc::ptr_eq(again.pool(), &pool), "the pod kept its pool");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_pod_is_skipped_for_a_while() {
        let g = gate(0, 10, 1000);
        g.set(&[ep(1, true)]);
        let p = ready(g.admit(0).unwrap());
        p.eject();
        assert_eq!(g.metrics().ejected(), 1);
        assert!(!g.has_ready());
        let t = queued(g.admit(0).unwrap());
        drop(p);
        tokio::time::sleep(EJECT_FOR).await;
        assert_eq!(t.wait().await.unwrap().addr(), ep(1, true).addr);
        assert_eq!(g.metrics().waited(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn close_fails_waiters() {
        let g = gate(1, 10, 1000);
        let t = queued(g.admit(0).unwrap());
        g.close();
        assert_eq!(t.wait().await.unwrap_err(), QueueError::Closed);
        assert!(matches!(g.admit(0), Err(QueueError::Closed)));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Admit(u64),
            DropPermit(usize),
            DropTicket(usize),
            /// Ready flags of pods 1..=3 (absent when None).
            Endpoints([Option<bool>; 3]),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u64..40).prop_map(Op::Admit),
                3 => any::<usize>().prop_map(Op::DropPermit),
                1 => any::<usize>().prop_map(Op::DropTicket),
                1 => proptest::array::uniform3(proptest::option::of(any::<bool>())).prop_map(Op::Endpoints),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Whatever happens: pods never exceed their limit, waiters are served strictly in
            /// order, nobody waits while an eligible pod has room, counts match what callers
            /// hold, and everything is given back at the end.
            #[test]
            fn gate_invariants(cc in 0u32..3, depth in 1usize..6, ops in proptest::collection::vec(op(), 1..60)) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
                rt.block_on(async move {
                    let g = gate(cc, depth, 100);
                    let mut held: Vec<Permit> = Vec::new();
                    let mut waiting: Vec<(u64, Ticket, u64)> = Vec::new();
                    let mut seq = 0u64;
                    let mut served_upto: Option<u64> = None;
                    let mut eligible: Vec<SocketAddr> = Vec::new();
                    for op in ops {
                        match op {
                            Op::Admit(b) => match g.admit(b) {
                                Ok(Admit::Ready(p)) => {
                                    prop_assert!(waiting.is_empty(), "served ahead of waiters");
                                    held.push(p);
                                }
                                Ok(Admit::Queued(t)) => {
                                    let bytes: u64 = waiting.iter().map(|w| w.2).sum();
                                    prop_assert!(waiting.len() < depth && bytes + b <= 100, "queued beyond the limits");
                                    waiting.push((seq, t, b));
                                    seq += 1;
                                }
                                Err(QueueError::Full { .. }) => {
                                    let bytes: u64 = waiting.iter().map(|w| w.2).sum();
                                    prop_assert!(waiting.len() >= depth || bytes + b > 100, "refused below the limits");
                                }
                                Err(e) => prop_assert!(false, "unexpected {e}"),
                            },
                            Op::DropPermit(i) => {
                                if !held.is_empty() {
                                    held.swap_remove(i % held.len());
                                }
                            }
                            Op::DropTicket(i) => {
                                if !waiting.is_empty() {
                                    waiting.remove(i % waiting.len());
                                }
                            }
                            Op::Endpoints(flags) => {
                                let eps: Vec<Endpoint> = flags
                                    .iter()
                                    .enumerate()
                                    .filter_map(|(i, f)| f.map(|r| ep(i as u16 + 1, r)))
                                    .collect();
                                eligible = eps.iter().filter(|e| e.ready).map(|e| e.addr).collect();
                                g.set(&eps);
                            }
                        }
                        // Collect served tickets, checking FIFO order.
                        let mut still = Vec::new();
                        for (s, mut t, b) in waiting.drain(..) {
                            match t.try_take() {
                                Some(p) => {
                                    prop_assert!(still.is_empty(), "ticket {s} served before an earlier one");
                                    prop_assert!(served_upto.is_none_or(|u| s > u));
                                    served_upto = Some(s);
                                    held.push(p);
                                }
                                None => still.push((s, t, b)),
                            }
                        }
                        waiting = still;
                        prop_assert_eq!(g.queued(), waiting.len());
                        // Counts match what is held, and limits hold on eligible pods.
                        for (addr, n) in g.in_flight() {
                            let mine = held.iter().filter(|p| p.addr() == addr).count() as u32;
                            prop_assert_eq!(n, mine, "pod {} count", addr);
                            if cc > 0 && eligible.contains(&addr) {
                                prop_assert!(n <= cc, "pod {} over its limit: {}", addr, n);
                            }
                        }
                        // Work conserving: nobody waits while an eligible pod has room.
                        if !waiting.is_empty() {
                            let room = g.in_flight().iter().any(|(a, n)| eligible.contains(a) && (cc == 0 || *n < cc));
                            prop_assert!(!room, "requests wait while a pod has room");
                        }
                    }
                    drop(waiting);
                    drop(held);
                    prop_assert_eq!(g.queued(), 0);
                    prop_assert!(g.in_flight().iter().all(|(_, n)| *n == 0));
                    prop_assert_eq!(g.metrics().in_flight(), 0);
                    prop_assert_eq!(g.metrics().queued(), 0);
                    Ok(())
                })?;
            }
        }
    }
}
