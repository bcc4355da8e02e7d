//! Reading the activators' stat feed (`GET /v1/feed`, [`zeroscale_config::feed`]): pages in,
//! [`Round`]s out. Pure: time is an argument, the pages are values.
//!
//! Per activator replica the reader keeps the cursor and the values of the last page it
//! applied, and asks for what changed since. Because every value on a page is cumulative (or
//! a current gauge), a page lost on the way or read twice changes nothing: the next applied
//! page is compared with the last applied one, over the activator's own clock between them.

use std::collections::HashMap;
use std::time::Instant;

use zeroscale_config::feed::{FeedDemand, FeedModel, FeedPage};

use super::{ModelSample, Round, ScrapeError};
use crate::DeploymentKey;

/// The result of reading one activator replica's feed.
#[derive(Debug)]
pub struct FeedRead {
    /// Stable identity of the replica (its admin address).
    pub endpoint: String,
    /// When the answer arrived.
    pub at: Instant,
    /// The page, or why there is none.
    pub result: Result<FeedPage, ScrapeError>,
}

/// What the reader holds of one model after applying a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    incarnation: u64,
    concurrency_us: u64,
    requests: u64,
    in_flight: u64,
    queued: u64,
    demand: Option<FeedDemand>,
}

impl From<&FeedModel> for Seen {
    fn from(m: &FeedModel) -> Self {
        Self {
            incarnation: m.incarnation,
            concurrency_us: m.concurrency_us,
            requests: m.requests,
            in_flight: m.in_flight,
            queued: m.queued,
            demand: m.demand,
        }
    }
}

/// One activator replica as of the last page applied.
#[derive(Debug)]
struct Source {
    instance: u64,
    generation: u64,
    uptime_ns: u64,
    at: Instant,
    models: HashMap<DeploymentKey, Seen>,
    /// The last page that listed a model listed one without demand figures (an activator
    /// older than them).
    legacy: bool,
}

/// Turns each replica's pages into rates and sums them into rounds.
#[derive(Debug, Default)]
pub struct FeedDeriver {
    sources: HashMap<String, Source>,
}

/// How a page relates to what the reader held of its replica.
enum Basis {
    /// First page of this replica: no earlier values to compare with.
    FirstSight,
    /// The replica restarted (a new instance): its counters started from zero at some point
    /// after the last page; the increase is the new value, over the reader's time.
    Restarted(f64),
    /// The same instance: increases over the activator's time between the two pages.
    Same(f64),
}

impl FeedDeriver {
    /// The cursor to send to `endpoint`: `(instance, generation)` of the last page applied.
    pub fn cursor(&self, endpoint: &str) -> Option<(u64, u64)> {
        self.sources
            .get(endpoint)
            .map(|s| (s.instance, s.generation))
    }

    /// Replicas whose pages are held.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Combines one round of reads. Replicas absent from `reads` are forgotten (they left the
    /// Service); failed replicas keep their last page, so the next good one covers the gap.
    /// Only models with something to say are in the round: absent means zero traffic.
    pub fn round(&mut self, at: Instant, reads: Vec<FeedRead>) -> Round {
        let mut models: HashMap<DeploymentKey, ModelSample> = HashMap::new();
        let mut failures = Vec::new();
        let mut complete = !reads.is_empty();
        let mut demand = true;
        let present: std::collections::HashSet<&str> =
            reads.iter().map(|r| r.endpoint.as_str()).collect();
        self.sources.retain(|k, _| present.contains(k.as_str()));
        for read in reads {
            let page = match read.result {
                Ok(p) => p,
                Err(e) => {
                    complete = false;
                    failures.push((read.endpoint, e.to_string()));
                    continue;
                }
            };
            let previous = self.sources.remove(&read.endpoint);
            let source = Self::apply(previous, &page, read.at, &mut models);
            demand &= !source.legacy;
            self.sources.insert(read.endpoint, source);
        }
        Round {
            at,
            complete,
            models,
            failures,
            demand,
        }
    }

    /// Applies one page on top of what was held; adds its contribution to `out`.
    fn apply(
        previous: Option<Source>,
        page: &FeedPage,
        at: Instant,
        out: &mut HashMap<DeploymentKey, ModelSample>,
    ) -> Source {
        let basis = match &previous {
            None => Basis::FirstSight,
            Some(p) if p.instance != page.instance => {
                Basis::Restarted(at.saturating_duration_since(p.at).as_secs_f64())
            }
            Some(p) => Basis::Same(page.uptime_ns.saturating_sub(p.uptime_ns) as f64 / 1e9),
        };
        let was_legacy = previous.as_ref().is_some_and(|p| p.legacy);
        let mut held = match (previous, &basis) {
            (Some(p), Basis::Same(_)) => p.models,
            _ => HashMap::new(),
        };
        // A full page replaces what was held; a delta page amends it.
        let before = if page.full {
            std::mem::take(&mut held)
        } else {
            for k in &page.removed {
                held.remove(&DeploymentKey::new(&k.namespace, &k.deployment));
            }
            let listed: std::collections::HashSet<(&str, &str)> = page
                .models
                .iter()
                .map(|m| (m.namespace.as_str(), m.deployment.as_str()))
                .collect();
            // Unlisted models did not change: their gauges still stand.
            for (key, seen) in &held {
                if (seen.in_flight > 0 || seen.queued > 0)
                    && !listed.contains(&(key.namespace.as_str(), key.deployment.as_str()))
                {
                    let s = out.entry(key.clone()).or_default();
                    s.in_flight += seen.in_flight;
                    s.queued += seen.queued;
                    s.demand.in_service += seen.in_flight as f64;
                }
            }
            HashMap::new()
        };
        for m in &page.models {
            let key = DeploymentKey::new(&m.namespace, &m.deployment);
            let now = Seen::from(m);
            // Not held before, on the same instance: it was listed after the last page, so
            // its counters started from zero since then.
            let then = before
                .get(&key)
                .or_else(|| held.get(&key))
                .filter(|s| s.incarnation == now.incarnation)
                .copied();
            let s = out.entry(key.clone()).or_default();
            s.in_flight += now.in_flight;
            s.queued += now.queued;
            match basis {
                Basis::Same(dt) | Basis::Restarted(dt) if dt > 0.0 => {
                    let (us, requests) = match then {
                        Some(t) => (
                            now.concurrency_us.saturating_sub(t.concurrency_us),
                            now.requests.saturating_sub(t.requests),
                        ),
                        None => (now.concurrency_us, now.requests),
                    };
                    s.concurrency += us as f64 / 1e6 / dt;
                    s.rps += requests as f64 / dt;
                    if let Some(d) = now.demand {
                        // The same rule as the integral: increases since the last page of this
                        // incarnation, else the whole value (counters started since).
                        let t = then.and_then(|t| t.demand).unwrap_or_default();
                        let inc = |n: u64, t: u64| n.saturating_sub(t) as f64;
                        s.demand.arrivals += inc(d.arrivals, t.arrivals) / dt;
                        s.demand.in_service += inc(d.pod_us, t.pod_us) / 1e6 / dt;
                        s.demand.served += inc(d.served, t.served) / dt;
                        s.demand.service_seconds += inc(d.service_us, t.service_us) / 1e6 / dt;
                    }
                }
                // No time between the two pages to average over: the gauges stand in.
                _ => {
                    s.concurrency += (now.in_flight + now.queued) as f64;
                    s.demand.in_service += now.in_flight as f64;
                }
            }
            held.insert(key, now);
        }
        let legacy = if page.models.is_empty() {
            was_legacy
        } else {
            page.models.iter().any(|m| m.demand.is_none())
        };
        Source {
            instance: page.instance,
            generation: page.generation,
            uptime_ns: page.uptime_ns,
            at,
            models: held,
            legacy,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use zeroscale_config::feed::FeedKey;

    use super::*;

    fn model(dep: &str, inc: u64, secs: f64, requests: u64, fl: u64, q: u64) -> FeedModel {
        FeedModel {
            namespace: "models".into(),
            deployment: dep.into(),
            incarnation: inc,
            concurrency_us: (secs * 1e6).round() as u64,
            requests,
            in_flight: fl,
            queued: q,
            demand: None,
            last_request_ns: None,
            cold_start: None,
        }
    }

    fn page(
        instance: u64,
        generation: u64,
        uptime_s: f64,
        full: bool,
        models: Vec<FeedModel>,
    ) -> FeedPage {
        FeedPage {
            instance,
            generation,
            full,
            uptime_ns: (uptime_s * 1e9) as u64,
            models,
            removed: vec![],
        }
    }

    fn ok(endpoint: &str, at: Instant, p: FeedPage) -> FeedRead {
        FeedRead {
            endpoint: endpoint.into(),
            at,
            result: Ok(p),
        }
    }

    fn failed(endpoint: &str, at: Instant) -> FeedRead {
        FeedRead {
            endpoint: endpoint.into(),
            at,
            result: Err(ScrapeError::Timeout {
                url: endpoint.into(),
                timeout: Duration::from_secs(1),
            }),
        }
    }

    fn key(d: &str) -> DeploymentKey {
        DeploymentKey::new("models", d)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn concurrency_is_the_integral_over_the_activators_clock_and_idle_models_are_absent() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        let r = d.round(
            t0,
            vec![ok(
                "a",
                t0,
                page(
                    1,
                    5,
                    10.0,
                    true,
                    vec![
                        model("m", 1, 100.0, 10, 4, 1),
                        model("idle", 2, 0.0, 0, 0, 0),
                    ],
                ),
            )],
        );
        // First sight: the gauges stand in.
        assert!(close(r.models[&key("m")].concurrency, 5.0));
        assert!(r.complete);
        assert_eq!(d.cursor("a"), Some((1, 5)));
        // 2 s of the activator's clock later (the reader's clock says 3 s: the activator's
        // counts): m only, idle is not listed and contributes nothing.
        let t1 = t0 + Duration::from_secs(3);
        let r = d.round(
            t1,
            vec![ok(
                "a",
                t1,
                page(1, 6, 12.0, false, vec![model("m", 1, 107.0, 30, 0, 0)]),
            )],
        );
        let s = r.models[&key("m")];
        assert!(close(s.concurrency, 3.5), "{s:?}");
        assert!(close(s.rps, 10.0));
        assert_eq!((s.in_flight, s.queued), (0, 0));
        assert!(!r.models.contains_key(&key("idle")));
        assert_eq!(d.cursor("a"), Some((1, 6)));
    }

    fn with_demand(
        mut m: FeedModel,
        arrivals: u64,
        pod_s: f64,
        served: u64,
        svc_s: f64,
    ) -> FeedModel {
        m.demand = Some(FeedDemand {
            arrivals,
            pod_us: (pod_s * 1e6).round() as u64,
            served,
            service_us: (svc_s * 1e6).round() as u64,
        });
        m
    }

    /// The round's demand rates of model `a`: arrivals, in service, served, service seconds.
    fn rates(r: &Round) -> [f64; 4] {
        let d = r.models[&key("a")].demand;
        [d.arrivals, d.in_service, d.served, d.service_seconds]
    }

    fn near(a: [f64; 4], b: [f64; 4]) -> bool {
        a.iter().zip(b).all(|(x, y)| close(*x, y))
    }

    #[test]
    fn demand_rates_survive_lost_and_repeated_pages_and_a_restart() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut d = FeedDeriver::default();
        let a = |arr, pod, srv, svc| with_demand(model("a", 1, 0.0, 0, 0, 0), arr, pod, srv, svc);
        let first = page(7, 1, 10.0, true, vec![a(5, 1.0, 4, 0.8)]);
        let r = d.round(s(0), vec![ok("x", s(0), first)]);
        assert!(r.demand);
        // Two seconds later (activator clock): 10 more arrivals, 3 s more at pods, 6 more
        // served taking 2.4 s in all.
        let p2 = page(7, 2, 12.0, false, vec![a(15, 4.0, 10, 3.2)]);
        let r = d.round(s(2), vec![ok("x", s(2), p2.clone())]);
        assert!(near(rates(&r), [5.0, 1.5, 3.0, 1.2]), "{:?}", rates(&r));
        // The same page again: no time between them, nothing counted twice.
        let r = d.round(s(3), vec![ok("x", s(3), p2)]);
        assert!(near(rates(&r), [0.0; 4]), "{:?}", rates(&r));
        // A page lost (the read failed), then one 4 s after the last applied covers the gap.
        let r = d.round(s(4), vec![failed("x", s(4))]);
        assert!(!r.complete);
        let p4 = page(7, 4, 16.0, false, vec![a(23, 6.0, 18, 5.2)]);
        let r = d.round(s(6), vec![ok("x", s(6), p4)]);
        assert!(near(rates(&r), [2.0, 0.5, 2.0, 0.5]), "{:?}", rates(&r));
        // The activator restarts: its counters start from zero, over the reader's 2 s.
        let p = page(8, 1, 1.0, true, vec![a(4, 1.0, 2, 0.6)]);
        let r = d.round(s(8), vec![ok("x", s(8), p)]);
        assert!(near(rates(&r), [2.0, 0.5, 1.0, 0.3]), "{:?}", rates(&r));
    }

    #[test]
    fn a_replica_without_demand_figures_turns_them_off_for_the_round() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        let new = with_demand(model("a", 1, 1.0, 1, 0, 0), 1, 1.0, 1, 1.0);
        let old = model("a", 1, 1.0, 1, 0, 0);
        let r = d.round(
            t0,
            vec![
                ok("x", t0, page(7, 1, 1.0, true, vec![new])),
                ok("y", t0, page(9, 1, 1.0, true, vec![old])),
            ],
        );
        assert!(!r.demand);
        // An empty page from the old replica keeps it old.
        let later = t0 + Duration::from_secs(1);
        let r = d.round(
            later,
            vec![
                ok("x", later, page(7, 2, 2.0, false, vec![])),
                ok("y", later, page(9, 2, 2.0, false, vec![])),
            ],
        );
        assert!(!r.demand);
        let r = d.round(later, vec![ok("x", later, page(7, 3, 2.0, false, vec![]))]);
        assert!(r.demand, "the old replica left");
    }

    #[test]
    fn a_lost_page_and_a_repeated_page_never_miscount() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                page(1, 1, 0.0, true, vec![model("m", 1, 0.0, 0, 0, 0)]),
            )],
        );
        // The page at uptime 1 s was lost (the activator served it, the reader never got it);
        // the reader asks again with its old cursor and gets everything since.
        let t2 = t0 + Duration::from_secs(2);
        let r = d.round(
            t2,
            vec![ok(
                "a",
                t2,
                page(1, 3, 2.0, false, vec![model("m", 1, 3.0, 8, 1, 0)]),
            )],
        );
        let s = r.models[&key("m")];
        assert!(
            close(s.concurrency, 1.5),
            "3 request-seconds over 2 s: {s:?}"
        );
        assert!(close(s.rps, 4.0));
        // The same values once more (a repeated read): no time passed on the activator's
        // clock, nothing is counted twice; the gauges stand.
        let r = d.round(
            t2,
            vec![ok(
                "a",
                t2,
                page(1, 3, 2.0, false, vec![model("m", 1, 3.0, 8, 1, 0)]),
            )],
        );
        let s = r.models[&key("m")];
        assert_eq!((s.in_flight, s.rps), (1, 0.0));
        assert!(close(s.concurrency, 1.0), "gauges: {s:?}");
        // And the next page still averages from the last applied values.
        let t3 = t0 + Duration::from_secs(3);
        let r = d.round(
            t3,
            vec![ok(
                "a",
                t3,
                page(1, 4, 3.0, false, vec![model("m", 1, 4.0, 8, 1, 0)]),
            )],
        );
        assert!(close(r.models[&key("m")].concurrency, 1.0));
    }

    #[test]
    fn a_failed_read_makes_the_round_incomplete_and_the_next_page_covers_the_gap() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                page(1, 1, 0.0, true, vec![model("m", 1, 10.0, 0, 0, 0)]),
            )],
        );
        let t1 = t0 + Duration::from_secs(1);
        let r = d.round(t1, vec![failed("a", t1)]);
        assert!(!r.complete);
        assert_eq!(r.failures.len(), 1);
        assert!(r.models.is_empty());
        assert_eq!(
            d.cursor("a"),
            Some((1, 1)),
            "the cursor of the last applied page"
        );
        let t4 = t0 + Duration::from_secs(4);
        let r = d.round(
            t4,
            vec![ok(
                "a",
                t4,
                page(1, 3, 4.0, false, vec![model("m", 1, 18.0, 0, 0, 0)]),
            )],
        );
        assert!(r.complete);
        assert!(close(r.models[&key("m")].concurrency, 2.0));
    }

    #[test]
    fn a_restarted_activator_counts_from_zero_over_the_readers_time() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                page(1, 9, 500.0, true, vec![model("m", 1, 500.0, 90, 0, 0)]),
            )],
        );
        // Same address, new instance, its own clock and counters from zero.
        let t1 = t0 + Duration::from_secs(2);
        let r = d.round(
            t1,
            vec![ok(
                "a",
                t1,
                page(2, 1, 1.0, true, vec![model("m", 1, 1.5, 4, 1, 0)]),
            )],
        );
        let s = r.models[&key("m")];
        assert!(close(s.concurrency, 0.75), "{s:?}");
        assert!(close(s.rps, 2.0));
        assert_eq!(s.in_flight, 1);
        assert_eq!(d.cursor("a"), Some((2, 1)));
    }

    #[test]
    fn a_model_listed_after_the_last_page_counts_from_zero_and_removals_drop_gauges() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        d.round(
            t0,
            vec![ok(
                "a",
                t0,
                page(1, 1, 0.0, true, vec![model("m", 1, 50.0, 0, 2, 0)]),
            )],
        );
        let t1 = t0 + Duration::from_secs(1);
        // m unchanged (not listed, but its requests... are held, so it would be listed; here
        // it is a queue-only change that kept its gauge) and n new; a re-created m later.
        let mut p = page(1, 2, 1.0, false, vec![model("n", 2, 0.5, 1, 0, 0)]);
        p.models.push(model("m", 1, 51.0, 0, 2, 0));
        let r = d.round(t1, vec![ok("a", t1, p)]);
        assert!(close(r.models[&key("n")].concurrency, 0.5));
        assert!(close(r.models[&key("m")].concurrency, 1.0));
        assert_eq!(r.models[&key("m")].in_flight, 2, "not counted twice");
        // m is re-created under a new incarnation: its counters start from zero.
        let t2 = t0 + Duration::from_secs(2);
        let r = d.round(
            t2,
            vec![ok(
                "a",
                t2,
                page(1, 3, 2.0, false, vec![model("m", 7, 0.25, 0, 0, 0)]),
            )],
        );
        assert!(close(r.models[&key("m")].concurrency, 0.25));
        // m removed: its gauges no longer count.
        let t3 = t0 + Duration::from_secs(3);
        let mut p = page(1, 4, 3.0, false, vec![]);
        p.removed.push(FeedKey {
            namespace: "models".into(),
            deployment: "m".into(),
        });
        let r = d.round(t3, vec![ok("a", t3, p)]);
        assert!(r.models.is_empty(), "{:?}", r.models);
    }

    #[test]
    fn unlisted_models_keep_their_gauges_and_replicas_are_summed() {
        let t0 = Instant::now();
        let mut d = FeedDeriver::default();
        d.round(
            t0,
            vec![
                ok(
                    "a",
                    t0,
                    page(1, 1, 0.0, true, vec![model("m", 1, 0.0, 0, 0, 3)]),
                ),
                ok(
                    "b",
                    t0,
                    page(2, 1, 0.0, true, vec![model("m", 1, 0.0, 0, 1, 0)]),
                ),
            ],
        );
        let t1 = t0 + Duration::from_secs(1);
        // a's m did not change (a queue stays as it was); b's m moved.
        let r = d.round(
            t1,
            vec![
                ok("a", t1, page(1, 2, 1.0, false, vec![])),
                ok(
                    "b",
                    t1,
                    page(2, 2, 1.0, false, vec![model("m", 1, 1.0, 0, 1, 0)]),
                ),
            ],
        );
        let s = r.models[&key("m")];
        assert_eq!((s.in_flight, s.queued), (1, 3));
        assert!(close(s.concurrency, 1.0));
        assert!(r.complete);
        // b leaves the Service: forgotten.
        let r = d.round(t1, vec![ok("a", t1, page(1, 3, 1.0, false, vec![]))]);
        assert_eq!(d.sources(), 1);
        assert_eq!(r.models[&key("m")].queued, 3);
    }

    #[test]
    fn no_replicas_is_never_a_complete_round() {
        let mut d = FeedDeriver::default();
        assert!(!d.round(Instant::now(), vec![]).complete);
    }
}
