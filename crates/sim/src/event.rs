//! The event queue of the discrete-event simulation: a binary heap ordered by
//! (time, class, insertion sequence).
//!
//! Time is integer nanoseconds since the start of the simulation ([`Nanos`]), so the order
//! never depends on float rounding. Events at the same instant run in the order of their
//! [`Class`] (capacity is freed before it is handed out, the scrape before the tick that uses
//! it), and events of one class at one instant in the order they were scheduled. That order is
//! total, so a run is a pure function of its inputs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Simulated time: nanoseconds since the start of the run.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const SEC: Nanos = 1_000_000_000;

/// Converts a duration to [`Nanos`], saturating.
pub fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Seconds as a float, for output.
pub fn secs(t: Nanos) -> f64 {
    t as f64 / SEC as f64
}

/// The order of events that fall on the same instant (lower first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A request finished on a pod: its slot is free for the next waiter.
    Complete,
    /// A pod became ready, or a terminating pod exited.
    Pod,
    /// A queued request's deadline passed.
    Deadline,
    /// A request arrived at the activator.
    Arrival,
    /// A wake signal reached the autoscaler (the 0 -> N patch).
    Wake,
    /// The autoscaler scraped the activators.
    Scrape,
    /// The autoscaler decided.
    Tick,
}

/// A queue of `(time, class, payload)` events; see the module docs for the order.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
}

/// (time, class, sequence, payload): the heap's order is the tuple's.
type Entry<E> = (Nanos, Class, u64, Slot<E>);

/// Wraps the payload so the heap never compares payloads (the sequence number is unique).
#[derive(Debug)]
struct Slot<E>(E);

impl<E> PartialEq for Slot<E> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Nanos, class: Class, event: E) {
        self.seq += 1;
        self.heap.push(Reverse((at, class, self.seq, Slot(event))));
    }

    /// Removes and returns the next event.
    pub fn pop(&mut self) -> Option<(Nanos, Class, E)> {
        self.heap
            .pop()
            .map(|Reverse((at, class, _, Slot(e)))| (at, class, e))
    }

    /// The time of the next event.
    pub fn peek_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_class_then_insertion() {
        let mut q = EventQueue::default();
        q.push(5, Class::Tick, "tick@5");
        q.push(5, Class::Scrape, "scrape@5");
        q.push(1, Class::Arrival, "arrival@1");
        q.push(5, Class::Complete, "complete@5");
        q.push(5, Class::Scrape, "scrape@5 second");
        q.push(3, Class::Tick, "tick@3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, _, e)| e)).collect();
        assert_eq!(
            order,
            [
                "arrival@1",
                "tick@3",
                "complete@5",
                "scrape@5",
                "scrape@5 second",
                "tick@5"
            ]
        );
    }

    #[test]
    fn many_events_come_out_sorted() {
        let mut q = EventQueue::default();
        let mut x: u64 = 1;
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            q.push(x >> 40, Class::Arrival, i);
        }
        let mut last = (0, 0);
        while let Some((t, _, i)) = q.pop() {
            assert!(t >= last.0);
            if t == last.0 {
                assert!(i > last.1, "same time keeps insertion order");
            }
            last = (t, i);
        }
        assert!(q.is_empty());
    }
}
