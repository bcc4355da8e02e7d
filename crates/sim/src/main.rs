//! `zeroscale-sim`: the command line. `run` simulates one configuration, `sweep` compares
//! many and recommends one, `generate` writes a generated multi-model trace as CSV. See
//! `crates/sim/README.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use zeroscale_config::{format_duration, parse_duration};
use zeroscale_sim::dist::Latency;
use zeroscale_sim::event::{SEC, nanos};
use zeroscale_sim::policy::PolicyKind;
use zeroscale_sim::setup::{ConfigSource, ModelSettings, key_value};
use zeroscale_sim::sim::{Options, PodStart, Service};
use zeroscale_sim::stats::demand;
use zeroscale_sim::trace::Trace;
use zeroscale_sim::workload::Generator;
use zeroscale_sim::{RunOutcome, horizon, per_model, report, sweep};

#[derive(Parser)]
#[command(
    name = "zeroscale-sim",
    version,
    about = "Replays request traces through zeroscale's scaling engine on simulated time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one configuration.
    Run(Common),
    /// Compare configurations (`--grace 5s,30s,5m`, `--vary key=v1,v2`) and recommend one.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// Grace periods to compare (scale-to-zero-grace-period), comma-separated.
        #[arg(long, value_delimiter = ',')]
        grace: Vec<String>,
        /// Any ConfigMap key or zeroscale.dev/ annotation with values to compare:
        /// `key=v1,v2,...`; repeat for a cartesian product.
        #[arg(long)]
        vary: Vec<String>,
        /// Recommend by price: one cold start is worth this many replica-seconds (e.g. 60s).
        /// Without it, the knee of the frontier.
        #[arg(long, value_parser = parse_duration)]
        cold_start_cost: Option<Duration>,
        /// Worker threads (default: the available cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write a generated multi-model trace as CSV (timestamp,model).
    Generate {
        #[command(flatten)]
        generator: GenArgs,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct GenArgs {
    /// Number of generated models.
    #[arg(long, default_value_t = 20)]
    gen_models: usize,
    /// Length of the generated trace.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gen_duration: Duration,
    /// Multiplies every generated model's rate.
    #[arg(long, default_value_t = 1.0)]
    gen_rate_scale: f64,
    /// Highest mean rate of one generated model (requests/s).
    #[arg(long, default_value_t = 10.0)]
    gen_max_rate: f64,
    /// Seed of the generator and of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Clone)]
struct Common {
    /// CSV trace: timestamp[,model][,context_tokens,generated_tokens], header optional.
    #[arg(long, conflicts_with = "generate")]
    trace: Option<PathBuf>,
    /// Use the multi-model generator instead of a trace.
    #[arg(long)]
    generate: bool,
    #[command(flatten)]
    generator: GenArgs,
    /// Replay the trace this many times faster.
    #[arg(long, default_value_t = 1.0)]
    compress: f64,
    /// Keep only this much of the (compressed) trace.
    #[arg(long, value_parser = parse_duration)]
    limit: Option<Duration>,
    /// Spread the trace over this many models.
    #[arg(long, default_value_t = 1)]
    split_models: usize,
    /// Skew of --split-models: model i gets a share proportional to 1/(i+1)^s (0 = even).
    #[arg(long, default_value_t = 1.0)]
    split_zipf: f64,
    /// A ConfigMap key or zeroscale.dev/ annotation, `key=value`; repeatable.
    #[arg(long)]
    config: Vec<String>,
    /// A zeroscale-config ConfigMap manifest (YAML) to read keys from.
    #[arg(long)]
    configmap: Option<PathBuf>,
    /// A Deployment manifest (YAML) to read zeroscale.dev/ annotations from.
    #[arg(long)]
    deployment: Option<PathBuf>,
    /// Service time: a duration (every request) or `tokens` (prefill + decode per token).
    #[arg(long, default_value = "50ms")]
    service: String,
    /// With --service tokens: time per prompt token.
    #[arg(long, default_value = "150us", value_parser = parse_duration)]
    prefill_per_token: Duration,
    /// With --service tokens: time per generated token.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    decode_per_token: Duration,
    /// With --service tokens: fixed time added to every request.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    service_base: Duration,
    /// Pod start, scheduling and container creation: `1s` or `lognormal:median=1s,p99=3s`.
    #[arg(long, default_value = "1s")]
    schedule: Latency,
    /// Pod start, image pull (0s: cached on the node).
    #[arg(long, default_value = "0s")]
    image_pull: Latency,
    /// Pod start, model load until ready.
    #[arg(long, default_value = "lognormal:median=10s,p99=30s")]
    model_load: Latency,
    /// From the first request held at zero to the autoscaler's scale-up.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    wake_latency: Duration,
    /// From a terminating pod's last request to its exit.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    shutdown: Duration,
    /// spec.replicas at the start (ready).
    #[arg(long, default_value_t = 0)]
    initial_replicas: u32,
    /// The Deployment opts in at the start (initial-scale applies).
    #[arg(long)]
    newly_enabled: bool,
    /// Keep simulating this long after the last arrival.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    tail: Duration,
    /// Bins of the report's timeline.
    #[arg(long, default_value_t = 300)]
    bins: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print every scale change (run only).
    #[arg(long)]
    events: bool,
    /// Run the simulation this many times and report the speed of the fastest (run only; a
    /// speed measurement: the output is the same every time).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

struct Loaded {
    trace: Trace,
    source: ConfigSource,
    settings: ModelSettings,
    opts: Options,
    context: Vec<String>,
}

fn load(c: &Common) -> anyhow::Result<Loaded> {
    let mut context = Vec::new();
    let seed = c.generator.seed;
    let mut trace = match (&c.trace, c.generate) {
        (Some(path), _) => {
            let t =
                Trace::read(path).with_context(|| format!("reading trace {}", path.display()))?;
            context.push(format!(
                "trace: {} ({} requests)",
                path.display(),
                t.requests.len()
            ));
            t
        }
        (None, true) => {
            let g = generator(&c.generator);
            let t = g.trace();
            context.push(format!(
                "trace: generated, {} models over {}, rate scale {}, seed {} ({} requests)",
                g.models,
                format_duration(Duration::from_nanos(g.duration)),
                g.rate_scale,
                g.seed,
                t.requests.len()
            ));
            t
        }
        (None, false) => bail!("give a trace (--trace FILE) or --generate"),
    };
    if c.compress != 1.0 {
        if c.compress.is_nan() || c.compress <= 0.0 {
            bail!("--compress must be above 0");
        }
        trace.compress(c.compress);
        context.push(format!("compressed {}x", c.compress));
    }
    if let Some(limit) = c.limit {
        trace.truncate(nanos(limit));
        context.push(format!(
            "first {} kept ({} requests)",
            format_duration(limit),
            trace.requests.len()
        ));
    }
    if c.split_models > 1 {
        trace.split_models(c.split_models, c.split_zipf, seed);
        context.push(format!(
            "spread over {} models (zipf {})",
            c.split_models, c.split_zipf
        ));
    }
    let mut source = ConfigSource::default();
    if let Some(p) = &c.configmap {
        source.read_configmap(p)?;
    }
    if let Some(p) = &c.deployment {
        source.read_deployment(p)?;
    }
    for kv in &c.config {
        let (k, v) = key_value(kv)?;
        source.set(&k, &v);
    }
    let settings = source.resolve()?;
    let service = if c.service == "tokens" {
        if let Some((i, _)) = trace
            .requests
            .iter()
            .enumerate()
            .find(|(_, r)| r.context_tokens.is_none() || r.generated_tokens.is_none())
        {
            bail!(
                "--service tokens needs token counts, but request {} of the trace has none",
                i + 1
            );
        }
        Service::Tokens {
            base: nanos(c.service_base),
            per_context: nanos(c.prefill_per_token) as f64,
            per_generated: nanos(c.decode_per_token) as f64,
        }
    } else {
        Service::Fixed(nanos(
            parse_duration(&c.service)
                .map_err(|e| anyhow::anyhow!("--service: {e}; or write tokens"))?,
        ))
    };
    let h = horizon(&trace, nanos(c.tail));
    let bin = (h / c.bins.max(1)).div_ceil(SEC).max(1) * SEC;
    let opts = Options {
        service,
        start: PodStart {
            schedule: c.schedule,
            image: c.image_pull,
            load: c.model_load,
        },
        wake_latency: nanos(c.wake_latency),
        shutdown: nanos(c.shutdown),
        initial_replicas: c.initial_replicas,
        newly_enabled: c.newly_enabled,
        horizon: h,
        bin,
        seed,
    };
    context.push(format!(
        "{} models, {} requests, horizon {}",
        trace.models.len(),
        trace.requests.len(),
        format_duration(Duration::from_nanos(h))
    ));
    context.push(format!(
        "service {}; pod start = schedule {} + image {} + load {}; wake latency {}; shutdown {}",
        match service {
            Service::Fixed(d) => format_duration(Duration::from_nanos(d)),
            Service::Tokens { .. } => format!(
                "{} + {}/prompt token + {}/generated token",
                format_duration(c.service_base),
                format_duration(c.prefill_per_token),
                format_duration(c.decode_per_token)
            ),
        },
        c.schedule,
        c.image_pull,
        c.model_load,
        format_duration(c.wake_latency),
        format_duration(c.shutdown)
    ));
    let mut keys: Vec<String> = source
        .configmap
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keys.extend(source.annotations.iter().map(|(k, v)| format!("{k}={v}")));
    context.push(format!(
        "config: {}",
        if keys.is_empty() {
            "defaults".into()
        } else {
            keys.join(" ")
        }
    ));
    let p = &settings.params;
    context.push(format!(
        "resolved: target {} x {:.0}% per pod, container-concurrency {}, stable window {}, panic {}% / {}%, grace {}, tick {}, scrape {}, queue {} deep / {}",
        p.target,
        p.target_utilization * 100.0,
        settings.container_concurrency,
        format_duration(p.stable_window),
        p.panic_window_percentage,
        p.panic_threshold_percentage,
        format_duration(p.scale_to_zero_grace_period),
        format_duration(Duration::from_nanos(settings.tick)),
        format_duration(Duration::from_nanos(settings.scrape)),
        settings.queue_depth,
        format_duration(Duration::from_nanos(settings.queue_deadline)),
    ));
    Ok(Loaded {
        trace,
        source,
        settings,
        opts,
        context,
    })
}

fn generator(g: &GenArgs) -> Generator {
    Generator {
        models: g.gen_models,
        duration: nanos(g.gen_duration),
        rate_scale: g.gen_rate_scale,
        max_rate: g.gen_max_rate,
        seed: g.seed,
    }
}

/// The demand line: what the trace asks of a model at the configured target.
fn demand_lines(l: &Loaded) -> Vec<String> {
    let per_pod = l.settings.params.target * l.settings.params.target_utilization;
    let mut worst = (0u32, String::new(), 0.0);
    for (i, reqs) in per_model(&l.trace).iter().enumerate() {
        let d = demand(reqs, &l.opts.service, SEC, per_pod);
        if d.peak_pods > worst.0 {
            worst = (d.peak_pods, l.trace.models[i].clone(), d.peak_concurrency);
        }
    }
    if worst.0 == 0 {
        return vec![];
    }
    let cc = l.settings.container_concurrency;
    let mut s = format!(
        "steady need: peak offered concurrency over 1 s {:.1} ({}) -> {} pods at {:.1} per pod",
        worst.2, worst.1, worst.0, per_pod
    );
    if cc > 0 {
        s.push_str(&format!(
            ", {} at the hard limit of {cc}",
            (worst.2 / f64::from(cc)).ceil()
        ));
    }
    vec![s]
}

fn write_report(
    path: &PathBuf,
    title: &str,
    context: &[String],
    runs: &[RunOutcome],
    frontier: &[usize],
    rec: Option<&sweep::Recommendation>,
) -> anyhow::Result<()> {
    let html = report::html(
        title,
        context,
        runs,
        frontier,
        rec.map(|r| r.index),
        rec.map(|r| r.text.as_str()),
    );
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report: {}", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate { generator: g, out } => {
            let t = generator(&g).trace();
            let mut csv = String::from("timestamp,model\n");
            for r in &t.requests {
                csv.push_str(&format!(
                    "{:.6},{}\n",
                    r.at as f64 / 1e9,
                    t.models[r.model as usize]
                ));
            }
            match out {
                Some(p) => {
                    std::fs::write(&p, csv).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{csv}"),
            }
        }
        Command::Run(c) => {
            let l = load(&c)?;
            let mut best = Duration::MAX;
            let mut run = None;
            for _ in 0..c.repeat.max(1) {
                let started = Instant::now();
                let r =
                    zeroscale_sim::run(&l.trace, "base", &l.settings, &PolicyKind::Engine, &l.opts);
                best = best.min(started.elapsed());
                run = Some(r);
            }
            let (run, took) = (run.expect("ran at least once"), best);
            let mut context = l.context.clone();
            context.extend(demand_lines(&l));
            if c.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "context": context, "run": run })
                    )?
                );
            } else {
                for line in &context {
                    println!("{line}");
                }
                println!();
                print!("{}", report::table(&run));
                if c.events {
                    for m in &run.models {
                        for e in &m.events {
                            println!(
                                "{:>10.3}s {:<24} {} -> {} ({})",
                                e.at as f64 / 1e9,
                                m.model,
                                e.from,
                                e.to,
                                e.reason
                            );
                        }
                    }
                }
                eprintln!(
                    "simulated {} requests in {:.3} s ({:.0} requests/s)",
                    run.total.requests,
                    took.as_secs_f64(),
                    run.total.requests as f64 / took.as_secs_f64().max(1e-9)
                );
            }
            if let Some(p) = &c.report {
                write_report(
                    p,
                    "zeroscale-sim run",
                    &context,
                    std::slice::from_ref(&run),
                    &[0],
                    None,
                )?;
            }
        }
        Command::Sweep {
            common: c,
            grace,
            vary,
            cold_start_cost,
            threads,
        } => {
            let l = load(&c)?;
            let mut axes = Vec::new();
            if !grace.is_empty() {
                let key = if l
                    .source
                    .annotations
                    .contains_key("zeroscale.dev/scale-to-zero-grace-period")
                {
                    "zeroscale.dev/scale-to-zero-grace-period"
                } else {
                    "scale-to-zero-grace-period"
                };
                axes.push((key.to_owned(), grace));
            }
            for v in &vary {
                axes.push(sweep::axis(v)?);
            }
            if axes.is_empty() {
                bail!("nothing to sweep: give --grace 5s,30s,5m or --vary key=v1,v2");
            }
            let variants = sweep::variants(&l.source, &axes, &PolicyKind::Engine)?;
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let started = Instant::now();
            let runs = sweep::run_all(&l.trace, &variants, &l.opts, threads);
            let took = started.elapsed();
            let front = sweep::frontier(&runs);
            let rec = sweep::recommend(&runs, cold_start_cost.map(|d| d.as_secs_f64()));
            let per = cold_start_cost.and_then(|d| sweep::per_model_choice(&runs, d.as_secs_f64()));
            let mut context = l.context.clone();
            context.extend(demand_lines(&l));
            if let Some(r) = &rec {
                context.push(format!("rule: {}", r.rule));
            }
            if c.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "context": context,
                        "runs": runs,
                        "frontier": front.iter().map(|&i| &runs[i].label).collect::<Vec<_>>(),
                        "recommendation": rec,
                        "per_model": per,
                    }))?
                );
            } else {
                for line in &context {
                    println!("{line}");
                }
                println!();
                print!(
                    "{}",
                    report::sweep_table(&runs, &front, rec.as_ref().map(|r| r.index))
                );
                println!("(* on the frontier, > recommended)");
                let labels: Vec<&str> = front.iter().map(|&i| runs[i].label.as_str()).collect();
                println!("frontier: {}", labels.join(" | "));
                if let Some(r) = &rec {
                    println!("{}", r.text);
                }
                if let Some(p) = &per {
                    let counts: Vec<String> =
                        p.counts.iter().map(|(l, n)| format!("{l} x{n}")).collect();
                    println!(
                        "per model at the same price (each model on its own best setting): {} cold starts, {:.0} replica-seconds ({})",
                        p.cold_starts,
                        p.replica_seconds,
                        counts.join(", ")
                    );
                }
                let n: u64 = runs.iter().map(|r| r.total.requests).sum();
                eprintln!(
                    "simulated {} policies x {} requests in {:.3} s on {threads} threads ({:.0} requests/s)",
                    runs.len(),
                    l.trace.requests.len(),
                    took.as_secs_f64(),
                    n as f64 / took.as_secs_f64().max(1e-9)
                );
            }
            if let Some(p) = &c.report {
                write_report(
                    p,
                    "zeroscale-sim sweep",
                    &context,
                    &runs,
                    &front,
                    rec.as_ref(),
                )?;
            }
        }
    }
    Ok(())
}
