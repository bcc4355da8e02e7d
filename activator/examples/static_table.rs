//! The activator without Kubernetes: one model routed to fixed backends. For trying the data
//! path locally and for quick load checks.
//!
//! ```text
//! cargo run --release -p zeroscale-activator --example static_table -- \
//!     127.0.0.1:8080 sample 127.0.0.1:9000 [127.0.0.1:9001 ...]
//! ```
//! Then `curl -XPOST localhost:8080/v1/models/sample:predict -d '{}'`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use zeroscale_activator::server::{self, ServerOptions};
use zeroscale_activator::table::NoWake;
use zeroscale_activator::{Endpoint, Limits, Metrics, ModelKey, ModelSpec, Proxy, Table};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: static_table LISTEN MODEL BACKEND...";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let model = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let backends = args
        .map(|a| a.parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()?;

    let metrics = Metrics::register(&mut Registry::default());
    let table = Arc::new(Table::new(metrics.clone(), Arc::new(NoWake)));
    let key = ModelKey {
        namespace: "default".into(),
        deployment: model.clone(),
    };
    table.upsert_model(ModelSpec {
        key: key.clone(),
        model_name: model,
        hostnames: vec![],
        created: None,
        limits: Limits::with_queue(0, 10_000, 64 << 20, Duration::from_secs(300)),
    });
    table.set_endpoints(
        &key,
        backends
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                ready: true,
                terminating: false,
                pod_name: None,
            })
            .collect(),
    );
    let proxy = Proxy::new(table, metrics, 1 << 20);
    let listener = TcpListener::bind(listen).await?;
    eprintln!("activator (static table) on {listen}");
    server::serve_proxy(listener, proxy, ServerOptions::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
