//! End-to-end replays of the Azure LLM code trace (issue 15), the first 20 minutes 20x
//! compressed (3,589 requests in 60 s), through the real activators and autoscaler with
//! `sample-model` containers on the real node: a 2 s model load, container-concurrency 8,
//! 50 ms per request, the test kit's fast configuration (tick and scrape 1 s, grace 4 s) with a
//! stable window of 7 s ([`STABLE_WINDOW`]). The model starts at 0.
//!
//! 1. Demand sizing does not run away after a cold start: every request is answered 200 and
//!    the peak replicas stay within 2x of the steady need ([`NEED_WINDOW`]: arrivals x service
//!    time over the autoscaler's per-pod target). `ZEROSCALE_REPLAY_SIZING=knative` runs it with
//!    Knative's sizing for the record (the bound is then printed, not asserted: BENCHMARKS.md,
//!    "Sizing", has both).
//! 2. The simulator agrees with the add-on: the same schedule and settings through
//!    `zeroscale-sim`'s library give cold starts and replica-seconds within the tolerances of
//!    [`COLD_START_TOLERANCE`] and [`REPLICA_SECONDS_TOLERANCE`].
//!
//! The full trace is read from `../shared/data/azure-llm-2023/` when present (and the committed
//! `tests/data/azure-llm-code-20m.csv` must then be exactly its cut), else the committed cut.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use zeroscale_e2e::replay::{self, Observed, Setup, SimLatencies};
use zeroscale_e2e::traffic::{self, LocalAddon};
use zeroscale_e2e::{Ctx, test};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "code_trace_at_20x_peaks_within_2x_of_the_steady_need",
            code_trace_at_20x_peaks_within_2x_of_the_steady_need,
        ),
        test(
            "simulator_agrees_with_the_addon_on_the_code_replay",
            simulator_agrees_with_the_addon_on_the_code_replay,
        ),
    ])
}

const SAMPLE: &str = "tests/data/azure-llm-code-20m.csv";
const TRACE_FROM: &str = "2023-11-16 18:17:00";
const TRACE_TO: &str = "2023-11-16 18:37:00";
const SPEEDUP: f64 = 20.0;
/// Upper bound of the replay's length.
const MAX_REPLAY: Duration = Duration::from_secs(60);
/// The steady need: the offered concurrency (arrivals x service time) of the busiest second of
/// the replay (20 s of trace), in pods at the autoscaler's per-pod target; the simulator's
/// "steady need" and BENCHMARKS.md's "Sizing" table use the same. Over the busiest minute of
/// the trace (3 s of replay) it is lower; the report prints both.
const NEED_WINDOW: Duration = Duration::from_secs(1);
/// The busiest minute of the trace, in replay time.
const BUSY_MINUTE: Duration = Duration::from_secs(3);
/// After the last answer, the watch goes on until the model is back at 0 (stable window 7 s +
/// grace 4 s + a tick), so both sides integrate the scale-down.
const TAIL: Duration = Duration::from_secs(13);
/// The stable window of both replays. With the fast configuration's 6 s, the trace's first
/// lull is a knife edge: the model goes to zero in it (a third wake, about 1,000 cold starts)
/// when its first pod is ready within about 0.5 s of the scale patch plus the load, and stays
/// (two wakes, about 720) when it takes longer; the real node's pod start (0.25-1.3 s) falls on
/// both sides. With 7 s the simulator gives two wakes for every pod start from 0.1 to 1.5 s and
/// every phase of the ticks against the trace (0, 250, 500, 750 ms), so the two sides compare
/// how long things took, not which side of an edge they fell on.
const STABLE_WINDOW: &str = "7s";

/// The simulator's cold starts may differ from the add-on's by this share (BENCHMARKS.md,
/// "Simulator", "Calibration against the real system"). Each of the 2 wakes holds the requests
/// of one pod start, and the real start varies (2.2-3.3 s wake -> ready on the real node)
/// where the simulator's is fixed: over pod starts of 0.1-1.3 s the simulator's own count moves
/// from 646 to 791, within about 11% of its 600 ms figure. One wake more or less moves it by
/// about 30% and fails, as it should: then the two disagree on what happened.
const COLD_START_TOLERANCE: f64 = 0.15;
/// The simulator's replica-seconds may differ from the add-on's by this share: its ticks and
/// scrapes fall on whole seconds from the first request, the add-on's at another phase, so
/// each of the ~10 scale changes of 1-4 pods may come up to a tick (1 s) earlier or later,
/// and a terminating pod's exit and the 100 ms polling of the pod count are approximated.
const REPLICA_SECONDS_TOLERANCE: f64 = 0.20;

/// The parts of the real system the simulator takes as latencies: scale patch -> pod ready
/// without load delay on the real node (a median of about 0.4 s, with starts of up to 1.3 s
/// whose first readiness probe came too early: BENCHMARKS.md "Warm start, scale patch -> pod
/// Ready"), the wake signal and patch, a terminating pod's exit and removal.
const LATENCIES: SimLatencies = SimLatencies {
    pod_start: Duration::from_millis(600),
    wake: Duration::from_millis(50),
    shutdown: Duration::from_millis(100),
};

fn setup(sizing: &str, activators: usize) -> anyhow::Result<(Setup, String)> {
    let (rows, source) = replay::code_trace(SAMPLE, TRACE_FROM, TRACE_TO)?;
    let schedule = replay::schedule(&rows, SPEEDUP, MAX_REPLAY);
    ensure!(!schedule.is_empty(), "empty trace from {source}");
    let mut config: BTreeMap<String, String> = zeroscale_testkit::addon::fast_config();
    config.insert("sizing".into(), sizing.into());
    config.insert("stable-window".into(), STABLE_WINDOW.into());
    Ok((
        Setup {
            model: "coder".into(),
            load_delay: Duration::from_secs(2),
            service_time: Duration::from_millis(50),
            container_concurrency: 8,
            config,
            activators,
            schedule,
        },
        source,
    ))
}

fn describe(o: &Observed) -> String {
    format!(
        "{}\nactivators' requests_total by code: {:?}\ncold starts (header): {}, replica-seconds: \
         {:.1} over {:.1}s, peak replicas: {}, mean time at pods {:?}\nwake -> ready: {:?}\n\
         replicas (spec/ready): {}",
        o.summary,
        o.counted,
        o.cold_starts,
        o.replica_seconds,
        o.window.as_secs_f64(),
        o.peak,
        o.service_time,
        replay::wake_to_ready(&o.points),
        traffic::timeline(&o.points),
    )
}

/// Every request was answered 200, and the activators counted exactly the requests sent.
fn ensure_all_200(
    setup: &Setup,
    observed: &Observed,
    addon: &LocalAddon,
    report: &str,
) -> anyhow::Result<()> {
    ensure!(
        observed.non_200() == 0,
        "{} requests were not answered 200\n{report}\n{}",
        observed.non_200(),
        addon.logs()
    );
    ensure!(
        observed.counted.values().sum::<u64>() == setup.schedule.len() as u64,
        "the activators counted {:?} for {} requests sent\n{report}",
        observed.counted,
        setup.schedule.len()
    );
    Ok(())
}

/// The autoscaler's scale decisions, each with what it compared (for a disagreement).
fn decisions(addon: &LocalAddon) -> String {
    addon.autoscaler.grep(&["Scaled "], 200).join("\n")
}

fn sim_line(sim: &zeroscale_sim::sim::ModelOutcome) -> String {
    format!(
        "cold starts {}, wakes {}, replica-seconds {:.1}, peak {}, p99 wait {:.3}s, 503 {}, 504 {}",
        sim.cold_starts,
        sim.wakes,
        sim.replica_seconds,
        sim.peak_replicas,
        sim.wait.p99,
        sim.rejected_503,
        sim.expired_504,
    )
}

/// (1) The replay with demand sizing: all 200, peak within 2x of the steady need.
async fn code_trace_at_20x_peaks_within_2x_of_the_steady_need(ctx: Ctx) -> anyhow::Result<()> {
    let began = Instant::now();
    let sizing = std::env::var("ZEROSCALE_REPLAY_SIZING").unwrap_or_else(|_| "demand".into());
    let (setup, source) = setup(&sizing, 2)?;
    let per_pod = setup.target_per_pod()?;
    let (busy, need) = setup.steady_need(NEED_WINDOW, per_pod);
    let (busy_minute, need_minute) = setup.steady_need(BUSY_MINUTE, per_pod);
    let (observed, addon) = replay::on_cluster(&ctx, &setup, TAIL).await?;
    let sim = replay::in_simulator(&setup, setup.service_time, observed.window, LATENCIES)?;
    let report = format!(
        "trace {source}: {} requests at {SPEEDUP}x, sizing {sizing}\nsimulator, same setup: \
         {}\nsteady need: {busy:.2} \
         concurrent in the busiest second -> {need} pods at {per_pod:.1} per pod (busiest \
         minute of trace: {busy_minute:.2} -> {need_minute} pods); peak / need = {:.2}\n{}",
        setup.schedule.len(),
        sim_line(&sim),
        f64::from(observed.peak) / f64::from(need.max(1)),
        describe(&observed),
    );
    eprintln!("{report}");
    ensure_all_200(&setup, &observed, &addon, &report)?;
    if sizing == "demand" {
        ensure!(
            observed.peak as u32 <= 2 * need,
            "peak {} replicas above 2x the steady need of {need}\n{report}\nthe add-on's \
             decisions:\n{}",
            observed.peak,
            decisions(&addon)
        );
    }
    eprintln!("test took {:?}", began.elapsed());
    Ok(())
}

/// (2) The add-on and the simulator on the same replay (one activator, as the simulator has):
/// cold starts and replica-seconds within the tolerances.
async fn simulator_agrees_with_the_addon_on_the_code_replay(ctx: Ctx) -> anyhow::Result<()> {
    let began = Instant::now();
    let (setup, source) = setup("demand", 1)?;
    let (observed, addon) = replay::on_cluster(&ctx, &setup, TAIL).await?;
    // The simulator gets the service time the pods delivered (on a busy machine more than the
    // configured 50 ms: the add-on sizes from what it measures, so that is the input that
    // matters); with the configured one it is printed for the record.
    let service = observed.service_time.unwrap_or(setup.service_time);
    let sim = replay::in_simulator(&setup, service, observed.window, LATENCIES)?;
    let sim_configured =
        replay::in_simulator(&setup, setup.service_time, observed.window, LATENCIES)?;
    let cold_err = replay::relative_error(sim.cold_starts as f64, observed.cold_starts as f64);
    let rs_err = replay::relative_error(sim.replica_seconds, observed.replica_seconds);
    let report = format!(
        "trace {source}: {} requests at {SPEEDUP}x\nadd-on: {}\nsimulator at the measured \
         service time {service:?}: {}\n(at the configured {:?}: {})\nerror: cold starts {:.1}% \
         (tolerance {:.0}%), replica-seconds {:.1}% (tolerance {:.0}%)",
        setup.schedule.len(),
        describe(&observed),
        sim_line(&sim),
        setup.service_time,
        sim_line(&sim_configured),
        cold_err * 100.0,
        COLD_START_TOLERANCE * 100.0,
        rs_err * 100.0,
        REPLICA_SECONDS_TOLERANCE * 100.0,
    );
    eprintln!("{report}");
    ensure_all_200(&setup, &observed, &addon, &report)?;
    ensure!(
        cold_err <= COLD_START_TOLERANCE,
        "cold starts disagree\n{report}\nthe add-on's decisions:\n{}",
        decisions(&addon)
    );
    ensure!(
        rs_err <= REPLICA_SECONDS_TOLERANCE,
        "replica-seconds disagree\n{report}\nthe add-on's decisions:\n{}",
        decisions(&addon)
    );
    eprintln!("test took {:?}", began.elapsed());
    Ok(())
}
