//! The activator binary: configuration, wiring, signals. The work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroscale_activator::k8s::{self, Targets, WatchConfig};
use zeroscale_activator::server::{self, Admin, ServerOptions};
use zeroscale_activator::table::{NoWake, WakeSink};
use zeroscale_activator::wake::Waker;
use zeroscale_activator::{Metrics, Proxy, Table};
use zeroscale_config::{ActivatorConfig, parse_duration};

/// zeroscale's activator: routes requests to model pods, holds them while a model is at zero,
/// and tells the autoscaler to wake it.
#[derive(Debug, Parser)]
#[command(name = "activator", version)]
struct Args {
    /// Address of the proxy listener (HTTP/1.1 and h2c).
    #[arg(long, env = "ACTIVATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ACTIVATOR_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Base URL of the autoscaler's API (wake signals go to {url}/v1/wake). Without it, no
    /// wake signals are sent (the autoscaler still sees queued requests in the metrics).
    #[arg(long, env = "AUTOSCALER_URL")]
    autoscaler_url: Option<String>,
    /// The add-on's namespace, where the zeroscale-config ConfigMap lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "zeroscale-system")]
    namespace: String,
    /// Namespaces to route models from, comma-separated; empty means all.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Kubeconfig file; otherwise in-cluster config or $KUBECONFIG / ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// On SIGTERM, how long queued and in-flight requests may take to finish.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// On SIGTERM, how long to go on accepting new connections with readiness off, before the
    /// drain: the time Service routing (kube-proxy, load balancers) takes to stop sending new
    /// connections here. Without it, a connection that arrives in that window is refused.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// A client must send its request head within this, once its first byte arrived.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// An idle client connection is closed after this (not counted as a rejection).
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    keep_alive_timeout: Duration,
    /// Max size of a request head in bytes.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Proxy worker threads, each with its own runtime; 0 means one per available CPU.
    #[arg(long, env = "ACTIVATOR_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Serve plain HTTP/1.1 requests to models with room through the relay (the fast lane; see
    /// activator/README.md). `false` sends every request through hyper.
    #[arg(long, env = "ACTIVATOR_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    relay: bool,
    /// This instance's name, for Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

// The proxy runs on its own worker threads (`server::spawn_proxy_workers`); this runtime runs
// the Kubernetes watches, the admin port and signals.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Args {
        listen,
        admin_listen,
        autoscaler_url,
        namespace,
        watch_namespaces,
        kubeconfig,
        drain_timeout,
        shutdown_delay,
        header_read_timeout,
        keep_alive_timeout,
        max_header_bytes,
        workers,
        relay,
        pod_name,
    } = Args::parse();
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let defaults = ActivatorConfig::default();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let waker = match &autoscaler_url {
        Some(url) => Some(Waker::new(url, defaults.wake_resend_interval)?),
        None => {
            tracing::warn!("no --autoscaler-url: models at zero are not woken by requests");
            None
        }
    };
    let sink: Arc<dyn WakeSink> = match &waker {
        Some(w) => Arc::new(w.clone()),
        None => Arc::new(NoWake),
    };
    let table = Arc::new(Table::new(metrics.clone(), sink));
    let proxy = Proxy::new(table.clone(), metrics, defaults.max_routing_body_bytes);
    let ready = Arc::new(AtomicBool::new(false));

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("binding {admin_listen}"))?;

    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    tokio::spawn(k8s::run(
        client,
        WatchConfig {
            namespace,
            watch_namespaces,
            instance: pod_name,
        },
        Targets {
            table,
            proxy: proxy.clone(),
            waker,
            ready: ready.clone(),
        },
    ));
    tokio::spawn(server::serve_admin(
        admin_listener,
        Admin {
            registry: Arc::new(registry),
            ready: ready.clone(),
        },
        std::future::pending::<()>(),
    ));
    tracing::info!(%listen, %admin_listen, "activator started");

    let opts = ServerOptions {
        header_read_timeout,
        keep_alive_timeout,
        max_header_bytes,
        drain_timeout,
        relay,
    };
    let stop = CancellationToken::new();
    let proxy_workers =
        server::spawn_proxy_workers(listener.into_std()?, workers, proxy, opts, stop.clone())
            .context("starting the proxy workers")?;
    tracing::info!(workers, "proxy workers started");
    shutdown_signal().await;
    tracing::info!(
        ?shutdown_delay,
        "shutting down: not ready; accepting until routing has moved away"
    );
    ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(shutdown_delay).await;
    tracing::info!("no new connections; draining");
    stop.cancel();
    if proxy_workers.wait().await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            ?drain_timeout,
            "drain timeout passed with requests still open; exiting"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
