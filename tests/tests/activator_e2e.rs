//! End-to-end tests of the activator: the real activator and autoscaler binaries as their own
//! processes against the local control plane, in front of `sample-model` pods run by the process
//! kubelet.
//!
//! The activator is published to the autoscaler as the selector-less Service
//! `zeroscale-activator` with a manual EndpointSlice (port `metrics` = its admin port), as the
//! autoscaler finds activators in a cluster. Each test has its own namespace, ConfigMap and
//! processes, with short windows so scenarios take seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use zeroscale_e2e::traffic::{LocalAddon, PeakWatch, Proc, free_addr, wait_ready};
use zeroscale_e2e::{Ctx, eventually, sample_model_deployment, service_for, test};
use zeroscale_testkit::http_client::{self, HttpResponse};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "request_at_zero_wakes_the_model_and_it_returns_to_zero",
            request_at_zero_wakes_the_model_and_it_returns_to_zero,
        ),
        test(
            "name_conflict_warns_and_oldest_wins",
            name_conflict_warns_and_oldest_wins,
        ),
        test(
            "three_models_share_a_pool_of_two",
            three_models_share_a_pool_of_two,
        ),
    ])
}

async fn spec_replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn predict(addr: SocketAddr, model: &str) -> anyhow::Result<HttpResponse> {
    Ok(http_client::request(
        addr,
        http::Method::POST,
        &format!("/v1/models/{model}:predict"),
        Some(&json!({"instances": [[1.0, 2.0]]})),
        Duration::from_secs(90),
    )
    .await?)
}

/// A request at 0 replicas gets its 200 after the pod starts; after idle the model goes back to
/// 0; then 100 concurrent requests wake it again and all succeed.
async fn request_at_zero_wakes_the_model_and_it_returns_to_zero(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let config = zeroscale_testkit::addon::fast_config();
    let mut d = sample_model_deployment("llama", 0, &["--model-name=llama"]);
    d.metadata.annotations = Some(
        [
            ("zeroscale.dev/enabled", "true"),
            ("zeroscale.dev/container-concurrency", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service_for("llama"))
        .await?;

    let addon = LocalAddon::start(&cluster, &client, &ns, 1, config).await?;
    let (listen, admin) = (addon.activators[0].listen, addon.activators[0].admin);
    let logs = || addon.logs();
    ensure!(
        spec_replicas(&client, &ns, "llama").await? == 0,
        "starts at zero"
    );

    // 1. A request at zero.
    let t0 = Instant::now();
    let r = predict(listen, "llama").await.with_context(logs)?;
    ensure!(
        r.status == 200,
        "first request: {} {}\n{}",
        r.status,
        r.text(),
        logs()
    );
    ensure!(r.json()["model_name"] == "llama", "{}", r.text());
    let cold = t0.elapsed();
    ensure!(spec_replicas(&client, &ns, "llama").await? >= 1, "woken");

    // 2. Idle: back to zero (grace 4s after the stable window empties).
    let (c, n) = (client.clone(), ns.clone());
    eventually("llama back at 0 replicas", Duration::from_secs(90), || {
        let (c, n) = (c.clone(), n.clone());
        async move { Ok((spec_replicas(&c, &n, "llama").await? == 0).then_some(())) }
    })
    .await
    .with_context(logs)?;
    // The activator saw the endpoints go away.
    let (c, n) = (client.clone(), ns.clone());
    eventually("no llama endpoints", Duration::from_secs(60), || {
        let (c, n) = (c.clone(), n.clone());
        async move {
            Ok(zeroscale_e2e::slice_endpoints(&c, &n, "llama")
                .await?
                .is_empty()
                .then_some(()))
        }
    })
    .await?;

    // 3. 100 concurrent requests at zero: one wake, all answered 200.
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { predict(listen, "llama").await }))
        .collect();
    let mut codes = BTreeMap::new();
    for t in tasks {
        let r = t.await?.with_context(logs)?;
        *codes.entry(r.status.as_u16()).or_insert(0) += 1;
    }
    ensure!(
        codes == BTreeMap::from([(200, 100)]),
        "answers by status: {codes:?}\n{}",
        logs()
    );

    // The activator's metrics account for it all.
    let m = http_client::get(admin, "/metrics").await?.text();
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("zeroscale_activator_requests_total{")
                && l.contains("deployment=\"llama\"")
                && l.contains("code=\"200\"")
        })
        .with_context(|| format!("no requests_total line in\n{m}"))?;
    ensure!(line.ends_with(" 101"), "{line}");
    let wakes = m
        .lines()
        .find(|l| {
            l.starts_with("zeroscale_activator_wake_signals_total{")
                && l.contains("deployment=\"llama\"")
        })
        .with_context(|| format!("no wake_signals line in\n{m}"))?;
    ensure!(!wakes.ends_with(" 0"), "{wakes}");
    eprintln!("cold start through the activator: {cold:?}");
    Ok(())
}

/// Two Deployments claim one model name: the older one gets the traffic and the newer one a
/// Warning Event; when the older one goes away, the newer one takes over.
async fn name_conflict_warns_and_oldest_wins(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let deps = Api::<Deployment>::namespaced(client.clone(), &ns);
    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    for name in ["first", "second"] {
        let mut d = sample_model_deployment(name, 1, &["--model-name=shared"]);
        d.metadata.annotations = Some(
            [
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/model-name", "shared"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        deps.create(&PostParams::default(), &d).await?;
        svcs.create(&PostParams::default(), &service_for(name))
            .await?;
        // creationTimestamp has one-second resolution: make the order unambiguous.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (listen, admin) = (free_addr()?, free_addr()?);
    let activator = Proc::spawn(
        &cluster,
        &format!("activator-{ns}"),
        "activator",
        vec![
            format!("--kubeconfig={}", cluster.kubeconfig_path().display()),
            format!("--namespace={ns}"),
            format!("--watch-namespaces={ns}"),
            format!("--listen={listen}"),
            format!("--admin-listen={admin}"),
        ],
        "info,kube=warn,zeroscale_activator=debug",
    )?;
    wait_ready(&activator, admin, "activator").await?;

    let served_by = || async move {
        let r = predict(listen, "shared").await?;
        anyhow::Ok((
            r.status.as_u16(),
            r.header("x-pod-name").unwrap_or("").to_owned(),
        ))
    };
    let pod = eventually(
        "a 200 for the shared name",
        Duration::from_secs(60),
        || async move {
            let (status, pod) = served_by().await?;
            Ok((status == 200).then_some(pod))
        },
    )
    .await
    .with_context(|| activator.tail(40))?;
    ensure!(
        pod.starts_with("first-"),
        "served by {pod}, expected the older Deployment"
    );

    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns);
    let msg = eventually(
        "ModelNameConflict on second",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&kube::api::ListParams::default().fields("involvedObject.name=second"))
                    .await?;
                Ok(list.items.into_iter().find_map(|e| {
                    (e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("ModelNameConflict"))
                    .then(|| e.message.unwrap_or_default())
                }))
            }
        },
    )
    .await
    .with_context(|| activator.tail(40))?;
    ensure!(msg.contains("first"), "{msg}");

    deps.delete("first", &Default::default()).await?;
    eventually(
        "second takes over",
        Duration::from_secs(60),
        || async move {
            let (status, pod) = served_by().await?;
            Ok((status == 200 && pod.starts_with("second-")).then_some(()))
        },
    )
    .await
    .with_context(|| activator.tail(40))?;
    Ok(())
}

/// Capacity pools (issue 16): three models in a pool of capacity 2, requests to each in turn
/// (a, b, c, a). Every request is answered 200; the pool's replicas, followed on a watch of
/// every change, are never above 2; the Events say who was evicted for whom.
async fn three_models_share_a_pool_of_two(ctx: Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let mut config = zeroscale_testkit::addon::fast_config();
    // Idle models stay up (a long grace period): only evictions take them down.
    config.insert("scale-to-zero-grace-period".into(), "10m".into());
    config.insert("pools".into(), "small=2".into());
    config.insert("pool-min-residency".into(), "2s".into());
    let models = ["model-a", "model-b", "model-c"];
    let deps = Api::<Deployment>::namespaced(client.clone(), &ns);
    for name in models {
        let mut d = sample_model_deployment(name, 0, &[&format!("--model-name={name}")]);
        d.metadata.annotations = Some(
            [
                ("zeroscale.dev/enabled", "true"),
                ("zeroscale.dev/pool", "small"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        deps.create(&PostParams::default(), &d).await?;
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &service_for(name))
            .await?;
    }

    // Every change of the pool's replicas, in the order the API server made them: the largest
    // sum seen, with the counts that made it.
    let watch = PeakWatch::start(client.clone(), &ns, &models);

    let addon = LocalAddon::start(&cluster, &client, &ns, 1, config).await?;
    let (listen, as_metrics) = (addon.activators[0].listen, addon.autoscaler_metrics);
    let logs = || addon.logs();
    // Models opted in at zero replicas stay at zero until their first request (and these were
    // created before the autoscaler started, so they are found at zero anyway).
    for name in models {
        ensure!(
            spec_replicas(&client, &ns, name).await? == 0,
            "{name} starts at 0"
        );
    }

    // a, b, c, a: each request answered 200, each by its own model.
    for name in ["model-a", "model-b", "model-c", "model-a"] {
        let r = predict(listen, name).await.with_context(logs)?;
        ensure!(
            r.status == 200,
            "{name}: {} {}\n{}",
            r.status,
            r.text(),
            logs()
        );
        ensure!(r.json()["model_name"] == name, "{}", r.text());
        // Past pool-min-residency, so the next one may evict this one.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // The Events tell the story: c's wake evicted a (least recently used), a's return evicted b.
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns);
    let story = eventually("the eviction Events", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            let list = events.list(&kube::api::ListParams::default()).await?;
            let mut notes: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("PoolEviction"))
                .map(|e| {
                    (
                        e.involved_object.name.unwrap_or_default(),
                        e.message.unwrap_or_default(),
                    )
                })
                .collect();
            notes.sort();
            Ok((notes.len() >= 4).then_some(notes))
        }
    })
    .await
    .with_context(logs)?;
    for (on, note) in &story {
        eprintln!("PoolEviction on {on}: {note}");
    }
    let said = |on: &str, text: &str| story.iter().any(|(o, m)| o == on && m.contains(text));
    let (a, b, c) = (
        format!("{ns}/model-a"),
        format!("{ns}/model-b"),
        format!("{ns}/model-c"),
    );
    for (on, text) in [
        (
            "model-a",
            format!("Scaled 1 -> 0 to make room for {c} in pool small (idle "),
        ),
        (
            "model-c",
            format!("{a} scaled to 0 to make room for this Deployment in pool small"),
        ),
        (
            "model-b",
            format!("Scaled 1 -> 0 to make room for {a} in pool small (idle "),
        ),
        (
            "model-a",
            format!("{b} scaled to 0 to make room for this Deployment in pool small"),
        ),
    ] {
        ensure!(
            said(on, &text),
            "no Event on {on} saying {text:?}: {story:#?}"
        );
    }
    ensure!(
        story
            .iter()
            .all(|(_, m)| !m.contains("Scaled") || m.ends_with("least recently used)")),
        "{story:#?}"
    );

    // The pool's metrics agree.
    let m = http_client::get(as_metrics, "/metrics").await?.text();
    let value = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name) && l.contains("pool=\"small\""))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    ensure!(
        value("zeroscale_autoscaler_pool_capacity").as_deref() == Some("2"),
        "{m}"
    );
    ensure!(
        value("zeroscale_autoscaler_pool_used").as_deref() == Some("2"),
        "{m}"
    );
    ensure!(
        value("zeroscale_autoscaler_pool_evictions_total").as_deref() == Some("2"),
        "{m}"
    );

    // Cold starts (issue 16 part 3): a woke twice, b and c once; each wake timed to its first
    // Ready pod, split where the pod's status allows (this autoscaler may list pods).
    let m = http_client::get(as_metrics, "/metrics").await?.text();
    let count = |model: &str, stage: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("zeroscale_autoscaler_wake_to_ready_seconds_count{")
                    && l.contains(&format!("deployment=\"{model}\""))
                    && l.contains(&format!("stage=\"{stage}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    for line in m
        .lines()
        .filter(|l| l.contains("wake_to_ready_seconds_sum"))
    {
        eprintln!("{line}");
    }
    for (model, wakes) in [("model-a", 2), ("model-b", 1), ("model-c", 1)] {
        ensure!(count(model, "ready") == Some(wakes), "{model} ready: {m}");
    }
    ensure!(count("model-c", "scheduled") == Some(1), "c scheduled: {m}");
    ensure!(count("model-c", "started") == Some(1), "c started: {m}");

    // Never above capacity, on any change.
    let peak = watch.peak();
    drop(watch);
    ensure!(
        peak.0 == 2,
        "the pool's replicas peaked at {}: {:?}",
        peak.0,
        peak.1
    );
    Ok(())
}
