//! zeroscale's capacity pools: several models sharing a fixed amount of a resource (GPUs, or replicas).
//!
//! One call of [`decide`] looks at every member of one pool as it is now and says which
//! replica changes fit: how far each wanted scale-up may go, and which idle models to scale to
//! zero to make room. It is pure (time is the `now` argument) and keeps no state: what it needs
//! to remember (when a wake started waiting, when a model was last used) the caller passes in.
//!
//! # Rules
//! - **Never above capacity.** A member's replicas count at `current` (its `spec.replicas`,
//!   Pending pods included, or the larger count of a patch in flight) times `per_replica`.
//!   A grant only uses room that is free now; room an eviction or a scale-down will free counts
//!   only once that change has been applied (the caller's next call), so a failed patch can
//!   never leave the pool above capacity.
//! - **Evict only the idle.** A member may be evicted (scaled to zero) only when it is not
//!   `busy` (no request in flight or queued; unknown data counts as busy), not `pinned`
//!   (min-scale above zero), not changing its own count, and has been resident for at
//!   least `min_residency`, so two models cannot evict each other back and forth. Candidates go
//!   least recently used first (oldest `last_used`, then key). An eviction happens only when it
//!   (with the others chosen and the room already being released) makes enough room for the
//!   request it serves; a request that cannot be served is never a reason to evict.
//! - **Waiting wakes first, in FIFO order.** Members at zero that want replicas are served by
//!   `waiting_since` (then key), each with as many of its wanted replicas as fit (at least one,
//!   or it waits). The first wake that cannot be served holds every later wake and every
//!   scale-up back, so freed room goes to it first and a large model is not starved by small
//!   ones; room is made by evictions for it and for the waiting wakes after it (one replica
//!   each, in order, until the candidates run out), so a burst of wakes into a full pool is
//!   served on the next call. A wake whose single replica is larger than the whole pool can
//!   never be served and holds nothing back.
//! - **Scale-ups share fairly (max-min).** With no wake waiting, the free room goes one replica
//!   at a time to the scaling-up member with the fewest replicas so far (ties: earliest
//!   `waiting_since`, then key) until each has what it wants or no replica fits; then idle
//!   members are evicted, least recently used first, for what is still missing.
//! - **Scale-downs always go through** (they only free room).

use std::time::{Duration, Instant};

/// One model of a pool, as the caller sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Member<K> {
    /// The model's key (the autoscaler's Deployment key).
    pub key: K,
    /// Replicas it holds or will hold now: `spec.replicas` (Pending pods included), or the
    /// larger count of a scale change in flight.
    pub current: u32,
    /// Replicas its own decider wants.
    pub desired: u32,
    /// Replicas a change in flight is releasing (already counted in `current`); they are not
    /// evicted again and count as room on the way.
    pub releasing: u32,
    /// Units of the pool's resource one replica takes (1 in a pool counted in replicas).
    pub per_replica: u64,
    /// Requests in flight or queued at the last scrape, or the data is not fresh.
    pub busy: bool,
    /// Never evicted (min-scale above zero).
    pub pinned: bool,
    /// When requests were last seen (or it woke).
    pub last_used: Instant,
    /// When it last went from zero to running (or was first seen running).
    pub resident_since: Instant,
    /// When it started waiting for replicas at zero (set while `current == 0 < desired`).
    pub waiting_since: Option<Instant>,
}

/// A pool's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Units of the pool's resource (or replicas).
    pub capacity: u64,
    /// How long a model stays resident before it may be evicted.
    pub min_residency: Duration,
}

/// An idle model to scale to zero to make room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction<K> {
    /// The model scaled to zero.
    pub key: K,
    /// Its replicas now.
    pub from: u32,
    /// The model the room is made for.
    pub for_model: K,
    /// How long it has been idle (since `last_used`).
    pub idle_for: Duration,
}

/// What one pool should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<K> {
    /// Replica counts to set: every scale-down as wanted, every scale-up as far as it fits
    /// (only members whose count changes; evictions are apart).
    pub targets: Vec<(K, u32)>,
    /// Idle members to scale to zero.
    pub evictions: Vec<Eviction<K>>,
    /// Members at zero that want replicas and got none, in the order they will be served.
    pub waiting: Vec<K>,
    /// Units held now (before this plan): sum of `current x per_replica`.
    pub used: u64,
    /// Units this plan grants to wakes and scale-ups, on top of `used` (what a wake left
    /// waiting found taken, with `used`).
    pub granted: u64,
}

impl<K> Default for Plan<K> {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            evictions: Vec::new(),
            waiting: Vec::new(),
            used: 0,
            granted: 0,
        }
    }
}

fn units(replicas: u32, per_replica: u64) -> u64 {
    u64::from(replicas).saturating_mul(per_replica)
}

/// Evictions of idle members, least recently used first, until `free + on_the_way` reaches
/// `need`; none if even all of them would not be enough.
struct Evictor<'a, K> {
    members: &'a [Member<K>],
    now: Instant,
    /// Indexes of evictable members, least recently used first.
    order: Vec<usize>,
    next: usize,
    /// Units that evictions (chosen now) and changes in flight will free.
    on_the_way: u64,
    chosen: Vec<Eviction<K>>,
}

impl<'a, K: Clone + Ord> Evictor<'a, K> {
    fn new(members: &'a [Member<K>], policy: &Policy, now: Instant) -> Self {
        let mut order: Vec<usize> = (0..members.len())
            .filter(|&i| {
                let m = &members[i];
                m.current > m.releasing
                    && !m.busy
                    && !m.pinned
                    && m.desired == m.current
                    && now.saturating_duration_since(m.resident_since) >= policy.min_residency
            })
            .collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&members[a], &members[b]);
            a.last_used.cmp(&b.last_used).then(a.key.cmp(&b.key))
        });
        // Changes in flight, and the scale-downs this plan hands out, free room once applied.
        let on_the_way = members
            .iter()
            .map(|m| {
                let kept = m.desired.min(m.current - m.releasing.min(m.current));
                units(m.current - kept, m.per_replica)
            })
            .fold(0u64, u64::saturating_add);
        Self {
            members,
            now,
            order,
            next: 0,
            on_the_way,
            chosen: Vec::new(),
        }
    }

    /// Chooses evictions until `free + on_the_way >= need`. Returns whether that much room
    /// is (or will be) there.
    fn make_room(&mut self, free: u64, need: u64, for_model: &K) -> bool {
        if free.saturating_add(self.on_the_way) >= need {
            return true;
        }
        // Enough only if the remaining candidates suffice; never evict for nothing.
        let mut gain = 0u64;
        let mut end = self.next;
        while end < self.order.len() && free + self.on_the_way + gain < need {
            let m = &self.members[self.order[end]];
            gain = gain.saturating_add(units(m.current - m.releasing, m.per_replica));
            end += 1;
        }
        if free.saturating_add(self.on_the_way).saturating_add(gain) < need {
            return false;
        }
        for &i in &self.order[self.next..end] {
            let m = &self.members[i];
            self.chosen.push(Eviction {
                key: m.key.clone(),
                from: m.current,
                for_model: for_model.clone(),
                idle_for: self.now.saturating_duration_since(m.last_used),
            });
        }
        self.on_the_way = self.on_the_way.saturating_add(gain);
        self.next = end;
        true
    }
}

/// Decides one pool now (see the module docs for the rules).
pub fn decide<K: Clone + Ord>(members: &[Member<K>], policy: &Policy, now: Instant) -> Plan<K> {
    let used = members
        .iter()
        .map(|m| units(m.current, m.per_replica))
        .fold(0u64, u64::saturating_add);
    let mut free = policy.capacity.saturating_sub(used);
    let free_before = free;
    let mut plan = Plan {
        used,
        ..Plan::default()
    };
    for m in members.iter().filter(|m| m.desired < m.current) {
        plan.targets.push((m.key.clone(), m.desired));
    }
    let mut evictor = Evictor::new(members, policy, now);

    // Waiting wakes, FIFO.
    let mut wakes: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].current == 0 && members[i].desired > 0)
        .collect();
    wakes.sort_by(|&a, &b| {
        let (a, b) = (&members[a], &members[b]);
        (a.waiting_since.unwrap_or(now), &a.key).cmp(&(b.waiting_since.unwrap_or(now), &b.key))
    });
    let mut blocked = false;
    // Room the waiting wakes need, in order (one replica each), while evictions can make it.
    let mut need = 0u64;
    let mut room_possible = true;
    for &i in &wakes {
        let m = &members[i];
        let one = m.per_replica;
        if one > policy.capacity {
            plan.waiting.push(m.key.clone());
            continue;
        }
        if !blocked && free >= one {
            let fit = free.checked_div(one).map_or(m.desired, |n| {
                m.desired.min(u32::try_from(n).unwrap_or(u32::MAX))
            });
            free -= units(fit, one);
            plan.targets.push((m.key.clone(), fit));
            continue;
        }
        // Served once the room is free (a later call); until then it holds the rest back. Room
        // is made for it and for the wakes after it, in order, as far as evictions go, so a
        // burst of wakes into a full pool is served on the next call.
        plan.waiting.push(m.key.clone());
        blocked = true;
        if room_possible {
            need = need.saturating_add(one);
            room_possible = evictor.make_room(free, need, &m.key);
        }
    }
    if blocked {
        plan.evictions = evictor.chosen;
        plan.granted = free_before - free;
        return plan;
    }

    // Scale-ups, max-min fair: one replica at a time to the member with the fewest so far.
    let mut ups: Vec<(usize, u32)> = (0..members.len())
        .filter(|&i| members[i].current > 0 && members[i].desired > members[i].current)
        .map(|i| (i, members[i].current))
        .collect();
    if ups.is_empty() {
        plan.evictions = evictor.chosen;
        plan.granted = free_before - free;
        return plan;
    }
    let rank = |(i, have): &(usize, u32)| {
        let m = &members[*i];
        (*have, m.waiting_since.unwrap_or(now), m.key.clone())
    };
    loop {
        let best = ups
            .iter()
            .enumerate()
            .filter(|(_, (i, have))| {
                let m = &members[*i];
                *have < m.desired && free >= m.per_replica
            })
            .min_by(|(_, a), (_, b)| rank(a).cmp(&rank(b)))
            .map(|(at, _)| at);
        let Some(at) = best else { break };
        let (i, have) = &mut ups[at];
        *have += 1;
        free -= members[*i].per_replica;
    }
    let mut shortfall = 0u64;
    let mut first_short = None;
    for (i, have) in &ups {
        let m = &members[*i];
        if *have > m.current {
            plan.targets.push((m.key.clone(), *have));
        }
        if *have < m.desired {
            shortfall = shortfall.saturating_add(units(m.desired - *have, m.per_replica));
            first_short.get_or_insert(*i);
        }
    }
    if let Some(i) = first_short {
        // What is still missing, made room for as one need (all or nothing, like a wake's:
        // evicting a model for part of the room would take it away and still not be enough).
        let key = members[i].key.clone();
        evictor.make_room(free, shortfall.min(policy.capacity), &key);
    }
    plan.evictions = evictor.chosen;
    plan.granted = free_before - free;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A member resident since t0, last used at t0 + `used` seconds.
    fn m(
        key: &'static str,
        current: u32,
        desired: u32,
        t0: Instant,
        used: u64,
    ) -> Member<&'static str> {
        Member {
            key,
            current,
            desired,
            releasing: 0,
            per_replica: 1,
            busy: false,
            pinned: false,
            last_used: t0 + secs(used),
            resident_since: t0,
            waiting_since: (current == 0 && desired > 0).then_some(t0 + secs(used)),
        }
    }

    fn policy(capacity: u64) -> Policy {
        Policy {
            capacity,
            min_residency: secs(60),
        }
    }

    #[test]
    fn a_wake_with_room_is_granted_at_once() {
        let t0 = Instant::now();
        let members = [m("a", 1, 1, t0, 0), m("b", 0, 2, t0, 5)];
        let plan = decide(&members, &policy(4), t0 + secs(100));
        assert_eq!(plan.targets, vec![("b", 2)]);
        assert!(plan.evictions.is_empty() && plan.waiting.is_empty());
        assert_eq!(plan.used, 1);
    }

    #[test]
    fn a_wake_gets_what_fits_and_at_least_one() {
        let t0 = Instant::now();
        let members = [m("a", 2, 2, t0, 0), m("b", 0, 3, t0, 5)];
        let plan = decide(&members, &policy(3), t0 + secs(100));
        assert_eq!(plan.targets, vec![("b", 1)]);
    }

    #[test]
    fn a_full_pool_evicts_the_least_recently_used_idle_model_and_waits() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let members = [
            m("recent", 1, 1, t0, 200),
            m("old", 1, 1, t0, 30),
            m("new", 0, 1, t0, 299),
        ];
        let plan = decide(&members, &policy(2), now);
        assert!(plan.targets.is_empty(), "room frees only once applied");
        assert_eq!(
            plan.evictions,
            vec![Eviction {
                key: "old",
                from: 1,
                for_model: "new",
                idle_for: secs(270),
            }]
        );
        assert_eq!(plan.waiting, vec!["new"]);
        // Next call: the eviction applied, the wake is served.
        let members = [
            m("recent", 1, 1, t0, 200),
            m("old", 0, 0, t0, 30),
            m("new", 0, 1, t0, 299),
        ];
        let plan = decide(&members, &policy(2), now + secs(2));
        assert_eq!(plan.targets, vec![("new", 1)]);
        assert!(plan.evictions.is_empty());
    }

    #[test]
    fn busy_pinned_and_recently_woken_models_are_never_evicted() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut busy = m("busy", 1, 1, t0, 0);
        busy.busy = true;
        let mut pinned = m("pinned", 1, 1, t0, 0);
        pinned.pinned = true;
        let mut fresh = m("fresh", 1, 1, t0, 0);
        fresh.resident_since = now - secs(59);
        let members = [busy, pinned, fresh, m("wake", 0, 1, t0, 290)];
        let plan = decide(&members, &policy(3), now);
        assert!(plan.evictions.is_empty(), "{plan:?}");
        assert!(plan.targets.is_empty());
        assert_eq!(plan.waiting, vec!["wake"]);
        // Once the residency is over, the fresh one may go.
        let plan = decide(&members, &policy(3), now + secs(1));
        assert_eq!(plan.evictions.len(), 1);
        assert_eq!(plan.evictions[0].key, "fresh");
    }

    #[test]
    fn no_eviction_when_it_would_not_make_enough_room() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut big = m("big", 0, 1, t0, 290);
        big.per_replica = 4;
        let mut busy = m("busy", 2, 2, t0, 0);
        busy.busy = true;
        let members = [busy, m("idle", 1, 1, t0, 0), big];
        // 3 free at most after evicting "idle": not 4.
        let plan = decide(&members, &policy(4), now);
        assert!(plan.evictions.is_empty(), "{plan:?}");
        assert_eq!(plan.waiting, vec!["big"]);
    }

    #[test]
    fn room_already_being_released_is_not_made_twice() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut leaving = m("leaving", 1, 0, t0, 0);
        leaving.releasing = 1;
        let members = [leaving, m("idle", 1, 1, t0, 10), m("wake", 0, 1, t0, 290)];
        let plan = decide(&members, &policy(2), now);
        assert!(plan.evictions.is_empty(), "{plan:?}");
        assert_eq!(plan.waiting, vec!["wake"]);
    }

    #[test]
    fn waiting_wakes_are_served_in_arrival_order_and_the_head_holds_the_rest() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut first = m("z-first", 0, 1, t0, 100);
        first.per_replica = 2;
        let second = m("a-second", 0, 1, t0, 200);
        let mut busy = m("busy", 1, 1, t0, 0);
        busy.busy = true;
        // One unit free: the second would fit, but the first came first.
        let plan = decide(
            &[busy.clone(), first.clone(), second.clone()],
            &policy(2),
            now,
        );
        assert!(plan.targets.is_empty(), "{plan:?}");
        assert_eq!(plan.waiting, vec!["z-first", "a-second"]);
        // Room for both, in order.
        let plan = decide(&[busy, first, second], &policy(4), now);
        assert_eq!(plan.targets, vec![("z-first", 1), ("a-second", 1)]);
    }

    #[test]
    fn a_burst_of_wakes_into_a_full_pool_gets_room_for_all_in_one_call() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let members = [
            m("idle-1", 1, 1, t0, 30),
            m("idle-2", 1, 1, t0, 10),
            m("idle-3", 1, 1, t0, 20),
            m("wake-1", 0, 1, t0, 100),
            m("wake-2", 0, 1, t0, 101),
        ];
        let plan = decide(&members, &policy(3), now);
        let evicted: Vec<_> = plan
            .evictions
            .iter()
            .map(|e| (e.key, e.for_model))
            .collect();
        // Least recently used first, each for the next wake in line.
        assert_eq!(evicted, vec![("idle-2", "wake-1"), ("idle-3", "wake-2")]);
        assert_eq!(plan.waiting, vec!["wake-1", "wake-2"]);
    }

    #[test]
    fn a_wake_larger_than_the_pool_holds_nothing_back() {
        let t0 = Instant::now();
        let mut huge = m("huge", 0, 1, t0, 0);
        huge.per_replica = 9;
        let plan = decide(&[huge, m("small", 0, 1, t0, 5)], &policy(8), t0 + secs(10));
        assert_eq!(plan.targets, vec![("small", 1)]);
        assert_eq!(plan.waiting, vec!["huge"]);
    }

    #[test]
    fn scale_ups_share_the_room_max_min_fair() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut a = m("a", 1, 6, t0, 0);
        a.busy = true;
        let mut b = m("b", 3, 6, t0, 0);
        b.busy = true;
        // 4 free: a gets 1 -> 3 first (fewest), then both one each: a 4, b 4.
        let plan = decide(&[a, b], &policy(8), now);
        assert_eq!(plan.targets, vec![("a", 4), ("b", 4)]);
        assert!(plan.evictions.is_empty(), "nothing idle to evict");
    }

    #[test]
    fn a_scale_up_beyond_the_room_evicts_idle_models() {
        let t0 = Instant::now();
        let now = t0 + secs(300);
        let mut hot = m("hot", 2, 4, t0, 299);
        hot.busy = true;
        let members = [hot, m("idle", 2, 2, t0, 10)];
        let plan = decide(&members, &policy(4), now);
        assert!(plan.targets.is_empty());
        assert_eq!(plan.evictions.len(), 1);
        assert_eq!(plan.evictions[0].for_model, "hot");
    }

    #[test]
    fn scale_downs_go_through_even_above_capacity() {
        let t0 = Instant::now();
        // Someone scaled by hand above the pool: no grant, the scale-down is kept.
        let members = [m("a", 5, 3, t0, 0), m("b", 0, 1, t0, 1)];
        let plan = decide(&members, &policy(4), t0 + secs(10));
        assert_eq!(plan.targets, vec![("a", 3)]);
        assert_eq!(plan.waiting, vec!["b"]);
        assert_eq!(plan.used, 5);
    }
}
