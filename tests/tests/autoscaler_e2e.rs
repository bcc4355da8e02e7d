//! End-to-end tests of the autoscaler: the real binary as its own process against the local
//! control plane, fed by a fake activator that serves the activator's real stat feed
//! (`zeroscale_activator::stat_feed`, the same code and wire format) over levels the test sets.
//!
//! The fake activator is an in-process HTTP server on the network namespace's host address
//! (10.244.0.1), published as the selector-less Service `zeroscale-activator` with a manual
//! EndpointSlice: real Kubernetes objects, found the way the autoscaler finds real activators.
//! Each test has its own namespace, ConfigMap, Lease and autoscaler process(es), with short
//! windows so scenarios take seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use zeroscale_activator::stat_feed::{ConcurrencyIntegral, StatFeed};
use zeroscale_config::DeploymentKey;
use zeroscale_config::feed;
use zeroscale_e2e::{Ctx, eventually, pod_ready, pods_of, sample_model_deployment, test};
use zeroscale_testkit::process::{self, OwnedChild};

fn main() -> std::process::ExitCode {
    zeroscale_e2e::run(vec![
        test(
            "wake_scales_zero_to_one_ready_pod",
            wake_scales_zero_to_one_ready_pod,
        ),
        test(
            "scale_to_zero_waits_for_idle_and_good_scrapes",
            scale_to_zero_waits_for_idle_and_good_scrapes,
        ),
        test(
            "scales_up_then_down_within_down_rate",
            scales_up_then_down_within_down_rate,
        ),
        test(
            "min_max_annotations_and_opt_out",
            min_max_annotations_and_opt_out,
        ),
        test(
            "bad_annotation_and_bad_configmap_value",
            bad_annotation_and_bad_configmap_value,
        ),
        test(
            "configmap_edit_applies_within_a_tick",
            configmap_edit_applies_within_a_tick,
        ),
        test(
            "standby_takes_over_when_leader_dies",
            standby_takes_over_when_leader_dies,
        ),
        test(
            "pod_metric_source_stale_and_fresh",
            pod_metric_source_stale_and_fresh,
        ),
        test(
            "apiserver_restart_no_spurious_scale_down",
            apiserver_restart_no_spurious_scale_down,
        ),
        test(
            "apiserver_outage_stops_writes_and_readiness",
            apiserver_outage_stops_writes_and_readiness,
        ),
        test(
            "feed_counts_exactly_across_an_activator_restart",
            feed_counts_exactly_across_an_activator_restart,
        ),
    ])
}

// ---------------------------------------------------------------------------------------------
// The fake activator.

/// One model's counts in the fake's feed, at the levels the test set.
struct Model {
    cell: ConcurrencyIntegral,
    in_flight: u64,
    queued: u64,
}

struct FakeState {
    namespace: String,
    feed: Arc<StatFeed>,
    models: BTreeMap<String, Model>,
    fail: bool,
    scrapes: u64,
}

impl FakeState {
    /// Sets `deployment`'s levels: requests held (the integral's count), queued and in flight.
    fn set(&mut self, deployment: &str, in_flight: u64, queued: u64) {
        let now = tokio::time::Instant::now();
        let (ns, feed) = (self.namespace.clone(), self.feed.clone());
        let m = self.models.entry(deployment.to_owned()).or_insert_with(|| {
            let cell = feed.new_cell(now);
            feed.register(DeploymentKey::new(&ns, deployment), cell.clone());
            Model {
                cell,
                in_flight: 0,
                queued: 0,
            }
        });
        let (held, want) = (m.in_flight + m.queued, in_flight + queued);
        for _ in held..want {
            m.cell.inc_at(now);
        }
        for _ in want..held {
            m.cell.dec_at(now);
        }
        m.cell.in_flight(in_flight as i64 - m.in_flight as i64);
        m.cell.queued(queued as i64 - m.queued as i64);
        (m.in_flight, m.queued) = (in_flight, queued);
    }
}

#[derive(Clone)]
struct FakeActivator {
    state: Arc<Mutex<FakeState>>,
    addr: SocketAddr,
}

impl FakeActivator {
    async fn start(namespace: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((zeroscale_testkit::netns::HOST_IP, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(FakeState {
            namespace: namespace.to_owned(),
            feed: Arc::new(StatFeed::default()),
            models: BTreeMap::new(),
            fail: false,
            scrapes: 0,
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while read < buf.len() {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    // "GET /v1/feed?instance=I&since=G HTTP/1.1"
                    let head = String::from_utf8_lossy(&buf[..read]);
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = {
                        let mut st = s.lock().unwrap();
                        st.scrapes += 1;
                        if st.fail {
                            ("500 Internal Server Error", String::from("down\n"))
                        } else if !target.starts_with(feed::FEED_PATH) {
                            ("404 Not Found", String::from("not found\n"))
                        } else {
                            let cursor = feed::parse_query(target.split_once('?').map(|(_, q)| q));
                            let page = st.feed.read(cursor, tokio::time::Instant::now());
                            ("200 OK", serde_json::to_string(&page).unwrap())
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self { state, addr })
    }

    fn set(&self, deployment: &str, in_flight: f64, queued: f64) {
        self.state
            .lock()
            .unwrap()
            .set(deployment, in_flight as u64, queued as u64);
    }

    fn fail(&self, fail: bool) {
        self.state.lock().unwrap().fail = fail;
    }

    /// The activator restarts at the same address: a new instance, every counter from zero,
    /// the same requests held again.
    fn restart(&self) {
        let mut st = self.state.lock().unwrap();
        let levels: Vec<(String, u64, u64)> = st
            .models
            .iter()
            .map(|(d, m)| (d.clone(), m.in_flight, m.queued))
            .collect();
        st.feed = Arc::new(StatFeed::default());
        st.models.clear();
        for (d, in_flight, queued) in levels {
            st.set(&d, in_flight, queued);
        }
    }

    fn scrapes(&self) -> u64 {
        self.state.lock().unwrap().scrapes
    }

    /// The selector-less Service and its manual EndpointSlice pointing at this server.
    async fn publish(&self, client: &Client, ns: &str) -> anyhow::Result<()> {
        zeroscale_e2e::publish_activator_metrics(client, ns, self.addr).await
    }
}

// ---------------------------------------------------------------------------------------------
// The autoscaler process.

struct Autoscaler {
    child: Option<OwnedChild>,
    api: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

impl Autoscaler {
    async fn start(ctx: &Ctx, ns: &str, identity: &str) -> anyhow::Result<Self> {
        let cluster = ctx.cluster().await?;
        Self::start_on(&cluster, ns, identity).await
    }

    async fn start_on(
        cluster: &zeroscale_testkit::LocalCluster,
        ns: &str,
        identity: &str,
    ) -> anyhow::Result<Self> {
        let api = free_addr()?;
        let metrics = free_addr()?;
        let log = cluster
            .dir()
            .join(format!("autoscaler-{ns}-{identity}.log"));
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", cluster.kubeconfig_path().display()),
            format!("--namespace={ns}"),
            format!("--namespaces={ns}"),
            format!("--api-listen={api}"),
            format!("--metrics-listen={metrics}"),
            format!("--activator-service={ns}/zeroscale-activator"),
            "--lease-name=zeroscale-autoscaler".into(),
            "--lease-duration=4".into(),
            format!("--identity={identity}"),
            "--api-timeout-ms=3000".into(),
        ];
        let bin = zeroscale_testkit::workspace_bin("autoscaler");
        let mut cmd = process::command(&bin, &args, cluster.marker(), &log)?;
        cmd.env(
            "RUST_LOG",
            std::env::var("AUTOSCALER_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        );
        let child = OwnedChild::spawn("autoscaler", cmd, log.clone())?;
        let a = Self {
            child: Some(child),
            api,
            metrics,
            log,
        };
        let m = a.metrics;
        eventually(
            &format!("autoscaler {identity} ready\n{}", a.tail()),
            Duration::from_secs(60),
            || async move {
                Ok(zeroscale_testkit::http_client::get(m, "/readyz")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ()))
            },
        )
        .await?;
        Ok(a)
    }

    fn tail(&self) -> String {
        process::tail(&self.log, 40)
    }

    async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(
            zeroscale_testkit::http_client::get(self.metrics, "/metrics")
                .await?
                .text(),
        )
    }

    async fn is_leader(&self) -> bool {
        self.metrics_text().await.is_ok_and(|t| {
            t.lines()
                .any(|l| l.trim() == "zeroscale_autoscaler_leader 1")
        })
    }

    fn kill(&mut self) {
        // SIGKILL, not SIGTERM: a leader that dies must not get to release its Lease.
        if let Some(c) = &self.child {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.pid())])
                .status();
        }
        self.child.take();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The test kit's fast policy (1s tick and scrape, 6s stable window, 3s panic window, 4s grace)
/// with `extra` keys on top.
fn fast_config(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m = zeroscale_testkit::addon::fast_config();
    for (k, v) in extra {
        m.insert((*k).to_owned(), (*v).to_owned());
    }
    m
}

async fn put_config(
    client: &Client,
    ns: &str,
    data: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "zeroscale-config"},
        "data": data,
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            "zeroscale-config",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

async fn create_model(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    annotations: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut d = sample_model_deployment(name, replicas, &[]);
    d.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await?;
    Ok(())
}

const ON: (&str, &str) = ("zeroscale.dev/enabled", "true");

async fn spec_replicas(client: &Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn wait_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    want: i32,
    timeout: Duration,
    a: &Autoscaler,
) -> anyhow::Result<()> {
    let (c, n, d) = (client.clone(), ns.to_owned(), name.to_owned());
    eventually(
        &format!("{name} at {want} replicas; autoscaler log:\n{}", a.tail()),
        timeout,
        || {
            let (c, n, d) = (c.clone(), n.clone(), d.clone());
            async move { Ok((spec_replicas(&c, &n, &d).await? == want).then_some(())) }
        },
    )
    .await
    .with_context(|| format!("autoscaler log:\n{}", a.tail()))
}

/// Asserts `spec.replicas` stays `want` for `dur`.
async fn hold_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    want: i32,
    dur: Duration,
    why: &str,
) -> anyhow::Result<()> {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let got = spec_replicas(client, ns, name).await?;
        ensure!(
            got == want,
            "{name}: expected {want} replicas to hold ({why}), found {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn events_for(
    client: &Client,
    ns: &str,
    object: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect())
}

async fn wait_event(
    client: &Client,
    ns: &str,
    object: &str,
    type_: &str,
    reason: &str,
    contains: &str,
) -> anyhow::Result<String> {
    let (c, n, o) = (client.clone(), ns.to_owned(), object.to_owned());
    eventually(
        &format!("{type_} event {reason} on {object} containing {contains:?}"),
        Duration::from_secs(20),
        || {
            let (c, n, o) = (c.clone(), n.clone(), o.clone());
            async move {
                let evs = events_for(&c, &n, &o).await?;
                Ok(evs
                    .into_iter()
                    .find(|(t, r, m)| t == type_ && r == reason && m.contains(contains))
                    .map(|e| e.2))
            }
        },
    )
    .await
}

/// Namespace, fake activator, ConfigMap: everything an autoscaler needs before it starts.
async fn setup(
    ctx: &Ctx,
    config: &BTreeMap<String, String>,
) -> anyhow::Result<(Client, String, FakeActivator)> {
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let fake = FakeActivator::start(&ns).await?;
    fake.publish(&client, &ns).await?;
    put_config(&client, &ns, config).await?;
    Ok((client, ns, fake))
}

async fn wake(
    a: &Autoscaler,
    ns: &str,
    deployment: &str,
    queued: u64,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = zeroscale_testkit::http_client::post_json(
        a.api,
        "/v1/wake",
        &json!({"namespace": ns, "deployment": deployment, "queued": queued}),
    )
    .await?;
    Ok((r.status.as_u16(), r.json()))
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// (1) A Deployment at 0 receives a wake and reaches 1 Ready pod; wakes are idempotent; a
/// Deployment that did not opt in is refused with 422, an unknown one with 404.
async fn wake_scales_zero_to_one_ready_pod(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) =
        setup(&ctx, &fast_config(&[("scale-to-zero-grace-period", "60s")])).await?;
    create_model(&client, &ns, "llama", 0, &[ON]).await?;
    create_model(&client, &ns, "plain", 0, &[]).await?;
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    fake.set("llama", 0.0, 3.0);

    let (status, body) = wake(&a, &ns, "llama", 3).await?;
    ensure!(status == 200, "wake answered {status} {body}");
    // Either this wake patched it, or the steady-state loop saw the queued requests first.
    ensure!(body["replicas"] == 1, "{body}");
    let (status, body) = wake(&a, &ns, "llama", 3).await?;
    ensure!(
        status == 200 && body == json!({"replicas": 1, "scaled": false}),
        "second wake: {status} {body}"
    );

    let (c, n) = (client.clone(), ns.clone());
    eventually("1 Ready llama pod", Duration::from_secs(60), || {
        let (c, n) = (c.clone(), n.clone());
        async move {
            Ok((pods_of(&c, &n, "llama")
                .await?
                .iter()
                .filter(|p| pod_ready(p))
                .count()
                == 1)
                .then_some(()))
        }
    })
    .await
    .with_context(|| a.tail())?;
    wait_event(&client, &ns, "llama", "Normal", "Scaled", "Scaled 0 -> 1").await?;

    let (status, body) = wake(&a, &ns, "plain", 1).await?;
    ensure!(
        status == 422
            && body["error"]
                .as_str()
                .unwrap_or("")
                .contains("zeroscale.dev/enabled"),
        "{status} {body}"
    );
    let (status, _) = wake(&a, &ns, "nope", 1).await?;
    ensure!(status == 404, "unknown deployment: {status}");
    let r = zeroscale_testkit::http_client::request(
        a.api,
        http::Method::POST,
        "/v1/wake",
        Some(&json!({"x": 1})),
        Duration::from_secs(5),
    )
    .await?;
    ensure!(r.status == 400, "malformed: {}", r.status);
    ensure!(
        spec_replicas(&client, &ns, "plain").await? == 0,
        "a Deployment without opt-in was touched"
    );
    Ok(())
}

/// (3) Scales to zero after the grace period, never while requests are in flight or while
/// scrapes fail.
async fn scale_to_zero_waits_for_idle_and_good_scrapes(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(&ctx, &fast_config(&[])).await?;
    create_model(&client, &ns, "m", 1, &[ON]).await?;
    fake.set("m", 1.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;

    hold_replicas(
        &client,
        &ns,
        "m",
        1,
        Duration::from_secs(10),
        "one request in flight",
    )
    .await?;
    fake.set("m", 0.0, 0.0);
    fake.fail(true);
    hold_replicas(
        &client,
        &ns,
        "m",
        1,
        Duration::from_secs(10),
        "scrapes failing",
    )
    .await?;
    let before = fake.scrapes();
    ensure!(before > 5, "the autoscaler did not scrape: {before}");
    fake.fail(false);
    let started = Instant::now();
    wait_replicas(&client, &ns, "m", 0, Duration::from_secs(30), &a).await?;
    // Not before the 4s grace period of good, idle data.
    ensure!(
        started.elapsed() >= Duration::from_secs(3),
        "went to zero after only {:?}",
        started.elapsed()
    );
    let msg = wait_event(&client, &ns, "m", "Normal", "Scaled", "Scaled 1 -> 0").await?;
    ensure!(msg.contains("idle"), "{msg}");
    Ok(())
}

/// The autoscaler's stable-window average concurrency of `deployment`, once it has one.
async fn stable_concurrency(a: &Autoscaler, deployment: &str) -> anyhow::Result<Option<f64>> {
    let text = a.metrics_text().await?;
    let label = format!("deployment=\"{deployment}\"");
    Ok(text
        .lines()
        .find(|l| l.starts_with("zeroscale_autoscaler_stable_concurrency{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

/// `Some` once `deployment`'s stable average is `want` (to the engine's micro-units).
async fn stable_is(a: &Autoscaler, deployment: &str, want: f64) -> anyhow::Result<Option<()>> {
    Ok(stable_concurrency(a, deployment)
        .await?
        .filter(|v| (v - want).abs() < 1e-3)
        .map(|_| ()))
}

/// (11) The feed counts exactly: 7 requests held the whole time read as a stable average of
/// 7.0 (the integral over the activator's own clock, no sampling). The activator then restarts
/// at the same address (a new instance, counters from zero, the 7 requests held again): the
/// reader sees the new instance, never reads more than was held (a counter read across the
/// restart would), and the average comes back to 7.0.
async fn feed_counts_exactly_across_an_activator_restart(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(
        &ctx,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(&client, &ns, "m", 1, &[ON]).await?;
    fake.set("m", 7.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    eventually(
        &format!("stable concurrency 7.0\n{}", a.tail()),
        Duration::from_secs(30),
        || stable_is(&a, "m", 7.0),
    )
    .await?;
    fake.restart();
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        if let Some(v) = stable_concurrency(&a, "m").await? {
            seen.push(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        seen.iter().all(|v| *v <= 7.0 + 1e-3),
        "read more than the 7 requests held across the restart: {seen:?}"
    );
    ensure!(
        seen.iter().all(|v| *v >= 3.5),
        "the restart read as a drop in load: {seen:?}"
    );
    eventually(
        &format!("stable concurrency 7.0 after the restart\n{}", a.tail()),
        Duration::from_secs(30),
        || stable_is(&a, "m", 7.0),
    )
    .await?;
    ensure!(
        spec_replicas(&client, &ns, "m").await? >= 1,
        "scaled to zero with 7 requests held"
    );
    Ok(())
}

/// Records every distinct `spec.replicas` until `until` returns true or `timeout`.
async fn record_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    until: impl Fn(&[i32]) -> bool,
) -> anyhow::Result<Vec<i32>> {
    let end = Instant::now() + timeout;
    let mut seen: Vec<i32> = Vec::new();
    loop {
        let r = spec_replicas(client, ns, name).await?;
        if seen.last() != Some(&r) {
            seen.push(r);
        }
        if until(&seen) {
            return Ok(seen);
        }
        if Instant::now() > end {
            bail!("{name}: replicas went {seen:?}, condition not met in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (2) Concurrency drives 1 -> N, then back down, each step at most halving (max-scale-down-rate 2).
async fn scales_up_then_down_within_down_rate(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(
        &ctx,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(&client, &ns, "m", 1, &[ON]).await?;
    fake.set("m", 0.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    // 300 concurrent at 70 per pod (100 x 70%): 5 pods.
    fake.set("m", 300.0, 0.0);
    let up = record_replicas(&client, &ns, "m", Duration::from_secs(30), |s| {
        s.last() == Some(&5)
    })
    .await
    .with_context(|| a.tail())?;
    ensure!(up.iter().all(|r| *r <= 5), "{up:?}");
    wait_event(&client, &ns, "m", "Normal", "Scaled", "-> 5").await?;
    // Let the pods become ready so the down rate works from 5 ready pods.
    let (c, n) = (client.clone(), ns.clone());
    eventually("5 ready pods", Duration::from_secs(60), || {
        let (c, n) = (c.clone(), n.clone());
        async move {
            Ok((pods_of(&c, &n, "m")
                .await?
                .iter()
                .filter(|p| pod_ready(p))
                .count()
                >= 5)
                .then_some(()))
        }
    })
    .await?;
    fake.set("m", 1.0, 0.0);
    let down = record_replicas(&client, &ns, "m", Duration::from_secs(60), |s| {
        s.last() == Some(&1)
    })
    .await
    .with_context(|| a.tail())?;
    for w in down.windows(2) {
        ensure!(w[1] >= w[0] / 2, "a step down more than halved: {down:?}");
    }
    ensure!(
        down.len() >= 3,
        "expected at least two steps from 5 to 1: {down:?}"
    );
    Ok(())
}

/// (4) max-scale caps the count, min-scale holds it; removing the opt-in stops all changes.
async fn min_max_annotations_and_opt_out(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(&ctx, &fast_config(&[])).await?;
    create_model(
        &client,
        &ns,
        "capped",
        1,
        &[ON, ("zeroscale.dev/max-scale", "2")],
    )
    .await?;
    create_model(
        &client,
        &ns,
        "floored",
        2,
        &[ON, ("zeroscale.dev/min-scale", "2")],
    )
    .await?;
    fake.set("capped", 1000.0, 0.0);
    fake.set("floored", 0.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    wait_replicas(&client, &ns, "capped", 2, Duration::from_secs(20), &a).await?;
    hold_replicas(
        &client,
        &ns,
        "capped",
        2,
        Duration::from_secs(5),
        "max-scale 2",
    )
    .await?;
    hold_replicas(
        &client,
        &ns,
        "floored",
        2,
        Duration::from_secs(3),
        "min-scale 2 while idle",
    )
    .await?;

    // Opt out, then go idle: nothing may change any more.
    let patch = json!({"metadata": {"annotations": {"zeroscale.dev/enabled": null}}});
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("capped", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    fake.set("capped", 0.0, 0.0);
    hold_replicas(
        &client,
        &ns,
        "capped",
        2,
        Duration::from_secs(12),
        "opted out",
    )
    .await?;
    Ok(())
}

/// (5) A bad annotation: Warning Event on the Deployment, global value used. A bad ConfigMap
/// value: Warning Event on the ConfigMap, last good value kept, config_errors counted.
async fn bad_annotation_and_bad_configmap_value(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(
        &ctx,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(
        &client,
        &ns,
        "m",
        1,
        &[ON, ("zeroscale.dev/max-scale", "-3")],
    )
    .await?;
    fake.set("m", 0.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    let msg = wait_event(
        &client,
        &ns,
        "m",
        "Warning",
        "InvalidAnnotation",
        "zeroscale.dev/max-scale",
    )
    .await?;
    ensure!(msg.contains("-3"), "{msg}");
    // The global max-scale (unbounded) applies: 250 concurrent at 70 per pod -> 4 (values away from pod boundaries: measured averages carry timing noise).
    fake.set("m", 250.0, 0.0);
    wait_replicas(&client, &ns, "m", 4, Duration::from_secs(20), &a).await?;

    let mut cfg = fast_config(&[("scale-to-zero-grace-period", "120s")]);
    cfg.insert("max-scale-down-rate".into(), "banana".into());
    put_config(&client, &ns, &cfg).await?;
    let msg = wait_event(
        &client,
        &ns,
        "zeroscale-config",
        "Warning",
        "InvalidConfig",
        "max-scale-down-rate",
    )
    .await?;
    ensure!(msg.contains("banana"), "{msg}");
    let text = a.metrics_text().await?;
    ensure!(
        text.lines().any(
            |l| l.starts_with("zeroscale_autoscaler_config_errors_total") && !l.ends_with(" 0")
        ),
        "config_errors not counted:\n{text}"
    );
    // The rest of the ConfigMap is still in force (tick 1s etc.): load change still applies fast.
    fake.set("m", 100.0, 0.0);
    wait_replicas(&client, &ns, "m", 2, Duration::from_secs(20), &a).await?;
    Ok(())
}

/// (6) A ConfigMap edit changes the target within one tick.
async fn configmap_edit_applies_within_a_tick(ctx: Ctx) -> anyhow::Result<()> {
    let base = [
        ("container-concurrency-target-percentage", "100"),
        ("scale-to-zero-grace-period", "120s"),
    ];
    let (client, ns, fake) = setup(&ctx, &fast_config(&base)).await?;
    create_model(&client, &ns, "m", 1, &[ON]).await?;
    fake.set("m", 35.0, 0.0);
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    hold_replicas(
        &client,
        &ns,
        "m",
        1,
        Duration::from_secs(4),
        "35 concurrent, target 100",
    )
    .await?;
    let mut cfg = fast_config(&base);
    cfg.insert("container-concurrency-target-default".into(), "10".into());
    let edited = Instant::now();
    put_config(&client, &ns, &cfg).await?;
    // 35 concurrent at 10 per pod: at least 4 (the panic window may ask one more for a moment).
    record_replicas(&client, &ns, "m", Duration::from_secs(10), |s| {
        s.last().is_some_and(|r| *r >= 4)
    })
    .await
    .with_context(|| a.tail())?;
    let took = edited.elapsed();
    // One tick is 1s; allow the watch and patch round trips on a loaded 2-core machine.
    ensure!(
        took <= Duration::from_millis(2500),
        "took {took:?} after the edit"
    );
    Ok(())
}

/// (7) Two autoscalers: kill the leader, the other takes over within the lease duration and
/// keeps deciding.
async fn standby_takes_over_when_leader_dies(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, fake) = setup(
        &ctx,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(&client, &ns, "m", 1, &[ON]).await?;
    fake.set("m", 0.0, 0.0);
    let mut a = Autoscaler::start(&ctx, &ns, "a").await?;
    let mut b = Autoscaler::start(&ctx, &ns, "b").await?;
    let leader = eventually("a leader", Duration::from_secs(20), || {
        let (a, b) = (&a, &b);
        async move {
            Ok(match (a.is_leader().await, b.is_leader().await) {
                (true, false) => Some('a'),
                (false, true) => Some('b'),
                _ => None,
            })
        }
    })
    .await?;
    fake.set("m", 130.0, 0.0);
    wait_replicas(&client, &ns, "m", 2, Duration::from_secs(20), &a).await?;
    let (dead, alive) = if leader == 'a' {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    dead.kill();
    let killed = Instant::now();
    fake.set("m", 250.0, 0.0);
    // 250 concurrent at 70 per pod: at least 4 (the panic window may ask one more).
    record_replicas(&client, &ns, "m", Duration::from_secs(20), |s| {
        s.last().is_some_and(|r| *r >= 4)
    })
    .await
    .with_context(|| alive.tail())?;
    let took = killed.elapsed();
    // Lease duration 4s, plus the tick and the patch.
    ensure!(took <= Duration::from_secs(8), "takeover took {took:?}");
    ensure!(
        alive.is_leader().await,
        "the survivor does not report leadership"
    );
    Ok(())
}

/// (8) The API server is stopped and restarted mid-run: no spurious scale-down, decisions go on.
async fn apiserver_restart_no_spurious_scale_down(ctx: Ctx) -> anyhow::Result<()> {
    // A cluster of its own: stopping the shared API server would disturb other tests.
    let cluster = ctx.own_cluster().await?;
    let client = cluster.client();
    let ns = "restart";
    let nsobj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await?;
    let fake = FakeActivator::start(ns).await?;
    fake.publish(&client, ns).await?;
    put_config(
        &client,
        ns,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(&client, ns, "m", 1, &[ON]).await?;
    fake.set("m", 130.0, 0.0);
    let a = Autoscaler::start_on(&cluster, ns, "a").await?;
    wait_replicas(&client, ns, "m", 2, Duration::from_secs(30), &a).await?;

    // Same traffic throughout: any scale-down would come from the outage (failed watches, a
    // half-synced cache after the re-list), which must not happen.
    cluster.stop_apiserver().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.start_apiserver().await?;
    ensure!(
        a.metrics_text().await.is_ok(),
        "autoscaler died:\n{}",
        a.tail()
    );
    let now = spec_replicas(&client, ns, "m").await?;
    ensure!(
        now == 2,
        "changed to {now} across the API server restart:\n{}",
        a.tail()
    );
    // Decisions continue: more load scales up.
    fake.set("m", 250.0, 0.0);
    record_replicas(&client, ns, "m", Duration::from_secs(30), |s| {
        s.last().is_some_and(|r| *r >= 4)
    })
    .await
    .with_context(|| a.tail())?;
    drop(a);
    Ok(())
}

/// `/readyz` of one replica: status and body (0 and the error when it does not answer).
async fn readyz(a: &Autoscaler) -> (u16, String) {
    match zeroscale_testkit::http_client::get(a.metrics, "/readyz").await {
        Ok(r) => (r.status.as_u16(), r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// The lines of a metrics exposition whose name starts with one of `prefixes` (all samples of
/// those families, labels included), sorted.
fn samples(text: &str, prefixes: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// What the applier has written (or tried to): scale patches by result and decisions.
const WRITE_COUNTERS: &[&str] = &[
    "zeroscale_autoscaler_scale_patches_total",
    "zeroscale_autoscaler_decisions_total",
];

/// (9) Two autoscalers, kube-apiserver stopped for 20 s: past the renew deadline both are not
/// ready, the leader stops writing (logged once, gauge 0, counted); nothing is written while no
/// replica leads; after the restart both are ready, one leads, and decisions resume.
async fn apiserver_outage_stops_writes_and_readiness(ctx: Ctx) -> anyhow::Result<()> {
    const LOST: &str = "lost leadership: lease not renewed for";
    const OUTAGE: Duration = Duration::from_secs(20);
    // A cluster of its own: stopping the shared API server would disturb other tests.
    let cluster = ctx.own_cluster().await?;
    let client = cluster.client();
    let ns = "outage";
    let nsobj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &nsobj)
        .await?;
    let fake = FakeActivator::start(ns).await?;
    fake.publish(&client, ns).await?;
    put_config(
        &client,
        ns,
        &fast_config(&[("scale-to-zero-grace-period", "120s")]),
    )
    .await?;
    create_model(&client, ns, "m", 1, &[ON]).await?;
    fake.set("m", 130.0, 0.0);
    // `start_on` passes --lease-duration=4: renew deadline 2.67 s.
    let a = Autoscaler::start_on(&cluster, ns, "a").await?;
    let b = Autoscaler::start_on(&cluster, ns, "b").await?;
    wait_replicas(&client, ns, "m", 2, Duration::from_secs(30), &a).await?;
    // Exactly one leader, and its 1 -> 2 patch counted, before the write counters are taken.
    let (leader, before) = eventually(
        "one leader, its patch counted",
        Duration::from_secs(20),
        || {
            let (a, b) = (&a, &b);
            async move {
                let leader = match (a.is_leader().await, b.is_leader().await) {
                    (true, false) => a,
                    (false, true) => b,
                    _ => return Ok(None),
                };
                let texts = [a.metrics_text().await?, b.metrics_text().await?];
                let patched =
                    leader.metrics_text().await?.lines().any(|l| {
                        l == "zeroscale_autoscaler_scale_patches_total{result=\"success\"} 1"
                    });
                Ok(patched.then(|| {
                    (
                        std::ptr::eq(leader, a),
                        texts.map(|t| samples(&t, WRITE_COUNTERS)),
                    )
                }))
            }
        },
    )
    .await?;
    let (old, standby) = if leader { (&a, &b) } else { (&b, &a) };

    cluster.stop_apiserver().await;
    let stopped = Instant::now();
    // Idle from now: a replica that still wrote would scale down (and count the attempt).
    fake.set("m", 0.0, 0.0);
    eventually(
        &format!(
            "both not ready, the leader lost its leadership\nold leader:\n{}\nstandby:\n{}",
            old.tail(),
            standby.tail()
        ),
        Duration::from_secs(10),
        || async {
            let (old_status, old_body) = readyz(old).await;
            let (sb_status, sb_body) = readyz(standby).await;
            let old_metrics = old.metrics_text().await?;
            let sb_metrics = standby.metrics_text().await?;
            let has = |t: &str, l: &str| t.lines().any(|x| x == l);
            Ok((old_status == 503
                && old_body.contains("kubernetes API unreachable:")
                && old_body.contains(LOST)
                && sb_status == 503
                && sb_body.contains("kubernetes API unreachable:")
                && has(&old_metrics, "zeroscale_autoscaler_leader 0")
                && has(&old_metrics, "zeroscale_autoscaler_leader_lost_total 1")
                && has(&sb_metrics, "zeroscale_autoscaler_leader 0"))
            .then_some(()))
        },
    )
    .await?;
    let (_, sb_body) = readyz(standby).await;
    ensure!(
        !sb_body.contains("lost leadership"),
        "the standby never led, yet reports: {sb_body}"
    );
    // The log line itself, once; the `not ready` lines quote the reason too (the log has ANSI
    // colours, so match on the message, not on `reasons=`).
    let log = std::fs::read_to_string(&old.log)?;
    let lost_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(LOST) && !l.contains("not ready"))
        .collect();
    ensure!(
        lost_lines.len() == 1,
        "expected one {LOST:?} log line, found {}:\n{}",
        lost_lines.len(),
        lost_lines.join("\n")
    );

    // Load back a full stable window (6 s) before the restart, so the windows hold 130 again
    // when a leader can write: nothing is due then, and any write counted is an outage write.
    let refill = OUTAGE - Duration::from_secs(8);
    tokio::time::sleep(refill.saturating_sub(stopped.elapsed())).await;
    fake.set("m", 130.0, 0.0);
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    cluster.start_apiserver().await?;
    fake.set("m", 130.0, 0.0);
    let restarted = Instant::now();
    eventually(
        &format!(
            "both ready again, one leader\nold leader:\n{}\nstandby:\n{}",
            old.tail(),
            standby.tail()
        ),
        Duration::from_secs(45),
        || async {
            let ready = readyz(&a).await.0 == 200 && readyz(&b).await.0 == 200;
            Ok((ready && (a.is_leader().await != b.is_leader().await)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "outage: both ready, one leader {:?} after the restart",
        restarted.elapsed()
    );
    let now = spec_replicas(&client, ns, "m").await?;
    ensure!(now == 2, "m changed to {now} across the outage");
    let after = [
        samples(&a.metrics_text().await?, WRITE_COUNTERS),
        samples(&b.metrics_text().await?, WRITE_COUNTERS),
    ];
    ensure!(
        after == before,
        "write counters changed across the outage (a, b):\nbefore {before:?}\nafter  {after:?}"
    );

    // Decisions resume: more load scales up.
    fake.set("m", 250.0, 0.0);
    record_replicas(&client, ns, "m", Duration::from_secs(30), |s| {
        s.last().is_some_and(|r| *r >= 4)
    })
    .await
    .with_context(|| format!("a:\n{}\nb:\n{}", a.tail(), b.tail()))?;
    Ok(())
}

/// The pod metric source: a Deployment whose concurrency is its pods' own gauge. Scrapes that
/// fail (nothing listens on the named port) are stale: it never goes to zero. Good scrapes of
/// an idle pod: it goes to zero after the grace period.
async fn pod_metric_source_stale_and_fresh(ctx: Ctx) -> anyhow::Result<()> {
    let (client, ns, _fake) = setup(&ctx, &fast_config(&[])).await?;
    for (name, port) in [("good", "8080"), ("bad", "9999")] {
        let annotations = [
            ON,
            ("zeroscale.dev/metric-source", "pod"),
            (
                "zeroscale.dev/pod-metric-name",
                "sample_model_requests_in_flight",
            ),
            ("zeroscale.dev/pod-metric-port", port),
        ];
        create_model(&client, &ns, name, 1, &annotations).await?;
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &zeroscale_e2e::service_for(name))
            .await?;
    }
    // Both pods ready first, so the scrapes have endpoints to reach.
    let (c, n) = (client.clone(), ns.clone());
    eventually("both pods ready", Duration::from_secs(60), || {
        let (c, n) = (c.clone(), n.clone());
        async move {
            let good = pods_of(&c, &n, "good")
                .await?
                .iter()
                .filter(|p| pod_ready(p))
                .count();
            let bad = pods_of(&c, &n, "bad")
                .await?
                .iter()
                .filter(|p| pod_ready(p))
                .count();
            Ok((good == 1 && bad == 1).then_some(()))
        }
    })
    .await?;
    let a = Autoscaler::start(&ctx, &ns, "a").await?;
    wait_replicas(&client, &ns, "good", 0, Duration::from_secs(30), &a).await?;
    hold_replicas(
        &client,
        &ns,
        "bad",
        1,
        Duration::from_secs(3),
        "pod scrapes failing",
    )
    .await?;
    let text = a.metrics_text().await?;
    ensure!(
        text.lines().any(|l| l
            .starts_with("zeroscale_autoscaler_scrape_errors_total{source=\"pod\"}")
            && !l.ends_with(" 0")),
        "pod scrape errors not counted:\n{text}"
    );
    Ok(())
}
