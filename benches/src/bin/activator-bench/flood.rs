//! Memory under a queue: `--clients` concurrent connections each send one small request to the
//! model with no endpoints (`idle`); those the queue takes wait, the rest should get a quick
//! 503. Once every client is either queued or answered, reads the activator's resident memory
//! from /proc, then lets every client go (bounded: the run ends by itself).
//!
//! Clients bind to `--sources` loopback addresses (127.0.0.1, .2, ...) so 30,000 connections
//! to one port do not run out of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::stats;

/// Options of the `flood` role.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// The activator's proxy address.
    #[arg(long)]
    target: SocketAddr,
    /// The activator's admin address (for the queued gauge); without it (a `hold` server),
    /// every request written counts as held.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The activator's process id (for /proc/PID/status).
    #[arg(long)]
    pid: u32,
    /// Concurrent clients, one request each.
    #[arg(long)]
    clients: usize,
    /// Loopback source addresses to spread clients over.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Connections being set up at once (the listen backlog is finite).
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// Send the requests as h2c streams over this many connections instead of one HTTP/1.1
    /// connection each (hyper's server allows 200 concurrent streams per connection).
    #[arg(long)]
    h2_conns: Option<usize>,
    /// Give up waiting for every client to be queued or answered after this many seconds.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
}

const REQUEST: &[u8] = b"POST /v1/models/idle:predict HTTP/1.1\r\nhost: activator\r\n\
content-type: application/json\r\ncontent-length: 33\r\n\r\n\
{\"instances\":[[1.0,2.0,3.0,4.0]]}";

enum Outcome {
    /// An answer with this status arrived this long after the request was written.
    Answered(u16, Duration),
    /// Still waiting when released.
    Held,
    /// Connect or write failed.
    Failed,
}

/// VmRSS and VmHWM of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The activator's queued gauge for model `idle`.
async fn queued(admin: SocketAddr) -> anyhow::Result<u64> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = client
        .get(format!("http://{admin}/metrics").parse()?)
        .await?;
    let body = r.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let line = text
        .lines()
        .find(|l| l.starts_with("zeroscale_activator_requests_queued{") && l.contains("\"idle\""))
        .context("no queued gauge for model idle")?;
    Ok(line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

async fn client(
    target: SocketAddr,
    source: IpAddr,
    connects: Arc<Semaphore>,
    written: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    mut release: watch::Receiver<bool>,
) -> Outcome {
    let permit = connects.acquire_owned().await;
    let stream = async {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(source, 0))?;
        let mut s = sock.connect(target).await?;
        s.write_all(REQUEST).await?;
        Ok::<_, std::io::Error>(s)
    }
    .await;
    drop(permit);
    let Ok(mut s) = stream else {
        return Outcome::Failed;
    };
    written.fetch_add(1, Ordering::SeqCst);
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let mut n = 0;
    loop {
        tokio::select! {
            r = s.read(&mut buf[n..]) => match r {
                Ok(0) | Err(_) => return Outcome::Failed,
                Ok(k) => {
                    n += k;
                    // "HTTP/1.1 503": the status is in bytes 9..12.
                    if n >= 12 {
                        answered.fetch_add(1, Ordering::SeqCst);
                        let code = std::str::from_utf8(&buf[9..12])
                            .ok()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        return Outcome::Answered(code, t0.elapsed());
                    }
                }
            },
            _ = release.wait_for(|r| *r) => return Outcome::Held,
        }
    }
}

/// One h2c connection carrying `streams` requests, each held until answered or released.
async fn h2_client(
    target: SocketAddr,
    source: IpAddr,
    streams: usize,
    written: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
) -> Vec<Outcome> {
    let conn = async {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(source, 0))?;
        let s = sock.connect(target).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((sender, conn))
    }
    .await;
    let Ok((sender, conn)) = conn else {
        return (0..streams).map(|_| Outcome::Failed).collect();
    };
    let driver = tokio::spawn(conn);
    let mut set = JoinSet::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let (written, answered, mut release) = (written.clone(), answered.clone(), release.clone());
        set.spawn(async move {
            let req = http::Request::post(format!("http://{target}/v1/models/idle:predict"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(
                    &REQUEST[REQUEST.len() - 33..],
                )))
                .expect("a valid request");
            if sender.ready().await.is_err() {
                return Outcome::Failed;
            }
            let t0 = Instant::now();
            let resp = sender.send_request(req);
            written.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                r = resp => match r {
                    Ok(r) => {
                        answered.fetch_add(1, Ordering::SeqCst);
                        Outcome::Answered(r.status().as_u16(), t0.elapsed())
                    }
                    Err(_) => Outcome::Failed,
                },
                _ = release.wait_for(|r| *r) => Outcome::Held,
            }
        });
    }
    let out = set.join_all().await;
    driver.abort();
    out
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let (rss0, _) = rss_kib(o.pid)?;
    let connects = Arc::new(Semaphore::new(o.connect_concurrency));
    let written = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = watch::channel(false);
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    let mut h2 = JoinSet::new();
    let h2_conns = o.h2_conns.unwrap_or(0);
    for c in 0..h2_conns {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (c % o.sources as usize) as u8));
        let streams = o.clients / h2_conns + usize::from(c < o.clients % h2_conns);
        h2.spawn(h2_client(
            o.target,
            source,
            streams,
            written.clone(),
            answered.clone(),
            release_rx.clone(),
        ));
    }
    for i in 0..if h2_conns > 0 { 0 } else { o.clients } {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % o.sources as usize) as u8));
        set.spawn(client(
            o.target,
            source,
            connects.clone(),
            written.clone(),
            answered.clone(),
            release_rx.clone(),
        ));
    }

    // Settled: every request written, and each one either queued or answered.
    let deadline = t0 + Duration::from_secs(o.settle_secs);
    let mut q = 0;
    let mut failed = 0;
    let mut outcomes = Vec::with_capacity(o.clients);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        while let Some(r) = set.try_join_next() {
            let r = r?;
            if matches!(r, Outcome::Failed) {
                failed += 1;
            }
            outcomes.push(r);
        }
        let w = written.load(Ordering::SeqCst);
        q = match o.admin {
            Some(admin) => queued(admin).await.unwrap_or(q),
            None => w.saturating_sub(answered.load(Ordering::SeqCst)) as u64,
        };
        let a = answered.load(Ordering::SeqCst);
        if (w + failed >= o.clients && q as usize + a + failed >= o.clients)
            || Instant::now() > deadline
        {
            break;
        }
    }
    let settle = t0.elapsed();
    // A moment for the last requests' allocations to land, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = match o.admin {
        Some(admin) => queued(admin).await.unwrap_or(q),
        None => q,
    };
    let (rss, hwm) = rss_kib(o.pid)?;

    let _ = release_tx.send(true);
    while let Some(r) = set.join_next().await {
        outcomes.push(r?);
    }
    while let Some(r) = h2.join_next().await {
        outcomes.extend(r?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, _) = rss_kib(o.pid)?;

    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    let mut rejected = Vec::new();
    let (mut held, mut failed) = (0, 0);
    for r in outcomes {
        match r {
            Outcome::Answered(c, d) => {
                *codes.entry(c).or_default() += 1;
                if c == 503 {
                    rejected.push(d);
                }
            }
            Outcome::Held => held += 1,
            Outcome::Failed => failed += 1,
        }
    }
    println!(
        "flood clients={} h2_conns={h2_conns} settled_s={:.2} queued={} held={} failed={} answers={:?} \
         rss_before_kib={} rss_kib={} hwm_kib={} rss_after_release_kib={} {}",
        o.clients,
        settle.as_secs_f64(),
        q,
        held,
        failed,
        codes,
        rss0,
        rss,
        hwm,
        rss_after,
        stats::summary("503", &mut rejected),
    );
    Ok(())
}
