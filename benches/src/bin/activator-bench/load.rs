//! An open-loop load generator: requests start on a fixed schedule whatever the answers do
//! (no coordinated omission), over pooled keep-alive connections; every latency is kept.
//!
//! A plain OS thread paces the schedule (tokio's timer has 1 ms granularity, which would send
//! in bursts); the runtime sends. Latency runs from just before the request is handed to the
//! client until the whole answer body is read. `lag` is how late a request started against
//! its schedule: if it grows, the generator (not the target) was the bottleneck.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::stats;

/// The request every generator in this bench sends (wrk's script sends the same).
pub const PATH: &str = "/v1/models/sample:predict";
/// Its body.
pub const BODY: &str = r#"{"instances":[[1.0,2.0,3.0,4.0]]}"#;

/// Options of the `load` role.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Base URL of the target, e.g. http://127.0.0.1:18080.
    #[arg(long)]
    url: String,
    /// What the target is (printed with the results).
    #[arg(long)]
    label: String,
    /// Requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds at the same rate before measuring (connections opened, caches warm).
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
}

struct Done {
    index: u64,
    lag: Duration,
    latency: Duration,
    ok: bool,
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let uri: Uri = format!("{}{PATH}", o.url.trim_end_matches('/')).parse()?;
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(conn);
    let period = Duration::from_secs_f64(1.0 / o.rate);
    let warm = (o.rate * o.warmup_secs) as u64;
    let total = warm + (o.rate * o.secs) as u64;

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let start = Instant::now() + Duration::from_millis(50);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let t = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
            if tx.send((i, t)).is_err() || stop_rx.try_recv().is_ok() {
                return;
            }
        }
    });

    let mut set = JoinSet::new();
    let mut done = Vec::with_capacity(total as usize);
    while let Some((index, sched)) = rx.recv().await {
        let client = client.clone();
        let uri = uri.clone();
        set.spawn(async move {
            let t0 = Instant::now();
            let req = Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                .expect("a valid request");
            let ok = match tokio::time::timeout(Duration::from_secs(5), async {
                let r = client.request(req).await.ok()?;
                let status = r.status();
                r.into_body().collect().await.ok()?;
                Some(status.is_success())
            })
            .await
            {
                Ok(Some(ok)) => ok,
                _ => false,
            };
            Done {
                index,
                lag: t0.saturating_duration_since(sched),
                latency: t0.elapsed(),
                ok,
            }
        });
        while let Some(r) = set.try_join_next() {
            done.push(r?);
        }
    }
    while let Some(r) = set.join_next().await {
        done.push(r?);
    }
    let _ = stop_tx.send(());
    let _ = pacer.join();
    let elapsed = start.elapsed();

    let measured: Vec<&Done> = done.iter().filter(|d| d.index >= warm).collect();
    let errors = measured.iter().filter(|d| !d.ok).count();
    let mut lat: Vec<Duration> = measured.iter().map(|d| d.latency).collect();
    let mut lag: Vec<Duration> = measured.iter().map(|d| d.lag).collect();
    println!(
        "load label={} rate={} secs={} sent={} errors={} wall_s={:.2} {} {}",
        o.label,
        o.rate,
        o.secs,
        measured.len(),
        errors,
        elapsed.as_secs_f64(),
        stats::summary("lat", &mut lat),
        stats::summary("lag", &mut lag),
    );
    Ok(())
}
