//! The activator library behind a static routing table, as its component tests build it: the
//! `activator` binary needs a Kubernetes API server, and the data path is what is measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroscale_activator::queue::Balance;
use zeroscale_activator::server::{self, Admin, ServerOptions};
use zeroscale_activator::table::NoWake;
use zeroscale_activator::{Endpoint, Limits, Metrics, ModelKey, ModelSpec, Proxy, Table};
use zeroscale_config::ActivatorConfig;

/// Options of the `activator` role.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Proxy listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// Admin (/metrics) listen address.
    #[arg(long)]
    admin: SocketAddr,
    /// The endpoint of model `sample` (none: the model is at zero).
    #[arg(long)]
    backend: Option<SocketAddr>,
    /// The endpoint of models `chat` and `chat-prefix` (a backend serving `chat` and one
    /// serving `chat-prefix`, in that order).
    #[arg(long, num_args = 2)]
    chat_backends: Vec<SocketAddr>,
    /// Queue depth of every model (default: the global default).
    #[arg(long)]
    queue_depth: Option<usize>,
}

/// The models of the static table: `sample` (the backend) and `idle` (no endpoints ever).
pub fn add_model(table: &Table, name: &str, limits: Limits) -> ModelKey {
    let key = ModelKey {
        namespace: "bench".into(),
        deployment: name.into(),
    };
    table.upsert_model(ModelSpec {
        key: key.clone(),
        model_name: name.into(),
        hostnames: vec![],
        created: Some(0),
        limits,
    });
    key
}

/// The production defaults (queue depth 10,000, 64 MiB of bodies, 5 minutes), unlimited
/// per-pod concurrency.
pub fn default_limits(queue_depth: Option<usize>) -> Limits {
    let d = ActivatorConfig::default();
    Limits::with_queue(
        0,
        queue_depth.unwrap_or(d.queue_depth),
        d.queue_bytes,
        d.queue_deadline,
    )
}

/// A ready endpoint.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr,
        ready: true,
        terminating: false,
        pod_name: None,
    }
}

/// A table and proxy wired like the binary wires them (metrics registered, no wake sink).
pub fn build() -> (Arc<Table>, Arc<Proxy>, Registry) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let table = Arc::new(Table::new(metrics.clone(), Arc::new(NoWake)));
    let proxy = Proxy::new(
        table.clone(),
        metrics,
        ActivatorConfig::default().max_routing_body_bytes,
    );
    (table, proxy, registry)
}

/// Runs the activator with `workers` proxy worker threads, as the binary does.
pub async fn run(o: Opts, workers: usize) -> anyhow::Result<()> {
    let (table, proxy, registry) = build();
    let limits = default_limits(o.queue_depth);
    let sample = add_model(&table, "sample", limits.clone());
    if let Some(b) = o.backend {
        table.set_endpoints(&sample, vec![endpoint(b)]);
    }
    // Body-routed chat models on the same backend, one per balancing strategy: their difference
    // is what prefix-hash adds per request (BENCHMARKS.md, "Prefix-hash balancing").
    for (i, (name, balance)) in [
        ("chat", Balance::LeastRequest),
        (
            "chat-prefix",
            Balance::PrefixHash {
                prefix_chars: ActivatorConfig::default().prefix_length,
                load_factor: ActivatorConfig::default().prefix_load_factor,
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let chat = add_model(
            &table,
            name,
            Limits {
                balance,
                ..limits.clone()
            },
        );
        if let Some(&b) = o.chat_backends.get(i) {
            table.set_endpoints(&chat, vec![endpoint(b)]);
        }
    }
    add_model(&table, "idle", limits);
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("binding {}", o.listen))?;
    let admin = TcpListener::bind(o.admin)
        .await
        .with_context(|| format!("binding {}", o.admin))?;
    tokio::spawn(server::serve_admin(
        admin,
        Admin {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(true)),
            feed: proxy.metrics().feed().clone(),
        },
        std::future::pending::<()>(),
    ));
    let opts = ServerOptions {
        drain_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let stop = CancellationToken::new();
    let w = server::spawn_proxy_workers(listener.into_std()?, workers, proxy, opts, stop.clone())?;
    let _ = tokio::signal::ctrl_c().await;
    stop.cancel();
    w.wait().await;
    Ok(())
}
