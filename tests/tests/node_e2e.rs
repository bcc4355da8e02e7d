//! End-to-end tests on a real node (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS): the
//! add-on installed from `manifests/` runs as the manifests say, as containers from the images
//! `scripts/build-images.sh` builds, and the example model of `manifests/examples/` wakes from
//! zero through the `zeroscale-activator` Service's ClusterIP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use zeroscale_e2e::{
    Ctx, cluster_ip, demo, eventually, pod_ready, test, traffic, wait_deployment_ready,
};
use zeroscale_testkit::addon::{self, ACTIVATOR, ADDON_NAMESPACE, AUTOSCALER, manifests_dir};
use zeroscale_testkit::http_client;

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "the_addon_runs_from_its_manifests_as_non_root_read_only_pods",
            the_addon_runs_from_its_manifests_as_non_root_read_only_pods,
        ),
        test(
            "the_example_model_wakes_through_the_activator_service",
            the_example_model_wakes_through_the_activator_service,
        ),
        test(
            "a_rolling_restart_of_the_activator_under_load_loses_no_request",
            a_rolling_restart_of_the_activator_under_load_loses_no_request,
        ),
        test(
            "a_crashed_model_container_is_restarted_and_no_request_is_lost",
            a_crashed_model_container_is_restarted_and_no_request_is_lost,
        ),
        test(
            "the_standby_autoscaler_takes_over_a_scale_up_when_the_leader_dies",
            the_standby_autoscaler_takes_over_a_scale_up_when_the_leader_dies,
        ),
        test(
            "a_stream_at_zero_is_held_open_with_heartbeats_until_the_pod_answers",
            a_stream_at_zero_is_held_open_with_heartbeats_until_the_pod_answers,
        ),
        test(
            "demo_scenario_answers_every_request",
            demo_scenario_answers_every_request,
        ),
        test(
            "the_dashboard_and_alerts_name_only_exported_metrics",
            the_dashboard_and_alerts_name_only_exported_metrics,
        ),
        test(
            "kubectl_zeroscale_shows_what_a_namespace_user_may_see",
            kubectl_zeroscale_shows_what_a_namespace_user_may_see,
        ),
    ])
}

/// Installs the add-on with the fast test configuration (a second call re-applies, which must
/// change nothing) and waits for every add-on pod to be Ready.
async fn install(client: &Client) -> anyhow::Result<Vec<addon::Applied>> {
    zeroscale_e2e::install_addon(client, &addon::fast_config()).await
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
                "{name}: image {image} is not the add-on image from manifests/base/kustomization.yaml"
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

/// Applies `manifests/examples/` (the `sentiment` model in namespace `models`), then patches
/// what a test needs different: the example's timings are for people (a 5 s load, a 60 s grace
/// period). Everything else (image, probe, the other annotations) is as written.
async fn deploy_example(
    client: &Client,
    annotations: serde_json::Value,
    service_time: &str,
) -> anyhow::Result<()> {
    addon::apply_kustomization(client, &manifests_dir().join("examples")).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "models");
    let mut a = serde_json::json!({"zeroscale.dev/scale-to-zero-grace-period": "4s"});
    if let (Some(a), Some(extra)) = (a.as_object_mut(), annotations.as_object()) {
        a.extend(extra.clone());
    }
    let patch = serde_json::json!({
        "metadata": {"annotations": a},
        "spec": {"template": {"spec": {"containers": [{
            "name": "model",
            "args": [
                "--model-name=sentiment",
                "--load-delay=0s",
                format!("--service-time={service_time}"),
            ],
        }]}}},
    });
    deployments
        .patch(
            "sentiment",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    Ok(())
}

/// Removes the example model and waits until its namespace is gone, so the next test starts
/// from a fresh one.
async fn remove_example(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete("models", &Default::default()).await;
    eventually(
        "namespace models deleted",
        Duration::from_secs(120),
        || async { Ok(namespaces.get_opt("models").await?.is_none().then_some(())) },
    )
    .await
}

fn ensure_all_answered(outcomes: &[traffic::Outcome], what: &str) -> anyhow::Result<()> {
    let summary = traffic::Summary::of(outcomes);
    eprintln!(
        "{what}: {} sent, by status {:?}, p50/p99/max {:?}",
        summary.sent, summary.by_status, summary.latency
    );
    ensure!(summary.sent > 0, "{what}: nothing was sent");
    ensure!(
        summary.ok() == summary.sent,
        "{what}: {} of {} not answered 200 ({:?}):\n{}",
        summary.sent - summary.ok(),
        summary.sent,
        summary.failure_kinds(),
        summary.failure_lines(20)
    );
    Ok(())
}

async fn the_example_model_wakes_through_the_activator_service(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    install(&client).await?;
    deploy_example(&client, serde_json::json!({}), "10ms").await?;
    ensure!(
        replicas(&client, "models", "sentiment").await? == 0,
        "the example does not start at 0"
    );
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "models");
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
        eventually(
            &format!("round {round}: the model's pods gone"),
            Duration::from_secs(60),
            || async {
                let list = pods.list(&ListParams::default()).await?;
                Ok(list.items.is_empty().then_some(()))
            },
        )
        .await?;
    }
    remove_example(&client).await
}

/// Held streams through the real add-on (`zeroscale.dev/hold-streams: 0s`): a streamed chat
/// request to the example model at zero is answered 200 `text/event-stream` by the activator
/// at once, kept open with heartbeat comments (interval 1s) through the wake and a 3 s model
/// load, then carries the cold start and the pod's own events to `[DONE]`.
async fn a_stream_at_zero_is_held_open_with_heartbeats_until_the_pod_answers(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let mut config = addon::fast_config();
    config.insert("activator-stream-heartbeat-interval".into(), "1s".into());
    zeroscale_e2e::install_addon(&client, &config).await?;
    deploy_example(
        &client,
        serde_json::json!({"zeroscale.dev/hold-streams": "0s"}),
        "10ms",
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "models");
    let slow_load = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
        "name": "model",
        "args": ["--model-name=sentiment", "--load-delay=3s", "--service-time=10ms"],
    }]}}}});
    deployments
        .patch(
            "sentiment",
            &PatchParams::default(),
            &Patch::Strategic(&slow_load),
        )
        .await?;
    ensure!(
        replicas(&client, "models", "sentiment").await? == 0,
        "the example does not start at 0"
    );
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    let t = Instant::now();
    let r = http_client::request(
        activator,
        http::Method::POST,
        "/v1/chat/completions",
        Some(&serde_json::json!({
            "model": "sentiment",
            "stream": true,
            "messages": [{"role": "user", "content": "hello"}],
        })),
        Duration::from_secs(120),
    )
    .await?;
    let took = t.elapsed();
    let text = r.text();
    eprintln!("held stream answered {} in {took:?}:\n{text}", r.status);
    ensure!(r.status == 200, "status {}: {text}", r.status);
    ensure!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "content-type {:?}",
        r.header("content-type")
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let beats = lines
        .iter()
        .take_while(|l| l.starts_with(": waiting for model sentiment ("))
        .count();
    ensure!(
        beats >= 2,
        "expected heartbeats through the 3 s load, got {beats}:\n{text}"
    );
    ensure!(
        lines[beats].starts_with(": zeroscale-cold-start: "),
        "after the heartbeats: {:?}\n{text}",
        lines[beats]
    );
    let data: Vec<&str> = lines[beats + 1..]
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    ensure!(
        data.last() == Some(&"[DONE]") && data.len() >= 2,
        "the pod's events did not follow to [DONE]:\n{text}"
    );
    ensure!(
        !text.contains("event: error"),
        "the held stream ended with an error:\n{text}"
    );
    remove_example(&client).await
}

/// Installs the add-on and the example model kept warm (`min-scale: 1`, `service_time` per
/// request), waits for its pod, and returns the activator Service's address.
async fn warm_example(client: &Client, service_time: &str) -> anyhow::Result<SocketAddr> {
    install(client).await?;
    deploy_example(
        client,
        serde_json::json!({"zeroscale.dev/min-scale": "1"}),
        service_time,
    )
    .await?;
    wait_deployment_ready(client, "models", "sentiment", 1, Duration::from_secs(60)).await?;
    cluster_ip(client, ADDON_NAMESPACE, ACTIVATOR, "http").await
}

/// Steady load (10 clients x 5 req/s = 50 req/s) through the activator Service, for at most
/// `secs`.
fn steady_load(activator: SocketAddr, secs: u64) -> traffic::SteadyLoad {
    traffic::SteadyLoad::start(
        vec![activator],
        10,
        5.0,
        "/v1/models/sentiment:predict".into(),
        serde_json::json!({"instances": [[1.0, 2.0]]}),
        Duration::from_secs(secs),
    )
}

async fn a_rolling_restart_of_the_activator_under_load_loses_no_request(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let activator = warm_example(&client, "10ms").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    let lp = ListParams::default().labels("app.kubernetes.io/name=zeroscale-activator");
    let before: Vec<String> = pods
        .list(&lp)
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let load = steady_load(activator, 90);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // What `kubectl rollout restart` does.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    let restart = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": format!("{:?}", std::time::SystemTime::now()),
    }}}}});
    deployments
        .patch(
            ACTIVATOR,
            &PatchParams::default(),
            &Patch::Strategic(&restart),
        )
        .await?;
    let t = Instant::now();
    eventually(
        "the activator rollout to finish",
        Duration::from_secs(120),
        || async {
            let list = pods.list(&lp).await?;
            let old_left = list.items.iter().any(|p| before.contains(&p.name_any()));
            let fresh_ready = list.items.iter().filter(|p| pod_ready(p)).count();
            Ok((!old_left && fresh_ready == 2).then_some(()))
        },
    )
    .await?;
    eprintln!("activator rollout finished in {:?}", t.elapsed());
    // Some load on the new pods too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outcomes = load.stop().await?;
    ensure_all_answered(&outcomes, "rolling restart")?;
    remove_example(&client).await
}

fn first_container_id(p: &Pod) -> Option<String> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let id = c.container_id.as_deref()?;
    Some(id.trim_start_matches("containerd://").to_owned())
}

fn first_restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

async fn a_crashed_model_container_is_restarted_and_no_request_is_lost(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    let activator = warm_example(&client, "10ms").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "models");
    let pod = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .context("no model pod")?;
    let name = pod.name_any();
    let id = first_container_id(&pod).context("no container id")?;
    let cgroup = cluster.node_leak_keys().context("no real node")?.1;
    let cgroup_root = Path::new("/sys/fs/cgroup/pids").join(cgroup);
    let load = steady_load(activator, 90);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = container_pid(&cgroup_root, &id).context("the model container's process")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let t = Instant::now();
    // The kubelet restarts it; its endpoint leaves and comes back.
    let restarts = eventually(
        "the model container restarted and Ready",
        Duration::from_secs(60),
        || async {
            let p = pods.get(&name).await?;
            let n = first_restart_count(&p);
            Ok((n >= 1 && pod_ready(&p)).then_some(n))
        },
    )
    .await?;
    eprintln!(
        "model container restarted and Ready after {:?}",
        t.elapsed()
    );
    ensure!(restarts == 1, "restart count {restarts}, want 1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await?;
    ensure_all_answered(&outcomes, "model container crash")?;
    remove_example(&client).await
}

async fn lease_holder(client: &Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    Ok(leases
        .get_opt(AUTOSCALER)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn the_standby_autoscaler_takes_over_a_scale_up_when_the_leader_dies(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    // 10 clients with 400 ms requests keep about 8 in flight; at a target of 3 per pod that is a
    // scale-up to the example's max-scale (5), which the leader makes as the window fills.
    let activator = warm_example(&client, "400ms").await?;
    let leader = eventually("a Lease holder", Duration::from_secs(30), || {
        lease_holder(&client)
    })
    .await?;
    let watch = traffic::ReplicaWatch::start(&client, "models", "sentiment");
    let load = steady_load(activator, 120);
    eventually("the scale-up to start", Duration::from_secs(30), || async {
        Ok((replicas(&client, "models", "sentiment").await? > 1).then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    pods.delete(&leader, &Default::default()).await?;
    let t = Instant::now();
    let next = eventually("another Lease holder", Duration::from_secs(30), || async {
        Ok(lease_holder(&client).await?.filter(|h| *h != leader))
    })
    .await?;
    let took = t.elapsed();
    eprintln!("leader {leader} deleted; {next} holds the Lease after {took:?}");
    // Within the lease duration (the manifests' default, 15 s) and a renew period of slack.
    ensure!(took <= Duration::from_secs(17), "takeover took {took:?}");
    eventually(
        "the scale-up to reach max-scale (5)",
        Duration::from_secs(60),
        || async { Ok((replicas(&client, "models", "sentiment").await? == 5).then_some(())) },
    )
    .await?;
    let outcomes = load.stop().await?;
    let points = watch.stop().await?;
    let line = traffic::timeline(&points);
    eprintln!("replicas (spec/ready): {line}");
    for w in points.windows(2) {
        ensure!(w[1].spec >= w[0].spec, "a scale-down under load: {line}");
    }
    ensure_all_answered(&outcomes, "leader failover")?;
    remove_example(&client).await
}

/// The demo's scenario (`scripts/demo.sh`) on the real node, shortened: two cold starts, a burst that scales
/// up, back to zero in between, the pool scene, and every request answered 200.
async fn demo_scenario_answers_every_request(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let opts = demo::DemoOptions {
        burst_clients: 8,
        burst: Duration::from_secs(6),
        quiet: true,
        ..Default::default()
    };
    let summary = demo::run(&cluster, &opts).await?;
    let table = summary.table();
    ensure!(
        summary.sent > 10 && summary.ok == summary.sent && summary.failures.is_empty(),
        "requests lost:\n{table}"
    );
    ensure!(summary.cold_starts.len() == 2, "{table}");
    ensure!(summary.max_replicas >= 2, "the burst scaled up:\n{table}");
    let replicas: Vec<i32> = summary.timeline.iter().map(|(_, r)| *r).collect();
    let zero_again = replicas.iter().skip(1).position(|&r| r == 0);
    ensure!(
        replicas.first() == Some(&0) && zero_again.is_some() && replicas.last() == Some(&1),
        "0 -> N -> 0 -> 1:\n{table}"
    );
    // The pool scene: four wakes in a pool of two, each model at most one replica: the third
    // and the fourth each evict the least recently used idle model, and the pool is never
    // above its capacity.
    let pool = summary.pool.as_ref().context("the pool scene was played")?;
    ensure!(pool.answers.len() == 4, "{table}");
    ensure!(
        pool.peak.0 <= demo::pool::CAPACITY,
        "pool above capacity:\n{table}"
    );
    ensure!(
        pool.evictions == 2,
        "two evictions:\n{table}\n{:#?}",
        pool.events
    );
    remove_example(&cluster.client()).await
}

/// Metric names (`zeroscale_*`) in the queries of the Grafana dashboard and the alerting rules
/// of `manifests/observability/`.
fn observability_queries() -> anyhow::Result<std::collections::BTreeSet<String>> {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    // Queries (targets' expr, variables' query and definition), not titles.
                    if matches!(k.as_str(), "expr" | "query" | "definition") || !v.is_string() {
                        strings(v, out);
                    }
                }
            }
            _ => {}
        }
    }
    let dir = manifests_dir().join("observability");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("grafana-dashboard.json"),
    )?)?;
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("alerts.yaml"))?)?;
    let mut exprs = Vec::new();
    strings(&dashboard, &mut exprs);
    for g in rules["groups"]
        .as_array()
        .context("alerts.yaml: no groups")?
    {
        for r in g["rules"]
            .as_array()
            .context("alerts.yaml: a group without rules")?
        {
            exprs.push(
                r["expr"]
                    .as_str()
                    .context("a rule without expr")?
                    .to_owned(),
            );
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("zeroscale_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    ensure!(
        names.len() >= 15,
        "only {} metric names found in the queries: {names:?}",
        names.len()
    );
    Ok(names)
}

/// Whether `name` (as a query writes it) is exported by a scrape: a sample of that name, or a
/// family declared by `# TYPE` whose samples carry the name (counters `_total`, histograms
/// `_bucket`/`_sum`/`_count`), so families with no series yet count too.
fn exported(scrape: &str, name: &str) -> bool {
    let declared = |family: &str, kinds: &[&str]| {
        scrape.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some("#")
                && f.next() == Some("TYPE")
                && f.next() == Some(family)
                && f.next().is_some_and(|k| kinds.contains(&k))
        })
    };
    let sample = scrape
        .lines()
        .any(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name));
    sample
        || declared(name, &["gauge"])
        || name
            .strip_suffix("_total")
            .is_some_and(|f| declared(f, &["counter"]))
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|f| declared(f, &["histogram"]))
        })
}

async fn the_dashboard_and_alerts_name_only_exported_metrics(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    // Traffic first, so the per-model families have series (the per-model failure counters
    // exist once their first failure happened): answers slower than the model's
    // response-timeout (504, a response timeout), and a client that leaves early.
    install(&client).await?;
    deploy_example(
        &client,
        serde_json::json!({"zeroscale.dev/min-scale": "1", "zeroscale.dev/response-timeout": "1s"}),
        "1500ms",
    )
    .await?;
    wait_deployment_ready(&client, "models", "sentiment", 1, Duration::from_secs(60)).await?;
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    let (status, _) = predict(activator, "sentiment").await?;
    ensure!(
        status == 504,
        "a 1.5 s answer with a 1 s response-timeout: status {status}"
    );
    {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(activator).await?;
        let body = r#"{"instances":[[1.0]]}"#;
        s.write_all(
            format!(
                "POST /v1/models/sentiment:predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    } // the client leaves before the answer
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut scrape = String::new();
    for (selector, port) in [
        ("app.kubernetes.io/name=zeroscale-activator", 9090),
        ("app.kubernetes.io/name=zeroscale-autoscaler", 9090),
    ] {
        let addrs =
            zeroscale_e2e::ready_pod_addrs(&client, ADDON_NAMESPACE, selector, port).await?;
        ensure!(!addrs.is_empty(), "no Ready pod for {selector}");
        for a in addrs {
            let r = http_client::get(a, "/metrics").await?;
            ensure!(r.status == 200, "{a}/metrics: {}", r.status);
            scrape.push_str(&String::from_utf8_lossy(&r.body));
        }
    }
    let missing: Vec<String> = observability_queries()?
        .into_iter()
        .filter(|n| !exported(&scrape, n))
        .collect();
    ensure!(
        missing.is_empty(),
        "manifests/observability/ queries metrics the binaries do not export: {missing:?}"
    );
    // And the check can fail: a name nobody exports is reported.
    ensure!(!exported(
        &scrape,
        "zeroscale_activator_no_such_metric_total"
    ));
    remove_example(&client).await
}

/// Runs `kubectl-zeroscale` with `kubeconfig` and `args`; its stdout.
fn kubectl_zeroscale(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let bin = zeroscale_testkit::workspace_bin("kubectl-zeroscale");
    let out = std::process::Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "kubectl-zeroscale {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `kubectl zeroscale status` and `explain`, as a user of the model namespace with the
/// built-in `view` role there and the `zeroscale-status` Role of `manifests/status/`: the
/// output matches the cluster's state (a model never requested has no last request and no
/// cold start; after a cold start and two more requests it has both); without the Role the
/// figures are reported unavailable and the rest still shows.
async fn kubectl_zeroscale_shows_what_a_namespace_user_may_see(ctx: Ctx) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    install(&client).await?;
    // At 0 and kept at 1 once woken: a grace period longer than the test, so the cold start
    // below is the only decision.
    deploy_example(
        &client,
        serde_json::json!({"zeroscale.dev/scale-to-zero-grace-period": "10m"}),
        "10ms",
    )
    .await?;
    ensure!(
        replicas(&client, "models", "sentiment").await? == 0,
        "the example does not start at 0"
    );
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    // A user of `models`: a ServiceAccount there, `view` in its namespace.
    let pp = kube::api::PostParams::default();
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("viewer".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), "models")
        .create(&pp, &sa)
        .await?;
    let binding = |ns: &str, kind: &str, role: &str| RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("viewer-{role}")),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "viewer".into(),
            namespace: Some("models".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), "models")
        .create(&pp, &binding("models", "ClusterRole", "view"))
        .await?;
    let kubeconfig = addon::service_account_kubeconfig(
        &client,
        cluster.kubeconfig_path(),
        "models",
        "viewer",
        600,
        &cluster.dir().join("viewer.kubeconfig"),
    )
    .await?;

    // Without the status Role: replicas and decisions, and a clear note about the figures.
    let table = kubectl_zeroscale(&kubeconfig, &["status", "-n", "models"])?;
    ensure!(
        table.contains("sentiment") && table.contains("0/0"),
        "{table}"
    );
    ensure!(
        table.contains("live figures unavailable") && table.contains("zeroscale-status Role"),
        "{table}"
    );

    addon::apply_kustomization(&client, &manifests_dir().join("status")).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ADDON_NAMESPACE);
    bindings
        .create(&pp, &binding(ADDON_NAMESPACE, "Role", "zeroscale-status"))
        .await?;
    let status_json = || -> anyhow::Result<serde_json::Value> {
        let out = kubectl_zeroscale(&kubeconfig, &["status", "-n", "models", "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    };
    let never = eventually("the figures", Duration::from_secs(30), || async {
        let v = status_json()?;
        Ok(v["figures_unavailable"].is_null().then_some(v))
    })
    .await?;
    // Never requested: no activator saw a request or a cold start.
    let f = &never["models"][0]["figures"];
    ensure!(
        f.is_object() && f["last_request_age_seconds"].is_null() && f["last_cold_start"].is_null(),
        "{never}"
    );
    let status_row = || -> anyhow::Result<(String, String)> {
        let table = kubectl_zeroscale(&kubeconfig, &["status", "-n", "models"])?;
        let row = table
            .lines()
            .find(|l| l.contains("sentiment"))
            .with_context(|| format!("no sentiment row: {table}"))?
            .to_owned();
        Ok((table, row))
    };
    let (idle_table, row) = status_row()?;
    ensure!(row.matches("<none>").count() == 2, "{idle_table}");

    // A cold start (the first request wakes the model), then two requests to the warm pod.
    let sent = Instant::now();
    let (status, cold_took) = predict(activator, "sentiment").await?;
    ensure!(status == 200, "status {status}");
    for _ in 0..2 {
        let (status, _) = predict(activator, "sentiment").await?;
        ensure!(status == 200, "status {status}");
    }
    let json = status_json()?;
    // Bounds that hold whatever the machine's speed: the last request came after `sent`, the
    // cold start was part of the first request's wait.
    let since_sent = sent.elapsed().as_secs_f64();
    let f = &json["models"][0]["figures"];
    let last = f["last_request_age_seconds"]
        .as_f64()
        .with_context(|| format!("no last request: {json}"))?;
    ensure!(
        (0.0..=since_sent).contains(&last),
        "last request {last} s ago, sent {since_sent} s ago"
    );
    let cold = f["last_cold_start"]["seconds"]
        .as_f64()
        .with_context(|| format!("no cold start: {json}"))?;
    ensure!(
        cold > 0.0 && cold <= cold_took.as_secs_f64(),
        "cold start {cold} s, the first request took {cold_took:?}"
    );
    let cold_age = f["last_cold_start"]["age_seconds"].as_f64().unwrap_or(-1.0);
    ensure!(
        (0.0..=since_sent).contains(&cold_age),
        "cold start ended {cold_age} s ago"
    );
    let (table, row) = status_row()?;
    // Both columns filled (their format is `cli/src/render.rs`'s unit tests' business): the
    // last request and the last scale are ages.
    ensure!(
        !row.contains("<none>") && row.matches(" ago").count() == 2,
        "{table}"
    );
    let models = json["models"].as_array().context("models")?;
    ensure!(models.len() == 1, "{json}");
    let m = &models[0];
    let d: Deployment = Api::namespaced(client.clone(), "models")
        .get("sentiment")
        .await?;
    ensure!(m["deployment"] == "sentiment", "{m}");
    ensure!(
        m["replicas"] == d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
        "replicas {m}"
    );
    ensure!(
        m["ready"]
            == d.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(-1),
        "ready {m}"
    );
    ensure!(
        m["figures"]["answered"].as_f64() >= Some(3.0),
        "answered {m}"
    );
    ensure!(m["figures"]["queued"] == 0.0, "queued {m}");
    let first = m["decisions"][0]["message"].as_str().unwrap_or("");
    ensure!(first.starts_with("Scaled 0 -> 1"), "decisions {m}");
    let explain = kubectl_zeroscale(&kubeconfig, &["explain", "sentiment", "-n", "models"])?;
    ensure!(
        explain.contains("decisions (newest first)") && explain.contains("Scaled 0 -> 1"),
        "{explain}"
    );
    ensure!(
        explain.contains("zeroscale.dev/scale-to-zero-grace-period: 10m"),
        "{explain}"
    );
    ensure!(
        explain.contains("last request: ") && !explain.contains("<none>"),
        "{explain}"
    );
    // Someone else's namespace is not readable.
    let other = std::process::Command::new(zeroscale_testkit::workspace_bin("kubectl-zeroscale"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["status", "-n", "kube-system"])
        .output()?;
    ensure!(
        !other.status.success(),
        "kube-system readable by a models user"
    );
    eprintln!("{idle_table}");
    eprintln!("{table}");
    eprintln!("{explain}");
    bindings
        .delete("viewer-zeroscale-status", &Default::default())
        .await?;
    remove_example(&client).await
}
