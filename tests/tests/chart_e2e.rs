//! The Helm chart (`charts/zeroscale`) on a real node: `helm install` brings the add-on up as
//! the manifests do, `helm upgrade` with a changed value reaches the objects, and
//! `helm uninstall` leaves nothing of it behind. (That the chart renders the same objects as
//! `manifests/` is checked without a cluster: `crates/testkit/tests/chart.rs`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, Client};
use zeroscale_e2e::{Ctx, cluster_ip, eventually, test, wait_deployment_ready};
use zeroscale_testkit::addon::{ACTIVATOR, ADDON_NAMESPACE, AUTOSCALER, fast_config};
use zeroscale_testkit::bins::tool;
use zeroscale_testkit::http_client;

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![test(
        "the_chart_installs_upgrades_and_uninstalls_cleanly",
        the_chart_installs_upgrades_and_uninstalls_cleanly,
    )])
}

const RELEASE: &str = "zeroscale";

/// Runs helm against the test cluster, with its own config and cache dirs under `home`.
fn helm(kubeconfig: &Path, home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let bin = tool("helm").map_err(anyhow::Error::msg)?;
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many objects of the add-on (labelled part-of=zeroscale, or named like its cluster-wide
/// RBAC) exist.
async fn addon_objects(client: &Client) -> anyhow::Result<Vec<String>> {
    let lp = ListParams::default().labels("app.kubernetes.io/part-of=zeroscale");
    let ns = ADDON_NAMESPACE;
    let mut found = Vec::new();
    macro_rules! namespaced {
        ($($t:ty),*) => {$(
            for o in Api::<$t>::namespaced(client.clone(), ns).list(&lp).await?.items {
                found.push(format!("{} {}", stringify!($t), o.metadata.name.unwrap_or_default()));
            }
        )*};
    }
    namespaced!(
        Deployment,
        Service,
        ConfigMap,
        ServiceAccount,
        Role,
        RoleBinding,
        Pod
    );
    // The PDBs carry no labels in the manifests: by name.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    for name in [ACTIVATOR, AUTOSCALER] {
        if pdbs.get_opt(name).await?.is_some() {
            found.push(format!("PodDisruptionBudget {name}"));
        }
    }
    for o in Api::<ClusterRole>::all(client.clone())
        .list(&lp)
        .await?
        .items
    {
        found.push(format!(
            "ClusterRole {}",
            o.metadata.name.unwrap_or_default()
        ));
    }
    for o in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&lp)
        .await?
        .items
    {
        found.push(format!(
            "ClusterRoleBinding {}",
            o.metadata.name.unwrap_or_default()
        ));
    }
    Ok(found)
}

async fn the_chart_installs_upgrades_and_uninstalls_cleanly(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = cluster.client();
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();
    let home = cluster.dir().join("helm");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/zeroscale");
    let chart = chart.to_str().context("chart path")?;
    // The test configuration (decisions every second), as a user would pass values.
    let sets: Vec<String> = fast_config()
        .iter()
        .map(|(k, v)| format!("config.{k}={v}"))
        .collect();
    let mut install = vec![
        "install",
        RELEASE,
        chart,
        "--namespace",
        ADDON_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ];
    for s in &sets {
        install.extend(["--set", s]);
    }
    helm(&kubeconfig, &home, &install)?;
    for name in [ACTIVATOR, AUTOSCALER] {
        wait_deployment_ready(&client, ADDON_NAMESPACE, name, 2, Duration::from_secs(60)).await?;
    }
    let status = helm(
        &kubeconfig,
        &home,
        &["status", RELEASE, "-n", ADDON_NAMESPACE, "-o", "json"],
    )?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    ensure!(
        status["info"]["status"] == "deployed",
        "release status {}",
        status["info"]["status"]
    );
    // The activator answers through its Service (kube-proxy, CoreDNS for the autoscaler URL):
    // an unknown model is a clear 404, not a refused connection.
    let activator = cluster_ip(&client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    let answer = eventually(
        "an answer from the activator Service",
        Duration::from_secs(30),
        || async {
            Ok(http_client::get(activator, "/v1/models/no-such-model")
                .await
                .ok())
        },
    )
    .await?;
    ensure!(
        answer.status == 404,
        "unknown model: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );

    // Upgrade with changed values: they reach the ConfigMap and the Deployment.
    helm(
        &kubeconfig,
        &home,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--namespace",
            ADDON_NAMESPACE,
            "--reuse-values",
            "--set",
            "config.stable-window=2m",
            "--set",
            "activator.replicas=1",
            "--wait",
            "--timeout",
            "3m",
        ],
    )?;
    let cm: ConfigMap = Api::namespaced(client.clone(), ADDON_NAMESPACE)
        .get("zeroscale-config")
        .await?;
    let data = cm.data.unwrap_or_default();
    ensure!(
        data.get("stable-window").map(String::as_str) == Some("2m"),
        "stable-window after the upgrade: {:?}",
        data.get("stable-window")
    );
    ensure!(
        data.get("tick-interval").map(String::as_str) == Some("1s"),
        "--reuse-values lost the install's values: tick-interval {:?}",
        data.get("tick-interval")
    );
    wait_deployment_ready(
        &client,
        ADDON_NAMESPACE,
        ACTIVATOR,
        1,
        Duration::from_secs(120),
    )
    .await?;

    // What the leftover check looks for exists while installed (so its "none" means something):
    // 2 Deployments, 2 Services, the ConfigMap, 2 ServiceAccounts, 2 Roles, 2 RoleBindings,
    // 2 PDBs, 2 ClusterRoles, 2 ClusterRoleBindings, and the pods.
    let installed = addon_objects(&client).await?;
    ensure!(installed.len() >= 17 + 3, "before uninstall: {installed:?}");

    // Uninstall: nothing of the add-on is left (pods included, once they have terminated).
    helm(
        &kubeconfig,
        &home,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            ADDON_NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
        ],
    )?;
    eventually(
        "no object of the add-on left after helm uninstall",
        Duration::from_secs(120),
        || async {
            let left = addon_objects(&client).await?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await
    .with_context(|| "objects left behind")?;
    Ok(())
}
