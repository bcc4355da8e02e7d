//! Liveness of leadership and of the watches, as plain values with time passed in.
//!
//! Leader election can only be trusted as long as the Lease keeps being renewed: a leader that
//! cannot reach the API server still *believes* it leads (kube-lease-manager reports only
//! changes it has seen), so writes are gated on the time of the last renewal instead, the way
//! client-go's `RenewDeadline` gates them. A watch is stale when it keeps failing or when it
//! shows no sign of life (response, event, bookmark) for too long. Nothing here reads a clock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What this replica may do, as far as the Lease goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderStatus {
    /// Holds the Lease and renewed it within the renew deadline: may write.
    Leading,
    /// Does not hold the Lease (or the last read of it names another holder).
    Standby,
    /// Believes it holds the Lease but has not renewed it within the renew deadline: must not
    /// write (a standby may already have taken over).
    Lost {
        /// Time since the last renewal (or since start, if it never renewed).
        unrenewed_for: Duration,
    },
}

impl LeaderStatus {
    /// Whether steady-state writes are allowed.
    pub fn may_write(self) -> bool {
        self == LeaderStatus::Leading
    }

    /// Whether `other` is the same status, however long it has lasted (for logging changes).
    pub fn same_as(self, other: LeaderStatus) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// One reason a replica is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// What is wrong, stable while it stays wrong (`api-unreachable`, `watch configmap`, ...):
    /// changes of readiness are logged when the set of keys changes, not when a duration in
    /// the text grows.
    pub key: String,
    /// The sentence for people, e.g. in the `/readyz` body.
    pub text: String,
}

impl Reason {
    fn new(key: impl Into<String>, text: String) -> Self {
        Self {
            key: key.into(),
            text,
        }
    }
}

/// The renew-deadline bookkeeping of one replica.
#[derive(Clone, Debug)]
pub struct LeaseHealth {
    /// How long after a renewal this replica still counts as leader.
    pub renew_deadline: Duration,
    /// When the bookkeeping started (stands in for "last contact" before the first one).
    started: Instant,
    /// Whether leader election (kube-lease-manager) says this replica holds the Lease.
    elected: bool,
    /// The last renewal (or acquisition) of the Lease by this replica.
    last_renewed: Option<Instant>,
    /// The last successful read of the Lease: proof the API server answers.
    last_contact: Option<Instant>,
    /// Whether the last read of the Lease named another holder.
    held_by_other: bool,
    /// When leader election last said this replica leads.
    elected_at: Option<Instant>,
}

impl LeaseHealth {
    /// Bookkeeping starting at `now`, not elected.
    pub fn new(renew_deadline: Duration, now: Instant) -> Self {
        Self {
            renew_deadline,
            started: now,
            elected: false,
            last_renewed: None,
            last_contact: None,
            held_by_other: false,
            elected_at: None,
        }
    }

    /// Leader election changed its mind. Becoming leader is itself a successful renewal (the
    /// manager reports it only after its write was accepted).
    pub fn set_elected(&mut self, elected: bool, now: Instant) {
        if elected && !self.elected {
            self.last_renewed = Some(now);
            self.last_contact = Some(now);
            self.held_by_other = false;
            self.elected_at = Some(now);
        }
        self.elected = elected;
    }

    /// A successful read of the Lease, sent at `sent` and answered at `now`: `renewed_at` is
    /// its renew time when this replica is the holder, `None` when another identity (or
    /// nobody) holds it.
    pub fn record_read(&mut self, sent: Instant, now: Instant, renewed_at: Option<Instant>) {
        self.last_contact = Some(now);
        // A read sent before this replica was elected shows the previous holder: ignore that.
        if self.elected_at.is_none_or(|at| sent >= at) {
            self.held_by_other = renewed_at.is_none();
        }
        if let Some(at) = renewed_at {
            // Never move backwards: an older read may finish after a newer renewal was seen.
            self.last_renewed = Some(self.last_renewed.map_or(at, |last| last.max(at)));
        }
    }

    /// The status at `now`.
    pub fn status_at(&self, now: Instant) -> LeaderStatus {
        // Another holder in the Lease settles it even before leader election notices: a
        // standby, ready to serve wakes, never writing.
        if !self.elected || self.held_by_other {
            return LeaderStatus::Standby;
        }
        let unrenewed_for =
            now.saturating_duration_since(self.last_renewed.unwrap_or(self.started));
        if unrenewed_for > self.renew_deadline {
            LeaderStatus::Lost { unrenewed_for }
        } else {
            LeaderStatus::Leading
        }
    }

    /// Whether steady-state writes are allowed at `now`.
    pub fn is_leader_at(&self, now: Instant) -> bool {
        self.status_at(now).may_write()
    }

    /// How long the API server has not answered, when that is beyond the renew deadline.
    pub fn unreachable_at(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_contact.unwrap_or(self.started));
        (silent > self.renew_deadline).then_some(silent)
    }

    /// The first instant after `now` at which the status or reachability changes without any
    /// input (a renewal or contact running out); `None` when both already ran out.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        // Just past the deadline, so `status_at` sees it passed.
        let d = self.renew_deadline + Duration::from_millis(1);
        let contact = self.last_contact.unwrap_or(self.started) + d;
        let renewal = self
            .elected
            .then(|| self.last_renewed.unwrap_or(self.started) + d);
        [Some(contact), renewal]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .min()
    }
}

/// The monotonic instant of a renewal written at wall-clock `renew_time`, seen at `now` /
/// `now_wall`. The Lease's renew time was written by this process, so its clock is ours; a
/// renew time in the future (clock stepped back) counts as now.
pub fn renewed_at(now: Instant, now_wall: SystemTime, renew_time: SystemTime) -> Instant {
    let age = now_wall
        .duration_since(renew_time)
        .unwrap_or(Duration::ZERO);
    now.checked_sub(age).unwrap_or(now)
}

/// One watch's signs of life (see [`beat`](crate::beat)) and failures.
#[derive(Clone, Debug)]
pub struct WatchHealth {
    /// The last successful response, event or bookmark.
    last_alive: Instant,
    /// Since when every item has been an error (`None` while healthy).
    failing_since: Option<Instant>,
    /// The last error, for the readiness reason.
    last_error: Option<String>,
}

impl WatchHealth {
    /// A watch started at `now` (counts as alive then, so silence counts from the start).
    pub fn new(now: Instant) -> Self {
        Self {
            last_alive: now,
            failing_since: None,
            last_error: None,
        }
    }

    /// A successful response or a chunk of one arrived at `now`: the watch works.
    pub fn alive(&mut self, now: Instant) {
        self.last_alive = self.last_alive.max(now);
        self.failing_since = None;
        self.last_error = None;
    }

    /// The stream delivered an error at `now`.
    pub fn error(&mut self, now: Instant, error: String) {
        self.failing_since.get_or_insert(now);
        self.last_error = Some(error);
    }

    /// Why the watch is stale at `now`: failing for longer than `failing_after`, or without
    /// any sign of life for longer than `silent_after`. `None` when it is fresh.
    pub fn stale_at(
        &self,
        now: Instant,
        failing_after: Duration,
        silent_after: Duration,
    ) -> Option<String> {
        if let Some(since) = self.failing_since {
            let failing = now.saturating_duration_since(since);
            if failing > failing_after {
                return Some(format!(
                    "failing for {:.1}s: {}",
                    failing.as_secs_f64(),
                    self.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
        }
        let silent = now.saturating_duration_since(self.last_alive);
        (silent > silent_after).then(|| {
            format!(
                "no response, event or bookmark for {:.1}s (limit {:.1}s)",
                silent.as_secs_f64(),
                silent_after.as_secs_f64()
            )
        })
    }
}

/// Everything `/readyz` judges, as of the last update.
#[derive(Debug)]
pub struct Board {
    /// Leadership and API reachability.
    pub lease: LeaseHealth,
    /// Whether every watch has listed completely.
    pub synced: bool,
    /// Per watch (name and scope).
    pub watches: BTreeMap<String, WatchHealth>,
    /// A watch failing for longer than this is stale.
    pub watch_failing_after: Duration,
    /// A watch with no sign of life for longer than this is stale (hung).
    pub watch_silent_after: Duration,
}

impl Board {
    /// Why this replica is not ready at `now`; empty when it is. A standby that reaches the
    /// API server is ready: it serves wakes.
    pub fn not_ready_at(&self, now: Instant) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if !self.synced {
            reasons.push(Reason::new("unsynced", "watches not synced yet".to_owned()));
        }
        let deadline = self.lease.renew_deadline.as_secs_f64();
        if let Some(silent) = self.lease.unreachable_at(now) {
            reasons.push(Reason::new(
                "api-unreachable",
                format!(
                    "kubernetes API unreachable: no successful Lease read for {:.1}s (renew deadline {deadline:.1}s)",
                    silent.as_secs_f64()
                ),
            ));
        }
        if let LeaderStatus::Lost { unrenewed_for } = self.lease.status_at(now) {
            reasons.push(Reason::new(
                "lost-leadership",
                lost_message(unrenewed_for, self.lease.renew_deadline),
            ));
        }
        for (name, watch) in &self.watches {
            if let Some(why) =
                watch.stale_at(now, self.watch_failing_after, self.watch_silent_after)
            {
                reasons.push(Reason::new(
                    format!("watch {name}"),
                    format!("watch {name} stale: {why}"),
                ));
            }
        }
        reasons
    }
}

/// The log line and readiness reason of a lost leadership.
pub fn lost_message(unrenewed_for: Duration, deadline: Duration) -> String {
    format!(
        "lost leadership: lease not renewed for {:.1}s (renew deadline {:.1}s): stopping writes",
        unrenewed_for.as_secs_f64(),
        deadline.as_secs_f64()
    )
}

/// The [`Board`] shared by the lease supervisor, the watches, the control loop and `/readyz`.
#[derive(Debug)]
pub struct Health(Mutex<Board>);

impl Health {
    /// A board starting at `now`: not synced, not elected, no watches.
    pub fn new(
        renew_deadline: Duration,
        watch_failing_after: Duration,
        watch_silent_after: Duration,
        now: Instant,
    ) -> Self {
        Self(Mutex::new(Board {
            lease: LeaseHealth::new(renew_deadline, now),
            synced: false,
            watches: BTreeMap::new(),
            watch_failing_after,
            watch_silent_after,
        }))
    }

    /// Runs `f` on the board (held for the duration of `f` only: keep it short).
    pub fn with<T>(&self, f: impl FnOnce(&mut Board) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Why this replica is not ready at `now`; empty when it is.
    pub fn not_ready_at(&self, now: Instant) -> Vec<Reason> {
        self.with(|b| b.not_ready_at(now))
    }

    /// Whether steady-state writes are allowed at `now`: the write gate of the applier.
    pub fn may_write_at(&self, now: Instant) -> bool {
        self.with(|b| b.lease.is_leader_at(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Lease reads as (read at, renewed at) in seconds after the start.
    type Reads = &'static [(u64, Option<u64>)];

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A leader elected at t0, then Lease reads at the given offsets with the given renewals.
    fn leader(t0: Instant, reads: &[(u64, Option<u64>)]) -> LeaseHealth {
        let mut h = LeaseHealth::new(DEADLINE, t0);
        h.set_elected(true, t0);
        for &(at, renewed) in reads {
            h.record_read(t0 + secs(at), t0 + secs(at), renewed.map(|r| t0 + secs(r)));
        }
        h
    }

    #[test]
    fn leader_status_follows_the_renew_deadline() {
        let t0 = Instant::now();
        // (case, reads as (read at, renewed at), asked at, expected)
        let cases: &[(&str, Reads, u64, LeaderStatus)] = &[
            ("just elected", &[], 0, LeaderStatus::Leading),
            (
                "elected, deadline not passed",
                &[],
                10,
                LeaderStatus::Leading,
            ),
            (
                "elected, never renewed, deadline passed",
                &[],
                11,
                LeaderStatus::Lost {
                    unrenewed_for: secs(11),
                },
            ),
            (
                "renewed in time",
                &[(2, Some(2)), (4, Some(4)), (6, Some(6))],
                15,
                LeaderStatus::Leading,
            ),
            (
                "reads succeed but show no new renewal",
                &[(4, Some(2)), (8, Some(2)), (12, Some(2))],
                13,
                LeaderStatus::Lost {
                    unrenewed_for: secs(11),
                },
            ),
            (
                "API silent after the last renewal",
                &[(2, Some(2))],
                20,
                LeaderStatus::Lost {
                    unrenewed_for: secs(18),
                },
            ),
            (
                "regained: a renewal after the deadline passed",
                &[(2, Some(2)), (25, Some(24))],
                26,
                LeaderStatus::Leading,
            ),
            (
                "a stale read does not move the renewal back",
                &[(6, Some(6)), (7, Some(1))],
                15,
                LeaderStatus::Leading,
            ),
            (
                "another replica holds the Lease",
                &[(3, None)],
                4,
                LeaderStatus::Standby,
            ),
            (
                "another replica took over after the deadline passed",
                &[(2, Some(2)), (20, None)],
                21,
                LeaderStatus::Standby,
            ),
        ];
        for (case, reads, at, want) in cases {
            let h = leader(t0, reads);
            assert_eq!(h.status_at(t0 + secs(*at)), *want, "{case}");
            assert_eq!(h.is_leader_at(t0 + secs(*at)), want.may_write(), "{case}");
        }
    }

    #[test]
    fn a_standby_never_writes_and_is_never_lost() {
        let t0 = Instant::now();
        let mut h = LeaseHealth::new(DEADLINE, t0);
        assert_eq!(h.status_at(t0 + secs(100)), LeaderStatus::Standby);
        h.set_elected(true, t0 + secs(100));
        assert!(h.is_leader_at(t0 + secs(101)));
        h.set_elected(false, t0 + secs(102));
        assert_eq!(h.status_at(t0 + secs(200)), LeaderStatus::Standby);
    }

    #[test]
    fn re_election_counts_as_a_renewal() {
        let t0 = Instant::now();
        let mut h = leader(t0, &[]);
        h.set_elected(false, t0 + secs(30));
        h.set_elected(true, t0 + secs(40));
        assert!(h.is_leader_at(t0 + secs(45)));
        // A read sent before the election still shows the old holder: not a loss.
        h.record_read(t0 + secs(39), t0 + secs(41), None);
        assert!(h.is_leader_at(t0 + secs(45)));
        h.record_read(t0 + secs(42), t0 + secs(43), None);
        assert!(!h.is_leader_at(t0 + secs(45)));
    }

    #[test]
    fn unreachable_counts_from_the_last_successful_read() {
        let t0 = Instant::now();
        let mut h = LeaseHealth::new(DEADLINE, t0);
        assert_eq!(h.unreachable_at(t0 + secs(10)), None);
        assert_eq!(h.unreachable_at(t0 + secs(11)), Some(secs(11)));
        h.record_read(t0 + secs(11), t0 + secs(11), None);
        assert_eq!(h.unreachable_at(t0 + secs(20)), None);
        assert_eq!(h.unreachable_at(t0 + secs(22)), Some(secs(11)));
    }

    #[test]
    fn next_deadline_is_just_past_the_earliest_expiry() {
        let t0 = Instant::now();
        let h = leader(t0, &[(3, Some(2))]);
        let next = h.next_deadline(t0 + secs(3)).unwrap();
        assert!(h.is_leader_at(next - Duration::from_millis(1)));
        assert!(!h.is_leader_at(next));
        // Then the contact runs out; after that nothing is pending (no busy wake-ups).
        let after = h.next_deadline(next).unwrap();
        assert!(h.unreachable_at(after - Duration::from_millis(1)).is_none());
        assert!(h.unreachable_at(after).is_some());
        assert_eq!(h.next_deadline(after), None);
        let standby = LeaseHealth::new(DEADLINE, t0);
        let next = standby.next_deadline(t0).unwrap();
        assert_eq!(
            standby.unreachable_at(next - Duration::from_millis(1)),
            None
        );
        assert!(standby.unreachable_at(next).is_some());
    }

    #[test]
    fn renewed_at_maps_the_wall_clock_renew_time() {
        let now = Instant::now() + secs(100);
        let wall = SystemTime::UNIX_EPOCH + secs(1_000_000);
        assert_eq!(renewed_at(now, wall, wall - secs(3)), now - secs(3));
        // A renew time in the future counts as now.
        assert_eq!(renewed_at(now, wall, wall + secs(3)), now);
    }

    const SILENT: Duration = Duration::from_secs(90);

    #[test]
    fn a_watch_is_stale_after_failing_or_falling_silent() {
        let t0 = Instant::now();
        let stale = |w: &WatchHealth, at: u64| w.stale_at(t0 + secs(at), DEADLINE, SILENT);
        let mut w = WatchHealth::new(t0);
        // (case, at, stale?)
        assert_eq!(stale(&w, 90), None, "quiet but within the silence limit");
        assert_eq!(
            stale(&w, 91).as_deref(),
            Some("no response, event or bookmark for 91.0s (limit 90.0s)"),
            "hung: nothing at all, not even a re-watch"
        );
        w.alive(t0 + secs(60));
        assert_eq!(stale(&w, 100), None, "a re-watch proves it alive");

        w.error(t0 + secs(100), "connection refused".into());
        w.error(t0 + secs(105), "connection refused".into());
        assert_eq!(stale(&w, 110), None, "a short failure is not stale");
        assert_eq!(
            stale(&w, 111).as_deref(),
            Some("failing for 11.0s: connection refused")
        );
        w.alive(t0 + secs(112));
        assert_eq!(stale(&w, 113), None, "recovered: a successful response");
        // A late, older sign of life does not move it back.
        w.alive(t0 + secs(1));
        assert_eq!(stale(&w, 200), None);
    }

    #[test]
    fn readiness_reasons() {
        let t0 = Instant::now();
        let board = |lease: LeaseHealth, synced: bool, watch: Option<WatchHealth>| Board {
            lease,
            synced,
            watches: watch
                .map(|w| ("deployments".to_owned(), w))
                .into_iter()
                .collect(),
            watch_failing_after: DEADLINE,
            watch_silent_after: SILENT,
        };
        let reachable_standby = {
            let mut h = LeaseHealth::new(DEADLINE, t0);
            h.record_read(t0 + secs(20), t0 + secs(20), None);
            h
        };
        let texts = |b: Board, at: u64| -> Vec<String> {
            b.not_ready_at(t0 + secs(at))
                .into_iter()
                .map(|r| r.text)
                .collect()
        };
        assert!(
            board(reachable_standby.clone(), true, None)
                .not_ready_at(t0 + secs(21))
                .is_empty(),
            "a standby that reaches the API server is ready"
        );
        assert_eq!(
            texts(board(reachable_standby.clone(), false, None), 21),
            vec!["watches not synced yet"]
        );

        let lost = leader(t0, &[(2, Some(2))]);
        let reasons = texts(board(lost.clone(), true, None), 20);
        assert_eq!(
            reasons,
            vec![
                "kubernetes API unreachable: no successful Lease read for 18.0s (renew deadline 10.0s)",
                "lost leadership: lease not renewed for 18.0s (renew deadline 10.0s): stopping writes",
            ]
        );

        let mut failing = WatchHealth::new(t0);
        failing.error(t0 + secs(5), "connection refused".into());
        let reasons = texts(board(reachable_standby, true, Some(failing)), 20);
        assert_eq!(
            reasons,
            vec!["watch deployments stale: failing for 15.0s: connection refused"]
        );

        // Keys stay put while the durations in the texts grow.
        let keys = |at: u64| -> Vec<String> {
            board(lost.clone(), true, None)
                .not_ready_at(t0 + secs(at))
                .into_iter()
                .map(|r| r.key)
                .collect()
        };
        assert_eq!(keys(20), vec!["api-unreachable", "lost-leadership"]);
        assert_eq!(keys(20), keys(30));
    }
}
