//! Measures the local cluster: warm `LocalCluster` start (and drop) time, and the time from a
//! `deployments/scale` patch (0 -> 1) to the `sample-model` pod being Ready, split into
//! controller (patch -> pod seen), scheduler (pod seen -> bound to the node), kubelet (bound ->
//! container running: sandbox, network, container start), probe (running -> Ready) and
//! endpoints (Ready -> ready in the EndpointSlice).
//!
//! With `--real-node` the cluster has a real node and the pod is a container from the
//! `sample-model` image; then it also installs the add-on from `manifests/` and times cold
//! starts through the `zeroscale-activator` Service (request at 0 replicas -> 200, no load
//! delay), waiting for scale-to-zero between rounds.
//!
//! ```text
//! cargo build -p zeroscale-testkit --bins --examples
//! target/debug/examples/cluster_timing [--real-node] [starts] [scale rounds] [cold starts]
//! # defaults 3, 10 and 5 (cold starts only with --real-node)
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
use zeroscale_testkit::{ClusterOptions, LocalCluster};

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    let all: Vec<String> = std::env::args().skip(1).collect();
    let real_node = all.iter().any(|a| a == "--real-node");
    let mut args = all.into_iter().filter(|a| a != "--real-node");
    let starts: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let colds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(real_node, starts, rounds, colds))
}

fn options(real_node: bool) -> ClusterOptions {
    ClusterOptions {
        real_node,
        ..ClusterOptions::default()
    }
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

async fn run(real_node: bool, starts: usize, rounds: usize, colds: usize) -> anyhow::Result<()> {
    let mut start_ms = Vec::new();
    let mut drop_ms = Vec::new();
    for i in 0..starts {
        let t = Instant::now();
        let c = LocalCluster::start_with(options(real_node)).await?;
        let up = t.elapsed();
        for (step, at) in c.node_timings() {
            println!("    node: {step} at {:.0} ms", ms(at));
        }
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

    let cluster = LocalCluster::start_with(options(real_node)).await?;
    let client = cluster.client();
    // The process kubelet runs `command` as a local binary; the real node runs the image.
    let image = if real_node {
        zeroscale_testkit::node::read_images(&zeroscale_testkit::bins::images_dir())?
            .into_iter()
            .find(|i| i.target == "sample-model")
            .context("no sample-model image")?
            .reference
    } else {
        "sample-model".to_owned()
    };
    let ns = "bench";
    let deployments = create_model(&client, ns, "m", &image, json!({})).await?;

    let mut rows: Vec<[f64; 6]> = Vec::new();
    println!("round: total = controller + scheduler + kubelet + probe | +endpointslice (ms)");
    for i in 0..rounds {
        let r = one_round(&client, &deployments, ns).await?;
        println!(
            "round {i}: {:.0} = {:.0} + {:.0} + {:.0} + {:.0} | +{:.0}",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
        rows.push(r);
    }
    let col = |k: usize| median(rows.iter().map(|r| r[k]).collect());
    println!(
        "median of {rounds}: scale patch -> Ready {:.0} ms (controller {:.0}, scheduler {:.0}, kubelet+runtime {:.0}, probe {:.0}); Ready -> EndpointSlice ready +{:.0} ms",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4),
        col(5)
    );
    if real_node && colds > 0 {
        cold_starts(&client, &image, colds).await?;
    }
    Ok(())
}

/// Installs the add-on from `manifests/`, deploys an opted-in `sample-model` at 0 with no load
/// delay, and times `colds` requests at zero through the activator Service.
async fn cold_starts(client: &Client, image: &str, colds: usize) -> anyhow::Result<()> {
    use zeroscale_testkit::addon;
    addon::apply_kustomization(client, &addon::manifests_dir()).await?;
    addon::override_config(client, &addon::fast_config()).await?;
    let system: Api<Pod> = Api::namespaced(client.clone(), addon::ADDON_NAMESPACE);
    wait_until("4 add-on pods Ready", Duration::from_secs(120), || async {
        let l = system.list(&Default::default()).await?;
        Ok(l.items.iter().filter(|p| ready(p)).count() == 4)
    })
    .await?;
    let svc: Service = Api::namespaced(client.clone(), addon::ADDON_NAMESPACE)
        .get(addon::ACTIVATOR)
        .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("activator ClusterIP")?;
    let activator: std::net::SocketAddr = format!("{ip}:80").parse()?;
    let ns = "cold";
    let annotations = json!({
        "zeroscale.dev/enabled": "true",
        "zeroscale.dev/scale-to-zero-grace-period": "2s",
    });
    let deployments = create_model(client, ns, "c", image, annotations).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let at_zero = || async {
        let d = deployments.get("c").await?;
        let zero = d.spec.and_then(|s| s.replicas) == Some(0);
        Ok(zero && pods.list(&Default::default()).await?.items.is_empty())
    };
    // kube-proxy programs the activator Service a moment after its pods are Ready.
    wait_until(
        "the activator Service accepts",
        Duration::from_secs(30),
        || async { Ok(tokio::net::TcpStream::connect(activator).await.is_ok()) },
    )
    .await?;
    // A newly opted-in model first gets its initial scale (1, within a tick or two); start
    // from zero.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until(
        "at zero before the first round",
        Duration::from_secs(90),
        at_zero,
    )
    .await?;
    let mut took = Vec::new();
    for i in 0..colds {
        let t = Instant::now();
        let r = zeroscale_testkit::http_client::post_json(
            activator,
            "/v1/models/c:predict",
            &json!({"instances": [[1.0]]}),
        )
        .await?;
        let d = t.elapsed();
        anyhow::ensure!(r.status == 200, "cold start {i}: status {}", r.status);
        println!("cold start {i}: 200 after {:.0} ms", ms(d));
        took.push(ms(d));
        wait_until("back to zero, pod gone", Duration::from_secs(90), at_zero).await?;
    }
    println!(
        "median of {colds}: cold start through the activator Service (no load delay) {:.0} ms",
        median(took)
    );
    Ok(())
}

/// Creates namespace `ns` with a `sample-model` Deployment `name` at 0 replicas (no load delay,
/// readinessProbe on `/healthz` every 1 s) and its Service; returns the Deployments API.
async fn create_model(
    client: &Client,
    ns: &str,
    name: &str,
    image: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<Api<Deployment>> {
    let nsobj = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    // As manifests/examples/model.yaml: no token volume for the kubelet to mount.
                    "automountServiceAccountToken": false,
                    "containers": [{
                        // `command` for the process kubelet, which runs it as a local binary.
                        "name": "model", "image": image, "command": ["sample-model"],
                        "args": [format!("--model-name={name}")],
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
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(deployments)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
) -> anyhow::Result<[f64; 6]> {
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
    let (mut seen, mut bound, mut started, mut ready_at, mut endpoint) =
        (None, None, None, None, None);
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while endpoint.is_none() || ready_at.is_none() {
        tokio::select! {
            ev = pod_events.next() => {
                if let Some(Event::Apply(p) | Event::InitApply(p)) = ev.transpose()? {
                    let now = t0.elapsed();
                    seen.get_or_insert(now);
                    if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) { bound.get_or_insert(now); }
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
    let (seen, bound, started, ready_at, endpoint) = (
        seen.context("pod seen")?,
        bound.context("pod bound")?,
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
        ms(bound.saturating_sub(seen)),
        ms(started.saturating_sub(bound)),
        ms(ready_at.saturating_sub(started)),
        ms(endpoint.saturating_sub(ready_at)),
    ])
}
