//! The process kubelet (`zeroscale_testkit::kubelet`: each pod's containers as local processes
//! of the host, no images) behaves as a kubelet where the fleet benchmark
//! (`tests/examples/fleet.rs`) relies on it: it registers a Ready node, restarts a crashing
//! container and counts it, passes env values and field references, and leaves no process
//! behind. Every other e2e test runs on the real node.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use zeroscale_e2e::{Ctx, eventually, pod_ready, test};

fn main() -> ExitCode {
    zeroscale_e2e::run_on_process_kubelet(vec![
        test("kubelet_registers_a_ready_node", ready_node),
        test("kubelet_restarts_crashing_container", crashing_container),
        test("kubelet_passes_env_and_field_refs", env_and_field_refs),
        test("cluster_drop_leaves_no_process", no_leak),
    ])
}

const WAIT: Duration = Duration::from_secs(60);

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

/// The kubelet's Node is registered and Ready, with the namespace's host address.
async fn ready_node(ctx: Ctx) -> anyhow::Result<()> {
    zeroscale_e2e::ensure_node_ready(&*ctx.cluster().await?).await
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
    let line = eventually("the pod's output", WAIT, || async {
        Ok(cluster
            .pod_log(&ns, "envy")
            .ok()
            .filter(|s| s.contains("GREETING=")))
    })
    .await?;
    let want = format!("GREETING=hello MY_NS={ns} MY_IP={ip} POD_NAME=envy EXPANDED=hello");
    ensure!(line.trim() == want, "got {line:?}, want {want:?}");
    Ok(())
}

/// Dropping a cluster stops every process it started (control plane and pods) and removes its dir.
async fn no_leak(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.own_cluster().await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        // A child process of the container, which must die too.
        "spec": {"containers": [{"name": "c", "image": "none", "command": ["sh", "-c", "sleep 600 & sleep 600"]}]},
    }))?;
    // etcd, kube-apiserver, kube-controller-manager, sh and two sleeps.
    zeroscale_e2e::ensure_drop_leaves_nothing(cluster, pod, 6).await
}
