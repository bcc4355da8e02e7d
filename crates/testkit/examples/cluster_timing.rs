//! Measures the local control plane: warm `LocalCluster` start (and drop) time, and the time
//! from a `deployments/scale` patch (0 -> 1) to the `sample-model` pod being Ready, split into
//! controller (patch -> pod seen), kubelet (pod seen -> process started, i.e. status `running`),
//! probe (started -> Ready) and endpoints (Ready -> ready in the EndpointSlice).
//!
//! ```text
//! cargo build -p zeroscale-testkit --bins --examples
//! target/debug/examples/cluster_timing [starts] [scale rounds]   # defaults 3 and 10
//! ```
//! Runs inside a private network namespace (re-execs itself, like the e2e tests).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use zeroscale_testkit::LocalCluster;

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    let mut args = std::env::args().skip(1);
    let starts: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(starts, rounds))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

async fn run(starts: usize, rounds: usize) -> anyhow::Result<()> {
    let mut start_ms = Vec::new();
    let mut drop_ms = Vec::new();
    for i in 0..starts {
        let t = Instant::now();
        let c = LocalCluster::start().await?;
        let up = t.elapsed();
        let t = Instant::now();
        drop(c);
        let down = t.elapsed();
        println!(
            "start {i}: LocalCluster::start {:.0} ms, drop {:.0} ms",
            ms(up),
            ms(down)
        );
        start_ms.push(ms(up));
        drop_ms.push(ms(down));
    }
    if starts > 0 {
        println!(
            "median of {starts}: start {:.0} ms, drop {:.0} ms",
            median(start_ms),
            median(drop_ms)
        );
    }
    if rounds == 0 {
        return Ok(());
    }

    let cluster = LocalCluster::start().await?;
    let client = cluster.client();
    let ns = "bench";
    let nsobj = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "m"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "m"}},
            "template": {
                "metadata": {"labels": {"app": "m"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "model", "image": "sample-model", "command": ["sample-model"],
                        "env": [{"name": "PORT", "value": "8080"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &deploy).await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "m"},
        "spec": {"selector": {"app": "m"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;

    let mut rows: Vec<[f64; 5]> = Vec::new();
    println!("round: total = controller + kubelet + probe | +endpointslice (ms)");
    for i in 0..rounds {
        let r = one_round(&client, &deployments, ns).await?;
        println!(
            "round {i}: {:.0} = {:.0} + {:.0} + {:.0} | +{:.0}",
            r[0], r[1], r[2], r[3], r[4]
        );
        rows.push(r);
    }
    let col = |k: usize| median(rows.iter().map(|r| r[k]).collect());
    println!(
        "median of {rounds}: scale patch -> Ready {:.0} ms (controller {:.0}, kubelet {:.0}, probe {:.0}); Ready -> EndpointSlice ready +{:.0} ms",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
    Ok(())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
        })
}

/// Scale 0 -> 1, time the stages, scale back to 0 and wait until the pod is gone.
async fn one_round(
    client: &Client,
    deployments: &Api<Deployment>,
    ns: &str,
) -> anyhow::Result<[f64; 5]> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut pod_events =
        watcher::watcher(pods.clone(), watcher::Config::default().labels("app=m")).boxed();
    let mut slice_events = watcher::watcher(slices, watcher::Config::default()).boxed();
    // Let both watches reach the current state before patching.
    while let Some(ev) = pod_events.next().await {
        if matches!(ev?, Event::InitDone) {
            break;
        }
    }
    while let Some(ev) = slice_events.next().await {
        if matches!(ev?, Event::InitDone) {
            break;
        }
    }
    let t0 = Instant::now();
    deployments
        .patch_scale(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    let (mut seen, mut started, mut ready_at, mut endpoint) = (None, None, None, None);
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while endpoint.is_none() || ready_at.is_none() {
        tokio::select! {
            ev = pod_events.next() => {
                if let Some(Event::Apply(p) | Event::InitApply(p)) = ev.transpose()? {
                    let now = t0.elapsed();
                    seen.get_or_insert(now);
                    if running(&p) { started.get_or_insert(now); }
                    if ready(&p) { ready_at.get_or_insert(now); }
                }
            }
            ev = slice_events.next() => {
                if let Some(Event::Apply(s) | Event::InitApply(s)) = ev.transpose()? {
                    let any_ready = s.endpoints.iter().flatten().any(|e| {
                        e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false)
                    });
                    if any_ready { endpoint.get_or_insert(t0.elapsed()); }
                }
            }
            () = &mut deadline => anyhow::bail!("pod not ready within 60 s"),
        }
    }
    let (seen, started, ready_at, endpoint) = (
        seen.context("pod seen")?,
        started.unwrap_or_else(|| ready_at.unwrap_or_default()),
        ready_at.context("ready")?,
        endpoint.context("endpoint")?,
    );
    deployments
        .patch_scale(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    let gone = async {
        loop {
            if pods.list(&Default::default()).await?.items.is_empty() {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), gone).await??;
    Ok([
        ms(ready_at),
        ms(seen),
        ms(started.saturating_sub(seen)),
        ms(ready_at.saturating_sub(started)),
        ms(endpoint.saturating_sub(ready_at)),
    ])
}
