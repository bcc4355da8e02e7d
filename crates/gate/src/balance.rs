//! Choosing a pod: least requests in flight among ready pods that have room, or, for requests
//! with a prompt prefix, the pod that prefix hashes to while it stays within a bound on load.
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

/// How a model's requests are spread over its pods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Balance {
    /// Least requests in flight ([`pick`]).
    LeastRequest,
    /// Requests sharing a prompt prefix go to the same pod while it is within `load_factor`
    /// times the mean load ([`pick_keyed_by`]); requests without a prefix, least-request.
    PrefixHash {
        /// How many characters of the prompt make the prefix.
        prefix_chars: u32,
        /// The bound `c`: no pod takes a request that would put it above `c` times the mean.
        load_factor: f64,
    },
}

/// The default bound of prefix-hash balancing: 25% above the mean, as in Mirrokni, Thorup and
/// Zadimoghaddam's consistent hashing with bounded loads.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// The most requests a pod may hold, this one included, under the bound `c` when `total`
/// requests (this one included) are spread over `n` pods: `ceil(c * total / n)`.
pub fn load_cap(load_factor: f64, total: u64, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    // The smallest cap is 1: one request always fits on an idle pod.
    ((load_factor * total as f64 / n as f64).ceil() as u64).max(1)
}

/// Index of the pod for a request with prefix `key`: the pod ranked highest for the key
/// (rendezvous order, [`rank`]) among those with room and below [`load_cap`] after taking it.
/// `pod(i)` is `None` for a pod that may not take requests, else its (requests in flight,
/// [`pod_hash`]). `None` exactly when [`pick_by`] finds no pod: the least-loaded pod with room
/// is always below the cap, so the bound never refuses a request that has somewhere to go.
///
/// Rendezvous order rather than a ring: each key ranks every pod, so a pod joining takes only
/// the keys it now ranks first for and a pod leaving hands on only its own, with no virtual
/// nodes to tune; the per-request cost is one hash per pod.
pub fn pick_keyed_by(
    n: usize,
    limit: u32,
    key: u64,
    load_factor: f64,
    pod: impl Fn(usize) -> Option<(u32, u64)>,
) -> Option<usize> {
    let (mut total, mut eligible) = (1u64, 0usize);
    for i in 0..n {
        if let Some((f, _)) = pod(i) {
            total += u64::from(f);
            eligible += 1;
        }
    }
    let cap = load_cap(load_factor, total, eligible);
    let mut best: Option<(usize, u64)> = None;
    for i in 0..n {
        let Some((f, h)) = pod(i) else { continue };
        if (limit != 0 && f >= limit) || u64::from(f) + 1 > cap {
            continue;
        }
        let r = rank(key, h);
        if best.is_none_or(|(_, br)| r > br) {
            best = Some((i, r));
        }
    }
    best.map(|(i, _)| i)
}

/// A pod's identity for [`rank`]: stable across activators and restarts (a hash of its address),
/// so every activator replica sends a prefix to the same pod.
pub fn pod_hash(addr: std::net::SocketAddr) -> u64 {
    let mut h = Fnv::new();
    match addr.ip() {
        std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    h.finish()
}

/// How much pod `pod` (a [`pod_hash`]) is wanted for prefix `key`; higher is preferred.
pub fn rank(key: u64, pod: u64) -> u64 {
    // splitmix64's finaliser over both: a good mix, so ranks of one key are independent.
    let mut z = key ^ pod.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of a prompt prefix: the first `chars` characters of the text fed to it, in pieces
/// (the contents of the messages, one after another), hashed (FNV-1a, 64 bits) as they come.
#[derive(Clone, Debug)]
pub struct PrefixKey {
    hash: Fnv,
    left: u32,
    fed: bool,
}

impl PrefixKey {
    /// A key over the first `chars` characters.
    pub fn new(chars: u32) -> Self {
        Self {
            hash: Fnv::new(),
            left: chars,
            fed: false,
        }
    }

    /// Feeds the next piece of text; false once the prefix is complete (feed no more).
    pub fn feed(&mut self, text: &str) -> bool {
        if self.left == 0 {
            return false;
        }
        let end = match text.char_indices().nth(self.left as usize) {
            Some((at, _)) => {
                self.left = 0;
                at
            }
            None => {
                self.left -= text.chars().count() as u32;
                text.len()
            }
        };
        self.fed |= end > 0;
        self.hash.write(&text.as_bytes()[..end]);
        self.left > 0
    }

    /// The key; `None` when no text was fed (the request has no prompt).
    pub fn finish(&self) -> Option<u64> {
        self.fed.then(|| self.hash.finish())
    }
}

/// FNV-1a, 64 bits: fixed, so every activator computes the same keys.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
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

#[cfg(test)]
mod keyed {
    use super::*;
    use proptest::prelude::*;

    fn loads_and_hashes() -> impl Strategy<Value = Vec<Option<(u32, u64)>>> {
        proptest::collection::vec(
            proptest::option::weighted(0.85, (0u32..40, any::<u64>())),
            0..12,
        )
    }

    proptest! {
        /// The bound: the pod chosen holds at most ceil(c x the mean) with the request, and
        /// the bound never refuses a request the least-request rule would place.
        #[test]
        fn chosen_pod_is_within_the_bound(
            pods in loads_and_hashes(),
            key in any::<u64>(),
            limit in 0u32..45,
            c in 1.0f64..3.0,
        ) {
            let got = pick_keyed_by(pods.len(), limit, key, c, |i| pods[i]);
            let least = pick_by(pods.len(), limit, 0, |i| pods[i].map(|p| p.0));
            prop_assert_eq!(got.is_some(), least.is_some());
            if let Some(i) = got {
                let (f, _) = pods[i].expect("an eligible pod");
                let total = 1 + pods.iter().flatten().map(|p| u64::from(p.0)).sum::<u64>();
                let n = pods.iter().flatten().count();
                prop_assert!(u64::from(f) < load_cap(c, total, n), "above the cap");
                prop_assert!(limit == 0 || f < limit);
            }
        }

        /// A hot prefix: every request has the same key and none finishes; at every step no
        /// pod holds more than ceil(c x the mean), and the prefix's first pod takes requests
        /// until it reaches the bound.
        #[test]
        fn a_hot_prefix_spreads_at_the_bound(
            hashes in proptest::collection::hash_set(any::<u64>(), 1..8),
            key in any::<u64>(),
            requests in 1usize..200,
            c in 1.0f64..2.0,
        ) {
            let hashes: Vec<u64> = hashes.into_iter().collect();
            let mut load = vec![0u32; hashes.len()];
            let first = (0..hashes.len()).max_by_key(|&i| rank(key, hashes[i])).unwrap();
            for r in 1..=requests as u64 {
                let i = pick_keyed_by(load.len(), 0, key, c, |i| Some((load[i], hashes[i])))
                    .expect("no limit: always a pod");
                let cap = load_cap(c, r, load.len());
                if u64::from(load[first]) < cap {
                    prop_assert_eq!(i, first, "the first pod had room under the bound");
                }
                load[i] += 1;
                prop_assert!(load.iter().all(|&l| u64::from(l) <= cap));
            }
        }

        /// Stability: at equal loads, a pod joining takes only keys that now go to it, and a
        /// pod leaving moves only the keys that went to it.
        #[test]
        fn joining_and_leaving_move_only_their_share(
            hashes in proptest::collection::hash_set(any::<u64>(), 2..10),
            keys in proptest::collection::vec(any::<u64>(), 1..200),
        ) {
            let hashes: Vec<u64> = hashes.into_iter().collect();
            let (old, joined) = hashes.split_at(hashes.len() - 1);
            let joined = joined[0];
            let pick = |pods: &[u64], key| {
                pick_keyed_by(pods.len(), 0, key, DEFAULT_LOAD_FACTOR, |i| Some((0, pods[i])))
                    .map(|i| pods[i])
                    .expect("pods")
            };
            for &key in &keys {
                let before = pick(old, key);
                let after = pick(&hashes, key);
                // Read forwards, `joined` joins; backwards (`hashes` to `old`), it leaves and
                // only its own keys move.
                prop_assert!(after == before || after == joined, "a key moved between old pods");
            }
        }
    }

    #[test]
    fn a_prefix_key_is_its_first_characters() {
        let key = |pieces: &[&str], n| {
            let mut k = PrefixKey::new(n);
            for p in pieces {
                if !k.feed(p) {
                    break;
                }
            }
            k.finish()
        };
        assert_eq!(key(&["hello world"], 5), key(&["hello there"], 5));
        assert_ne!(key(&["hello world"], 7), key(&["hello there"], 7));
        // Pieces count as one text; characters, not bytes.
        assert_eq!(key(&["he", "llo!"], 5), key(&["hello?"], 5));
        assert_eq!(key(&["héllo"], 2), key(&["hé"], 10));
        assert_ne!(key(&["héllo"], 2), key(&["h"], 10));
        assert_eq!(key(&[], 5), None);
        assert_eq!(key(&[""], 5), None);
        assert!(key(&["a"], 5).is_some());
    }

    #[test]
    fn the_cap_counts_the_request() {
        assert_eq!(load_cap(1.25, 1, 4), 1);
        assert_eq!(load_cap(1.25, 8, 4), 3); // ceil(2.5)
        assert_eq!(load_cap(1.0, 8, 4), 2);
        assert_eq!(load_cap(1.25, 5, 0), 0);
    }
}
