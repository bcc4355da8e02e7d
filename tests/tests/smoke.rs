//! Smoke e2e on the local cluster and its real node: pods from the `sample-model` image serve,
//! drain on SIGTERM and stay out of a Service while unready; the node is Ready, recovers from an
//! API server restart and leaves nothing behind when the cluster is dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;
use zeroscale_e2e::{
    Ctx, ExitWatch, eventually, pod_ready, pods_of, sample_model_deployment, service_for,
    slice_endpoints, test,
};
use zeroscale_testkit::http_client;

fn main() -> ExitCode {
    zeroscale_e2e::run(vec![
        test("smoke_scale_serve_and_scale_to_zero", smoke),
        test(
            "failing_readiness_keeps_pod_out_of_service",
            failing_readiness,
        ),
        test("the_node_is_registered_and_ready", ready_node),
        test(
            "apiserver_restart_keeps_state_and_the_node_recovers",
            apiserver_restart,
        ),
        test("cluster_drop_leaves_nothing_behind", no_leak),
    ])
}

const WAIT: Duration = Duration::from_secs(60);

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<()> {
    api.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .with_context(|| format!("scaling {name} to {replicas}"))?;
    Ok(())
}

/// Create a Deployment + Service, scale to 2 through the scale subresource, serve, scale to 0.
async fn smoke(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let cluster = ctx.cluster().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // A 1.5 s service time lets a request be in flight when SIGTERM arrives.
    deployments
        .create(
            &PostParams::default(),
            &sample_model_deployment("sample", 0, &["--service-time", "1500ms"]),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service_for("sample"))
        .await?;

    scale(&deployments, "sample", 2).await?;
    let pods = eventually("2 Running and Ready pods", WAIT, || async {
        let pods = pods_of(&client, &ns, "sample").await?;
        let ok = pods.len() == 2
            && pods.iter().all(|p| {
                pod_ready(p)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
        Ok(ok.then_some(pods))
    })
    .await?;
    let ips: BTreeSet<String> = pods.iter().filter_map(pod_ip).collect();
    ensure!(ips.len() == 2, "each pod has its own IP: {ips:?}");
    let cidr = zeroscale_testkit::node::POD_CIDR;
    let net = cidr.trim_end_matches(".0.0/16");
    for ip in &ips {
        ensure!(
            ip.starts_with(&format!("{net}.")),
            "pod IP {ip} is from {cidr}"
        );
    }

    eventually(
        "the EndpointSlice to list both pods as ready",
        WAIT,
        || async {
            let eps = slice_endpoints(&client, &ns, "sample").await?;
            let ready: BTreeSet<String> = eps
                .iter()
                .filter(|(_, r)| *r)
                .map(|(a, _)| a.clone())
                .collect();
            Ok((ready == ips && eps.len() == 2).then_some(()))
        },
    )
    .await?;

    for p in &pods {
        let addr: SocketAddr = format!("{}:8080", pod_ip(p).unwrap_or_default()).parse()?;
        let r = http_client::request(
            addr,
            http::Method::POST,
            "/v1/models/sample:predict",
            Some(&json!({"instances": [1]})),
            Duration::from_secs(10),
        )
        .await?;
        ensure!(
            r.status == 200,
            "pod {} answered {}: {}",
            p.name_any(),
            r.status,
            r.text()
        );
        ensure!(
            r.header("x-pod-name") == Some(p.name_any().as_str()),
            "x-pod-name names the pod"
        );
    }

    // A request in flight on one pod while scaling to 0 must still be answered.
    let first = &pods[0];
    let addr: SocketAddr = format!("{}:8080", pod_ip(first).unwrap_or_default()).parse()?;
    let inflight = tokio::spawn(async move {
        http_client::request(
            addr,
            http::Method::POST,
            "/v1/models/sample:predict",
            Some(&json!({})),
            Duration::from_secs(20),
        )
        .await
    });
    eventually("the request to be in flight", WAIT, || async {
        let m = http_client::get(addr, "/metrics").await?.text();
        Ok(m.lines()
            .any(|l| l.starts_with("sample_model_requests_in_flight") && l.ends_with(" 1"))
            .then_some(()))
    })
    .await?;
    // Every container's last state as the kubelet reports it before the pod object goes: the
    // kubelet deletes a terminating pod only after its status shows the containers terminated.
    let watch = ExitWatch::start(client.clone(), &ns, "app=sample");
    scale(&deployments, "sample", 0).await?;
    let r = inflight.await??;
    ensure!(
        r.status == 200,
        "the in-flight request was answered during termination: {}",
        r.status
    );

    eventually("the EndpointSlice to empty", WAIT, || async {
        Ok(slice_endpoints(&client, &ns, "sample")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    eventually("the pods to be gone", WAIT, || async {
        Ok(pods_of(&client, &ns, "sample")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    // Exit code 0: sample-model caught SIGTERM, drained and exited by itself (the default
    // disposition would give 143, a kill at the end of the grace period 137).
    let exits = watch.stop();
    for p in &pods {
        let name = p.name_any();
        let exit = exits.get(&name);
        ensure!(
            exit.is_some_and(|(code, _)| *code == 0),
            "pod {name} exited by itself after SIGTERM: last terminated state {exit:?}"
        );
    }
    drop(cluster);
    Ok(())
}

/// A pod whose readiness probe fails runs, answers, but stays out of the Service's ready endpoints.
async fn failing_readiness(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let mut d = sample_model_deployment("unready", 1, &[]);
    // sample-model answers 404 on this path: the probe fails.
    let probe = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers[0].readiness_probe.as_mut())
        .and_then(|p| p.http_get.as_mut())
        .context("probe")?;
    probe.path = Some("/not-healthy".into());
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service_for("unready"))
        .await?;
    let pod = eventually("the pod to run with an IP", WAIT, || async {
        let pods = pods_of(&client, &ns, "unready").await?;
        Ok(pods.into_iter().find(|p| {
            pod_ip(p).is_some()
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.started == Some(true)))
        }))
    })
    .await?;
    let ip = pod_ip(&pod).unwrap_or_default();
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    // The server itself is up and healthy on /healthz: only the probe keeps it unready.
    eventually("the server to answer", WAIT, || async {
        Ok(http_client::get(addr, "/healthz")
            .await
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .await?;
    eventually("the EndpointSlice to know the pod", WAIT, || async {
        Ok((!slice_endpoints(&client, &ns, "unready").await?.is_empty()).then_some(()))
    })
    .await?;
    // Several probe rounds (period 1 s) pass; the pod never becomes ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = pods_of(&client, &ns, "unready").await?;
    ensure!(pods.len() == 1 && !pod_ready(&pods[0]), "pod is not Ready");
    let eps = slice_endpoints(&client, &ns, "unready").await?;
    ensure!(
        eps.iter().all(|(a, ready)| !ready && a == &ip),
        "no ready endpoint: {eps:?}"
    );
    Ok(())
}

/// Dropping a cluster stops every process it started (control plane, node, containers) and
/// removes its dir and everything the node made (mounts, cgroups, network devices).
async fn no_leak(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.own_cluster().await?;
    ensure!(cluster.has_real_node(), "the cluster has a real node");
    // etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node's processes.
    zeroscale_e2e::ensure_drop_leaves_nothing(cluster, sample_model_pod("sleeper")?, 7).await
}

/// A bare Pod `name` running `sample-model` (readiness probe on `/healthz`).
fn sample_model_pod(name: &str) -> anyhow::Result<Pod> {
    let d = sample_model_deployment(name, 1, &[]);
    let template = d.spec.context("spec")?.template;
    let mut spec = template.spec.context("pod spec")?;
    spec.termination_grace_period_seconds = Some(1);
    Ok(Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    })
}

/// `stop_apiserver`/`start_apiserver` keep the port and the data, and the node's watches
/// recover: a pod created after the restart still becomes Ready. Own cluster: it restarts it.
async fn apiserver_restart(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.own_cluster().await?;
    let client = cluster.client();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let cm = serde_json::from_value(json!({"metadata": {"name": "keep"}, "data": {"k": "v"}}))?;
    cms.create(&PostParams::default(), &cm).await?;
    let url = cluster.server_url();
    cluster.stop_apiserver().await;
    ensure!(cms.get("keep").await.is_err(), "API server is down");
    cluster.start_apiserver().await?;
    ensure!(cluster.server_url() == url, "same address after restart");
    let got = cms.get("keep").await?;
    ensure!(
        got.data.and_then(|d| d.get("k").cloned()).as_deref() == Some("v"),
        "data kept in etcd"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &sample_model_pod("after-restart")?)
        .await?;
    eventually(
        "the pod created after the restart to be Ready",
        WAIT,
        || async { Ok(pod_ready(&pods.get("after-restart").await?).then_some(())) },
    )
    .await?;
    Ok(())
}

/// The node is registered and Ready, with the namespace's host address.
async fn ready_node(ctx: Ctx) -> anyhow::Result<()> {
    zeroscale_e2e::ensure_node_ready(&*ctx.cluster().await?).await
}
