//! Keeping what the adaptive policy learned (each model's idle-gap histogram) across leader
//! failover and restarts: the pure part. [`crate::learned_store`] does the reading and writing.
//!
//! The histograms live in [`SHARDS`] ConfigMaps in the add-on's own namespace,
//! `zeroscale-learned-00` .. `zeroscale-learned-31`; a model's shard is a stable hash of its
//! namespace and name ([`shard_of`]), its data key `namespace.name` ([`storage_key`]), its value
//! [`zeroscale_scaling::idle::IdleHistogram::encode`]'s text. Why not an annotation on each
//! Deployment: at 10,000 models that is 10,000 writes per flush, each one a Deployment watch
//! event for every watcher (both binaries, kube-controller-manager, GitOps tools); 32 objects
//! in our own namespace bound the writes by the shard count, not the model count, and nobody
//! else watches them.
//!
//! Only the leader writes, each shard at most once per flush interval (the ConfigMap's
//! `learned-state-flush-interval`, 5 minutes: what a crash loses is at most that much learning,
//! a few gaps per model when gaps are minutes to hours) and only when its content changed
//! ([`Flusher`]); the shards' turns are spread evenly over the interval, so the API server sees
//! one small write every `interval / SHARDS` (9.4 s) at most, never a burst.
//! A shard is never written before it was read (a replica that could not read the stored state
//! must not overwrite it with less) nor while the Deployment watches re-list (a model not listed
//! yet would be dropped). A shard's data is kept under [`SHARD_BYTES_LIMIT`] by
//! [`shard_data`], dropping the models that learned least first.
//!
//! Every replica reads the shards at start and restores a model's histogram when its decider
//! is created (a standby decides too, so it keeps learning live and needs no second read when it
//! becomes leader). Pure: time is an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::DeploymentKey;

/// Number of shard ConfigMaps. Fixed, so the Role can name every one (`resourceNames`).
pub const SHARDS: usize = 32;

/// Name prefix of the shard ConfigMaps; the shard number follows, two digits.
pub const SHARD_PREFIX: &str = "zeroscale-learned-";

/// Most bytes of keys and values one shard holds: 3/4 of the API server's 1 MiB ConfigMap
/// limit, leaving room for metadata and server-side apply's `managedFields` (one entry per key).
pub const SHARD_BYTES_LIMIT: usize = 768 * 1024;

/// Longest ConfigMap data key.
const MAX_KEY: usize = 253;

/// The ConfigMap of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("{SHARD_PREFIX}{i:02}")
}

/// Every shard's ConfigMap name, in shard order (the Role's `resourceNames`).
pub fn shard_names() -> Vec<String> {
    (0..SHARDS).map(shard_name).collect()
}

/// FNV-1a, 64 bits: stable across builds and Rust versions (std's hasher is not promised to be).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The shard that holds `key`'s state.
pub fn shard_of(key: &DeploymentKey) -> usize {
    (fnv1a(&[key.namespace.as_bytes(), b"/", key.deployment.as_bytes()]) % SHARDS as u64) as usize
}

/// The data key of `key`'s state: `namespace.name` (a namespace has no dots, so the first dot
/// separates them). When that is longer than a ConfigMap key may be (a name near its 253-byte
/// limit), its first 236 bytes, `-` and 16 hex digits of its hash. Only ever computed from the
/// model, never parsed back.
pub fn storage_key(key: &DeploymentKey) -> String {
    let full = format!("{}.{}", key.namespace, key.deployment);
    if full.len() <= MAX_KEY {
        return full;
    }
    let h = fnv1a(&[full.as_bytes()]);
    format!("{}-{h:016x}", &full[..MAX_KEY - 17])
}

/// One model's state as a shard stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// [`storage_key`].
    pub key: String,
    /// Gaps the histogram holds (what is dropped first when a shard is full: the least).
    pub gaps: u32,
    /// The encoded histogram.
    pub value: String,
}

/// A shard's data from its models' states, kept under [`SHARD_BYTES_LIMIT`]: when it does not
/// fit, the states with the fewest gaps are left out. Returns the data and how many were left out.
pub fn shard_data(mut entries: Vec<Stored>) -> (BTreeMap<String, String>, usize) {
    let size = |e: &Stored| e.key.len() + e.value.len();
    let mut total: usize = entries.iter().map(size).sum();
    let mut dropped = 0;
    if total > SHARD_BYTES_LIMIT {
        // Most gaps first; ties by key, so the choice is deterministic.
        entries.sort_by(|a, b| b.gaps.cmp(&a.gaps).then_with(|| a.key.cmp(&b.key)));
        while total > SHARD_BYTES_LIMIT
            && let Some(e) = entries.pop()
        {
            total -= size(&e);
            dropped += 1;
        }
    }
    (
        entries.into_iter().map(|e| (e.key, e.value)).collect(),
        dropped,
    )
}

/// A digest of a shard's data: what "changed since the last write" compares.
pub fn digest(data: &BTreeMap<String, String>) -> u64 {
    let mut h = fnv1a(&[]);
    for (k, v) in data {
        h ^= fnv1a(&[k.as_bytes(), b"=", v.as_bytes(), b"\n"]);
        h = h.rotate_left(5).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Debug)]
struct Shard {
    /// The stored data was read (or found absent): the shard may be written.
    loaded: bool,
    /// The ConfigMap did not exist when read and this replica has not written it: an empty
    /// shard is not created (a fresh install gets no empty ConfigMaps).
    absent: bool,
    /// Digest of what this replica last wrote while leading (None: nothing yet).
    written: Option<u64>,
    /// Its next turn.
    due: Instant,
    /// The last write failed (its failure was logged; the next ones are not, until a success).
    failing: bool,
}

/// What to do with a shard whose turn it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Write it.
    Write,
    /// Its content is what was last written.
    Unchanged,
}

/// When each shard is written: the leader's flush schedule. Fed with the time, whether this
/// replica may write, whether the index is synced, and write results.
#[derive(Clone, Debug)]
pub struct Flusher {
    interval: Duration,
    shards: Vec<Shard>,
    leading: bool,
}

impl Flusher {
    /// A schedule with one turn per shard every `interval`, nothing loaded yet.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            shards: vec![
                Shard {
                    loaded: false,
                    absent: false,
                    written: None,
                    due: now,
                    failing: false,
                };
                SHARDS
            ],
            leading: false,
        }
    }

    /// Shard `i`'s stored data was read; `exists`: the ConfigMap exists.
    pub fn loaded(&mut self, i: usize, exists: bool) {
        if let Some(s) = self.shards.get_mut(i) {
            s.loaded = true;
            s.absent = !exists;
        }
    }

    /// A new flush interval (the ConfigMap changed): a shard's next turn comes no later than
    /// the new interval allows, spread as on becoming leader.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        if interval == self.interval {
            return;
        }
        self.interval = interval;
        let n = SHARDS as u32;
        for (i, s) in self.shards.iter_mut().enumerate() {
            s.due = s.due.min(now + interval * (i as u32 + 1) / n);
        }
    }

    /// Whether every shard was read.
    pub fn all_loaded(&self) -> bool {
        self.shards.iter().all(|s| s.loaded)
    }

    /// The shards whose turn it is at `now`. `leading`: this replica may write; `synced`: the
    /// index has listed every Deployment. On becoming leader every shard is written once more
    /// (another replica wrote meanwhile), the turns spread evenly over the next interval.
    pub fn due(&mut self, now: Instant, leading: bool, synced: bool) -> Vec<usize> {
        if leading && !self.leading {
            let n = SHARDS as u32;
            for (i, s) in self.shards.iter_mut().enumerate() {
                s.written = None;
                s.due = now + self.interval * (i as u32 + 1) / n;
            }
        }
        self.leading = leading;
        if !leading || !synced {
            return Vec::new();
        }
        (0..SHARDS)
            .filter(|&i| self.shards[i].loaded && self.shards[i].due <= now)
            .collect()
    }

    /// Shard `i`'s turn, its data now digesting to `digest`: write it or not. Either way its
    /// next turn is one interval later, so a shard is written at most once per interval, and a
    /// failed write is retried at the next turn.
    pub fn turn(&mut self, i: usize, digest: u64, now: Instant) -> Flush {
        let s = &mut self.shards[i];
        s.due = now + self.interval;
        if s.written == Some(digest) || (s.absent && digest == self::digest(&BTreeMap::new())) {
            Flush::Unchanged
        } else {
            Flush::Write
        }
    }

    /// The result of writing shard `i` with data digesting to `digest`. Returns true when the
    /// result should be logged: the first failure after a success, or the first success after
    /// failures (so an outage is one line per shard, not one per turn).
    pub fn written(&mut self, i: usize, digest: u64, ok: bool) -> bool {
        let s = &mut self.shards[i];
        let log = s.failing == ok;
        s.failing = !ok;
        if ok {
            s.written = Some(digest);
            s.absent = false;
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zeroscale_scaling::idle::IdleHistogram;

    use super::*;

    /// The default flush interval.
    const FLUSH_INTERVAL: Duration = Duration::from_secs(300);

    fn key(ns: &str, name: &str) -> DeploymentKey {
        DeploymentKey::new(ns.to_owned(), name.to_owned())
    }

    #[test]
    fn shard_names_and_keys_are_valid_configmap_names_and_keys() {
        let names = shard_names();
        assert_eq!(names.len(), SHARDS);
        assert_eq!(names[0], "zeroscale-learned-00");
        assert_eq!(names[31], "zeroscale-learned-31");
        assert_eq!(storage_key(&key("models", "llama-3")), "models.llama-3");
        let long = key(&"n".repeat(63), &format!("{}.x", "a".repeat(250)));
        let k = storage_key(&long);
        assert_eq!(k.len(), MAX_KEY);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        );
        // Two long names alike in their first 236 bytes still get two keys.
        let other = key(&"n".repeat(63), &format!("{}.y", "a".repeat(250)));
        assert_ne!(k, storage_key(&other));
    }

    #[test]
    fn shards_are_stable_and_even() {
        // Pinned: a new build must find what an old one stored.
        assert_eq!(
            shard_of(&key("models", "llama-3")),
            shard_of(&key("models", "llama-3"))
        );
        let pinned: Vec<usize> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| shard_of(&key("models", n)))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = [0usize; SHARDS];
        for i in 0..10_000 {
            counts[shard_of(&key(&format!("team-{}", i % 40), &format!("model-{i}")))] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 312.5 on average; a fair hash stays within a few standard deviations (~17).
        assert!(*min > 250 && *max < 380, "{counts:?}");
    }

    const PINNED: [usize; 4] = [23, 10, 29, 24];

    #[test]
    fn a_full_shard_leaves_out_the_models_that_learned_least() {
        let big = "x".repeat(SHARD_BYTES_LIMIT / 4);
        let entries: Vec<Stored> = (0..6)
            .map(|i| Stored {
                key: format!("ns.m{i}"),
                gaps: [50, 10, 900, 10, 300, 1][i],
                value: big.clone(),
            })
            .collect();
        let (data, dropped) = shard_data(entries);
        assert_eq!(dropped, 3);
        let kept: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(kept, ["ns.m0", "ns.m2", "ns.m4"]);
        let (data, dropped) = shard_data(vec![Stored {
            key: "ns.a".into(),
            gaps: 1,
            value: "v1 60000 0 1:1".into(),
        }]);
        assert_eq!((data.len(), dropped), (1, 0));
    }

    #[test]
    fn digests_differ_when_the_data_does() {
        let a: BTreeMap<String, String> = [("ns.a".to_owned(), "v1 60000 0 1:1".to_owned())].into();
        let mut b = a.clone();
        assert_eq!(digest(&a), digest(&b));
        b.insert("ns.b".into(), "v1 60000 0 2:1".into());
        assert_ne!(digest(&a), digest(&b));
        let c: BTreeMap<String, String> = [("ns.a".to_owned(), "v1 60000 0 1:2".to_owned())].into();
        assert_ne!(digest(&a), digest(&c));
        assert_ne!(digest(&a), digest(&BTreeMap::new()));
    }

    #[test]
    fn nothing_is_written_before_it_was_read_while_unsynced_or_by_a_standby() {
        let t0 = Instant::now();
        let mut f = Flusher::new(FLUSH_INTERVAL, t0);
        let later = t0 + FLUSH_INTERVAL * 2;
        assert!(f.due(later, true, true).is_empty(), "nothing loaded");
        for i in 0..SHARDS {
            f.loaded(i, true);
        }
        assert!(f.all_loaded());
        assert!(f.due(later, false, true).is_empty(), "a standby");
        assert!(f.due(later, true, false).is_empty(), "unsynced");
        // Leadership began at `later` (the previous call): every shard's turn within one interval.
        assert_eq!(f.due(later + FLUSH_INTERVAL, true, true).len(), SHARDS);
    }

    #[test]
    fn unchanged_shards_are_not_written_and_failures_are_retried_next_turn() {
        let t0 = Instant::now();
        let mut f = Flusher::new(FLUSH_INTERVAL, t0);
        f.loaded(3, true);
        assert!(f.due(t0, true, true).is_empty());
        let t1 = t0 + FLUSH_INTERVAL;
        assert_eq!(f.due(t1, true, true), [3]);
        assert_eq!(f.turn(3, 7, t1), Flush::Write);
        assert!(f.written(3, 7, false), "the first failure is logged");
        assert!(f.due(t1 + Duration::from_secs(1), true, true).is_empty());
        let t2 = t1 + FLUSH_INTERVAL;
        assert_eq!(f.due(t2, true, true), [3]);
        assert_eq!(f.turn(3, 7, t2), Flush::Write, "retried");
        assert!(!f.written(3, 7, false), "the second is not");
        let t3 = t2 + FLUSH_INTERVAL;
        assert_eq!(f.turn(3, 7, t3), Flush::Write);
        assert!(f.written(3, 7, true), "the recovery is");
        let t4 = t3 + FLUSH_INTERVAL;
        assert_eq!(f.turn(3, 7, t4), Flush::Unchanged);
        assert_eq!(f.turn(3, 8, t4 + FLUSH_INTERVAL), Flush::Write);
        // Leadership lost and regained: another replica may have written; written again.
        assert!(f.due(t4, false, true).is_empty());
        let t5 = t4 + FLUSH_INTERVAL * 3;
        f.due(t5, true, true);
        assert_eq!(f.turn(3, 7, t5 + FLUSH_INTERVAL), Flush::Write);
    }

    #[test]
    fn an_empty_shard_is_not_created_but_an_existing_one_is_emptied() {
        let t0 = Instant::now();
        let mut f = Flusher::new(FLUSH_INTERVAL, t0);
        f.loaded(0, false);
        f.loaded(1, true);
        f.due(t0, true, true);
        let empty = digest(&BTreeMap::new());
        let t1 = t0 + FLUSH_INTERVAL;
        assert_eq!(f.due(t1, true, true), [0, 1]);
        assert_eq!(
            f.turn(0, empty, t1),
            Flush::Unchanged,
            "absent and empty: not created"
        );
        assert_eq!(
            f.turn(1, empty, t1),
            Flush::Write,
            "exists: emptied (the last model left)"
        );
        let t2 = t1 + FLUSH_INTERVAL;
        assert_eq!(f.turn(0, 5, t2), Flush::Write, "something to hold: created");
        f.written(0, 5, true);
        assert_eq!(
            f.turn(0, empty, t2 + FLUSH_INTERVAL),
            Flush::Write,
            "created: now emptied"
        );
    }

    #[test]
    fn a_shorter_interval_brings_the_turns_forward_a_longer_one_spaces_them() {
        let t0 = Instant::now();
        let mut f = Flusher::new(FLUSH_INTERVAL, t0);
        (0..SHARDS).for_each(|i| f.loaded(i, true));
        f.due(t0, true, true);
        let ten = Duration::from_secs(10);
        f.set_interval(ten, t0);
        assert_eq!(f.due(t0 + ten, true, true).len(), SHARDS);
        for i in 0..SHARDS {
            f.turn(i, 1, t0 + ten);
        }
        f.set_interval(FLUSH_INTERVAL, t0 + ten);
        // The turn already set keeps its (short) interval; the ones after it are spaced by
        // the new one.
        assert_eq!(f.due(t0 + ten * 2, true, true).len(), SHARDS);
        for i in 0..SHARDS {
            f.turn(i, 2, t0 + ten * 2);
        }
        assert!(f.due(t0 + ten * 3, true, true).is_empty());
        assert_eq!(
            f.due(t0 + ten * 2 + FLUSH_INTERVAL, true, true).len(),
            SHARDS
        );
    }

    /// The write rate at 10,000 models, measured over the pure flush logic: one simulated
    /// hour, a tick a second, the leader flushing what the index holds, and every second
    /// 100 models learning a gap (so nearly every shard changes between turns).
    #[test]
    fn write_rate_at_10000_models() {
        const MODELS: usize = 10_000;
        const SECS: u64 = 3600;
        let keys: Vec<DeploymentKey> = (0..MODELS)
            .map(|i| key(&format!("team-{}", i % 40), &format!("model-{i}")))
            .collect();
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, k) in keys.iter().enumerate() {
            by_shard[shard_of(k)].push(i);
        }
        let mut learned = vec![0u32; MODELS];
        let t0 = Instant::now();
        let mut f = Flusher::new(FLUSH_INTERVAL, t0);
        for i in 0..SHARDS {
            f.loaded(i, true);
        }
        let mut writes = 0usize;
        let mut last_write: HashMap<usize, Instant> = HashMap::new();
        let mut model_writes = vec![0u32; MODELS];
        let mut rng: u64 = 42;
        for s in 0..SECS {
            let now = t0 + Duration::from_secs(s);
            for _ in 0..100 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                learned[(rng >> 33) as usize % MODELS] += 1;
            }
            for shard in f.due(now, true, true) {
                let data: BTreeMap<String, String> = by_shard[shard]
                    .iter()
                    .map(|&m| (storage_key(&keys[m]), learned[m].to_string()))
                    .collect();
                let d = digest(&data);
                if f.turn(shard, d, now) == Flush::Write {
                    writes += 1;
                    if let Some(prev) = last_write.insert(shard, now) {
                        assert!(now - prev >= FLUSH_INTERVAL, "shard {shard} twice too soon");
                    }
                    for &m in &by_shard[shard] {
                        model_writes[m] += 1;
                    }
                    f.written(shard, d, true);
                }
            }
        }
        let per_second = writes as f64 / SECS as f64;
        eprintln!(
            "{MODELS} models, {SECS} s: {writes} shard writes ({per_second:.3}/s, {:.1}/min); \
             each model written at most {} times an hour",
            per_second * 60.0,
            model_writes.iter().max().unwrap()
        );
        // One turn per shard per interval: 12 an hour, the first within the first interval.
        assert!(writes <= SHARDS * (SECS / FLUSH_INTERVAL.as_secs()) as usize);
        assert!(
            writes >= SHARDS * 11,
            "the changing shards were written: {writes}"
        );
        assert!(*model_writes.iter().max().unwrap() <= 12);
    }

    /// The size bound, measured: 10,000 models each holding the longest histogram the decider
    /// can learn (every one of the 240 bins used, counts just under the decay point, the widest
    /// bin width) under a 65-byte key still fit every shard.
    #[test]
    fn worst_case_shard_size_at_10000_models() {
        let range = Duration::from_secs(24 * 3600);
        let mut h = IdleHistogram::new(range);
        let bin = h.bin();
        // 84 bins of 10 (the three-digit bins) and 156 of 1: 996 gaps, below the decay at 1000.
        for b in 0..240u32 {
            let n = if b >= 156 { 10 } else { 1 };
            for _ in 0..n {
                h.add(bin * b + bin / 2);
            }
        }
        assert_eq!(h.gaps(), 996);
        let value = h.encode();
        let worst_value = value.len();
        let keys: Vec<DeploymentKey> = (0..10_000)
            .map(|i| key(&format!("team-{:026}", i % 40), &format!("model-{i:027}")))
            .collect();
        let mut bytes = [0usize; SHARDS];
        let mut counts = [0usize; SHARDS];
        for k in &keys {
            let s = shard_of(k);
            bytes[s] += storage_key(k).len() + worst_value;
            counts[s] += 1;
        }
        let max = *bytes.iter().max().unwrap();
        eprintln!(
            "worst-case value {worst_value} B, key {} B; fullest shard: {} models, {max} B \
             (limit {SHARD_BYTES_LIMIT})",
            storage_key(&keys[0]).len(),
            counts.iter().max().unwrap()
        );
        assert!(worst_value < 1500, "{worst_value}");
        assert!(max < SHARD_BYTES_LIMIT);
    }
}
