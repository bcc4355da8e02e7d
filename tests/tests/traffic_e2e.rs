//! End-to-end traffic tests: live load through two real activator processes (and the real
//! autoscaler) while `sample-model` pods come and go on the local cluster's real node (containers
//! from the `sample-model` image). Every request must be answered 200.
//!
//! 1. Steady load (60 req/s) while the Deployment is scaled 8 -> 1 -> 8 -> 1 -> 0 -> (wake) 1
//!    -> 8 -> 1 -> 8 -> 1 -> 8 -> 1: pods get SIGTERM under load (sample-model then stops
//!    listening and closes its idle keep-alive connections, which the activators hold in their
//!    pools), and at 0 the requests wait in the activators until the wake brings a pod up.
//!    Every terminated pod must have exited 0 (drained, not killed at the grace period's end).
//! 2. A time-compressed replay of a cut of the Azure LLM inference trace (coding service):
//!    bursts and quiet gaps, so the autoscaler scales up, down, to zero and wakes again.
//! 3. A wake storm: 50 idle models at zero (`ZEROSCALE_WAKE_STORM=N` for another count) get one
//!    request each, all at once, over the two activators; the time until all are answered is
//!    printed.
//!
//! Both bound their load in time and count, and send only to the activators' addresses in the
//! test's private network namespace.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use zeroscale_e2e::traffic::{self, LocalAddon, ReplicaPoint, ReplicaWatch, SteadyLoad, Summary};
use zeroscale_e2e::{
    Ctx, ExitWatch, eventually, pod_ready, pods_of, sample_model_deployment, test,
};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "steady_load_while_scaling_8_1_0_and_back_is_all_200",
            steady_load_while_scaling_8_1_0_and_back_is_all_200,
        ),
        test(
            "azure_trace_replay_through_scale_to_zero_is_all_200",
            azure_trace_replay_through_scale_to_zero_is_all_200,
        ),
        test(
            "wake_storm_of_idle_models_is_all_200",
            wake_storm_of_idle_models_is_all_200,
        ),
    ])
}

/// Creates Deployment `name` (sample-model with `args`, `replicas`) with `annotations`, and its
/// Service.
async fn deploy_model(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    args: &[&str],
    annotations: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut d = sample_model_deployment(name, replicas, args);
    d.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &zeroscale_e2e::service_for(name))
        .await?;
    Ok(())
}

/// `(pods, ready pods, names)` of `app: name` (terminating pods included until they are gone).
async fn pod_counts(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<(usize, usize, Vec<String>)> {
    let pods = pods_of(client, ns, name).await?;
    let ready = pods
        .iter()
        .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
        .count();
    let names = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    Ok((pods.len(), ready, names))
}

/// Waits until exactly `n` pods of `name` exist and all are ready (the rest terminated).
async fn wait_pods(client: &Client, ns: &str, name: &str, n: usize) -> anyhow::Result<()> {
    eventually(
        &format!("exactly {n} ready pods of {name}"),
        Duration::from_secs(60),
        || async move {
            let (all, ready, _) = pod_counts(client, ns, name).await?;
            Ok((all == n && ready == n).then_some(()))
        },
    )
    .await
}

/// Number of wakes in a timeline: `spec.replicas` going from 0 to more (the first point counts
/// when it is already above 0 after a start at 0: a wake seen late).
fn wakes(points: &[ReplicaPoint], starts_at_zero: bool) -> usize {
    let mut prev = if starts_at_zero { Some(0) } else { None };
    let mut n = 0;
    for p in points {
        if prev == Some(0) && p.spec > 0 {
            n += 1;
        }
        prev = Some(p.spec);
    }
    n
}

/// Activator log lines about failed requests, for the failure message: the failures first,
/// then the retries.
fn failure_log_lines(addon: &LocalAddon) -> String {
    let mut out = String::new();
    for (i, a) in addon.activators.iter().enumerate() {
        for (what, needles, max) in [
            ("failed", &["request failed", "ERROR"][..], 30),
            (
                "retried",
                &[
                    "retrying on another pod",
                    "reused connection",
                    "sending again",
                ][..],
                15,
            ),
        ] {
            let lines = a.proc.grep(needles, usize::MAX);
            out.push_str(&format!(
                "--- activator {i}: {} log lines about requests {what} (first {max}) ---\n",
                lines.len()
            ));
            for l in lines.iter().take(max) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// Counts of activator log lines that show the scale-downs were felt: connect retries on another
/// pod, re-sends after a reused connection closed, 502s (informational; the texts are the
/// activator's and may change).
fn retry_counts(addon: &LocalAddon) -> String {
    let count = |needles: &[&str]| -> usize {
        addon
            .activators
            .iter()
            .map(|a| a.proc.grep(needles, usize::MAX).len())
            .sum()
    };
    format!(
        "activator log lines: connect retried on another pod {}, re-sent after a reused \
         connection closed {}, request failed {}",
        count(&["retrying on another pod"]),
        count(&["reused connection closed"]),
        count(&["request failed"]),
    )
}

/// Fails with the list of failures (status, body, when, which pod) and the activators' log lines
/// about them, unless every request got a 200.
fn ensure_all_200(summary: &Summary, addon: &LocalAddon, context: &str) -> anyhow::Result<()> {
    let kinds = summary
        .failure_kinds()
        .into_iter()
        .map(|(k, n)| format!("  {n} x {k}\n"))
        .collect::<String>();
    ensure!(
        summary.failures.is_empty(),
        "{} of {} requests were not answered 200 ({context})\n{summary}\nby kind:\n{kinds}\
         failures:\n{}\n{}",
        summary.failures.len(),
        summary.sent,
        summary.failure_lines(60),
        failure_log_lines(addon),
    );
    Ok(())
}

/// The scale steps of the steady-load test after it starts at 8 (`0`: scale to zero, then the
/// activators' waiting requests wake it to 1).
const SCALE_STEPS: &[i32] = &[1, 8, 1, 0, 8, 1, 8, 1, 8, 1];
/// Time at each step once the pods have settled.
const DWELL: Duration = Duration::from_secs(2);

/// Steady load (8 clients, 7.5 req/s each, 60 req/s over two activators) while the Deployment is
/// scaled by annotations and `spec.replicas` through [`SCALE_STEPS`]: each 8 -> 1 sends SIGTERM
/// to seven pods under load, 1 -> 0 to the last one (requests then wait for the wake). Every
/// request must get a 200.
async fn steady_load_while_scaling_8_1_0_and_back_is_all_200(ctx: Ctx) -> anyhow::Result<()> {
    let began = Instant::now();
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let name = "steady";
    deploy_model(
        &client,
        &ns,
        name,
        8,
        &[
            "--model-name=steady",
            "--service-time=20ms",
            "--load-delay=1s",
        ],
        &[
            ("zeroscale.dev/enabled", "true"),
            ("zeroscale.dev/container-concurrency", "10"),
            ("zeroscale.dev/min-scale", "8"),
            ("zeroscale.dev/max-scale", "8"),
        ],
    )
    .await?;
    let addon = LocalAddon::start(
        &cluster,
        &client,
        &ns,
        2,
        zeroscale_testkit::addon::fast_config(),
    )
    .await?;
    wait_pods(&client, &ns, name, 8)
        .await
        .with_context(|| addon.logs())?;
    let setup = began.elapsed();

    let watch = ReplicaWatch::start(&client, &ns, name);
    let exit_watch = ExitWatch::start(client.clone(), &ns, &format!("app={name}"));
    let load = SteadyLoad::start(
        addon.listen_addrs(),
        8,
        7.5,
        format!("/v1/models/{name}:predict"),
        json!({"instances": [[1.0, 2.0]]}),
        Duration::from_secs(150),
    );
    let mut phases: Vec<(Duration, String)> = Vec::new();
    let mark = |phases: &mut Vec<(Duration, String)>, load: &SteadyLoad, what: &str| {
        phases.push((
            load.elapsed(),
            format!("{what} (sent so far {})", load.sent()),
        ));
    };
    let steps = async {
        mark(&mut phases, &load, "8 pods, warming the pools");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut pods = 8;
        for &want in SCALE_STEPS {
            mark(&mut phases, &load, &format!("scale {pods} -> {want}"));
            if want > 0 {
                traffic::set_scale(&client, &ns, name, want, want, Some(want)).await?;
                wait_pods(&client, &ns, name, want as usize).await?;
                mark(&mut phases, &load, &format!("{want} ready, the rest gone"));
            } else {
                let (_, _, before) = pod_counts(&client, &ns, name).await?;
                traffic::set_scale(&client, &ns, name, 0, 1, Some(0)).await?;
                // The autoscaler wakes it again at once (requests are waiting), so "0" is the
                // moment the old pods are deleted: check they really were.
                let (c, n, b) = (&client, &ns, &before);
                eventually(
                    "the last pod to be deleted (a real scale to 0)",
                    Duration::from_secs(30),
                    || async move {
                        let pods = pods_of(c, n, name).await?;
                        let old_alive = pods.iter().any(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && p.metadata.name.as_ref().is_some_and(|x| b.contains(x))
                        });
                        Ok((!old_alive).then_some(()))
                    },
                )
                .await?;
                mark(
                    &mut phases,
                    &load,
                    "old pod terminating, requests wait for the wake",
                );
                eventually(
                    "a new ready pod after the wake",
                    Duration::from_secs(60),
                    || async move {
                        let pods = pods_of(c, n, name).await?;
                        Ok(pods
                            .iter()
                            .any(|p| {
                                pod_ready(p)
                                    && p.metadata.deletion_timestamp.is_none()
                                    && p.metadata.name.as_ref().is_some_and(|x| !b.contains(x))
                            })
                            .then_some(()))
                    },
                )
                .await?;
                mark(&mut phases, &load, "woken: a new pod is ready");
            }
            pods = want.max(1);
            tokio::time::sleep(DWELL).await;
        }
        mark(&mut phases, &load, "stop");
        anyhow::Ok(())
    }
    .await;
    let outcomes = load.stop().await?;
    let points = watch.stop().await?;
    let summary = Summary::of(&outcomes);
    let waited = outcomes
        .iter()
        .filter(|o| o.ok() && o.latency >= Duration::from_millis(900))
        .count();
    let counted = addon.answered_by_code(name).await.unwrap_or_default();
    // Pods that caught SIGTERM, drained and exited by themselves (exit code 0).
    let exits = exit_watch.stop();
    let drained = exits.values().filter(|(code, _)| *code == 0).count();
    let report = format!(
        "setup {setup:?}, load {:?}\nphases:\n{}\n{summary}\nanswered after waiting >= 0.9 s \
         (at 0): {waited}\nactivators' requests_total by code: {counted:?}\npods that exited 0 \
         after SIGTERM: {drained} of {} that terminated\n{}\nreplicas (spec/ready): {}",
        phases.last().map(|p| p.0).unwrap_or_default(),
        phases
            .iter()
            .map(|(t, w)| format!("  {:6.2}s {w}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n"),
        exits.len(),
        retry_counts(&addon),
        traffic::timeline(&points),
    );
    eprintln!("{report}");
    steps.with_context(|| format!("{report}\n{}", addon.logs()))?;
    ensure_all_200(
        &summary,
        &addon,
        "steady load while scaling 8 -> 1 -> 8 -> 1 -> 0 -> 8 -> 1 -> 8 -> 1",
    )?;
    // Each 8 -> 1 terminates 7 pods, 1 -> 0 the last one; sample-model exits 0 once it has
    // drained after SIGTERM (143 without its handler, 137 if killed at the grace period's end).
    let expected: usize = SCALE_STEPS
        .iter()
        .scan(8, |prev, &n| {
            let gone = (*prev - n).max(0) as usize;
            *prev = n.max(1);
            Some(gone)
        })
        .sum();
    ensure!(
        drained >= expected,
        "only {drained} pods exited 0 after SIGTERM, expected at least {expected}\n{report}"
    );
    ensure!(
        waited > 0,
        "no request waited for the wake: the scale to 0 did not leave the activators without a \
         ready pod\n{report}"
    );
    eprintln!("test took {:?}", began.elapsed());
    Ok(())
}

/// The trace window cut from the coding trace (see tests/data/README.md).
const TRACE_FROM: &str = "2023-11-16 19:01:00";
const TRACE_TO: &str = "2023-11-16 19:09:30";
/// Time compression of the replay: 480 s of trace in 48 s.
const SPEEDUP: f64 = 10.0;
/// Upper bound of the replay's length (wall time), whatever the trace holds.
const MAX_REPLAY: Duration = Duration::from_secs(60);
/// Upper bound of the requests replayed.
const MAX_REQUESTS: usize = 1000;

/// The trace to replay: the window cut from the full trace when present (and then the
/// committed sample must be exactly that cut), else the committed sample.
fn trace() -> anyhow::Result<(Vec<traffic::TraceRow>, String)> {
    zeroscale_e2e::replay::code_trace("tests/data/azure-llm-code-sample.csv", TRACE_FROM, TRACE_TO)
}

/// Replays the trace window 10x faster through two activators, each request an OpenAI-style
/// completion routed by its body's `model` (prompt and `max_tokens` from the row's token
/// counts), open loop at the trace's arrival times. The model starts at 0; the quiet gaps
/// (168 s and 217 s of trace, 17 s and 22 s of replay) are longer than the fast policy needs to
/// go back to 0. Every request must get a 200, the activators must count exactly the requests
/// sent, and the model must have been woken more than once.
async fn azure_trace_replay_through_scale_to_zero_is_all_200(ctx: Ctx) -> anyhow::Result<()> {
    let began = Instant::now();
    let (rows, source) = trace()?;
    ensure!(!rows.is_empty(), "empty trace from {source}");
    let t0 = rows[0].at;
    let schedule: Vec<(Duration, u32, u32)> = rows
        .iter()
        .take(MAX_REQUESTS)
        .map(|r| {
            (
                Duration::from_secs_f64((r.at - t0) / SPEEDUP),
                r.context_tokens,
                r.generated_tokens,
            )
        })
        .take_while(|(at, _, _)| *at <= MAX_REPLAY)
        .collect();
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let name = "coder";
    deploy_model(
        &client,
        &ns,
        name,
        0,
        &[
            "--model-name=coder",
            "--service-time=100ms",
            "--load-delay=500ms",
        ],
        &[
            ("zeroscale.dev/enabled", "true"),
            ("zeroscale.dev/container-concurrency", "4"),
            ("zeroscale.dev/max-scale", "5"),
        ],
    )
    .await?;
    let addon = LocalAddon::start(
        &cluster,
        &client,
        &ns,
        2,
        zeroscale_testkit::addon::fast_config(),
    )
    .await?;
    let setup = began.elapsed();
    let watch = ReplicaWatch::start(&client, &ns, name);
    let targets = addon.listen_addrs();
    let start = Instant::now();
    let arrivals = schedule.iter().map(|&(at, ctx_tokens, gen_tokens)| {
        let body = json!({
            "model": name,
            "prompt": "x".repeat(ctx_tokens.min(2048) as usize),
            "max_tokens": gen_tokens,
        });
        (at, body)
    });
    let outcomes = zeroscale_e2e::replay::open_loop(&targets, arrivals, start).await?;
    let replay = start.elapsed();
    // Let the activators' counters settle on what was answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let points = watch.stop().await?;
    let summary = Summary::of(&outcomes);
    let counted = addon.answered_by_code(name).await?;
    let counted_total: u64 = counted.values().sum();
    let cold = wakes(&points, true);
    let peak = points.iter().map(|p| p.spec).max().unwrap_or(0);
    let waited = outcomes
        .iter()
        .filter(|o| o.ok() && o.latency >= Duration::from_millis(500))
        .count();
    let report = format!(
        "trace {source}: {} rows [{TRACE_FROM}, {TRACE_TO}), replayed {} at {SPEEDUP}x in \
         {replay:?} (setup {setup:?})\n{summary}\nactivators' requests_total by code: \
         {counted:?}\ncold starts (0 -> N): {cold}, requests that waited >= 0.5 s: {waited}, \
         peak replicas: {peak}\nreplicas (spec/ready): {}",
        rows.len(),
        schedule.len(),
        traffic::timeline(&points),
    );
    eprintln!("{report}");
    ensure_all_200(&summary, &addon, "trace replay")?;
    ensure!(
        counted_total == schedule.len() as u64 && counted.keys().all(|c| *c == 200),
        "the activators counted {counted:?} for {} requests sent\n{report}",
        schedule.len()
    );
    ensure!(
        cold >= 2,
        "the model was woken {cold} time(s): it never went back to 0 in a quiet gap\n{report}\n{}",
        addon.logs()
    );
    ensure!(peak >= 2, "never scaled above 1 replica\n{report}");
    eprintln!("test took {:?}", began.elapsed());
    Ok(())
}

/// (3) N idle models at zero (50, the figure; `ZEROSCALE_WAKE_STORM=N` for another),
/// one request each, sent at once over the two activators: every one is answered 200 (each
/// wake goes to the autoscaler, each pod starts, each queue drains); the time until all are
/// answered is printed (a figure, not asserted).
async fn wake_storm_of_idle_models_is_all_200(ctx: Ctx) -> anyhow::Result<()> {
    let n: usize = std::env::var("ZEROSCALE_WAKE_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    for i in 0..n {
        let name = format!("storm-{i}");
        deploy_model(
            &client,
            &ns,
            &name,
            0,
            &[&format!("--model-name={name}"), "--load-delay=1s"],
            &[("zeroscale.dev/enabled", "true")],
        )
        .await?;
    }
    let addon = LocalAddon::start(
        &cluster,
        &client,
        &ns,
        2,
        zeroscale_testkit::addon::fast_config(),
    )
    .await?;
    let listen = addon.listen_addrs();
    let start = Instant::now();
    let body = json!({"instances": [[1.0]]});
    let paths: Vec<String> = (0..n)
        .map(|i| format!("/v1/models/storm-{i}:predict"))
        .collect();
    let outcomes = futures::future::join_all(paths.iter().enumerate().map(|(i, path)| {
        let a = i % listen.len();
        traffic::send(
            i as u64,
            a,
            listen[a],
            path,
            &body,
            start,
            Duration::from_secs(240),
        )
    }))
    .await;
    let all = start.elapsed();
    let summary = Summary::of(&outcomes);
    println!(
        "wake storm: {n} idle models woken at once over 2 activators: all answered after \
         {all:.1?} (200s: p50 {:.1?}, p99 {:.1?}, max {:.1?})\n{}",
        summary.latency.0,
        summary.latency.1,
        summary.latency.2,
        retry_counts(&addon),
    );
    ensure_all_200(&summary, &addon, &format!("wake storm of {n} models"))
}
