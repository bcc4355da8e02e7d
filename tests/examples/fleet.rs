//! `fleet`: what the add-on costs at 1,000 to 10,000 opted-in Deployments (issue 14).
//!
//! For each fleet size N, on a fresh local cluster (real etcd, kube-apiserver,
//! kube-controller-manager, the process kubelet) inside a private network namespace:
//!
//! 1. creates N opted-in Deployments at 0 replicas (`sample-model`) and their Services (the
//!    EndpointSlice controller adds one slice each);
//! 2. starts the add-on as local processes, as `traffic_e2e` does: `--activators` activators and
//!    one autoscaler, and records the time until each answers `/readyz` and the autoscaler
//!    manages all N;
//! 3. idle: after a warm-up, the CPU time (utime + stime from `/proc/PID/stat`), the bytes each
//!    process wrote to sockets and files (`wchar` of `/proc/PID/io`: feed answers, `/metrics`,
//!    API requests, logs) over `--idle-secs`, and the resident memory (`VmRSS`) at the end; the
//!    size of one activator's `/metrics` page;
//! 4. active: `--active-percent` of the models get one request per second each (spread over the
//!    activators): the time until every one of them has been answered (the wake), then the same
//!    CPU, bytes and memory figures over `--active-secs` while they stay busy, and the autoscaler's
//!    wake-received -> PATCH-sent histogram (`zeroscale_autoscaler_wake_to_patch_seconds`).
//!
//! ```text
//! cargo build --release -p zeroscale-activator -p zeroscale-autoscaler -p zeroscale-testkit
//! cargo run --release -p zeroscale-e2e --example fleet -- 1000 5000 10000
//! ```
//!
//! Flags (all optional): `--activators=2 --idle-secs=60 --warmup-secs=20 --active-percent=1
//! --active-secs=60`. The process kubelet runs the active models' pods as local processes. The
//! load is bounded: one client per active model, one request per second, for the active phase only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use zeroscale_e2e::traffic::LocalAddon;
use zeroscale_e2e::{eventually, sample_model_deployment, service_for};
use zeroscale_testkit::{LocalCluster, http_client};

const NS: &str = "fleet";

struct Opts {
    sizes: Vec<usize>,
    activators: usize,
    warmup: Duration,
    idle: Duration,
    active_percent: f64,
    active: Duration,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        sizes: Vec::new(),
        activators: 2,
        warmup: Duration::from_secs(20),
        idle: Duration::from_secs(60),
        active_percent: 1.0,
        active: Duration::from_secs(60),
    };
    for a in std::env::args().skip(1) {
        let secs = |v: &str| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(v.parse().with_context(|| {
                format!("{a}: expected a whole number of seconds")
            })?))
        };
        match a.split_once('=') {
            Some(("--activators", v)) => o.activators = v.parse().context("--activators")?,
            Some(("--warmup-secs", v)) => o.warmup = secs(v)?,
            Some(("--idle-secs", v)) => o.idle = secs(v)?,
            Some(("--active-secs", v)) => o.active = secs(v)?,
            Some(("--active-percent", v)) => {
                o.active_percent = v.parse().context("--active-percent")?
            }
            None if !a.starts_with('-') => o.sizes.push(
                a.parse()
                    .with_context(|| format!("{a}: not a fleet size"))?,
            ),
            _ => bail!(
                "unknown argument {a:?}: expected fleet sizes and --activators=, --warmup-secs=, --idle-secs=, --active-percent=, --active-secs="
            ),
        }
    }
    if o.sizes.is_empty() {
        o.sizes = vec![1000];
    }
    Ok(o)
}

fn main() -> ExitCode {
    zeroscale_testkit::netns::ensure_private_netns();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut rows = Vec::new();
        for &n in &opts.sizes {
            match one_fleet(n, &opts).await {
                Ok(r) => {
                    println!("{}", r.join("\n"));
                    rows.push(r);
                }
                Err(e) => {
                    eprintln!("fleet {n}: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("\n==== summary ====");
        for r in rows {
            println!("{}", r.join("\n"));
        }
        ExitCode::SUCCESS
    })
}

/// CPU seconds (user + system) of `pid` so far.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = stat.rsplit_once(") ").context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on Linux for every architecture this runs on.
    100.0
}

/// `wchar` of `pid`: bytes written through write-like system calls (sockets included).
fn written(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .context("wchar in /proc/PID/io")?
        .trim()
        .parse()
        .context("wchar")
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = st
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

struct Sample {
    at: Instant,
    cpu: Vec<f64>,
    wrote: Vec<u64>,
}

fn sample(pids: &[u32]) -> anyhow::Result<Sample> {
    Ok(Sample {
        at: Instant::now(),
        cpu: pids
            .iter()
            .map(|p| cpu_secs(*p))
            .collect::<Result<_, _>>()?,
        wrote: pids.iter().map(|p| written(*p)).collect::<Result<_, _>>()?,
    })
}

/// One line per process: CPU-seconds per minute, cores, bytes written per second, RSS.
fn report(
    phase: &str,
    n: usize,
    names: &[String],
    pids: &[u32],
    a: &Sample,
    b: &Sample,
) -> Vec<String> {
    let mins = (b.at - a.at).as_secs_f64() / 60.0;
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cpu = b.cpu[i] - a.cpu[i];
            let bps = (b.wrote[i] - a.wrote[i]) as f64 / (mins * 60.0);
            let rss = rss_mib(pids[i]).unwrap_or(f64::NAN);
            format!(
                "| {n} | {phase} | {name} | {:.2} CPU-s/min ({:.4} core) | {:.0} B/s written | {rss:.1} MiB |",
                cpu / mins,
                cpu / mins / 60.0,
                bps
            )
        })
        .collect()
}

async fn create_fleet(client: &Client, n: usize) -> anyhow::Result<Vec<String>> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let names: Vec<String> = (0..n).map(|i| format!("m{i:05}")).collect();
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    let services = Api::<Service>::namespaced(client.clone(), NS);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let (deployments, services) = (deployments.clone(), services.clone());
            async move {
                let mut d = sample_model_deployment(&name, 0, &[&format!("--model-name={name}")]);
                d.metadata.annotations = Some(
                    [("zeroscale.dev/enabled".to_owned(), "true".to_owned())]
                        .into_iter()
                        .collect(),
                );
                deployments.create(&PostParams::default(), &d).await?;
                services
                    .create(&PostParams::default(), &service_for(&name))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(names)
}

/// A gauge or counter of the autoscaler's `/metrics` (first sample of `name`, any labels).
async fn autoscaler_value(addr: SocketAddr, name: &str) -> anyhow::Result<Option<f64>> {
    let text = http_client::get(addr, "/metrics").await?.text();
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

/// `(count, upper bound of the bucket holding the p50, of the p99)` of histogram `name`.
async fn histogram_quantiles(
    addr: SocketAddr,
    name: &str,
) -> anyhow::Result<(f64, String, String)> {
    let text = http_client::get(addr, "/metrics").await?.text();
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
        let v = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(v)) = (le, v) {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, v));
        }
    }
    let count = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let q = |p: f64| {
        buckets
            .iter()
            .find(|b| b.1 >= p * count && count > 0.0)
            .map(|b| format!("<= {} s", b.0))
            .unwrap_or_else(|| "-".into())
    };
    Ok((count, q(0.5), q(0.99)))
}

async fn one_fleet(n: usize, o: &Opts) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    eprintln!("==> fleet of {n}: starting a local cluster");
    let cluster = LocalCluster::start().await?;
    let client = cluster.client();
    let t = Instant::now();
    let names = create_fleet(&client, n).await?;
    eprintln!(
        "    {n} Deployments and Services created in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let addon = LocalAddon::start(&cluster, &client, NS, o.activators, BTreeMap::new()).await?;
    let ready = t.elapsed();
    let metrics = addon.autoscaler_metrics;
    eventually(
        "the autoscaler manages every Deployment",
        Duration::from_secs(300),
        || async move {
            let v = autoscaler_value(metrics, "zeroscale_autoscaler_managed_deployments").await?;
            Ok(v.filter(|v| *v as usize >= n))
        },
    )
    .await?;
    let managed = t.elapsed();
    out.push(format!(
        "| {n} | start | all | every process ready in {:.1}s; autoscaler manages {n} after {:.1}s | | |",
        ready.as_secs_f64(),
        managed.as_secs_f64()
    ));
    let mut names_p: Vec<String> = (0..addon.activators.len())
        .map(|i| format!("activator {i}"))
        .collect();
    names_p.push("autoscaler".into());
    let mut pids: Vec<u32> = addon.activators.iter().map(|a| a.proc.pid()).collect();
    pids.push(addon.autoscaler.pid());

    tokio::time::sleep(o.warmup).await;
    let a = sample(&pids)?;
    tokio::time::sleep(o.idle).await;
    let b = sample(&pids)?;
    out.extend(report("idle", n, &names_p, &pids, &a, &b));
    let page = http_client::get(addon.activators[0].admin, "/metrics")
        .await?
        .text();
    out.push(format!(
        "| {n} | idle | activator 0 /metrics | {} bytes, {} lines | | |",
        page.len(),
        page.lines().count()
    ));

    for l in &out {
        eprintln!("{l}");
    }

    let active = ((n as f64) * o.active_percent / 100.0).round() as usize;
    if let Some(step) = n.checked_div(active) {
        let chosen: Vec<String> = (0..active).map(|i| names[i * step].clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let listen = addon.listen_addrs();
        let t0 = Instant::now();
        let tasks: Vec<_> = chosen
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (stop, answered, addr, path) = (
                    stop.clone(),
                    answered.clone(),
                    listen[i % listen.len()],
                    format!("/v1/models/{m}:predict"),
                );
                tokio::spawn(async move {
                    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
                    let mut first_ok = None;
                    let body = json!({"instances": [[1.0]]});
                    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(900) {
                        let next = Instant::now() + Duration::from_secs(1);
                        let r = http_client::request(
                            addr,
                            http::Method::POST,
                            &path,
                            Some(&body),
                            Duration::from_secs(120),
                        )
                        .await;
                        let code = r.map(|r| r.status.as_u16()).unwrap_or(0);
                        *codes.entry(code).or_default() += 1;
                        if code == 200 && first_ok.is_none() {
                            first_ok = Some(t0.elapsed());
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep_until(next.into()).await;
                    }
                    (first_ok, codes)
                })
            })
            .collect();
        // Every active model answered once: the wake is over.
        let woken = eventually(
            "every active model answered 200 once",
            Duration::from_secs(300),
            || {
                let answered = answered.clone();
                async move { Ok((answered.load(Ordering::SeqCst) >= active).then_some(())) }
            },
        )
        .await;
        let wake_all = t0.elapsed();
        if let Err(e) = woken {
            stop.store(true, Ordering::SeqCst);
            let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
            for t in tasks {
                for (k, v) in t.await?.1 {
                    *codes.entry(k).or_default() += v;
                }
            }
            bail!(
                "{e}: {} of {active} answered; answers so far {codes:?}\n{}",
                answered.load(Ordering::SeqCst),
                addon.logs()
            );
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let a = sample(&pids)?;
        tokio::time::sleep(o.active).await;
        let b = sample(&pids)?;
        stop.store(true, Ordering::SeqCst);
        let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
        let mut first: Vec<Duration> = Vec::new();
        for t in tasks {
            let (f, c) = t.await?;
            first.extend(f);
            for (k, v) in c {
                *codes.entry(k).or_default() += v;
            }
        }
        first.sort();
        out.push(format!(
            "| {n} | wake {active} | all | every active model answered within {:.1}s (first 200 p50 {:.1}s, max {:.1}s); answers {codes:?} | | |",
            wake_all.as_secs_f64(),
            first.get(first.len() / 2).map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            first.last().map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        ));
        out.extend(report(
            &format!("{active} active"),
            n,
            &names_p,
            &pids,
            &a,
            &b,
        ));
        let (count, p50, p99) =
            histogram_quantiles(metrics, "zeroscale_autoscaler_wake_to_patch_seconds").await?;
        out.push(format!(
            "| {n} | {active} active | autoscaler wake -> PATCH sent | {count} wakes, p50 {p50}, p99 {p99} | | |"
        ));
    }
    drop(addon);
    drop(cluster);
    Ok(out)
}
