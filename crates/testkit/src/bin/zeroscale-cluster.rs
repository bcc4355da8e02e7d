//! `zeroscale-cluster`: starts a LocalCluster (with the process kubelet, or a real node with
//! `--real-node`) inside a private network namespace, writes its kubeconfig, prints `ready`, and runs until SIGTERM/SIGINT.
//!
//! The cluster lives in a private network namespace: processes that want to reach it (or its
//! pods) must run inside it, as pods or with `nsenter --net=/proc/<pid>/ns/net <cmd>`, where
//! `<pid>` is written to `--pid-out` (and printed on stderr).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use zeroscale_testkit::{ClusterOptions, LocalCluster};

/// Runs a local Kubernetes control plane and process kubelet until stopped.
#[derive(Debug, Parser)]
struct Args {
    /// Where to copy the admin kubeconfig.
    #[arg(long, env = "KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Where to write the pid of the process inside the network namespace.
    #[arg(long)]
    pid_out: Option<PathBuf>,
    /// Do not start the process kubelet.
    #[arg(long)]
    no_kubelet: bool,
    /// Start kube-scheduler and a real node (containerd, runc, CNI, kubelet, kube-proxy,
    /// CoreDNS) instead of the process kubelet.
    #[arg(long)]
    real_node: bool,
}

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    let Args {
        kubeconfig_out,
        pid_out,
        no_kubelet,
        real_node,
    } = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let cluster = LocalCluster::start_with(ClusterOptions {
            kubelet: !no_kubelet,
            real_node,
            ..ClusterOptions::default()
        })
        .await?;
        if let Some(out) = &kubeconfig_out {
            std::fs::copy(cluster.kubeconfig_path(), out)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        if let Some(out) = &pid_out {
            std::fs::write(out, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing {}", out.display()))?;
        }
        eprintln!(
            "zeroscale-cluster: server {} dir {} pid {}",
            cluster.server_url(),
            cluster.dir().display(),
            std::process::id()
        );
        println!("ready");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        drop(cluster);
        anyhow::Ok(())
    })
}
