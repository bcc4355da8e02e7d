//! Capacity pools in the autoscaler: the index's pooled Deployments, as decided each tick,
//! go through [`zeroscale_pool::decide`] before any intent is handed out. Pure like the index
//! (time is an argument); the bookkeeping the pool rules need across ticks (when a model woke,
//! when it was last used, since when a wake waits, what a patch in flight will set) lives in
//! [`Book`].
//!
//! # Who admits
//! Admission is a rule over the sum of several Deployments' replicas, and the API server has
//! no transaction over several objects: a `resourceVersion` precondition protects one
//! Deployment, never a sum. Two replicas each seeing one free slot would each fill it. So
//! pooled Deployments are written by one writer only, the leader, from its index: the wake API
//! never patches a pooled Deployment itself (any replica answers `202` and, on the leader,
//! asks the control loop to decide at once); a standby's wake reaches the leader as the
//! activators' queued count in its next scrape (at most a scrape interval and a tick later).
//! A new leader starts with every running model resident from its first tick, so nothing is
//! evicted within `pool-min-residency` of a failover. Deployments outside any pool keep the
//! any-replica 0 -> N wake.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use zeroscale_config::{GlobalConfig, PoolCapacity, format_duration, replica_units};
use zeroscale_pool::{Member, Policy};
use zeroscale_scaling::Decision;

use crate::DeploymentKey;

/// One container's requests and limits, as written (`nvidia.com/gpu` -> `"2"`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerResources {
    /// `resources.requests`.
    pub requests: BTreeMap<String, String>,
    /// `resources.limits`.
    pub limits: BTreeMap<String, String>,
}

/// A pod template's resources: what one replica of a Deployment counts in a resource pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodResources {
    /// `spec.containers`.
    pub containers: Vec<ContainerResources>,
    /// `spec.initContainers`.
    pub init_containers: Vec<ContainerResources>,
}

fn container(c: &Container) -> ContainerResources {
    let list =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
                .unwrap_or_default()
        };
    let r = c.resources.as_ref();
    ContainerResources {
        requests: list(r.and_then(|r| r.requests.as_ref())),
        limits: list(r.and_then(|r| r.limits.as_ref())),
    }
}

impl PodResources {
    /// The resources of a Deployment's pod template.
    pub fn from_template(template: &PodTemplateSpec) -> Self {
        let Some(spec) = template.spec.as_ref() else {
            return Self::default();
        };
        Self {
            containers: spec.containers.iter().map(container).collect(),
            init_containers: spec
                .init_containers
                .iter()
                .flatten()
                .map(container)
                .collect(),
        }
    }

    /// What one replica counts in `pool` (thousandths, [`replica_units`]).
    pub fn units(&self, pool: &PoolCapacity) -> Result<u64, String> {
        let of = |cs: &[ContainerResources]| -> Vec<(Option<String>, Option<String>)> {
            let r = pool.resource.as_deref().unwrap_or_default();
            cs.iter()
                .map(|c| (c.requests.get(r).cloned(), c.limits.get(r).cloned()))
                .collect()
        };
        let (main, init) = (of(&self.containers), of(&self.init_containers));
        replica_units(
            pool,
            main.iter().map(|(a, b)| (a.as_deref(), b.as_deref())),
            init.iter().map(|(a, b)| (a.as_deref(), b.as_deref())),
        )
    }
}

/// Why a pooled intent differs from what the model's own decision wanted.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolNote {
    /// Scaled to zero to make room for `for_model`.
    Evicted {
        /// The pool.
        pool: String,
        /// The model the room is for.
        for_model: DeploymentKey,
        /// How long the evicted model had been idle.
        idle_for: Duration,
    },
    /// Granted fewer replicas than wanted: the pool had no more room.
    Limited {
        /// The pool.
        pool: String,
        /// What the decision wanted.
        wanted: u32,
    },
}

/// The Event note of an eviction on the evicted Deployment.
pub fn evicted_message(from: u32, pool: &str, for_model: &DeploymentKey, idle: Duration) -> String {
    format!(
        "Scaled {from} -> 0 to make room for {for_model} in pool {pool} (idle {}, least recently used)",
        format_duration(Duration::from_secs(idle.as_secs()))
    )
}

/// The Event note of an eviction on the Deployment the room is made for.
pub fn room_made_message(evicted: &DeploymentKey, pool: &str, idle: Duration) -> String {
    format!(
        "{evicted} scaled to 0 to make room for this Deployment in pool {pool} (idle {}, least recently used)",
        format_duration(Duration::from_secs(idle.as_secs()))
    )
}

/// The Event note when a wake has to wait for room.
pub fn waiting_message(report: &PoolReport) -> String {
    format!(
        "Waiting for room in pool {}: {} of {} held by models that are busy or woke less than pool-min-residency ago; served first when room frees",
        report.pool,
        report
            .capacity
            .show(report.used_milli + report.granted_milli),
        report.capacity,
    )
}

/// A pooled Deployment as decided this tick, before admission.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The Deployment.
    pub key: DeploymentKey,
    /// Its pool (configured).
    pub pool: String,
    /// `spec.replicas`.
    pub spec: u32,
    /// Its own decision; `None` for a Deployment zeroscale does not decide (an HPA scales it),
    /// whose replicas still hold their room.
    pub decision: Option<Decision>,
    /// Requests in flight or queued, traffic within the panic window, or data not fresh.
    pub busy: bool,
    /// Requests in flight or queued now (a wake signal counts as queued): new demand, which
    /// is what brings an evicted model back.
    pub demand: bool,
    /// min-scale above zero: never evicted.
    pub pinned: bool,
    /// A scale change handed out earlier is not finished.
    pub pending: bool,
    /// What one replica counts (thousandths; an unreadable quantity counts as the whole pool,
    /// so it is never admitted on a guess).
    pub per_replica: u64,
}

/// An intent the pools hand out: who, to what, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolIntent {
    /// The Deployment.
    pub key: DeploymentKey,
    /// `spec.replicas` now.
    pub from: u32,
    /// The count to set.
    pub to: u32,
    /// Set when this is not simply the model's own decision.
    pub note: Option<PoolNote>,
}

/// One pool after a tick, for metrics and Events.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolReport {
    /// The pool's name.
    pub pool: String,
    /// Its capacity.
    pub capacity: PoolCapacity,
    /// Held now (thousandths).
    pub used_milli: u64,
    /// Granted this tick to wakes and scale-ups (thousandths), on top of `used_milli`.
    pub granted_milli: u64,
    /// Wakes waiting for room, in service order.
    pub waiting: Vec<DeploymentKey>,
    /// Of those, the ones that started waiting this tick (told once, by an Event).
    pub newly_waiting: Vec<DeploymentKey>,
}

#[derive(Clone, Debug)]
struct Track {
    last_used: Instant,
    resident_since: Instant,
    waiting_since: Option<Instant>,
    /// The count a patch handed out by the pools will set.
    pending_to: Option<u32>,
    /// Scaled to zero by an eviction and not asked for since. Its own decider may still want
    /// a replica (the requests it served are still in its stable window, and its grace period
    /// has not run out), but that load was served; only new demand brings it back. Without
    /// this, an evicted model would count as a waiting wake at once and evict another in turn,
    /// and the pool would cycle through its idle models every `pool-min-residency`.
    evicted: bool,
}

/// What the pools remember across ticks, per pooled Deployment.
#[derive(Debug, Default)]
pub struct Book {
    tracks: HashMap<DeploymentKey, Track>,
}

impl Book {
    /// Forgets Deployments that are no longer pooled.
    pub fn retain(&mut self, keep: impl Fn(&DeploymentKey) -> bool) {
        self.tracks.retain(|k, _| keep(k));
    }

    /// Decides every pool for this tick's candidates: the intents that fit, and a report per
    /// configured pool.
    pub fn admit(
        &mut self,
        candidates: Vec<Candidate>,
        global: &GlobalConfig,
        now: Instant,
    ) -> (Vec<PoolIntent>, Vec<PoolReport>) {
        let mut by_pool: BTreeMap<&str, Vec<&Candidate>> = global
            .pools
            .keys()
            .map(|p| (p.as_str(), Vec::new()))
            .collect();
        for c in &candidates {
            if let Some(members) = by_pool.get_mut(c.pool.as_str()) {
                members.push(c);
            }
        }
        let mut intents = Vec::new();
        let mut reports = Vec::new();
        for (pool, members) in by_pool {
            let capacity = &global.pools[pool];
            let policy = Policy {
                capacity: capacity.capacity_milli,
                min_residency: global.pool_min_residency,
            };
            let mut newly_waiting = Vec::new();
            let view: Vec<Member<DeploymentKey>> = members
                .iter()
                .map(|c| {
                    let t = self.tracks.entry(c.key.clone()).or_insert(Track {
                        last_used: now,
                        resident_since: now,
                        waiting_since: None,
                        pending_to: None,
                        evicted: false,
                    });
                    if !c.pending {
                        t.pending_to = None;
                    }
                    if c.busy {
                        t.last_used = now;
                    }
                    if c.demand || c.spec > 0 && t.pending_to.is_none() && !c.pending {
                        // Asked for again, or running again (another writer, a manual scale).
                        t.evicted = false;
                    }
                    let (current, desired, releasing) = match t.pending_to {
                        Some(to) => (c.spec.max(to), to, c.spec.saturating_sub(to)),
                        // Another writer's change in flight: hold what is there.
                        None if c.pending => (c.spec, c.spec, 0),
                        None => match &c.decision {
                            Some(_) if t.evicted => (c.spec, 0, 0),
                            Some(d) => (c.spec, d.desired, 0),
                            None => (c.spec, c.spec, 0),
                        },
                    };
                    if c.spec == 0 {
                        // Resident again from the moment it is asked to run.
                        t.resident_since = now;
                    }
                    if current == 0 && desired > 0 {
                        if t.waiting_since.is_none() {
                            t.waiting_since = Some(now);
                            newly_waiting.push(c.key.clone());
                        }
                    } else {
                        t.waiting_since = None;
                    }
                    Member {
                        key: c.key.clone(),
                        current,
                        desired,
                        releasing,
                        per_replica: c.per_replica,
                        busy: c.busy,
                        pinned: c.pinned,
                        last_used: t.last_used,
                        resident_since: t.resident_since,
                        waiting_since: t.waiting_since,
                    }
                })
                .collect();
            let plan = zeroscale_pool::decide(&view, &policy, now);
            let by_key: HashMap<&DeploymentKey, &Candidate> =
                members.iter().map(|c| (&c.key, *c)).collect();
            for (key, to) in &plan.targets {
                let c = by_key[key];
                let Some(decision) = c.decision.as_ref().filter(|_| !c.pending) else {
                    continue;
                };
                let note = (*to < decision.desired && *to > c.spec).then(|| PoolNote::Limited {
                    pool: pool.to_owned(),
                    wanted: decision.desired,
                });
                intents.push(PoolIntent {
                    key: key.clone(),
                    from: c.spec,
                    to: *to,
                    note,
                });
            }
            for e in &plan.evictions {
                let c = by_key[&e.key];
                if c.pending || c.decision.is_none() {
                    continue;
                }
                intents.push(PoolIntent {
                    key: e.key.clone(),
                    from: c.spec,
                    to: 0,
                    note: Some(PoolNote::Evicted {
                        pool: pool.to_owned(),
                        for_model: e.for_model.clone(),
                        idle_for: e.idle_for,
                    }),
                });
            }
            for i in &intents {
                if let Some(t) = self.tracks.get_mut(&i.key) {
                    t.pending_to = Some(i.to);
                    if matches!(i.note, Some(PoolNote::Evicted { .. })) {
                        t.evicted = true;
                    }
                }
            }
            // A wake told only when it has to wait for room: one an eviction makes room for in
            // this tick is told by that eviction's Event instead.
            newly_waiting.retain(|k| {
                plan.waiting.contains(k) && !plan.evictions.iter().any(|e| &e.for_model == k)
            });
            reports.push(PoolReport {
                pool: pool.to_owned(),
                capacity: capacity.clone(),
                used_milli: plan.used,
                granted_milli: plan.granted,
                waiting: plan.waiting,
                newly_waiting,
            });
        }
        (intents, reports)
    }
}

/// Labels of per-pool series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name.
    pub pool: String,
}

/// Per-pool metrics (`zeroscale_autoscaler_pool_*`).
#[derive(Debug, Default)]
pub struct PoolMetrics {
    /// Capacity, in the pool's unit (replicas, or the resource's units; fractions rounded down).
    pub capacity: Family<PoolLabels, Gauge>,
    /// Held now: replicas asked for (Pending included) times what one counts.
    pub used: Family<PoolLabels, Gauge>,
    /// Wakes waiting for room.
    pub waiting: Family<PoolLabels, Gauge>,
    /// Models scaled to zero to make room.
    pub evictions: Family<PoolLabels, Counter>,
    /// Pools reported by the last tick, to drop the series of a pool that is removed.
    seen: std::sync::Mutex<Vec<PoolLabels>>,
}

impl PoolMetrics {
    /// Registers the pool series into `registry` (already prefixed `zeroscale_autoscaler`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pool_capacity",
            "Capacity of each pool, in replicas or units of its resource",
            self.capacity.clone(),
        );
        registry.register(
            "pool_used",
            "Held in each pool: replicas asked for (Pending pods included) times what one counts",
            self.used.clone(),
        );
        registry.register(
            "pool_waiting_wakes",
            "Wakes waiting for room in each pool",
            self.waiting.clone(),
        );
        registry.register(
            "pool_evictions",
            "Idle models scaled to zero to make room in each pool",
            self.evictions.clone(),
        );
    }

    /// Records one tick's reports; pools no longer configured are dropped.
    pub fn observe(&self, reports: &[PoolReport]) {
        let whole = |milli: u64| i64::try_from(milli / zeroscale_config::MILLI).unwrap_or(i64::MAX);
        let known: Vec<PoolLabels> = reports
            .iter()
            .map(|r| PoolLabels {
                pool: r.pool.clone(),
            })
            .collect();
        for (r, labels) in reports.iter().zip(&known) {
            self.capacity
                .get_or_create(labels)
                .set(whole(r.capacity.capacity_milli));
            self.used.get_or_create(labels).set(whole(r.used_milli));
            self.waiting
                .get_or_create(labels)
                .set(r.waiting.len() as i64);
            drop(self.evictions.get_or_create(labels));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for gone in seen.iter().filter(|l| !known.contains(l)) {
            for family in [&self.capacity, &self.used, &self.waiting] {
                family.remove(gone);
            }
        }
        *seen = known;
    }

    /// Counts an applied eviction.
    pub fn evicted(&self, pool: &str) {
        self.evictions
            .get_or_create(&PoolLabels {
                pool: pool.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::index::{DeploymentView, Index, ScaleIntent, Source};
    use crate::scrape::{ModelSample, Round};

    const MODELS: [&str; 3] = ["a", "b", "c"];

    /// An index with a pool and every source listed; models found at start-up (no
    /// initial-scale), all at zero.
    struct Sim {
        index: Index,
        now: Instant,
        spec: HashMap<&'static str, u32>,
        resources: PodResources,
        capacity_replicas: u32,
        per_replica: u32,
        log: Vec<ScaleIntent>,
        reports: Vec<PoolReport>,
        /// Rounds carry the demand figures (as today's activators send them): each request in
        /// flight or queued arrived this second and one in flight was served in 50 ms.
        demand: bool,
    }

    fn key(name: &str) -> DeploymentKey {
        DeploymentKey::new("models", name)
    }

    /// Each intent's Deployment and target replicas, in order.
    fn moves(intents: &[ScaleIntent]) -> Vec<(DeploymentKey, u32)> {
        intents.iter().map(|i| (i.key.clone(), i.to)).collect()
    }

    impl Sim {
        fn new(pools: &str, extra: &[(&str, &str)], resources: PodResources) -> Self {
            Self::with_config(pools, extra, resources, &[])
        }

        /// [`Sim::new`] with ConfigMap keys set over its defaults.
        fn with_config(
            pools: &str,
            extra: &[(&str, &str)],
            resources: PodResources,
            keys: &[(&str, &str)],
        ) -> Self {
            let mut index = Index::default();
            let mut cm: BTreeMap<String, String> = [
                ("stable-window", "6s"),
                ("panic-window-percentage", "50"),
                // Long enough that idle models stay unless evicted.
                ("scale-to-zero-grace-period", "10m"),
                ("pool-min-residency", "10s"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            cm.insert("pools".into(), pools.into());
            for (k, v) in keys {
                cm.insert((*k).to_owned(), (*v).to_owned());
            }
            assert!(index.apply_configmap(Some(&cm)).is_empty());
            let now = Instant::now();
            let mut sim = Sim {
                index,
                now,
                spec: HashMap::new(),
                resources,
                capacity_replicas: 0,
                per_replica: 1,
                log: Vec::new(),
                reports: Vec::new(),
                demand: false,
            };
            for s in [Source::ConfigMap, Source::Hpas(None)] {
                sim.index.begin_relist(s.clone());
                sim.index.end_relist(&s);
            }
            sim.index.begin_relist(Source::Deployments(None));
            for name in MODELS {
                sim.set(name, 0, 0, extra);
            }
            sim.index.end_relist(&Source::Deployments(None));
            sim
        }

        fn set(&mut self, name: &'static str, spec: u32, ready: u32, extra: &[(&str, &str)]) {
            let mut annotations: BTreeMap<String, String> = [
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/pool", "small"),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            if name == "outside" {
                annotations.remove("zeroscale.dev/pool");
            }
            self.spec.insert(name, spec);
            let notices = self.index.apply_deployment(
                DeploymentView {
                    key: key(name),
                    annotations,
                    spec_replicas: spec,
                    ready_replicas: ready,
                    resources: self.resources.clone(),
                },
                self.now,
            );
            assert!(notices.is_empty(), "{notices:?}");
        }

        /// One second: a complete scrape round with `load` (model, in flight, queued), a
        /// tick, and every intent applied (pods Ready at once) unless `fail`.
        fn second(&mut self, load: &[(&str, u64, u64)], fail: bool) -> Vec<ScaleIntent> {
            self.now += Duration::from_secs(1);
            let models = load
                .iter()
                .map(|(name, in_flight, queued)| {
                    let (f, q) = (*in_flight as f64, *queued as f64);
                    let sample = ModelSample {
                        concurrency: f + q,
                        in_flight: *in_flight,
                        queued: *queued,
                        demand: zeroscale_scaling::Demand {
                            arrivals: f + q,
                            in_service: f,
                            served: f,
                            service_seconds: 0.05 * f,
                        },
                        ..Default::default()
                    };
                    (key(name), sample)
                })
                .collect();
            self.index.record_round(&Round {
                at: self.now,
                complete: true,
                models,
                failures: Vec::new(),
                demand: self.demand,
            });
            let out = self.index.tick(self.now);
            self.reports = out.pools.clone();
            for i in &out.intents {
                let name = MODELS
                    .into_iter()
                    .find(|m| key(m) == i.key)
                    .expect("a model");
                self.index.scale_done(&i.key, i.to, !fail);
                if !fail {
                    self.set(name, i.to, i.to, &[]);
                }
            }
            let held: u32 = self.spec.values().map(|n| n * self.per_replica).sum();
            assert!(
                self.capacity_replicas == 0 || held <= self.capacity_replicas,
                "pool at {held}: {:?}",
                out.intents
            );
            self.log.extend(out.intents.clone());
            out.intents
        }
    }

    fn gpus(n: &str) -> PodResources {
        PodResources {
            containers: vec![ContainerResources {
                requests: [("nvidia.com/gpu".to_owned(), n.to_owned())].into(),
                limits: [("nvidia.com/gpu".to_owned(), n.to_owned())].into(),
            }],
            init_containers: Vec::new(),
        }
    }

    #[test]
    fn three_models_in_a_pool_of_two_take_turns() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.capacity_replicas = 2;
        // a, then b: both fit.
        let t0 = sim.now;
        for (name, after) in [("a", 0), ("b", 30)] {
            while sim.now < t0 + Duration::from_secs(after) {
                sim.second(&[], false);
            }
            let up = sim.second(&[(name, 0, 1)], false);
            assert_eq!(moves(&up), vec![(key(name), 1)]);
            for _ in 0..5 {
                sim.second(&[(name, 1, 0)], false);
            }
        }
        // Both idle for a while; then c: the least recently used (a) makes room.
        for _ in 0..20 {
            assert!(sim.second(&[], false).is_empty());
        }
        let evict = sim.second(&[("c", 0, 2)], false);
        assert_eq!(evict.len(), 1, "{evict:?}");
        assert_eq!((evict[0].key.clone(), evict[0].to), (key("a"), 0));
        // c waits for that room, but is told so by the eviction, not by a PoolWait as well.
        assert_eq!(sim.reports[0].waiting, vec![key("c")]);
        assert!(sim.reports[0].newly_waiting.is_empty(), "{:?}", sim.reports);
        match &evict[0].pool {
            Some(PoolNote::Evicted {
                pool,
                for_model,
                idle_for,
            }) => {
                assert_eq!((pool.as_str(), for_model), ("small", &key("c")));
                // Its last request left the panic window about 48s before.
                let idle = idle_for.as_secs();
                assert!((40..=55).contains(&idle), "{idle_for:?}");
            }
            other => panic!("{other:?}"),
        }
        let note = crate::apply::scale_message(&evict[0]);
        assert!(
            note.starts_with("Scaled 1 -> 0 to make room for models/c in pool small (idle ")
                && note.ends_with(", least recently used)"),
            "{note}"
        );
        // The room is c's on the next tick.
        let up = sim.second(&[("c", 0, 2)], false);
        assert_eq!(moves(&up), vec![(key("c"), 1)]);
        // Now a again: c woke less than pool-min-residency ago, so b (idle) goes.
        let evict = sim.second(&[("a", 0, 1), ("c", 1, 0)], false);
        assert_eq!(moves(&evict), vec![(key("b"), 0)]);
    }

    /// An evicted model whose own decider still wants a replica (its served requests are in
    /// the stable window, its grace period has not run out) stays at zero until it is asked
    /// for again: it does not evict the next idle model in turn.
    #[test]
    fn an_evicted_model_comes_back_only_for_new_requests() {
        // A 20 s stable window and a 2 s panic window, as a demo or a quick config has them.
        let keys = [("stable-window", "20s"), ("panic-window-percentage", "10")];
        let mut sim = Sim::with_config("small=2", &[], PodResources::default(), &keys);
        sim.capacity_replicas = 2;
        sim.demand = true;
        sim.second(&[("a", 0, 1), ("b", 0, 1)], false);
        // Both serve for 12 s (past pool-min-residency), then go quiet: after 4 s the panic
        // window is empty, the stable window is not (for 16 s more).
        for _ in 0..12 {
            sim.second(&[("a", 1, 0), ("b", 1, 0)], false);
        }
        for _ in 0..4 {
            assert!(sim.second(&[], false).is_empty());
        }
        let evict = sim.second(&[("c", 0, 1)], false);
        assert_eq!(moves(&evict), vec![(key("a"), 0)]);
        // c gets the room and stays busy; a is not a waiting wake, so b is never evicted for it.
        for _ in 0..30 {
            for i in sim.second(&[("c", 1, 0)], false) {
                assert_eq!((i.key.clone(), i.to), (key("c"), 1), "{i:?}");
            }
        }
        assert_eq!((sim.spec["a"], sim.spec["b"], sim.spec["c"]), (0, 1, 1));
        // A new request for a: b (idle) makes room, c (busy) keeps its replica.
        let evict = sim.second(&[("a", 0, 1), ("c", 1, 0)], false);
        assert_eq!(moves(&evict), vec![(key("b"), 0)]);
        let up = sim.second(&[("a", 0, 1), ("c", 1, 0)], false);
        assert_eq!(moves(&up), vec![(key("a"), 1)]);
    }

    /// Wakes that arrive together into an empty pool: the one left waiting is told what the
    /// others were granted in the same tick, not the empty pool it saw before them.
    #[test]
    fn a_wake_left_waiting_by_grants_of_the_same_tick_counts_them() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.capacity_replicas = 2;
        let up = sim.second(&[("a", 0, 1), ("b", 0, 1), ("c", 0, 1)], false);
        assert_eq!(up.len(), 2, "{up:?}");
        assert_eq!(sim.reports[0].used_milli, 0);
        assert_eq!(sim.reports[0].granted_milli, 2000);
        assert_eq!(sim.reports[0].newly_waiting, vec![key("c")]);
        let note = waiting_message(&sim.reports[0]);
        assert!(note.contains("2 replicas of 2 replicas"), "{note}");
    }

    #[test]
    fn a_busy_pool_makes_the_wake_wait_and_says_so_once() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.capacity_replicas = 2;
        sim.second(&[("a", 0, 1), ("b", 0, 1)], false);
        assert_eq!(sim.spec["a"] + sim.spec["b"], 2);
        // a and b stay busy for minutes: c waits, nobody is evicted.
        let busy = [("a", 3, 0), ("b", 1, 0), ("c", 0, 4)];
        let first = sim.second(&busy, false);
        assert!(first.is_empty(), "{first:?}");
        assert_eq!(sim.reports[0].waiting, vec![key("c")]);
        assert_eq!(sim.reports[0].newly_waiting, vec![key("c")]);
        assert!(waiting_message(&sim.reports[0]).contains("2 replicas of 2 replicas"));
        for _ in 0..300 {
            assert!(sim.second(&busy, false).is_empty());
            assert!(sim.reports[0].newly_waiting.is_empty(), "told once");
        }
        // b's requests end: once its traffic leaves the panic window it is evicted for c.
        let mut evicted = None;
        for _ in 0..10 {
            if let Some(i) = sim
                .second(&[("a", 3, 0), ("c", 0, 4)], false)
                .into_iter()
                .next()
            {
                evicted = Some(i);
                break;
            }
        }
        let evicted = evicted.expect("an eviction");
        assert_eq!((evicted.key, evicted.to), (key("b"), 0));
    }

    #[test]
    fn a_model_pending_for_nodes_keeps_its_replica_while_requests_wait() {
        let mut sim = Sim::new(
            "small=1",
            &[("zeroscale.dev/scale-to-zero-grace-period", "5s")],
            PodResources::default(),
        );
        sim.capacity_replicas = 1;
        sim.second(&[("a", 0, 3)], false);
        // Asked for, never scheduled: spec 1, ready 0, requests queued for ten minutes.
        sim.set(
            "a",
            1,
            0,
            &[("zeroscale.dev/scale-to-zero-grace-period", "5s")],
        );
        for _ in 0..600 {
            let out = sim.second(&[("a", 0, 3), ("b", 0, 1)], false);
            assert!(out.is_empty(), "{out:?}");
        }
        assert_eq!(sim.spec["a"], 1);
        // The Pending replica holds the pool: b waits.
        assert_eq!(sim.reports[0].waiting, vec![key("b")]);
        assert_eq!(sim.reports[0].used_milli, 1000);
    }

    #[test]
    fn a_resource_pool_counts_each_replica_by_its_requests() {
        let mut sim = Sim::new("small=4 nvidia.com/gpu", &[], gpus("2"));
        sim.capacity_replicas = 4;
        sim.per_replica = 2;
        sim.second(&[("a", 0, 1)], false);
        // 420 concurrent would want 6 replicas: 2 fit (4 GPUs).
        let mut limited = None;
        for _ in 0..3 {
            for i in sim.second(&[("a", 420, 0)], false) {
                limited.get_or_insert(i);
            }
        }
        let limited = limited.expect("a scale-up");
        assert_eq!(limited.to, 2);
        assert!(
            matches!(limited.pool, Some(PoolNote::Limited { wanted, .. }) if wanted > 2),
            "{limited:?}"
        );
        assert!(crate::apply::scale_message(&limited).contains("all pool small has room for"));
        assert_eq!(
            sim.reports[0].capacity.show(sim.reports[0].used_milli),
            "4 nvidia.com/gpu"
        );
    }

    #[test]
    fn failed_evictions_never_let_the_pool_overfill() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.capacity_replicas = 2;
        sim.second(&[("a", 0, 1), ("b", 0, 1)], false);
        for _ in 0..20 {
            sim.second(&[], false);
        }
        // Every patch fails for a while: evictions are retried, c never granted meanwhile.
        for _ in 0..10 {
            for i in sim.second(&[("c", 0, 1)], true) {
                assert_eq!(i.to, 0, "only evictions while the room is not free: {i:?}");
            }
        }
        sim.second(&[("c", 0, 1)], false);
        sim.second(&[("c", 0, 1)], false);
        assert_eq!(sim.spec["c"], 1);
    }

    #[test]
    fn a_pooled_deployment_an_hpa_scales_still_holds_its_room() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.capacity_replicas = 2;
        sim.set("a", 2, 2, &[]);
        sim.index
            .apply_hpa(DeploymentKey::new("models", "a-hpa"), Some(key("a")));
        // a's two replicas fill the pool: b waits, a is never evicted (zeroscale does not
        // decide it).
        for _ in 0..30 {
            let out = sim.second(&[("b", 0, 1)], false);
            assert!(out.is_empty(), "{out:?}");
        }
        assert_eq!(sim.reports[0].used_milli, 2000);
        assert_eq!(sim.reports[0].waiting, vec![key("b")]);
    }

    #[test]
    fn a_wake_signal_is_admitted_at_once() {
        let mut sim = Sim::new("small=2", &[], PodResources::default());
        sim.second(&[], false);
        sim.index.wake_requested(&key("b"), 2);
        let out = sim.index.tick(sim.now);
        assert_eq!(moves(&out.intents), vec![(key("b"), 1)]);
    }

    #[test]
    fn replica_units_follow_the_template() {
        let gpu = PoolCapacity {
            capacity_milli: 8000,
            resource: Some("nvidia.com/gpu".into()),
        };
        assert_eq!(gpus("2").units(&gpu), Ok(2000));
        assert_eq!(PodResources::default().units(&gpu), Ok(0));
        let replicas = PoolCapacity {
            capacity_milli: 2000,
            resource: None,
        };
        assert_eq!(gpus("2").units(&replicas), Ok(1000));
    }
}
