//! Leader liveness against a real local API server: two autoscalers, kube-apiserver stopped for
//! 20 s, then started again. Prints what each replica's `/readyz` and leader gauge said.
//!
//! Expected: while the API server is down both replicas answer `/readyz` 503 with reasons,
//! the leader logs "lost leadership: lease not renewed ..." once and its gauge drops to 0;
//! after the restart both are ready again and exactly one leads.
//!
//! Needs the control plane built by `scripts/build-control-plane.sh`; runs inside a private
//! network namespace like the other examples.
//!
//! ```text
//! cargo run -p zeroscale-autoscaler --example apiserver_outage -- [outage seconds]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::net::TcpListener;
use zeroscale_autoscaler::controller::{self, Settings};
use zeroscale_testkit::LocalCluster;
use zeroscale_testkit::cluster::ClusterOptions;
use zeroscale_testkit::http_client;

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client=off,kube_lease_manager=off".into()),
        )
        .init();
    let outage: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(Duration::from_secs(outage)))
}

struct Replica {
    name: &'static str,
    metrics: SocketAddr,
}

impl Replica {
    async fn readyz(&self) -> (u16, String) {
        match http_client::get(self.metrics, "/readyz").await {
            Ok(r) => (
                r.status.as_u16(),
                String::from_utf8_lossy(&r.body).trim().replace('\n', " | "),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    async fn metric(&self, name: &str) -> Option<String> {
        let r = http_client::get(self.metrics, "/metrics").await.ok()?;
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_owned))
    }
}

async fn start(
    cluster: &LocalCluster,
    name: &'static str,
) -> anyhow::Result<(Replica, tokio::task::JoinHandle<()>)> {
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = TcpListener::bind("127.0.0.1:0").await?;
    let addr = metrics.local_addr()?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cluster.kubeconfig_path())?,
        &Default::default(),
    )
    .await?;
    // As `main` sets it.
    config.read_timeout = Some(controller::CLIENT_READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let client = kube::Client::try_from(config)?;
    let lease = Duration::from_secs(4);
    let settings = Settings {
        namespace: "zeroscale-system".into(),
        namespaces: vec!["outage".into()],
        activator_service: ("zeroscale-system".into(), "zeroscale-activator".into()),
        activator_metrics_port: "metrics".into(),
        lease_name: "zeroscale-autoscaler".into(),
        lease_duration: lease,
        renew_deadline: lease * 2 / 3,
        identity: name.into(),
        api_timeout: Duration::from_secs(2),
    };
    let task = tokio::spawn(async move {
        let never = std::future::pending::<()>();
        if let Err(e) = zeroscale_autoscaler::app::run(
            client,
            settings,
            api,
            metrics,
            Default::default(),
            never,
        )
        .await
        {
            eprintln!("{name}: {e}");
        }
    });
    Ok((
        Replica {
            name,
            metrics: addr,
        },
        task,
    ))
}

async fn until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ok().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within {limit:?}");
}

async fn report(replicas: &[Replica], at: Duration) {
    for r in replicas {
        let (status, body) = r.readyz().await;
        let leader = r.metric("zeroscale_autoscaler_leader").await;
        let lost = r.metric("zeroscale_autoscaler_leader_lost_total").await;
        println!(
            "t={:5.1}s {}: readyz {status} {body:?}, leader {}, leader_lost_total {}",
            at.as_secs_f64(),
            r.name,
            leader.as_deref().unwrap_or("?"),
            lost.as_deref().unwrap_or("?")
        );
    }
}

async fn run(outage: Duration) -> anyhow::Result<()> {
    let cluster = LocalCluster::start_with(ClusterOptions {
        kubelet: false,
        ..Default::default()
    })
    .await?;
    let client = cluster.client();
    for ns in ["zeroscale-system", "outage"] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    let (a, _ta) = start(&cluster, "a").await?;
    let (b, _tb) = start(&cluster, "b").await?;
    let replicas = [a, b];
    until(
        "both ready, one leader",
        Duration::from_secs(30),
        async || {
            let mut leaders = 0;
            for r in &replicas {
                if r.readyz().await.0 != 200 {
                    return false;
                }
                leaders += usize::from(
                    r.metric("zeroscale_autoscaler_leader").await.as_deref() == Some("1"),
                );
            }
            leaders == 1
        },
    )
    .await;
    let t0 = Instant::now();
    report(&replicas, t0.elapsed()).await;

    println!("stopping kube-apiserver for {outage:?}");
    cluster.stop_apiserver().await;
    let stopped = Instant::now();
    while stopped.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(2)).await;
        report(&replicas, t0.elapsed()).await;
    }
    println!("starting kube-apiserver");
    cluster.start_apiserver().await?;
    let back = until(
        "both ready again, one leader",
        Duration::from_secs(60),
        async || {
            let mut leaders = 0;
            for r in &replicas {
                if r.readyz().await.0 != 200 {
                    return false;
                }
                leaders += usize::from(
                    r.metric("zeroscale_autoscaler_leader").await.as_deref() == Some("1"),
                );
            }
            leaders == 1
        },
    )
    .await;
    println!("ready again {:.1}s after the restart", back.as_secs_f64());
    report(&replicas, t0.elapsed()).await;
    Ok(())
}
