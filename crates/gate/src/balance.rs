//! Choosing a pod: least requests in flight among ready pods that have room.
//!
//! Pure and synchronous: the caller ([`crate::Gate`]) holds the model's lock.

/// What the balancer needs to know about one pod.
pub trait Slot {
    /// Ready and not terminating: may take new requests.
    fn eligible(&self) -> bool;
    /// Requests in flight to this pod.
    fn in_flight(&self) -> u32;
}

/// Index of the pod to use, or `None` when no eligible pod has room.
///
/// `limit` is the per-pod concurrency limit (0 = unlimited). Ties on in-flight count are broken
/// by scanning from `cursor` (which the caller rotates), so equal pods share load round-robin
/// instead of the first one taking every idle-time request.
pub fn pick<S: Slot>(pods: &[S], limit: u32, cursor: usize) -> Option<usize> {
    pick_by(pods.len(), limit, cursor, |i| {
        let p = &pods[i];
        p.eligible().then(|| p.in_flight())
    })
}

/// [`pick`] over `n` pods described by `in_flight(i)`: `None` for a pod that may not take
/// requests, else its requests in flight. For callers that keep their pods in another shape
/// (the simulator), so the rule stays in one place.
pub fn pick_by(
    n: usize,
    limit: u32,
    cursor: usize,
    in_flight: impl Fn(usize) -> Option<u32>,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut best: Option<(usize, u32)> = None;
    for k in 0..n {
        let i = (cursor + k) % n;
        let Some(f) = in_flight(i) else {
            continue;
        };
        if limit != 0 && f >= limit {
            continue;
        }
        if best.is_none_or(|(_, bf)| f < bf) {
            best = Some((i, f));
            if f == 0 {
                break;
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P(bool, u32);
    impl Slot for P {
        fn eligible(&self) -> bool {
            self.0
        }
        fn in_flight(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn picks_least_in_flight() {
        let pods = [P(true, 3), P(true, 1), P(true, 2)];
        assert_eq!(pick(&pods, 0, 0), Some(1));
        assert_eq!(pick(&pods, 0, 2), Some(1));
    }

    #[test]
    fn skips_ineligible_and_full() {
        let pods = [P(false, 0), P(true, 2), P(true, 1)];
        assert_eq!(pick(&pods, 2, 0), Some(2));
        let pods = [P(false, 0), P(true, 2), P(true, 2)];
        assert_eq!(pick(&pods, 2, 0), None);
        assert_eq!(pick(&pods, 0, 0), Some(1));
        assert_eq!(pick::<P>(&[], 0, 0), None);
    }

    #[test]
    fn ties_rotate_with_cursor() {
        let pods = [P(true, 0), P(true, 0), P(true, 0)];
        assert_eq!(pick(&pods, 1, 0), Some(0));
        assert_eq!(pick(&pods, 1, 1), Some(1));
        assert_eq!(pick(&pods, 1, 5), Some(2));
    }
}
