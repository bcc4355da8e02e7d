//! End-to-end tests on a real node (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS): the
//! add-on installed from `manifests/` runs as the manifests say, as containers from the images
//! `scripts/build-images.sh` builds, and the example model of `manifests/examples/` wakes from
//! zero through the `zeroscale-activator` Service's ClusterIP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use zeroscale_e2e::{Ctx, eventually, pod_ready, test};
use zeroscale_testkit::addon::{self, ACTIVATOR, ADDON_NAMESPACE, AUTOSCALER, manifests_dir};
use zeroscale_testkit::http_client;

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run_on_real_node(vec![
        test(
            "the_addon_runs_from_its_manifests_as_non_root_read_only_pods",
            the_addon_runs_from_its_manifests_as_non_root_read_only_pods,
        ),
        test(
            "the_example_model_wakes_through_the_activator_service",
            the_example_model_wakes_through_the_activator_service,
        ),
    ])
}

/// Installs the add-on (once per cluster: a second call re-applies, which must change nothing)
/// with the fast test configuration, and waits for every add-on pod to be Ready.
async fn install(client: &Client) -> anyhow::Result<Vec<addon::Applied>> {
    let applied = addon::apply_kustomization(client, &manifests_dir()).await?;
    addon::override_config(client, &addon::fast_config()).await?;
    for name in [ACTIVATOR, AUTOSCALER] {
        wait_deployment_ready(client, ADDON_NAMESPACE, name, 2, Duration::from_secs(120)).await?;
    }
    Ok(applied)
}

async fn wait_deployment_ready(
    client: &Client,
    ns: &str,
    name: &str,
    want: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let selector = {
        let d = deployments.get(name).await?;
        let labels = d
            .spec
            .and_then(|s| s.selector.match_labels)
            .context("Deployment without matchLabels")?;
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let lp = ListParams::default().labels(&selector);
    eventually(
        &format!("{want} Ready pods of {ns}/{name}"),
        timeout,
        || async {
            let list = pods.list(&lp).await?;
            let ready = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
                .count();
            Ok((ready == usize::try_from(want).unwrap_or(0)).then_some(()))
        },
    )
    .await
}

/// The process of container `id` (a CRI container id), found through the node's cgroups.
fn container_pid(cgroup_root: &Path, id: &str) -> Option<u32> {
    fn find(dir: &Path, id: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(id))
            {
                return Some(p);
            }
            if let Some(found) = find(&p, id) {
                return Some(found);
            }
        }
        None
    }
    let dir = find(cgroup_root, id)?;
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()?
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

/// uid (real, effective) and whether `/` is mounted read-only, as the container's process sees
/// them.
fn process_identity(pid: u32) -> anyhow::Result<(String, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line")?
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .context("no / in the container's mountinfo")?;
    let opts = root.split(' ').nth(5).unwrap_or("");
    Ok((uid, opts.split(',').any(|o| o == "ro")))
}

async fn the_addon_runs_from_its_manifests_as_non_root_read_only_pods(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    // Applying the same manifests twice: the second changes nothing (generation for kinds that
    // have one, else resourceVersion).
    let first = addon::apply_kustomization(&client, &manifests_dir()).await?;
    let again = addon::apply_kustomization(&client, &manifests_dir()).await?;
    ensure!(
        first.len() == again.len(),
        "{} objects, then {}",
        first.len(),
        again.len()
    );
    for (a, b) in first.iter().zip(&again) {
        let same = match (a.generation, b.generation) {
            (Some(x), Some(y)) => x == y,
            _ => a.resource_version == b.resource_version,
        };
        ensure!(
            same,
            "re-apply changed {} {}: {a:?} -> {b:?}",
            a.kind,
            a.name
        );
    }
    install(&client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    let list = pods.list(&ListParams::default()).await?;
    ensure!(list.items.len() >= 4, "add-on pods: {}", list.items.len());
    let cgroup_root = Path::new("/sys/fs/cgroup/pids").join(
        cluster
            .node_leak_keys()
            .map(|(_, c)| c)
            .context("the cluster has no real node")?,
    );
    for p in &list.items {
        let name = p.name_any();
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for c in statuses {
            let image = &c.image;
            ensure!(
                image.starts_with("ghcr.io/zeroscale/zeroscale:"),
                "{name}: image {image} is not the add-on image from manifests/kustomization.yaml"
            );
            let id = c
                .container_id
                .as_deref()
                .and_then(|i| i.strip_prefix("containerd://"))
                .with_context(|| format!("{name}: no containerd id"))?;
            let pid = container_pid(&cgroup_root, id)
                .with_context(|| format!("{name}: no process for container {id}"))?;
            let (uid, ro) = process_identity(pid)?;
            ensure!(uid == "65532 65532", "{name}: uid {uid}, want 65532");
            ensure!(ro, "{name}: the root filesystem is writable");
            let caps = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let eff = caps
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .map(str::trim)
                .unwrap_or("?");
            ensure!(
                eff == "0000000000000000",
                "{name}: capabilities {eff}, want none"
            );
        }
    }
    Ok(())
}

async fn cluster_ip(
    client: &Client,
    ns: &str,
    name: &str,
    port: &str,
) -> anyhow::Result<SocketAddr> {
    let s: Service = Api::namespaced(client.clone(), ns).get(name).await?;
    let spec = s.spec.context("Service without spec")?;
    let ip = spec.cluster_ip.context("Service without a ClusterIP")?;
    let port = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(port))
        .with_context(|| format!("Service {ns}/{name} has no port {port}"))?
        .port;
    Ok(format!("{ip}:{port}").parse()?)
}

async fn replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(0))
}

/// One prediction through the activator Service, addressed by KServe path.
async fn predict(activator: SocketAddr, model: &str) -> anyhow::Result<(u16, Duration)> {
    let t = Instant::now();
    let r = http_client::post_json(
        activator,
        &format!("/v1/models/{model}:predict"),
        &serde_json::json!({"instances": [[1.0, 2.0]]}),
    )
    .await?;
    Ok((r.status.as_u16(), t.elapsed()))
}

async fn the_example_model_wakes_through_the_activator_service(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    install(&client).await?;
    let examples = manifests_dir().join("examples");
    addon::apply_kustomization(&client, &examples).await?;
    // The example's timings are for people (a 5 s load, a 60 s grace period); a test wants them
    // short. Everything else (image, probe, annotations) is as written.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "models");
    let patch = serde_json::json!({
        "metadata": {"annotations": {"zeroscale.dev/scale-to-zero-grace-period": "4s"}},
        "spec": {"template": {"spec": {"containers": [{
            "name": "model",
            "args": ["--model-name=sentiment", "--load-delay=0s", "--service-time=10ms"],
        }]}}},
    });
    deployments
        .patch(
            "sentiment",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    ensure!(
        replicas(&client, "models", "sentiment").await? == 0,
        "the example does not start at 0"
    );
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    for round in 1..=2 {
        let (status, took) = predict(activator, "sentiment").await?;
        ensure!(status == 200, "round {round}: status {status}");
        eprintln!("round {round}: cold request answered 200 in {took:?}");
        eventually(
            &format!("round {round}: back to 0 replicas"),
            Duration::from_secs(90),
            || async { Ok((replicas(&client, "models", "sentiment").await? == 0).then_some(())) },
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "models");
        eventually(
            &format!("round {round}: the model's pods gone"),
            Duration::from_secs(60),
            || async {
                Ok(pods
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}
