//! Endpoint-Ready -> first queued request forwarded, in one process: a request waits in the
//! queue of a model with no endpoints; then the endpoint is added through
//! [`Table::set_endpoints`](zeroscale_activator::Table::set_endpoints) (the call the
//! EndpointSlice watcher makes) and the clock runs until the backend's handler sees the
//! request. Each round uses a new backend on a new port, so the activator has no pooled
//! connection to it: like a pod that just started, the time includes the TCP connect.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use zeroscale_activator::server::{self, ServerOptions};

use crate::activator::{add_model, build, default_limits, endpoint};
use crate::stats;

/// Options of the `ready` role.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Rounds (one queued request each).
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

/// A backend that reports the instant its handler saw each request.
async fn backend(l: TcpListener, seen: mpsc::UnboundedSender<Instant>) {
    // Owned here so aborting this task closes the backend's connections too.
    let mut conns = JoinSet::new();
    loop {
        let Ok((s, _)) = l.accept().await else { return };
        let _ = s.set_nodelay(true);
        let seen = seen.clone();
        conns.spawn(async move {
            let svc = service_fn(move |_req| {
                let _ = seen.send(Instant::now());
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}")))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let (table, proxy, _registry) = build();
    let key = add_model(&table, "idle", default_limits(None));
    let gate = table.get(&key).context("model added")?.gate().clone();
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(server::serve_proxy(
        l,
        proxy,
        ServerOptions::default(),
        std::future::pending::<()>(),
    ));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/v1/models/idle:predict").parse()?;

    let mut forwarded = Vec::with_capacity(o.rounds);
    let mut answered = Vec::with_capacity(o.rounds);
    for round in 0..o.rounds {
        let bl = TcpListener::bind("127.0.0.1:0").await?;
        let baddr = bl.local_addr()?;
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let b = tokio::spawn(backend(bl, seen_tx));

        let req = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"instances\":[1]}")))?;
        let c = client.clone();
        let pending = tokio::spawn(async move {
            let r = c.request(req).await?;
            let status = r.status();
            r.into_body().collect().await?;
            Ok::<_, anyhow::Error>((status, Instant::now()))
        });
        let waited = Instant::now();
        while gate.queued() != 1 {
            if waited.elapsed() > Duration::from_secs(5) {
                bail!("round {round}: the request was not queued");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Let the queued request's task settle so it is parked, as it would be after a
        // cold start's seconds of waiting.
        tokio::time::sleep(Duration::from_millis(2)).await;

        let t0 = Instant::now();
        table.set_endpoints(&key, vec![endpoint(baddr)]);
        let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| format!("round {round}: the backend never saw the request"))?;
        let (status, done) = pending.await??;
        if status != StatusCode::OK {
            bail!("round {round}: answer {status}");
        }
        forwarded.push(seen.saturating_duration_since(t0));
        answered.push(done.saturating_duration_since(t0));

        table.set_endpoints(&key, vec![]);
        b.abort();
    }
    println!(
        "ready rounds={} {} {}",
        o.rounds,
        stats::summary("forwarded", &mut forwarded),
        stats::summary("answered", &mut answered),
    );
    Ok(())
}
