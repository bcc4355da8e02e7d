//! The scale-down delay: a sliding maximum over per-second values.

use std::collections::VecDeque;

/// Sliding maximum over the last `len` seconds, as a monotonic queue: O(1) amortized per
/// record, and at most one entry per second, so memory is bounded by the window length.
#[derive(Clone, Debug, Default)]
pub(crate) struct MaxWindow {
    /// (second, value), seconds increasing, values strictly decreasing.
    entries: VecDeque<(i64, u32)>,
}

impl MaxWindow {
    /// Records `value` at second `sec` (never earlier than a previous `sec`) and returns the
    /// maximum over seconds `sec - len + 1 ..= sec`.
    pub(crate) fn record(&mut self, sec: i64, value: u32, len: u64) -> u32 {
        let len = len.max(1) as i64;
        while self.entries.front().is_some_and(|&(s, _)| s <= sec - len) {
            self.entries.pop_front();
        }
        // An older entry no larger than `value` can never be the maximum again.
        while self.entries.back().is_some_and(|&(_, v)| v <= value) {
            self.entries.pop_back();
        }
        // A larger value already recorded for this same second dominates `value`.
        if self.entries.back().is_none_or(|&(s, _)| s != sec) {
            self.entries.push_back((sec, value));
        }
        self.entries.front().map_or(value, |&(_, v)| v)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_max_for_the_window() {
        let mut w = MaxWindow::default();
        assert_eq!(w.record(0, 5, 3), 5);
        assert_eq!(w.record(1, 2, 3), 5);
        assert_eq!(w.record(2, 1, 3), 5);
        // Second 0 left the window.
        assert_eq!(w.record(3, 1, 3), 2);
        assert_eq!(w.record(4, 1, 3), 1);
        assert_eq!(w.record(5, 7, 3), 7);
    }

    #[test]
    fn same_second_keeps_the_max_and_stays_bounded() {
        let mut w = MaxWindow::default();
        for v in (0..1000).rev() {
            assert_eq!(w.record(10, v, 5), 999);
        }
        assert_eq!(w.entries.len(), 1);
        for s in 11..1000 {
            w.record(s, (2000 - s) as u32, 5);
            assert!(w.entries.len() <= 5);
        }
    }

    #[test]
    fn matches_brute_force() {
        let mut w = MaxWindow::default();
        let mut hist: Vec<(i64, u32)> = Vec::new();
        let mut x: u64 = 7;
        let mut sec = 0i64;
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sec += ((x >> 60) % 3) as i64;
            let v = ((x >> 40) % 50) as u32;
            let got = w.record(sec, v, 7);
            hist.push((sec, v));
            let want = hist
                .iter()
                .filter(|&&(s, _)| s > sec - 7)
                .map(|&(_, v)| v)
                .max()
                .unwrap_or(0);
            assert_eq!(got, want);
        }
    }
}
