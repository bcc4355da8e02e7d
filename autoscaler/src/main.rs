//! The `autoscaler` binary: flags, tracing, client, listeners; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use zeroscale_autoscaler::controller::{self, Settings};

/// zeroscale autoscaler: scales opted-in Deployments (annotation zeroscale.dev/enabled: "true")
/// from request concurrency, to and from zero.
#[derive(Debug, Parser)]
#[command(name = "autoscaler", version)]
struct Args {
    /// Kubeconfig file; without it the in-cluster config (or $KUBECONFIG, ~/.kube/config) is used.
    #[arg(long, env = "ZEROSCALE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The autoscaler's own namespace: holds the zeroscale-config ConfigMap and the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "zeroscale-system")]
    namespace: String,
    /// Comma-separated namespaces whose Deployments are managed; empty means all namespaces.
    #[arg(
        long,
        env = "ZEROSCALE_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Listen address of the wake API (POST /v1/wake).
    #[arg(long, env = "ZEROSCALE_API_LISTEN", default_value = "0.0.0.0:8080")]
    api_listen: SocketAddr,
    /// Listen address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ZEROSCALE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The activator Service as namespace/name; its EndpointSlices list the activator replicas.
    #[arg(
        long,
        env = "ZEROSCALE_ACTIVATOR_SERVICE",
        default_value = "zeroscale-system/zeroscale-activator"
    )]
    activator_service: String,
    /// The activator's metrics port: an EndpointSlice port name or a number.
    #[arg(
        long,
        env = "ZEROSCALE_ACTIVATOR_METRICS_PORT",
        default_value = "metrics"
    )]
    activator_metrics_port: String,
    /// Name of the coordination Lease used for leader election.
    #[arg(
        long,
        env = "ZEROSCALE_LEASE_NAME",
        default_value = "zeroscale-autoscaler"
    )]
    lease_name: String,
    /// Lease duration in seconds: a standby takes over at most this long after the leader dies.
    #[arg(long, env = "ZEROSCALE_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Renew deadline in seconds (fractions allowed): a leader that has not renewed the Lease
    /// for this long stops writing and reports not ready. Must be below the lease duration;
    /// defaults to 2/3 of it (client-go's RenewDeadline 10s for LeaseDuration 15s).
    #[arg(long, env = "ZEROSCALE_LEASE_RENEW_DEADLINE")]
    lease_renew_deadline: Option<f64>,
    /// Identity in the Lease and in Events; defaults to the hostname and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Timeout in milliseconds of one API write (scale patch, wake, Event).
    #[arg(long, env = "ZEROSCALE_API_TIMEOUT_MS", default_value_t = 5000)]
    api_timeout_ms: u64,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "autoscaler".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zeroscale_kube::log::init();
    let Args {
        kubeconfig,
        namespace,
        namespaces,
        api_listen,
        metrics_listen,
        activator_service,
        activator_metrics_port,
        lease_name,
        lease_duration,
        lease_renew_deadline,
        identity,
        api_timeout_ms,
    } = zeroscale_kube::env::parse::<Args>(zeroscale_kube::env::AUTOSCALER_RENAMES);

    let (act_ns, act_name) = activator_service.split_once('/').with_context(|| {
        format!("--activator-service {activator_service:?} must be namespace/name")
    })?;
    let lease = Duration::from_secs(lease_duration);
    let renew_deadline = match lease_renew_deadline {
        None => lease * 2 / 3,
        Some(secs) => Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero() && *d < lease)
            .with_context(|| {
                format!(
                    "--lease-renew-deadline {secs} must be above 0 and below --lease-duration {lease_duration}"
                )
            })?,
    };
    let client = zeroscale_kube::client::client(kubeconfig.as_deref(), |config| {
        // Bounds every API call that could hang (kube-lease-manager's have no timeout); long
        // enough that a healthy watch never trips it.
        config.read_timeout = Some(controller::CLIENT_READ_TIMEOUT);
        config.reset_reader_on_write = true;
    })
    .await?;
    let api = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding {api_listen}"))?;
    let metrics = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("binding {metrics_listen}"))?;
    let settings = Settings {
        namespace,
        namespaces: namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
        activator_service: (act_ns.to_owned(), act_name.to_owned()),
        activator_metrics_port,
        lease_name,
        lease_duration: lease,
        renew_deadline,
        identity: identity.unwrap_or_else(default_identity),
        api_timeout: Duration::from_millis(api_timeout_ms),
    };
    tracing::info!(identity = %settings.identity, api = %api.local_addr()?, metrics = %metrics.local_addr()?, "autoscaler starting");
    let shutdown = async {
        zeroscale_kube::signal::shutdown().await;
        tracing::info!("shutting down");
    };
    controller::run(client, settings, api, metrics, Default::default(), shutdown).await?;
    Ok(())
}
