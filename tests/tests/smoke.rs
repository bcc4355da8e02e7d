//! Smoke e2e on the local control plane, and the process kubelet's behaviour.

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
    Ctx, LocalCluster, eventually, pod_ready, pods_of, sample_model_deployment, service_for,
    slice_endpoints, test,
};
use zeroscale_testkit::http_client;

fn main() -> ExitCode {
    zeroscale_e2e::run(vec![
        test("smoke_scale_serve_and_scale_to_zero", smoke),
        test(
            "kubelet_failing_readiness_keeps_pod_out_of_service",
            failing_readiness,
        ),
        test("kubelet_registers_a_ready_node", ready_node),
        test("kubelet_restarts_crashing_container", crashing_container),
        test("kubelet_passes_env_and_field_refs", env_and_field_refs),
        test(
            "apiserver_restart_keeps_state_and_kubelet_recovers",
            apiserver_restart,
        ),
        test("cluster_drop_leaves_no_process", no_leak),
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
    for ip in &ips {
        ensure!(
            ip.starts_with("10.244."),
            "pod IP {ip} is from 10.244.0.0/16"
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
    for p in &pods {
        let log = cluster
            .dir()
            .join("pods")
            .join(format!("{ns}_{}.log", p.name_any()));
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        ensure!(
            text.contains("SIGTERM received"),
            "pod {} got SIGTERM:\n{text}",
            p.name_any()
        );
        ensure!(
            text.contains("sample-model stopped"),
            "pod {} exited by itself after draining:\n{text}",
            p.name_any()
        );
    }
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

/// A container that keeps exiting is restarted and each restart counted.
async fn crashing_container(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": "none", "command": ["sh", "-c", "exit 3"]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let status = eventually("restartCount >= 2", WAIT, || async {
        let p = pods.get("crasher").await?;
        let cs = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|mut v| v.pop())
            .filter(|c| c.restart_count >= 2);
        Ok(cs)
    })
    .await?;
    let state = status.state.clone().context("state")?;
    let set = [
        state.running.is_some(),
        state.waiting.is_some(),
        state.terminated.is_some(),
    ];
    ensure!(
        set.iter().filter(|b| **b).count() == 1,
        "exactly one state is set: {state:?}"
    );
    let term = status
        .last_state
        .and_then(|s| s.terminated)
        .context("lastState.terminated is set")?;
    ensure!(
        term.exit_code == 3,
        "exit code recorded: {}",
        term.exit_code
    );
    ensure!(!status.ready, "a crashing container is not ready");
    Ok(())
}

/// env values, fieldRefs, POD_* variables and $(VAR) expansion reach the process.
async fn env_and_field_refs(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let cluster = ctx.cluster().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "envy"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": "none",
                "command": ["sh", "-c"],
                "args": ["echo \"GREETING=$GREETING MY_NS=$MY_NS MY_IP=$MY_IP POD_NAME=$POD_NAME EXPANDED=$(GREETING)\"; exec sleep 600"],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let p = eventually("the pod to be Ready", WAIT, || async {
        let p = pods.get("envy").await?;
        Ok(pod_ready(&p).then_some(p))
    })
    .await?;
    let ip = pod_ip(&p).context("podIP")?;
    let log = cluster.dir().join("pods").join(format!("{ns}_envy.log"));
    let line = eventually("the pod's output", WAIT, || async {
        Ok(std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("GREETING=")))
    })
    .await?;
    let want = format!("GREETING=hello MY_NS={ns} MY_IP={ip} POD_NAME=envy EXPANDED=hello");
    ensure!(line.trim() == want, "got {line:?}, want {want:?}");
    Ok(())
}

/// Dropping a cluster stops every process it started (control plane and pods) and removes its dir.
async fn no_leak(_ctx: Ctx) -> anyhow::Result<()> {
    let cluster = LocalCluster::start().await?;
    let marker = cluster.marker().to_owned();
    let dir = cluster.dir();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        // A child process of the container, which must die too.
        "spec": {"containers": [{"name": "c", "image": "none", "command": ["sh", "-c", "sleep 600 & sleep 600"]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually("the pod to be Ready", WAIT, || async {
        Ok(pod_ready(&pods.get("sleeper").await?).then_some(()))
    })
    .await?;
    let before = zeroscale_testkit::process::processes_with_marker(&marker);
    // etcd, kube-apiserver, kube-controller-manager, sh and two sleeps.
    ensure!(
        before.len() >= 6,
        "marker finds our processes: {}",
        zeroscale_testkit::process::describe(&before)
    );
    drop(pods);
    drop(cluster);
    let left = zeroscale_testkit::process::processes_with_marker(&marker);
    ensure!(
        left.is_empty(),
        "leaked:\n{}",
        zeroscale_testkit::process::describe(&left)
    );
    if std::env::var("ZEROSCALE_KEEP").as_deref() != Ok("1") {
        ensure!(!dir.exists(), "temp dir {} removed", dir.display());
    }
    Ok(())
}

/// `stop_apiserver`/`start_apiserver` keep the port and the data, and the kubelet's watches
/// recover: a pod created after the restart still becomes Ready. Own cluster: it restarts it.
async fn apiserver_restart(_ctx: Ctx) -> anyhow::Result<()> {
    let cluster = LocalCluster::start().await?;
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
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "after-restart"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "none", "command": ["sleep", "600"]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually(
        "the pod created after the restart to be Ready",
        WAIT,
        || async { Ok(pod_ready(&pods.get("after-restart").await?).then_some(())) },
    )
    .await?;
    Ok(())
}

/// The kubelet's Node is registered, Ready, with the namespace's host address.
async fn ready_node(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client())
        .get(cluster.node_name())
        .await?;
    let status = node.status.context("node status")?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ensure!(ready, "node Ready");
    let ips: Vec<String> = status
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect();
    ensure!(
        ips == [zeroscale_testkit::netns::HOST_IP],
        "InternalIP: {ips:?}"
    );
    Ok(())
}
