//! Sweeps: many policies over one trace, in parallel, and what to make of them.
//!
//! A sweep is the cartesian product of `key=v1,v2,...` axes (any ConfigMap key or
//! `zeroscale.dev/*` annotation, each value validated by zeroscale-config) over a base
//! configuration. Every (variant, model) pair is an independent, deterministic simulation, so
//! they run on `std::thread::scope` workers pulling jobs from an atomic counter: no extra
//! dependency (rayon would add a crate for one loop), and the result does not depend on the
//! number of threads or their timing.
//!
//! **Frontier**: the variants not dominated on (cold starts, replica-seconds), fewer being
//! better on both. **Recommendation**, two rules:
//! - default, the *knee*: on the frontier, scale both axes to 0..1 over the frontier's range
//!   and take the point farthest below the chord joining the frontier's two ends (the
//!   "Kneedle" knee: the point where buying fewer cold starts with replica-seconds stops
//!   paying); in scaled coordinates that is the least `x + y` (ties: fewer replica-seconds).
//!   A frontier of two points has no knee: the one with fewer cold starts is taken when it cuts
//!   cold starts by a larger share than it adds replica-seconds, else the cheaper one;
//! - with a price (`--cold-start-cost 60s`: one cold start is worth 60 replica-seconds to
//!   you), the variant with the least `replica-seconds + price x cold starts`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::policy::PolicyKind;
use crate::setup::{ConfigSource, ModelSettings, SetupError};
use crate::sim::{ModelOutcome, Options, simulate};
use crate::trace::Trace;
use crate::{RunOutcome, per_model, sim};

/// One policy of a sweep.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `key=value` of every axis.
    pub label: String,
    /// The policy.
    pub policy: PolicyKind,
    /// Resolved settings.
    pub settings: ModelSettings,
}

/// The variants of `axes` over `base`, in axis order (the last axis varies fastest).
pub fn variants(
    base: &ConfigSource,
    axes: &[(String, Vec<String>)],
    policy: &PolicyKind,
) -> Result<Vec<Variant>, SetupError> {
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|combo| {
            let mut source = base.clone();
            for (k, v) in &combo {
                source.set(k, v);
            }
            let label = if combo.is_empty() {
                "base".to_owned()
            } else {
                combo
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            Ok(Variant {
                label,
                policy: policy.clone(),
                settings: source.resolve()?,
            })
        })
        .collect()
}

/// Runs every variant over `trace` on `threads` workers.
pub fn run_all(
    trace: &Trace,
    variants: &[Variant],
    opts: &Options,
    threads: usize,
) -> Vec<RunOutcome> {
    let models = per_model(trace);
    let jobs: Vec<(usize, usize)> = (0..variants.len())
        .flat_map(|v| (0..models.len()).map(move |m| (v, m)))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<ModelOutcome>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(v, m)) = jobs.get(j) else { break };
                    let var = &variants[v];
                    let out = simulate(
                        &trace.models[m],
                        &models[m],
                        &var.settings,
                        &var.policy,
                        opts,
                        m as u64,
                    );
                    results.lock().expect("no worker panics while holding it")[j] = Some(out);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("workers are done").into_iter();
    variants
        .iter()
        .map(|var| {
            let models: Vec<ModelOutcome> = (0..models.len())
                .map(|_| results.next().flatten().expect("every job ran"))
                .collect();
            RunOutcome {
                label: var.label.clone(),
                policy: var.policy.name(),
                total: sim::total(&models),
                models,
            }
        })
        .collect()
}

/// Indices of the runs on the Pareto frontier of (cold starts, replica-seconds), sorted by
/// replica-seconds.
pub fn frontier(runs: &[RunOutcome]) -> Vec<usize> {
    let key = |r: &RunOutcome| (r.total.cold_starts, r.total.replica_seconds);
    let mut idx: Vec<usize> = (0..runs.len())
        .filter(|&i| {
            let (c, s) = key(&runs[i]);
            !runs.iter().any(|o| {
                let (oc, os) = key(o);
                oc <= c && os <= s && (oc < c || os < s)
            })
        })
        .collect();
    idx.sort_by(|&a, &b| key(&runs[a]).1.total_cmp(&key(&runs[b]).1));
    // Equal points: keep the first.
    idx.dedup_by(|a, b| key(&runs[*a]) == key(&runs[*b]));
    idx
}

/// The recommended run and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Recommendation {
    /// Index into the runs.
    pub index: usize,
    /// The run's label.
    pub label: String,
    /// The rule used.
    pub rule: String,
    /// One sentence for people.
    pub text: String,
}

/// Picks a run by the rules of the module docs. `cold_start_cost`: replica-seconds one cold
/// start is worth (`None`: the knee).
pub fn recommend(runs: &[RunOutcome], cold_start_cost: Option<f64>) -> Option<Recommendation> {
    let front = frontier(runs);
    let (index, rule) = match cold_start_cost {
        Some(price) => {
            let i = (0..runs.len()).min_by(|&a, &b| {
                let cost =
                    |r: &RunOutcome| r.total.replica_seconds + price * r.total.cold_starts as f64;
                cost(&runs[a]).total_cmp(&cost(&runs[b]))
            })?;
            (i, format!("least replica-seconds + {price} x cold starts"))
        }
        None => {
            let xs: Vec<f64> = front
                .iter()
                .map(|&i| runs[i].total.replica_seconds)
                .collect();
            let ys: Vec<f64> = front
                .iter()
                .map(|&i| runs[i].total.cold_starts as f64)
                .collect();
            let norm = |v: f64, all: &[f64]| {
                let (lo, hi) = all
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                if hi > lo { (v - lo) / (hi - lo) } else { 0.0 }
            };
            if let [cheap, safe] = front[..] {
                // Two points have no knee: take the one whose advantage is the larger share.
                let (a, b) = (&runs[cheap].total, &runs[safe].total);
                let fewer_cold = 1.0 - b.cold_starts as f64 / (a.cold_starts as f64).max(1.0);
                let more_cost = b.replica_seconds / a.replica_seconds.max(1e-9) - 1.0;
                let pick = if fewer_cold > more_cost { safe } else { cheap };
                (
                    pick,
                    format!(
                        "two frontier points: the second cuts cold starts by {:.0}% for {:.0}% more replica-seconds; the larger share wins",
                        100.0 * fewer_cold,
                        100.0 * more_cost
                    ),
                )
            } else {
                let k = (0..front.len()).min_by(|&a, &b| {
                    let d = |k: usize| norm(xs[k], &xs) + norm(ys[k], &ys);
                    d(a).total_cmp(&d(b))
                })?;
                (front[k], "knee of the frontier (farthest below the chord between its ends, both axes scaled to the frontier's range)".to_owned())
            }
        }
    };
    let r = &runs[index];
    let best_cold = runs.iter().map(|r| r.total.cold_starts).min().unwrap_or(0);
    let least_rs = runs
        .iter()
        .map(|r| r.total.replica_seconds)
        .fold(f64::MAX, f64::min);
    let text = format!(
        "recommendation: {} -> {} cold starts ({:.2}% of {} requests; fewest of all: {}), {:.0} replica-seconds ({:.2}x the least: {:.0})",
        r.label,
        r.total.cold_starts,
        100.0 * r.total.cold_starts as f64 / r.total.requests.max(1) as f64,
        r.total.requests,
        best_cold,
        r.total.replica_seconds,
        r.total.replica_seconds / least_rs.max(1e-9),
        least_rs
    );
    Some(Recommendation {
        index,
        label: r.label.clone(),
        rule,
        text,
    })
}

/// Each model on the variant that suits it best at one price: what a per-model choice of the
/// swept setting would reach (an upper bound for a policy that learns per model, and the gap
/// to the best single setting).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PerModel {
    /// Replica-seconds one cold start is worth.
    pub price: f64,
    /// For each model (trace order), the label of the variant chosen.
    pub choices: Vec<String>,
    /// Cold starts of that combination.
    pub cold_starts: u64,
    /// Replica-seconds of that combination.
    pub replica_seconds: f64,
    /// How many models chose each variant, in variant order (variants never chosen left out).
    pub counts: Vec<(String, usize)>,
}

/// Per model, the variant with the least `replica-seconds + price x cold starts` (ties: the
/// first variant). `None` without runs.
pub fn per_model_choice(runs: &[RunOutcome], price: f64) -> Option<PerModel> {
    let models = runs.first()?.models.len();
    let cost = |m: &ModelOutcome| m.replica_seconds + price * m.cold_starts as f64;
    let mut out = PerModel {
        price,
        choices: Vec::with_capacity(models),
        cold_starts: 0,
        replica_seconds: 0.0,
        counts: Vec::new(),
    };
    let mut counts = vec![0usize; runs.len()];
    for m in 0..models {
        let v = (0..runs.len())
            .min_by(|&a, &b| cost(&runs[a].models[m]).total_cmp(&cost(&runs[b].models[m])))?;
        counts[v] += 1;
        let o = &runs[v].models[m];
        out.cold_starts += o.cold_starts;
        out.replica_seconds += o.replica_seconds;
        out.choices.push(runs[v].label.clone());
    }
    out.counts = counts
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| (runs[v].label.clone(), n))
        .collect();
    Some(out)
}

/// Splits `key=v1,v2,...`.
pub fn axis(s: &str) -> Result<(String, Vec<String>), SetupError> {
    let (k, v) = crate::setup::key_value(s)?;
    Ok((
        k,
        v.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, cold: u64, rs: f64) -> RunOutcome {
        RunOutcome {
            label: label.into(),
            policy: "engine",
            total: ModelOutcome {
                cold_starts: cold,
                replica_seconds: rs,
                requests: 1000,
                ..Default::default()
            },
            models: vec![],
        }
    }

    #[test]
    fn frontier_drops_dominated_points() {
        let runs = [
            run("a", 100, 10.0),
            run("b", 50, 20.0),
            run("c", 60, 30.0),
            run("d", 10, 100.0),
        ];
        assert_eq!(frontier(&runs), [0, 1, 3]);
    }

    #[test]
    fn knee_and_price() {
        // Cold starts fall fast at first, then slowly: the knee is "b".
        //   scaled (replica-s, cold): a (0, 1), b (0.11, 0.03), c (0.56, 0.01), d (1, 0)
        let runs = [
            run("a", 100, 10.0),
            run("b", 12, 20.0),
            run("c", 10, 60.0),
            run("d", 9, 100.0),
        ];
        assert_eq!(recommend(&runs, None).unwrap().label, "b");
        // A frontier that bends late: a (0, 1), b (0.6, 0.58), c (0.93, 0.02), d (1, 0); the
        // point nearest to (0, 0) would be b, but c is where the cold starts are gone.
        let late = [
            run("a", 1716, 79694.0),
            run("b", 1021, 97286.0),
            run("c", 71, 107762.0),
            run("d", 43, 109787.0),
        ];
        assert_eq!(recommend(&late, None).unwrap().label, "c");
        // Two points: -72% cold starts for +57% replica-seconds is worth it; for +80% it is not.
        let two = [run("a", 180, 344.0), run("b", 51, 540.0)];
        assert_eq!(recommend(&two, None).unwrap().label, "b");
        let two = [run("a", 180, 344.0), run("b", 51, 620.0)];
        assert_eq!(recommend(&two, None).unwrap().label, "a");
        // A cold start worth 1000 replica-seconds: the fewest cold starts win.
        assert_eq!(recommend(&runs, Some(1000.0)).unwrap().label, "d");
        // Worth nothing: the cheapest.
        assert_eq!(recommend(&runs, Some(0.0)).unwrap().label, "a");
    }

    fn fleet(label: &str, per_model: &[(u64, f64)]) -> RunOutcome {
        let models: Vec<ModelOutcome> = per_model
            .iter()
            .map(|&(c, rs)| ModelOutcome {
                cold_starts: c,
                replica_seconds: rs,
                ..Default::default()
            })
            .collect();
        RunOutcome {
            label: label.into(),
            policy: "engine",
            total: sim::total(&models),
            models,
        }
    }

    #[test]
    fn per_model_choice_beats_every_single_setting_at_its_price() {
        // Model 0 is busy (short grace is cheap and costs no cold starts), model 1 is rare.
        let runs = [
            fleet("short", &[(0, 100.0), (10, 50.0)]),
            fleet("long", &[(0, 150.0), (1, 200.0)]),
        ];
        let p = per_model_choice(&runs, 60.0).unwrap();
        assert_eq!(p.choices, ["short", "long"]);
        assert_eq!((p.cold_starts, p.replica_seconds), (1, 300.0));
        assert_eq!(p.counts, [("short".to_owned(), 1), ("long".to_owned(), 1)]);
        let cost = |c: u64, rs: f64| rs + 60.0 * c as f64;
        for r in &runs {
            assert!(
                cost(p.cold_starts, p.replica_seconds)
                    <= cost(r.total.cold_starts, r.total.replica_seconds)
            );
        }
    }

    #[test]
    fn axes_multiply() {
        let axes = [
            axis("scale-to-zero-grace-period=5s,1m").unwrap(),
            axis("zeroscale.dev/max-scale=2,3").unwrap(),
        ];
        let v = variants(&ConfigSource::default(), &axes, &PolicyKind::Engine).unwrap();
        let labels: Vec<_> = v.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "scale-to-zero-grace-period=5s zeroscale.dev/max-scale=2",
                "scale-to-zero-grace-period=5s zeroscale.dev/max-scale=3",
                "scale-to-zero-grace-period=1m zeroscale.dev/max-scale=2",
                "scale-to-zero-grace-period=1m zeroscale.dev/max-scale=3"
            ]
        );
        assert_eq!(v[3].settings.params.max_scale, 3);
        assert!(
            variants(
                &ConfigSource::default(),
                &[axis("scale-to-zero-grace-period=2h").unwrap()],
                &PolicyKind::Engine
            )
            .is_err()
        );
    }
}
