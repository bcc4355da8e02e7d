//! `sample-model`: the test kit's model server. See `zeroscale_testkit::sample_model`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use zeroscale_testkit::sample_model::{self, Options};

/// A sample model server (KServe v1/v2 and OpenAI-style APIs) for tests and demos.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Listen address; default `$POD_IP:$PORT` (defaults 0.0.0.0 and 8080).
    #[arg(long, env = "LISTEN")]
    listen: Option<String>,
    /// Model name served.
    #[arg(long, env = "MODEL_NAME", default_value = "sample")]
    model_name: String,
    /// Time until /healthz is 200 and inference accepted (e.g. 2s, 500ms).
    #[arg(long, env = "LOAD_DELAY", default_value = "0s", value_parser = sample_model::parse_duration)]
    load_delay: Duration,
    /// Time per inference request (for a stream: before the first event).
    #[arg(long, env = "SERVICE_TIME", default_value = "0s", value_parser = sample_model::parse_duration)]
    service_time: Duration,
    /// Inference requests served at once, more get 429; 0 = unlimited.
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 0)]
    max_concurrency: usize,
    /// Events in a streamed answer.
    #[arg(long, env = "STREAM_CHUNKS", default_value_t = 4)]
    stream_chunks: usize,
    /// Time between streamed events.
    #[arg(long, env = "CHUNK_INTERVAL", default_value = "10ms", value_parser = sample_model::parse_duration)]
    chunk_interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Args {
        listen,
        model_name,
        load_delay,
        service_time,
        max_concurrency,
        stream_chunks,
        chunk_interval,
    } = Args::parse();
    let pod_ip = std::env::var("POD_IP").ok();
    let port = std::env::var("PORT").ok();
    let addr = sample_model::listen_addr(listen.as_deref(), pod_ip.as_deref(), port.as_deref())
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let opts = Options {
        model_name,
        load_delay,
        service_time,
        max_concurrency,
        stream_chunks,
        chunk_interval,
        pod_name: sample_model::default_pod_name(),
    };
    tracing::info!(%addr, ?opts, "sample-model listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Tests look for this line to check graceful termination.
        tracing::info!("{which} received: draining requests in flight");
    };
    sample_model::serve_with_shutdown(listener, opts, shutdown).await?;
    tracing::info!("sample-model stopped");
    Ok(())
}
