//! The adaptive policy's learned state across restarts, against a real local API server
//! (`zeroscale_testkit::LocalCluster`: etcd, kube-apiserver, kube-controller-manager, no
//! kubelet), inside a private network namespace, the autoscaler running as its ServiceAccount
//! with exactly the manifests' RBAC. Needs the control plane built by
//! `scripts/build-control-plane.sh`.
//!
//! 1. A previous leader's shards are written as the autoscaler writes them (server-side apply,
//!    creating the ConfigMap as the ServiceAccount: the name-restricted `create` suffices); a
//!    ConfigMap of another name is refused.
//! 2. The real `App` starts: it restores the histogram into the model's decider, becomes leader
//!    and writes the shard back within the flush interval, the same histogram, without the
//!    model that no longer exists.
//! 3. A second `App` (a restart) restores it again from what the first one wrote.
//! 4. The Deployment is deleted: it drops out of the next write. No empty shard was created.
//!
//! ```text
//! cargo test -p zeroscale-autoscaler --test learned_state
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::Parser as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use zeroscale_autoscaler::app::{App, Config};
use zeroscale_autoscaler::learned::{shard_name, shard_of, storage_key};
use zeroscale_autoscaler::learned_store;
use zeroscale_config::DeploymentKey;
use zeroscale_scaling::idle::IdleHistogram;
use zeroscale_testkit::LocalCluster;
use zeroscale_testkit::addon::{apply_file, manifests_dir, service_account_kubeconfig};
use zeroscale_testkit::cluster::ClusterOptions;
use zeroscale_testkit::wait::eventually;

const SYS: &str = "zeroscale-system";
const MODELS: &str = "models";

fn main() -> anyhow::Result<()> {
    zeroscale_testkit::netns::ensure_private_netns();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn metric(addr: SocketAddr, line: &str) -> anyhow::Result<Option<()>> {
    let text = match zeroscale_testkit::http_client::get(addr, "/metrics").await {
        Ok(r) => r.text(),
        Err(_) => return Ok(None),
    };
    Ok(text.lines().any(|l| l.trim() == line).then_some(()))
}

async fn shard(client: &Client, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), SYS)
        .get_opt(name)
        .await?;
    Ok(cm.and_then(|c| c.data).unwrap_or_default())
}

/// A running `App`: its metrics address, and the sender that drains it.
struct Running {
    metrics: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start_app(kubeconfig: &std::path::Path, identity: &str) -> anyhow::Result<Running> {
    let config = Config::try_parse_from([
        "autoscaler",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--namespace",
        SYS,
        "--namespaces",
        MODELS,
        "--api-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--identity",
        identity,
        "--lease-duration",
        "4",
    ])?;
    let app = App::build(config).await?;
    let metrics = app.metrics_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.spawn()
            .await
            .run_until(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Running {
        metrics,
        stop,
        task,
    })
}

async fn run() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_with(ClusterOptions {
        kubelet: false,
        ..Default::default()
    })
    .await?;
    let admin = cluster.client();
    let dir = manifests_dir();
    apply_file(&admin, &dir.join("base/namespace.yaml")).await?;
    apply_file(&admin, &dir.join("base/rbac.yaml")).await?;
    apply_file(&admin, &dir.join("cluster-bindings.yaml")).await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": MODELS}}))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "zeroscale-config", "namespace": SYS},
        "data": {"learned-state-flush-interval": "10s", "scale-to-zero-policy": "adaptive"},
    }))?;
    Api::<ConfigMap>::namespaced(admin.clone(), SYS)
        .create(&PostParams::default(), &config)
        .await?;
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "llama", "namespace": MODELS,
                     "annotations": {"zeroscale.dev/enabled": "true"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "llama"}},
            "template": {"metadata": {"labels": {"app": "llama"}},
                         "spec": {"containers": [{"name": "m", "image": "none"}]}},
        },
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), MODELS);
    deployments.create(&PostParams::default(), &d).await?;

    let sa_kubeconfig = service_account_kubeconfig(
        &admin,
        cluster.kubeconfig_path(),
        SYS,
        "zeroscale-autoscaler",
        3600,
        &cluster.dir().join("autoscaler-sa.kubeconfig"),
    )
    .await?;
    let sa = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&sa_kubeconfig)?,
            &Default::default(),
        )
        .await?,
    )?;

    // 1. What a previous leader stored: 12 gaps of 14m57s, and a model deleted since, in the
    //    shard llama hashes to (written as the ServiceAccount: this creates the ConfigMap).
    let key = DeploymentKey::new(MODELS, "llama");
    let gone = DeploymentKey::new(MODELS, "gone");
    let mut h = IdleHistogram::new(Duration::from_secs(4 * 3600));
    for _ in 0..12 {
        h.add(Duration::from_secs(14 * 60 + 57));
    }
    let text = h.encode();
    let i = shard_of(&key);
    let mut data = BTreeMap::from([(storage_key(&key), text.clone())]);
    if shard_of(&gone) == i {
        data.insert(storage_key(&gone), text.clone());
    } else {
        learned_store::write(
            sa.clone(),
            SYS,
            shard_of(&gone),
            BTreeMap::from([(storage_key(&gone), text.clone())]),
            Duration::from_secs(5),
        )
        .await
        .context("creating the gone model's shard as the ServiceAccount")?;
    }
    learned_store::write(sa.clone(), SYS, i, data, Duration::from_secs(5))
        .await
        .context("creating a shard as the ServiceAccount (name-restricted create)")?;
    println!("ok: {} created as the ServiceAccount", shard_name(i));
    let other: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "zeroscale-learned-99", "namespace": SYS}, "data": {}}))?;
    let refused = Api::<ConfigMap>::namespaced(sa.clone(), SYS)
        .patch(
            "zeroscale-learned-99",
            &kube::api::PatchParams::apply(learned_store::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&other),
        )
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
        "a ConfigMap of another name must be refused: {refused:?}"
    );
    println!("ok: zeroscale-learned-99 refused (403)");

    // 2. The App restores it, leads and writes the shard back: the same histogram, no `gone`.
    let app1 = start_app(&sa_kubeconfig, "first").await?;
    let m1 = app1.metrics;
    eventually(
        "first replica restored 1 model",
        Duration::from_secs(60),
        || metric(m1, "zeroscale_autoscaler_learned_state_restored_total 1"),
    )
    .await?;
    eventually("first replica leads", Duration::from_secs(30), || {
        metric(m1, "zeroscale_autoscaler_leader 1")
    })
    .await?;
    let want = BTreeMap::from([(storage_key(&key), text.clone())]);
    let (admin2, name, gone_name) = (admin.clone(), shard_name(i), shard_name(shard_of(&gone)));
    let gone_key = storage_key(&gone);
    eventually(
        "the leader wrote the shard back, without the deleted model",
        Duration::from_secs(40),
        || {
            let (c, name, gone_name, want, gone_key) = (
                admin2.clone(),
                name.clone(),
                gone_name.clone(),
                want.clone(),
                gone_key.clone(),
            );
            async move {
                let ok = shard(&c, &name).await? == want
                    && !shard(&c, &gone_name).await?.contains_key(&gone_key);
                Ok(ok.then_some(()))
            }
        },
    )
    .await?;
    eventually(
        "writes counted as successes",
        Duration::from_secs(10),
        || async move {
            let text = zeroscale_testkit::http_client::get(m1, "/metrics")
                .await?
                .text();
            Ok(text
                .lines()
                .any(|l| {
                    l.starts_with(
                        "zeroscale_autoscaler_learned_state_writes_total{result=\"success\"}",
                    )
                })
                .then_some(()))
        },
    )
    .await?;

    // 3. A restart (a rollout: the first replica drains): the second restores the histogram
    //    from what the first wrote.
    app1.stop().await;
    let app2 = start_app(&sa_kubeconfig, "second").await?;
    let m2 = app2.metrics;
    eventually(
        "second replica restored 1 model",
        Duration::from_secs(60),
        || metric(m2, "zeroscale_autoscaler_learned_state_restored_total 1"),
    )
    .await?;
    eventually("second replica leads", Duration::from_secs(30), || {
        metric(m2, "zeroscale_autoscaler_leader 1")
    })
    .await?;

    // 4. The model is deleted: gone from the next write.
    deployments
        .delete("llama", &DeleteParams::default())
        .await?;
    let (admin3, name) = (admin.clone(), shard_name(i));
    eventually(
        "the deleted model dropped out",
        Duration::from_secs(40),
        || {
            let (c, name) = (admin3.clone(), name.clone());
            async move { Ok(shard(&c, &name).await?.is_empty().then_some(())) }
        },
    )
    .await?;
    app2.stop().await;

    // No empty shards were created: only the ones that held something exist.
    let names: Vec<String> = Api::<ConfigMap>::namespaced(admin.clone(), SYS)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with(zeroscale_autoscaler::learned::SHARD_PREFIX))
        .collect();
    let mut held = vec![shard_name(i), shard_name(shard_of(&gone))];
    held.dedup();
    held.sort();
    ensure!(names == held, "shards that exist: {names:?}, want {held:?}");
    println!("ok: no empty shard created ({} of 32 exist)", names.len());
    println!("learned state kept across restarts: all checks passed");
    Ok(())
}
