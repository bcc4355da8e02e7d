//! The backend of every run: the test kit's sample model with zero service time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use zeroscale_testkit::sample_model::{self, Options};

pub async fn run(listen: SocketAddr, model: String) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let opts = Options {
        pod_name: "bench-backend".into(),
        model_name: model,
        ..Options::default() // no load delay, zero service time
    };
    tokio::select! {
        r = sample_model::serve(l, opts) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// A bare hyper server (HTTP/1 and h2c, like the activator's listener) that never answers:
/// the per-connection cost of hyper and tokio alone, the floor under a queued request.
pub async fn hold(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (s, _) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = s.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(s), service_fn(never_answer))
            .into_owned();
        tokio::spawn(conn);
    }
}

async fn never_answer(_req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    std::future::pending().await
}
