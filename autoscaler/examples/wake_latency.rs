//! Wake latency against a real local API server: wake request received -> scale PATCH sent,
//! and -> answer ready, over many wakes of Deployments at zero.
//!
//! Runs the wake path exactly as the API handler does (parse, reflector-store lookup, plan,
//! one precondition PATCH of the scale subresource) against `zeroscale_testkit::LocalCluster`
//! (etcd + kube-apiserver + kube-controller-manager, no kubelet), inside a private network
//! namespace. Needs the control plane built by `scripts/build-control-plane.sh`.
//!
//! ```text
//! cargo run --release -p zeroscale-autoscaler --example wake_latency -- [wakes]
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use zeroscale_autoscaler::wake;
use zeroscale_config::GlobalConfig;
use zeroscale_testkit::LocalCluster;
use zeroscale_testkit::cluster::ClusterOptions;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    let wakes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(wakes))
}

async fn run(wakes: usize) -> anyhow::Result<()> {
    let cluster = LocalCluster::start_with(ClusterOptions {
        kubelet: false,
        ..Default::default()
    })
    .await?;
    let client = cluster.client();
    let ns = "wake-bench";
    let nsobj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for i in 0..wakes {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("m{i}"), "annotations": {"zeroscale.dev/enabled": "true"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": format!("m{i}")}},
                "template": {
                    "metadata": {"labels": {"app": format!("m{i}")}},
                    "spec": {"containers": [{"name": "c", "image": "none"}]},
                },
            },
        }))?;
        api.create(&PostParams::default(), &d).await?;
    }
    // The reflector store the wake path reads, as in the autoscaler.
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api.clone(), watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    store.wait_until_ready().await?;
    while store.state().len() < wakes {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let global = GlobalConfig::default();
    let mut to_patch = Vec::with_capacity(wakes);
    let mut to_answer = Vec::with_capacity(wakes);
    for i in 0..wakes {
        let body = format!(r#"{{"namespace":"{ns}","deployment":"m{i}","queued":1}}"#);
        let received = Instant::now();
        let req = wake::parse(body.as_bytes())?;
        let cached = store.get(&ObjectRef::new(&req.deployment).within(&req.namespace));
        let plan = wake::plan(&req, cached.as_deref(), &global)?;
        let mut patch_at = None;
        let answer = wake::execute(&api, &plan, Duration::from_secs(5), || {
            patch_at = Some(Instant::now())
        })
        .await?;
        to_answer.push(received.elapsed());
        anyhow::ensure!(
            answer.scaled && answer.replicas == 1,
            "wake {i}: {answer:?}"
        );
        to_patch.push(
            patch_at
                .map(|t| t.duration_since(received))
                .unwrap_or_default(),
        );
    }
    to_patch.sort();
    to_answer.sort();
    println!("wakes: {wakes} (sequential, each a Deployment at 0)");
    println!(
        "received -> PATCH sent: p50 {:.1?} p99 {:.1?} max {:.1?}",
        percentile(&to_patch, 0.5),
        percentile(&to_patch, 0.99),
        to_patch[to_patch.len() - 1]
    );
    println!(
        "received -> answer (PATCH applied by the API server): p50 {:.2?} p99 {:.2?} max {:.2?}",
        percentile(&to_answer, 0.5),
        percentile(&to_answer, 0.99),
        to_answer[to_answer.len() - 1]
    );
    Ok(())
}
