//! What should be: the autoscaler's domain core.
//!
//! The [`Index`] is fed by events (Deployments, HPAs, the ConfigMap, scrape rounds) and, on
//! [`Index::tick`], returns the scale changes that should happen. It holds no client, no clock
//! and no runtime: every input carries its time, so it is tested with plain synchronous tests.
//! Applying the changes (and turning [`Notice`]s into Events) is the controller's job.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use zeroscale_config::{ConfigError, DeploymentSettings, GlobalConfig, MetricSource};
use zeroscale_scaling::{DataState, Decider, Decision, Demand, Observation, Sample, Sizing};

use crate::DeploymentKey;
use crate::scrape::Round;

/// A Deployment as the index needs to see it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentView {
    /// Namespace and name.
    pub key: DeploymentKey,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.replicas` (Kubernetes defaults a missing value to 1).
    pub spec_replicas: u32,
    /// `status.readyReplicas`.
    pub ready_replicas: u32,
    /// The pod template's requests and limits (what a replica counts in a resource pool).
    pub resources: crate::pools::PodResources,
}

/// A watch the index depends on, for re-list bookkeeping. `None` scopes are all namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Deployments in one namespace or all.
    Deployments(Option<String>),
    /// The `zeroscale-config` ConfigMap.
    ConfigMap,
    /// HorizontalPodAutoscalers in one namespace or all.
    Hpas(Option<String>),
}

/// Something a person should hear about; the controller turns it into a Warning Event.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// Annotations on this Deployment were rejected; global values are used for them.
    BadAnnotations {
        /// The Deployment.
        key: DeploymentKey,
        /// What was wrong.
        errors: Vec<ConfigError>,
    },
    /// ConfigMap values were rejected; the last good values stay.
    BadConfigMap {
        /// What was wrong.
        errors: Vec<ConfigError>,
    },
    /// An HPA targets this opted-in Deployment; zeroscale leaves it alone.
    HpaConflict {
        /// The Deployment.
        key: DeploymentKey,
        /// The HPA's name.
        hpa: String,
    },
    /// This opted-in Deployment's `serving.kserve.io/autoscalerClass` lets KServe (or KEDA, or
    /// KServe's HPA) scale it as well.
    KServeAutoscaler {
        /// The Deployment.
        key: DeploymentKey,
        /// What fights and what to do ([`zeroscale_config::kserve::autoscaler_class_conflict`]).
        note: String,
    },
}

/// Where to scrape a pod-sourced Deployment: the ready endpoints of `service`'s
/// EndpointSlices, `http://<ip>:<port><path>`, gauge `metric` summed over pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    /// The Deployment.
    pub key: DeploymentKey,
    /// Service whose EndpointSlices list the pods.
    pub service: String,
    /// Gauge name.
    pub metric: String,
    /// Pod port.
    pub port: u16,
    /// HTTP path.
    pub path: String,
}

/// A scale change that should be applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleIntent {
    /// The Deployment.
    pub key: DeploymentKey,
    /// Its `spec.replicas` now.
    pub from: u32,
    /// The desired count.
    pub to: u32,
    /// Why.
    pub decision: Decision,
    /// `spec.replicas` had been set to `from` by someone else (`kubectl scale`, a CI job), and
    /// this change overrides it.
    pub overrides_manual: bool,
    /// Set when a capacity pool changed the decision (an eviction, a smaller grant).
    pub pool: Option<crate::pools::PoolNote>,
}

/// The state of one managed Deployment after a tick, for metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The Deployment.
    pub key: DeploymentKey,
    /// `spec.replicas`.
    pub actual: u32,
    /// The decision of this tick.
    pub decision: Decision,
    /// Whether the decider is in panic mode.
    pub in_panic: bool,
}

/// What one tick produced.
#[derive(Debug, Default)]
pub struct TickOutput {
    /// Changes to apply (only where desired != current and no change is in progress).
    pub intents: Vec<ScaleIntent>,
    /// One report per managed Deployment that was decided.
    pub reports: Vec<Report>,
    /// True when no decision was made because a watched source is being re-listed.
    pub skipped_unsynced: bool,
    /// One report per configured capacity pool.
    pub pools: Vec<crate::pools::PoolReport>,
}

struct Managed {
    settings: DeploymentSettings,
    decider: Decider,
    in_flight: u64,
    queued: u64,
    /// State of the last scrape round that concerned this Deployment.
    data: DataState,
    last_round: Option<Instant>,
    /// When the last sample was recorded.
    last_sample: Option<Instant>,
    /// When the Deployment was seen going from zero to some replicas without our patch.
    woken_at: Option<Instant>,
    /// A scale change was handed out and its result is not known yet.
    pending: bool,
    /// `spec.replicas` was changed by someone else (not a wake from zero, not our patch) and
    /// the engine has not agreed with it yet.
    manual: bool,
}

impl Managed {
    /// Records a sample that is the average over the time since the previous one.
    ///
    /// The engine keeps one-second buckets and counts an empty second as zero load. Scrapes
    /// come about once a second, but with jitter around a bucket boundary two land in one
    /// second and the next second stays empty, which would read as a dip in load. So the
    /// sample also goes into every whole second since the previous sample that it covers
    /// (bounded by the stable window), which is what it measured.
    /// `demand`: the figures of demand sizing, when the source reports them.
    fn record(&mut self, at: Instant, sample: Sample, demand: Option<Demand>) {
        let step = Duration::from_secs(1);
        if let Some(prev) = self.last_sample
            && at > prev
        {
            let limit = self.settings.scaling.stable_window.as_secs().max(1);
            let mut fill = prev + step;
            let mut n = 0;
            while fill < at && n < limit {
                self.decider.record_with(fill, sample, demand);
                fill += step;
                n += 1;
            }
        }
        self.decider.record_with(at, sample, demand);
        self.last_sample = Some(self.last_sample.map_or(at, |p| p.max(at)));
    }
}

/// Restores a stored histogram into `decider` when it decodes with the decider's histogram
/// range (another range means other bins: dropped).
fn restore(decider: &mut Decider, settings: &DeploymentSettings, text: &str) -> bool {
    let range = settings.scaling.adaptive.histogram_range;
    match zeroscale_scaling::idle::IdleHistogram::decode(text, range) {
        Some(h) => {
            decider.restore_idle_histogram(h);
            true
        }
        None => false,
    }
}

struct Entry {
    view: DeploymentView,
    managed: Option<Managed>,
}

/// The index: everything known about opted-in Deployments, and the deciders.
pub struct Index {
    global: GlobalConfig,
    deployments: HashMap<DeploymentKey, Entry>,
    /// HPA (namespace/name) -> the Deployment it targets.
    hpas: HashMap<DeploymentKey, DeploymentKey>,
    unsynced: Vec<Source>,
    /// Deployments listed during a re-list (per watch scope), to drop the ones that vanished.
    relisted: HashMap<Option<String>, std::collections::HashSet<DeploymentKey>>,
    /// What capacity pools remember across ticks.
    pools: crate::pools::Book,
    /// Learned idle histograms read from the shards ([`crate::learned`]): storage key ->
    /// encoded histogram. Kept only until the index is synced (a model not listed by then is
    /// gone or no longer opted in), for deciders created meanwhile and for deciders whose
    /// histogram range the ConfigMap changes when it is listed after them.
    stored: HashMap<String, String>,
    /// Deciders given a stored histogram since [`Index::take_restored`].
    restored: u64,
}

impl Default for Index {
    /// An index watching all namespaces.
    fn default() -> Self {
        Self::new(&[None])
    }
}

impl Index {
    /// An empty index with built-in defaults, for Deployments in `scopes` (a namespace each,
    /// or `None` for all). Every source starts unsynced.
    pub fn new(scopes: &[Option<String>]) -> Self {
        let mut unsynced = vec![Source::ConfigMap];
        for scope in scopes {
            unsynced.push(Source::Deployments(scope.clone()));
            unsynced.push(Source::Hpas(scope.clone()));
        }
        Self {
            global: GlobalConfig::default(),
            deployments: HashMap::new(),
            hpas: HashMap::new(),
            unsynced,
            relisted: HashMap::new(),
            pools: crate::pools::Book::default(),
            stored: HashMap::new(),
            restored: 0,
        }
    }

    /// The global configuration in force.
    pub fn global(&self) -> &GlobalConfig {
        &self.global
    }

    /// Whether every source has been listed completely since the last (re)start of its watch.
    pub fn is_synced(&self) -> bool {
        self.unsynced.is_empty()
    }

    /// Number of Deployments currently managed.
    pub fn managed_count(&self) -> usize {
        self.deployments
            .values()
            .filter(|e| e.managed.is_some())
            .count()
    }

    /// A watch (re)started listing `source`: no decisions until [`Index::end_relist`].
    pub fn begin_relist(&mut self, source: Source) {
        if let Source::Deployments(scope) = &source {
            self.relisted.insert(scope.clone(), Default::default());
        }
        if !self.unsynced.contains(&source) {
            self.unsynced.push(source);
        }
    }

    /// The re-list of `source` is complete. For Deployments, the ones not seen in the re-list
    /// were deleted meanwhile and are dropped.
    pub fn end_relist(&mut self, source: &Source) -> Vec<DeploymentKey> {
        self.unsynced.retain(|s| s != source);
        let mut gone = Vec::new();
        if let Source::Deployments(scope) = source
            && let Some(seen) = self.relisted.remove(scope)
        {
            let in_scope = |k: &DeploymentKey| scope.as_ref().is_none_or(|ns| *ns == k.namespace);
            gone = self
                .deployments
                .keys()
                .filter(|k| in_scope(k) && !seen.contains(*k))
                .cloned()
                .collect();
            for key in &gone {
                self.deployments.remove(key);
            }
        }
        gone
    }

    /// A Deployment was added or changed.
    pub fn apply_deployment(&mut self, view: DeploymentView, now: Instant) -> Vec<Notice> {
        for (scope, seen) in &mut self.relisted {
            if scope.as_ref().is_none_or(|ns| *ns == view.key.namespace) {
                seen.insert(view.key.clone());
            }
        }
        let opted_in = zeroscale_config::is_opted_in(&view.annotations);
        // A Deployment that opts in after the initial list is new to zeroscale: initial-scale
        // applies. Found at start-up, it was already managed before a restart.
        let newly_enabled = !self
            .unsynced
            .iter()
            .any(|s| matches!(s, Source::Deployments(_)));
        let mut notices = Vec::new();
        let key = view.key.clone();
        let hpa = self.hpa_for(&key);
        let fresh = !self.deployments.contains_key(&key);
        let entry = self
            .deployments
            .entry(key.clone())
            .or_insert_with(|| Entry {
                view: view.clone(),
                managed: None,
            });
        let annotations_differ = fresh || entry.view.annotations != view.annotations;
        let annotations_changed = annotations_differ || entry.managed.is_none();
        // Woken from zero by someone else (a wake served by any replica): the last scrape
        // predates the requests that caused it, so until a round taken after this moment
        // arrives, its "idle" is no evidence.
        let woken = entry.view.spec_replicas == 0 && view.spec_replicas > 0;
        let changed = entry.view.spec_replicas != view.spec_replicas;
        entry.view = view;
        if woken && let Some(m) = &mut entry.managed {
            m.woken_at = Some(now);
        }
        if changed
            && !woken
            && let Some(m) = &mut entry.managed
        {
            m.manual = !m.pending;
        }
        if !opted_in {
            entry.managed = None;
            // `enabled: "yes"` and the like: not managed, and told why (once per change).
            if annotations_differ && let Err(e) = zeroscale_config::opt_in(&entry.view.annotations)
            {
                notices.push(Notice::BadAnnotations {
                    key: key.clone(),
                    errors: vec![e],
                });
            }
            return notices;
        }
        if annotations_changed {
            let (settings, errors) =
                DeploymentSettings::resolve(&self.global, &entry.view.annotations);
            if !errors.is_empty() {
                notices.push(Notice::BadAnnotations {
                    key: key.clone(),
                    errors,
                });
            }
            if let Some(note) =
                zeroscale_config::kserve::autoscaler_class_conflict(&entry.view.annotations)
            {
                notices.push(Notice::KServeAutoscaler {
                    key: key.clone(),
                    note,
                });
            }
            match &mut entry.managed {
                Some(m) => {
                    m.decider.set_params(settings.scaling.clone());
                    m.settings = settings;
                }
                None => {
                    if let Some(hpa) = hpa {
                        notices.push(Notice::HpaConflict {
                            key: key.clone(),
                            hpa,
                        });
                    }
                    let mut decider = Decider::new(settings.scaling.clone(), now, newly_enabled);
                    if let Some(text) = self.stored.get(&crate::learned::storage_key(&key)) {
                        self.restored += u64::from(restore(&mut decider, &settings, text));
                    }
                    entry.managed = Some(Managed {
                        decider,
                        settings,
                        in_flight: 0,
                        queued: 0,
                        data: DataState::Missing,
                        last_round: None,
                        last_sample: None,
                        woken_at: None,
                        pending: false,
                        manual: false,
                    });
                }
            }
        }
        notices
    }

    /// One shard's stored learned state was read: each histogram goes to its model's decider
    /// if that has learned no gap yet (gaps learned live are never overwritten; a histogram of
    /// another bin width is dropped). Until the index is synced the data is also kept for
    /// deciders created later (normally the shards are read before the Deployments are listed).
    pub fn restore_learned(&mut self, data: BTreeMap<String, String>) {
        let data: HashMap<String, String> = data.into_iter().collect();
        if data.is_empty() {
            return;
        }
        for (key, entry) in &mut self.deployments {
            let Some(m) = &mut entry.managed else {
                continue;
            };
            if m.decider.idle_histogram().gaps() == 0
                && let Some(text) = data.get(&crate::learned::storage_key(key))
            {
                self.restored += u64::from(restore(&mut m.decider, &m.settings, text));
            }
        }
        if !self.is_synced() {
            self.stored.extend(data);
        }
    }

    /// How many deciders were given a stored histogram since the last call.
    pub fn take_restored(&mut self) -> u64 {
        std::mem::take(&mut self.restored)
    }

    /// What shard `shard` should hold now: every managed Deployment of that shard with a gap
    /// learned (deleted and opted-out Deployments are not managed, so they drop out).
    pub fn learned_shard(&self, shard: usize) -> Vec<crate::learned::Stored> {
        self.deployments
            .iter()
            .filter(|(k, _)| crate::learned::shard_of(k) == shard)
            .filter_map(|(k, e)| {
                let h = e.managed.as_ref()?.decider.idle_histogram();
                (h.gaps() > 0).then(|| crate::learned::Stored {
                    key: crate::learned::storage_key(k),
                    gaps: h.gaps(),
                    value: h.encode(),
                })
            })
            .collect()
    }

    /// A Deployment was deleted.
    pub fn delete_deployment(&mut self, key: &DeploymentKey) {
        self.deployments.remove(key);
    }

    fn hpa_for(&self, key: &DeploymentKey) -> Option<String> {
        self.hpas
            .iter()
            .find(|(_, target)| *target == key)
            .map(|(hpa, _)| hpa.deployment.clone())
    }

    /// An HPA was added or changed; `target` is the Deployment it scales (None if it targets
    /// something else).
    pub fn apply_hpa(&mut self, hpa: DeploymentKey, target: Option<DeploymentKey>) -> Vec<Notice> {
        let mut notices = Vec::new();
        match target {
            Some(target) => {
                let managed = self
                    .deployments
                    .get(&target)
                    .is_some_and(|e| e.managed.is_some());
                if self.hpas.get(&hpa) != Some(&target) && managed {
                    notices.push(Notice::HpaConflict {
                        key: target.clone(),
                        hpa: hpa.deployment.clone(),
                    });
                }
                self.hpas.insert(hpa, target);
            }
            None => {
                self.hpas.remove(&hpa);
            }
        }
        notices
    }

    /// An HPA was deleted.
    pub fn delete_hpa(&mut self, hpa: &DeploymentKey) {
        self.hpas.remove(hpa);
    }

    /// The ConfigMap's data (None: the ConfigMap does not exist, built-in defaults apply).
    /// Rejected values keep their last good value; every Deployment is re-resolved.
    pub fn apply_configmap(&mut self, data: Option<&BTreeMap<String, String>>) -> Vec<Notice> {
        let mut notices = Vec::new();
        let global = match data {
            Some(data) => {
                let (global, errors) = GlobalConfig::from_configmap(data, &self.global);
                if !errors.is_empty() {
                    notices.push(Notice::BadConfigMap { errors });
                }
                global
            }
            None => GlobalConfig::default(),
        };
        if global == self.global {
            return notices;
        }
        self.global = global;
        for (key, entry) in &mut self.deployments {
            if let Some(m) = &mut entry.managed {
                // Annotation errors were already reported when the annotations were read.
                let (settings, _) =
                    DeploymentSettings::resolve(&self.global, &entry.view.annotations);
                m.decider.set_params(settings.scaling.clone());
                m.settings = settings;
                // A histogram range changed before the first sync: the stored histogram was
                // written with the configured range, not the default it was tried with.
                if m.decider.idle_histogram().gaps() == 0
                    && let Some(text) = self.stored.get(&crate::learned::storage_key(key))
                {
                    self.restored += u64::from(restore(&mut m.decider, &m.settings, text));
                }
            }
        }
        notices
    }

    /// Deployments whose concurrency comes from their own pods (`metric-source: pod`), with
    /// where to scrape. The Service defaults to one named like the Deployment.
    pub fn pod_targets(&self) -> Vec<PodTarget> {
        let mut targets: Vec<PodTarget> = self
            .deployments
            .iter()
            .filter_map(|(k, e)| {
                let m = e.managed.as_ref()?;
                let MetricSource::Pod { metric, port, path } = &m.settings.metric_source else {
                    return None;
                };
                Some(PodTarget {
                    key: k.clone(),
                    service: m
                        .settings
                        .service
                        .clone()
                        .unwrap_or_else(|| k.deployment.clone()),
                    metric: metric.clone(),
                    port: *port,
                    path: path.clone(),
                })
            })
            .collect();
        targets.sort_by(|a, b| a.key.cmp(&b.key));
        targets
    }

    /// One round of activator scrapes. A complete round is a sample for every activator-fed
    /// Deployment (absent = zero traffic); an incomplete one only marks their data stale.
    pub fn record_round(&mut self, round: &Round) {
        for (key, entry) in &mut self.deployments {
            let Some(m) = &mut entry.managed else {
                continue;
            };
            if m.settings.metric_source != MetricSource::Activator {
                continue;
            }
            let sample = round.models.get(key).copied().unwrap_or_default();
            // Even from an incomplete round, requests seen waiting are real (a lower bound).
            m.in_flight = sample.in_flight;
            m.queued = sample.queued;
            m.last_round = Some(round.at);
            if round.complete {
                // Absent from a round that reports them, a model's figures are zero.
                let demand = (round.demand && m.settings.scaling.sizing == Sizing::Demand)
                    .then_some(sample.demand);
                m.record(
                    round.at,
                    Sample {
                        concurrency: sample.concurrency,
                        rps: sample.rps,
                    },
                    demand,
                );
                m.data = DataState::Fresh;
            } else {
                m.data = DataState::Stale;
            }
        }
    }

    /// One scrape of a pod-sourced Deployment's pods: the summed gauge, or None if any ready
    /// pod failed to answer (stale: no scale-down, never to zero).
    pub fn record_pod_metric(&mut self, key: &DeploymentKey, at: Instant, value: Option<f64>) {
        let Some(m) = self
            .deployments
            .get_mut(key)
            .and_then(|e| e.managed.as_mut())
        else {
            return;
        };
        m.last_round = Some(at);
        match value {
            Some(v) => {
                m.record(
                    at,
                    Sample {
                        concurrency: v,
                        rps: 0.0,
                    },
                    None,
                );
                m.in_flight = v.max(0.0).ceil() as u64;
                m.queued = 0;
                m.data = DataState::Fresh;
            }
            None => m.data = DataState::Stale,
        }
    }

    /// A scale change handed out by [`Index::tick`] finished; on success the new count is
    /// assumed until the watch confirms it.
    pub fn scale_done(&mut self, key: &DeploymentKey, to: u32, ok: bool) {
        if let Some(entry) = self.deployments.get_mut(key) {
            if ok {
                entry.view.spec_replicas = to;
            }
            if let Some(m) = &mut entry.managed {
                m.pending = false;
            }
        }
    }

    /// Decides every managed Deployment. Returns the changes to make; nothing while a source
    /// is being (re)listed, because a half-synced cache is no ground for a decision.
    pub fn tick(&mut self, now: Instant) -> TickOutput {
        if !self.is_synced() {
            return TickOutput {
                skipped_unsynced: true,
                ..Default::default()
            };
        }
        if !self.stored.is_empty() {
            // Synced: a stored model not seen by now is gone.
            self.stored = HashMap::new();
        }
        // Data older than a few scrape intervals means scrapes stopped arriving.
        let stale_after = (self.global.scrape_interval * 3).max(Duration::from_secs(3));
        let hpa_targets: std::collections::HashSet<&DeploymentKey> = self.hpas.values().collect();
        let mut out = TickOutput::default();
        let mut pooled = Vec::new();
        for (key, entry) in &mut self.deployments {
            let Some(m) = &mut entry.managed else {
                continue;
            };
            if hpa_targets.contains(key) {
                // Not decided here, but its replicas still hold room in its pool.
                if let Some(pool) = m.settings.pool.as_ref()
                    && let Some(capacity) = self.global.pools.get(pool)
                {
                    pooled.push(crate::pools::Candidate {
                        key: key.clone(),
                        pool: pool.clone(),
                        spec: entry.view.spec_replicas,
                        decision: None,
                        busy: true,
                        demand: true,
                        pinned: true,
                        pending: false,
                        per_replica: entry
                            .view
                            .resources
                            .units(capacity)
                            .unwrap_or(capacity.capacity_milli.saturating_add(1)),
                    });
                }
                continue;
            }
            let data = match m.last_round {
                None => DataState::Missing,
                Some(at) if now.saturating_duration_since(at) > stale_after => DataState::Stale,
                Some(at) if m.woken_at.is_some_and(|w| at <= w) => DataState::Stale,
                Some(_) => m.data,
            };
            let obs = Observation {
                ready_pods: entry.view.ready_replicas,
                current_scale: entry.view.spec_replicas,
                in_flight: m.in_flight,
                queued: m.queued,
                data,
            };
            // The engine counts a second without a sample as zero load. A tick that falls
            // between the start of a second and that second's scrape would read the current,
            // still empty second as a dip; so on fresh data decide as of the newest sample.
            let decide_at = match m.last_sample {
                Some(s) if data == DataState::Fresh && s <= now => s,
                _ => now,
            };
            let decision = m.decider.decide(decide_at, &obs);
            let pool = m.settings.pool.as_ref();
            if let Some((pool, capacity)) = pool.and_then(|p| Some((p, self.global.pools.get(p)?)))
            {
                // Admitted with the rest of its pool below. An unreadable request counts as
                // more than the whole pool, so it is never admitted on a guess.
                pooled.push(crate::pools::Candidate {
                    key: key.clone(),
                    pool: pool.clone(),
                    spec: entry.view.spec_replicas,
                    busy: data != DataState::Fresh
                        || m.in_flight + m.queued > 0
                        || decision.inputs.panic_average > 0.0,
                    demand: m.in_flight + m.queued > 0,
                    pinned: m.settings.scaling.min_scale > 0,
                    pending: m.pending,
                    per_replica: entry
                        .view
                        .resources
                        .units(capacity)
                        .unwrap_or(capacity.capacity_milli.saturating_add(1)),
                    decision: Some(decision.clone()),
                });
                if decision.desired == entry.view.spec_replicas {
                    m.manual = false;
                }
            } else if decision.desired == entry.view.spec_replicas {
                m.manual = false;
            } else if !m.pending {
                m.pending = true;
                out.intents.push(ScaleIntent {
                    key: key.clone(),
                    from: entry.view.spec_replicas,
                    to: decision.desired,
                    decision: decision.clone(),
                    overrides_manual: std::mem::take(&mut m.manual),
                    pool: None,
                });
            }
            out.reports.push(Report {
                key: key.clone(),
                actual: entry.view.spec_replicas,
                in_panic: m.decider.in_panic(),
                decision,
            });
        }
        self.admit_pooled(pooled, now, &mut out);
        out
    }

    /// Capacity pools: this tick's decisions of pooled Deployments become the intents that
    /// fit ([`crate::pools`]); the leader is their only writer.
    fn admit_pooled(
        &mut self,
        pooled: Vec<crate::pools::Candidate>,
        now: Instant,
        out: &mut TickOutput,
    ) {
        if pooled.is_empty() && self.global.pools.is_empty() {
            return;
        }
        let keys: std::collections::HashSet<DeploymentKey> =
            pooled.iter().map(|c| c.key.clone()).collect();
        self.pools.retain(|k| keys.contains(k));
        let decisions: HashMap<DeploymentKey, Decision> = pooled
            .iter()
            .filter_map(|c| Some((c.key.clone(), c.decision.clone()?)))
            .collect();
        let (intents, reports) = self.pools.admit(pooled, &self.global, now);
        out.pools = reports;
        for i in intents {
            let Some(m) = self
                .deployments
                .get_mut(&i.key)
                .and_then(|e| e.managed.as_mut())
            else {
                continue;
            };
            let Some(decision) = decisions.get(&i.key) else {
                continue;
            };
            m.pending = true;
            out.intents.push(ScaleIntent {
                decision: decision.clone(),
                overrides_manual: std::mem::take(&mut m.manual),
                key: i.key,
                from: i.from,
                to: i.to,
                pool: i.note,
            });
        }
    }

    /// A wake signal for a pooled Deployment reached this replica: the requests it reports
    /// waiting count as queued until the next scrape says more (the wake API does not patch
    /// pooled Deployments; the tick admits them).
    pub fn wake_requested(&mut self, key: &DeploymentKey, queued: u64) {
        if let Some(e) = self.deployments.get_mut(key)
            && e.view.spec_replicas == 0
            && let Some(m) = &mut e.managed
        {
            m.queued = m.queued.max(queued.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zeroscale_scaling::Reason;

    use super::*;
    use crate::scrape::ModelSample;

    fn key() -> DeploymentKey {
        DeploymentKey::new("models", "llama")
    }

    fn dep(annotations: &[(&str, &str)], spec: u32, ready: u32) -> DeploymentView {
        DeploymentView {
            key: key(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            spec_replicas: spec,
            ready_replicas: ready,
            resources: Default::default(),
        }
    }

    const ON: (&str, &str) = ("zeroscale.dev/enabled", "true");

    /// Applies the fast policy of [`synced`] plus `extra` keys as the ConfigMap.
    fn fast_policy_with(index: &mut Index, extra: &[(&str, &str)]) {
        let cm: BTreeMap<String, String> = [
            ("stable-window", "6s"),
            ("panic-window-percentage", "50"),
            ("scale-to-zero-grace-period", "5s"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(index.apply_configmap(Some(&cm)).is_empty());
    }

    /// An index with every source listed and a fast policy: 6s window, 5s grace.
    fn synced(t0: Instant) -> Index {
        let mut index = Index::default();
        fast_policy_with(&mut index, &[]);
        for s in [
            Source::ConfigMap,
            Source::Deployments(None),
            Source::Hpas(None),
        ] {
            index.begin_relist(s.clone());
            index.end_relist(&s);
        }
        assert!(index.is_synced());
        let _ = t0;
        index
    }

    fn round(at: Instant, complete: bool, sample: Option<ModelSample>) -> Round {
        let mut models = HashMap::new();
        if let Some(s) = sample {
            models.insert(key(), s);
        }
        Round {
            at,
            complete,
            models,
            failures: vec![],
            demand: false,
        }
    }

    fn busy(concurrency: f64, in_flight: u64, queued: u64) -> Option<ModelSample> {
        Some(ModelSample {
            concurrency,
            rps: 0.0,
            in_flight,
            queued,
            ..Default::default()
        })
    }

    /// Feeds one round per second from `from` for `secs` seconds and ticks each second,
    /// applying every intent (as a successful patch would). Returns the intents.
    fn run(
        index: &mut Index,
        from: Instant,
        secs: u64,
        complete: bool,
        sample: Option<ModelSample>,
    ) -> Vec<ScaleIntent> {
        let mut all = Vec::new();
        for s in 1..=secs {
            let now = from + Duration::from_secs(s);
            index.record_round(&round(now, complete, sample));
            for intent in index.tick(now).intents {
                index.scale_done(&intent.key, intent.to, true);
                all.push(intent);
            }
        }
        all
    }

    /// A round a second; traffic in one second every `period` seconds, `calls` times:
    /// `calls - 1` gaps.
    fn periodic_calls(index: &mut Index, from: Instant, period: u64, calls: u64) {
        for s in 1..=period * calls {
            let sample = if s % period == 0 {
                busy(1.0, 1, 0)
            } else {
                busy(0.0, 0, 0)
            };
            index.record_round(&round(from + Duration::from_secs(s), true, sample));
        }
    }

    fn unsynced_with_policy() -> Index {
        let mut index = Index::default();
        fast_policy_with(&mut index, &[]);
        index
    }

    fn end_lists(index: &mut Index) {
        for s in [
            Source::ConfigMap,
            Source::Deployments(None),
            Source::Hpas(None),
        ] {
            index.end_relist(&s);
        }
        assert!(index.is_synced());
    }

    #[test]
    fn learned_gaps_are_stored_and_restored_by_the_next_index() {
        let t0 = Instant::now();
        let mut a = synced(t0);
        a.apply_deployment(dep(&[ON], 1, 1), t0);
        let shard = crate::learned::shard_of(&key());
        assert!(
            a.learned_shard(shard).is_empty(),
            "nothing learned, nothing stored"
        );
        periodic_calls(&mut a, t0, 120, 6);
        let stored = a.learned_shard(shard);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].key, "models.llama");
        assert_eq!(stored[0].gaps, 5);
        let (data, dropped) = crate::learned::shard_data(stored);
        assert_eq!(dropped, 0);
        let other = (shard + 1) % crate::learned::SHARDS;
        assert!(a.learned_shard(other).is_empty());

        // A restart: the shard is read before the Deployments are listed.
        let mut b = unsynced_with_policy();
        b.restore_learned(data.clone());
        assert_eq!(b.take_restored(), 0, "no decider yet");
        b.apply_deployment(dep(&[ON], 1, 1), t0);
        assert_eq!(b.take_restored(), 1);
        end_lists(&mut b);
        let h = |i: &Index| {
            i.deployments[&key()]
                .managed
                .as_ref()
                .unwrap()
                .decider
                .idle_histogram()
                .clone()
        };
        assert_eq!(h(&b), h(&a));
        assert_eq!(b.learned_shard(shard), a.learned_shard(shard));

        // Read after the list: restored into a decider that has learned nothing yet ...
        let mut c = synced(t0);
        c.apply_deployment(dep(&[ON], 1, 1), t0);
        c.restore_learned(data.clone());
        assert_eq!(c.take_restored(), 1);
        assert_eq!(h(&c), h(&a));
        // ... but never over gaps learned live.
        let mut d = synced(t0);
        d.apply_deployment(dep(&[ON], 1, 1), t0);
        periodic_calls(&mut d, t0, 30, 3);
        d.restore_learned(data.clone());
        assert_eq!(d.take_restored(), 0);
        assert_eq!(h(&d).gaps(), 2);

        // Another histogram range: other bins, dropped.
        let mut e = Index::default();
        fast_policy_with(&mut e, &[("adaptive-histogram-range", "1h")]);
        e.restore_learned(data.clone());
        e.apply_deployment(dep(&[ON], 1, 1), t0);
        end_lists(&mut e);
        assert_eq!(h(&e).gaps(), 0);

        // The Deployments listed before the ConfigMap that sets the range the histogram was
        // stored with: restored when the ConfigMap arrives.
        let mut hour = synced(t0);
        fast_policy_with(&mut hour, &[("adaptive-histogram-range", "1h")]);
        hour.apply_deployment(dep(&[ON], 1, 1), t0);
        periodic_calls(&mut hour, t0, 120, 4);
        let (hour_data, _) = crate::learned::shard_data(hour.learned_shard(shard));
        let mut f = Index::default();
        f.restore_learned(hour_data);
        f.apply_deployment(dep(&[ON], 1, 1), t0);
        assert_eq!(
            (h(&f).gaps(), f.take_restored()),
            (0, 0),
            "the default range: other bins"
        );
        fast_policy_with(&mut f, &[("adaptive-histogram-range", "1h")]);
        assert_eq!((h(&f).gaps(), f.take_restored()), (3, 1));

        // A deleted (or opted-out) model drops out of the next flush.
        a.apply_deployment(dep(&[], 1, 1), t0);
        assert!(a.learned_shard(shard).is_empty());
        b.delete_deployment(&key());
        assert!(b.learned_shard(shard).is_empty());
    }

    #[test]
    fn stored_state_of_models_not_listed_is_forgotten_once_synced() {
        let t0 = Instant::now();
        let gone: BTreeMap<String, String> =
            [("models.gone".to_owned(), "v1 60000 0 3:12".to_owned())].into();
        let mut index = unsynced_with_policy();
        index.restore_learned(gone.clone());
        assert_eq!(index.stored.len(), 1);
        end_lists(&mut index);
        index.tick(t0);
        assert!(index.stored.is_empty());
        // Read once synced: not kept at all.
        index.restore_learned(gone);
        assert!(index.stored.is_empty());
    }

    #[test]
    fn nothing_is_decided_before_every_watch_listed() {
        let t0 = Instant::now();
        let mut index = Index::default();
        index.apply_deployment(dep(&[ON], 0, 0), t0);
        index.record_round(&round(t0, true, busy(0.0, 0, 3)));
        let out = index.tick(t0);
        assert!(out.skipped_unsynced);
        assert!(out.intents.is_empty());
        // A re-list of one source stops decisions again until it is done.
        let mut index = synced(t0);
        index.begin_relist(Source::Deployments(None));
        index.apply_deployment(dep(&[ON], 0, 0), t0);
        index.record_round(&round(t0, true, busy(0.0, 0, 3)));
        assert!(index.tick(t0).skipped_unsynced);
        index.end_relist(&Source::Deployments(None));
        assert_eq!(index.tick(t0).intents.len(), 1);
    }

    #[test]
    fn the_feeds_demand_figures_reach_the_decider() {
        let t0 = Instant::now();
        let demand_of = |index: &mut Index, reported: bool| {
            for s in 0..6 {
                let at = t0 + Duration::from_secs(s);
                let mut r = round(
                    at,
                    true,
                    Some(ModelSample {
                        concurrency: 2.0,
                        rps: 4.0,
                        in_flight: 2,
                        queued: 0,
                        demand: Demand {
                            arrivals: 4.0,
                            in_service: 2.0,
                            served: 4.0,
                            service_seconds: 2.0,
                        },
                    }),
                );
                r.demand = reported;
                index.record_round(&r);
            }
            let out = index.tick(t0 + Duration::from_secs(6));
            out.reports[0].decision.inputs.demand
        };
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        let d = demand_of(&mut index, true).expect("sized from demand");
        assert!((d.stable_arrivals - 4.0).abs() < 1e-6, "{d:?}");
        assert_eq!(d.service_time, Some(0.5));
        // A round from activators without the figures: Knative sizing.
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        assert_eq!(demand_of(&mut index, false), None);
        // sizing: knative ignores them.
        let mut index = synced(t0);
        fast_policy_with(&mut index, &[("sizing", "knative")]);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        assert_eq!(demand_of(&mut index, true), None);
    }

    #[test]
    fn queued_requests_at_zero_wake_it() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        assert!(index.apply_deployment(dep(&[ON], 0, 0), t0).is_empty());
        index.record_round(&round(t0, true, busy(0.0, 0, 3)));
        let out = index.tick(t0);
        assert_eq!(out.intents.len(), 1);
        let intent = &out.intents[0];
        assert_eq!(
            (intent.from, intent.to, intent.decision.reason),
            (0, 1, Reason::Wake)
        );
        assert_eq!(
            crate::apply::scale_message(intent),
            "Scaled 0 -> 1: 3 requests waiting in the activator"
        );
    }

    #[test]
    fn an_intent_is_not_repeated_while_its_patch_is_pending() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 0, 0), t0);
        index.record_round(&round(t0, true, busy(0.0, 0, 3)));
        assert_eq!(index.tick(t0).intents.len(), 1);
        assert!(
            index
                .tick(t0 + Duration::from_millis(10))
                .intents
                .is_empty()
        );
        // A failed patch is retried on the next tick.
        index.scale_done(&key(), 1, false);
        assert_eq!(index.tick(t0 + Duration::from_millis(20)).intents.len(), 1);
        // A successful one is not.
        index.scale_done(&key(), 1, true);
        assert!(
            index
                .tick(t0 + Duration::from_millis(30))
                .intents
                .is_empty()
        );
    }

    #[test]
    fn idle_goes_to_zero_after_the_grace_period_on_fresh_data_only() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        let intents = run(&mut index, t0, 4, true, None);
        assert!(
            intents.is_empty(),
            "inside the 5s grace period: {intents:?}"
        );
        let intents = run(&mut index, t0 + Duration::from_secs(4), 4, true, None);
        assert_eq!(intents.len(), 1, "{intents:?}");
        assert_eq!(
            (intents[0].from, intents[0].to, intents[0].decision.reason),
            (1, 0, Reason::ScaleToZero)
        );
    }

    #[test]
    fn failed_scrapes_never_lead_to_zero() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        let intents = run(&mut index, t0, 30, false, None);
        assert!(intents.is_empty(), "{intents:?}");
    }

    #[test]
    fn scrapes_that_stop_arriving_are_stale() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 2, 2), t0);
        index.record_round(&round(t0, true, None));
        // No round for a minute: once the last one is older than three scrape intervals the
        // data is stale: no scale-down, no zero.
        for s in 4..60 {
            let intents = index.tick(t0 + Duration::from_secs(s)).intents;
            assert!(intents.is_empty(), "{intents:?}");
        }
    }

    #[test]
    fn requests_in_flight_keep_the_last_pod() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        let intents = run(&mut index, t0, 30, true, busy(0.5, 1, 0));
        assert!(intents.is_empty(), "{intents:?}");
    }

    #[test]
    fn load_scales_up_and_back_down_within_the_down_rate() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        // 420 concurrent at 70 per pod: 6 pods.
        let up = run(&mut index, t0, 3, true, busy(420.0, 420, 0));
        assert_eq!(up.last().map(|i| i.to), Some(6), "{up:?}");
        // Pods become ready.
        let mut d = dep(&[ON], 6, 6);
        d.spec_replicas = 6;
        index.apply_deployment(d, t0 + Duration::from_secs(3));
        // Load drops to one pod's worth: 6 -> 3 -> 2 -> 1, each step at most halving the ready
        // pods (max-scale-down-rate 2), as the pods follow.
        let mut down = Vec::new();
        for s in 4..60 {
            let now = t0 + Duration::from_secs(s);
            index.record_round(&round(now, true, busy(70.0, 70, 0)));
            for i in index.tick(now).intents {
                index.scale_done(&i.key, i.to, true);
                index.apply_deployment(dep(&[ON], i.to, i.to), now);
                down.push(i);
            }
        }
        let steps: Vec<(u32, u32)> = down.iter().map(|i| (i.from, i.to)).collect();
        assert!(!steps.is_empty());
        for (from, to) in &steps {
            assert!(to < from && *to >= from / 2, "{steps:?}");
        }
        assert_eq!(steps.last().map(|s| s.1), Some(1), "{steps:?}");
    }

    #[test]
    fn min_and_max_annotations_bound_the_count() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON, ("zeroscale.dev/max-scale", "2")], 1, 1), t0);
        let up = run(&mut index, t0, 3, true, busy(1000.0, 1000, 0));
        assert_eq!(
            up.last().map(|i| (i.to, i.decision.reason)),
            Some((2, Reason::HeldByMax)),
            "{up:?}"
        );

        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON, ("zeroscale.dev/min-scale", "2")], 2, 2), t0);
        let idle = run(&mut index, t0, 30, true, None);
        assert!(idle.is_empty(), "min-scale 2 holds: {idle:?}");
    }

    #[test]
    fn a_deployment_without_opt_in_is_never_touched() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[], 0, 0), t0);
        index.record_round(&round(t0, true, busy(0.0, 0, 5)));
        assert!(index.tick(t0).intents.is_empty());
        // Removing the opt-in stops all changes.
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        index.apply_deployment(dep(&[("zeroscale.dev/enabled", "false")], 1, 1), t0);
        assert!(run(&mut index, t0, 30, true, None).is_empty());
        assert_eq!(index.managed_count(), 0);
    }

    #[test]
    fn a_manual_scale_that_is_overridden_says_so() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON, ("zeroscale.dev/max-scale", "5")], 5, 5), t0);
        let load = busy(400.0, 400, 0);
        assert!(run(&mut index, t0, 2, true, load).is_empty(), "steady at 5");
        // Someone runs `kubectl scale --replicas=2` under that load.
        let bounds = [ON, ("zeroscale.dev/max-scale", "5")];
        index.apply_deployment(dep(&bounds, 2, 2), t0 + Duration::from_secs(2));
        let back = run(&mut index, t0 + Duration::from_secs(2), 2, true, load);
        assert_eq!(back.len(), 1, "{back:?}");
        assert!(back[0].overrides_manual && back[0].from == 2 && back[0].to == 5);
        let note = crate::apply::scale_message(&back[0]);
        assert!(
            note.starts_with("Scaled 2 -> 5, overriding a change made outside zeroscale"),
            "{note}"
        );
        assert!(note.contains("zeroscale.dev/enabled: \"false\""), "{note}");
        // Our own patch echoed by the watch is not a manual change; neither is a wake from 0.
        index.apply_deployment(dep(&bounds, 5, 5), t0 + Duration::from_secs(4));
        index.apply_deployment(dep(&bounds, 4, 4), t0 + Duration::from_secs(4));
        let again = run(&mut index, t0 + Duration::from_secs(4), 1, true, load);
        assert!(
            again[0].overrides_manual,
            "4 was set by hand too: {again:?}"
        );
    }

    #[test]
    fn an_unreadable_opt_in_is_reported_once_and_not_managed() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let yes = [("zeroscale.dev/enabled", "yes")];
        let notices = index.apply_deployment(dep(&yes, 1, 1), t0);
        match notices.as_slice() {
            [Notice::BadAnnotations { errors, .. }] => {
                let e = errors[0].to_string();
                assert!(
                    e.contains(
                        r#"zeroscale.dev/enabled: "yes" is invalid: expected true or false"#
                    ) && e.contains("not managed"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            index.apply_deployment(dep(&yes, 1, 0), t0).is_empty(),
            "repeated"
        );
        assert_eq!(index.managed_count(), 0);
        // Not written at all, or false: nothing to say.
        assert!(
            index
                .apply_deployment(dep(&[("zeroscale.dev/enabled", " FALSE ")], 1, 1), t0)
                .is_empty()
        );
    }

    #[test]
    fn a_bad_annotation_is_reported_once_and_the_global_value_used() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let bad = [ON, ("zeroscale.dev/max-scale", "-3")];
        let notices = index.apply_deployment(dep(&bad, 1, 1), t0);
        match notices.as_slice() {
            [Notice::BadAnnotations { key: k, errors }] => {
                assert_eq!(k, &key());
                assert_eq!(errors[0].key, "zeroscale.dev/max-scale");
            }
            other => panic!("{other:?}"),
        }
        // Status updates with the same annotations do not repeat it.
        assert!(index.apply_deployment(dep(&bad, 1, 0), t0).is_empty());
        // Global max-scale (unbounded) applies: 700 concurrent -> 10 pods.
        let up = run(&mut index, t0, 2, true, busy(700.0, 700, 0));
        assert_eq!(up.last().map(|i| i.to), Some(10), "{up:?}");
    }

    #[test]
    fn a_bad_configmap_value_keeps_the_last_good_one() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let cm = |v: &str| -> BTreeMap<String, String> {
            [("tick-interval".to_owned(), v.to_owned())]
                .into_iter()
                .collect()
        };
        assert!(index.apply_configmap(Some(&cm("1s"))).is_empty());
        assert_eq!(index.global().tick_interval, Duration::from_secs(1));
        let notices = index.apply_configmap(Some(&cm("soon")));
        assert!(
            matches!(notices.as_slice(), [Notice::BadConfigMap { errors }] if errors[0].key == "tick-interval"),
            "{notices:?}"
        );
        assert_eq!(index.global().tick_interval, Duration::from_secs(1));
    }

    #[test]
    fn a_configmap_edit_changes_the_target_of_managed_deployments() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        // 140 concurrent at the default 70 per pod: 2 pods.
        let up = run(&mut index, t0, 2, true, busy(140.0, 140, 0));
        assert_eq!(up.last().map(|i| i.to), Some(2));
        index.apply_deployment(dep(&[ON], 2, 2), t0 + Duration::from_secs(2));
        let cm: BTreeMap<String, String> = [
            ("stable-window", "6s"),
            ("panic-window-percentage", "50"),
            ("container-concurrency-target-default", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(index.apply_configmap(Some(&cm)).is_empty());
        // Now 7 per pod: 20 pods, capped by the up rate only (1000x).
        let up = run(
            &mut index,
            t0 + Duration::from_secs(2),
            1,
            true,
            busy(140.0, 140, 0),
        );
        assert_eq!(up.last().map(|i| i.to), Some(20), "{up:?}");
    }

    #[test]
    fn a_kserve_autoscaler_class_that_fights_is_reported_once_per_change() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let class = |c| ("serving.kserve.io/autoscalerClass", c);
        let notices = index.apply_deployment(dep(&[ON, class("none")], 1, 1), t0);
        assert!(
            matches!(notices.as_slice(), [Notice::KServeAutoscaler { key: k, note }]
                if *k == key() && note.contains("\"none\"")),
            "{notices:?}"
        );
        // A replica change is no annotation change: not told again.
        assert!(
            index
                .apply_deployment(dep(&[ON, class("none")], 2, 1), t0)
                .is_empty()
        );
        // External hands the replicas over; not opted in is none of zeroscale's business.
        assert!(
            index
                .apply_deployment(dep(&[ON, class("external")], 2, 1), t0)
                .is_empty()
        );
        assert!(
            index
                .apply_deployment(dep(&[class("keda")], 2, 1), t0)
                .is_empty()
        );
    }

    #[test]
    fn an_hpa_on_the_deployment_is_reported_and_left_alone() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 0, 0), t0);
        let hpa = DeploymentKey::new("models", "llama-hpa");
        let notices = index.apply_hpa(hpa.clone(), Some(key()));
        assert!(
            matches!(notices.as_slice(), [Notice::HpaConflict { hpa, .. }] if hpa == "llama-hpa")
        );
        index.record_round(&round(t0, true, busy(0.0, 0, 3)));
        assert!(index.tick(t0).intents.is_empty());
        index.delete_hpa(&hpa);
        assert_eq!(index.tick(t0).intents.len(), 1);
    }

    #[test]
    fn jittery_scrapes_do_not_read_as_dips_in_load() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 5, 5), t0);
        // 300 concurrent needs 5 pods at 70 per pod. Rounds alternate 0.7s and 1.3s apart, so
        // some seconds get two rounds and others none.
        let mut at = t0;
        for i in 0..20 {
            at += Duration::from_millis(if i % 2 == 0 { 700 } else { 1300 });
            index.record_round(&round(at, true, busy(300.0, 300, 0)));
            let out = index.tick(at);
            assert!(out.intents.is_empty(), "at round {i}: {:?}", out.intents);
            assert_eq!(
                out.reports[0].decision.desired, 5,
                "{:?}",
                out.reports[0].decision
            );
        }
    }

    #[test]
    fn a_tick_just_before_the_scrape_does_not_see_a_dip() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 5, 5), t0);
        for s in 1..20 {
            // Scrape 900ms into each second, tick 100ms into the next one.
            let scraped = t0 + Duration::from_millis(s * 1000 + 900);
            index.record_round(&round(scraped, true, busy(300.0, 300, 0)));
            let out = index.tick(scraped + Duration::from_millis(200));
            assert!(out.intents.is_empty(), "at {s}s: {:?}", out.intents);
        }
    }

    #[test]
    fn pod_sourced_deployments_use_their_pod_gauge() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let pod = [
            ON,
            ("zeroscale.dev/metric-source", "pod"),
            ("zeroscale.dev/pod-metric-name", "vllm:num_requests_running"),
            ("zeroscale.dev/pod-metric-port", "8000"),
        ];
        index.apply_deployment(dep(&pod, 1, 1), t0);
        assert_eq!(
            index.pod_targets(),
            vec![PodTarget {
                key: key(),
                service: "llama".into(),
                metric: "vllm:num_requests_running".into(),
                port: 8000,
                path: "/metrics".into(),
            }]
        );
        // Activator rounds do not count for it, even complete idle ones.
        for s in 1..30 {
            let now = t0 + Duration::from_secs(s);
            index.record_round(&round(now, true, None));
            index.record_pod_metric(&key(), now, Some(2.0));
            assert!(index.tick(now).intents.is_empty());
        }
        // Failing pod scrapes: stale, never to zero.
        for s in 30..60 {
            let now = t0 + Duration::from_secs(s);
            index.record_pod_metric(&key(), now, None);
            assert!(index.tick(now).intents.is_empty());
        }
        // Idle pods: zero after the grace period.
        let mut to_zero = None;
        for s in 60..80 {
            let now = t0 + Duration::from_secs(s);
            index.record_pod_metric(&key(), now, Some(0.0));
            if let Some(i) = index.tick(now).intents.pop() {
                to_zero = Some((s, i.to));
                break;
            }
        }
        assert!(matches!(to_zero, Some((s, 0)) if s >= 64), "{to_zero:?}");
    }

    #[test]
    fn a_wake_by_another_replica_is_not_undone_before_fresh_data() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        // Found at start-up (not newly opted in: no initial-scale).
        index.begin_relist(Source::Deployments(None));
        index.apply_deployment(dep(&[ON], 0, 0), t0);
        index.end_relist(&Source::Deployments(None));
        // Idle at zero for a long time.
        assert!(run(&mut index, t0, 30, true, None).is_empty());
        // A wake (served by any replica) scales it to 1; the watch shows it before the next
        // scrape, whose last word was "idle".
        let woke = t0 + Duration::from_millis(30_300);
        index.apply_deployment(dep(&[ON], 1, 0), woke);
        let out = index.tick(woke + Duration::from_millis(100));
        assert!(out.intents.is_empty(), "undid the wake: {:?}", out.intents);
        // The next round shows the waiting requests: it stays up.
        let at = woke + Duration::from_millis(700);
        index.record_round(&round(at, true, busy(1.0, 0, 1)));
        assert!(index.tick(at).intents.is_empty());
    }

    #[test]
    fn a_relist_drops_deployments_deleted_meanwhile() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        index.apply_deployment(dep(&[ON], 1, 1), t0);
        let mut other = dep(&[ON], 1, 1);
        other.key = DeploymentKey::new("models", "other");
        index.apply_deployment(other.clone(), t0);
        index.begin_relist(Source::Deployments(None));
        index.apply_deployment(other, t0);
        assert_eq!(index.end_relist(&Source::Deployments(None)), vec![key()]);
        assert_eq!(index.managed_count(), 1);
    }

    #[test]
    fn a_deployment_opting_in_after_start_gets_initial_scale() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let initial = ("zeroscale.dev/initial-scale", "3");
        index.apply_deployment(dep(&[], 1, 1), t0);
        index.apply_deployment(dep(&[ON, initial], 1, 1), t0);
        index.record_round(&round(t0, true, None));
        let out = index.tick(t0);
        assert_eq!(
            out.intents.first().map(|i| (i.to, i.decision.reason)),
            Some((3, Reason::Initial)),
            "{:?}",
            out.intents
        );
    }

    #[test]
    fn the_adaptive_policy_explains_its_scale_to_zero_and_pre_warm_in_the_events() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        // The fast policy of `synced`, with 1 s bins and a 5 s pre-warm margin.
        let cm: BTreeMap<String, String> = [
            ("stable-window", "6s"),
            ("panic-window-percentage", "50"),
            ("scale-to-zero-grace-period", "5s"),
            ("adaptive-histogram-range", "4m"),
            ("adaptive-prewarm-margin", "5s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(index.apply_configmap(Some(&cm)).is_empty());
        let adaptive = ("zeroscale.dev/scale-to-zero-policy", "adaptive");
        index.apply_deployment(dep(&[ON, adaptive], 1, 1), t0);
        // A caller every minute, 3 s of traffic each time, for 15 minutes.
        let mut messages = Vec::new();
        for s in 0..15 * 60 {
            let now = t0 + Duration::from_secs(s);
            let sample = (s % 60 < 3).then_some(ModelSample {
                concurrency: 1.0,
                rps: 1.0,
                in_flight: 1,
                queued: 0,
                ..Default::default()
            });
            index.record_round(&round(now, true, sample));
            for intent in index.tick(now).intents {
                messages.push((s, crate::apply::scale_message(&intent)));
                index.scale_done(&key(), intent.to, true);
                index.apply_deployment(dep(&[ON, adaptive], intent.to, intent.to), now);
            }
        }
        // Before 10 gaps: the fixed 5 s grace after the 6 s window.
        assert!(
            messages[0].1.starts_with("Scaled 1 -> 0: idle for"),
            "{messages:?}"
        );
        assert!(messages[0].1.contains("grace period 5s"), "{messages:?}");
        // Then zero as soon as the window is empty, and a pre-warm 5 s before the next call
        // (gaps of 58 s: the last traffic at second 2 of each minute, the next at 60).
        let last: Vec<&str> = messages[messages.len() - 2..]
            .iter()
            .map(|(_, m)| m.as_str())
            .collect();
        assert_eq!(
            last,
            [
                "Scaled 1 -> 0: idle for 6s: next request expected in ~58s (p5 of 14 gaps)",
                "Scaled 0 -> 1: pre-warm: idle for 53s, next request expected in ~58s (p5 of 14 gaps)",
            ],
            "{messages:?}"
        );
    }

    #[test]
    fn a_deployment_opting_in_at_zero_replicas_stays_there_until_its_first_request() {
        let t0 = Instant::now();
        let mut index = synced(t0);
        let initial = ("zeroscale.dev/initial-scale", "3");
        index.apply_deployment(dep(&[ON, initial], 0, 0), t0);
        // Idle for longer than the stable window: no scale at all.
        for s in 0..10 {
            let now = t0 + Duration::from_secs(s);
            index.record_round(&round(now, true, None));
            let out = index.tick(now);
            assert!(out.intents.is_empty(), "second {s}: {:?}", out.intents);
        }
        // The first request waits in the activator: woken to activation-scale, not to
        // initial-scale.
        let now = t0 + Duration::from_secs(10);
        index.record_round(&round(now, true, busy(1.0, 0, 1)));
        let out = index.tick(now);
        assert_eq!(
            out.intents.first().map(|i| (i.to, i.decision.reason)),
            Some((1, Reason::Wake)),
            "{:?}",
            out.intents
        );
    }
}
