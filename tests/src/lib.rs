//! End-to-end test harness: real etcd + kube-apiserver + kube-controller-manager + kube-scheduler
//! and a real node (containerd, runc, CNI, kubelet, kube-proxy, CoreDNS;
//! `zeroscale_testkit::LocalCluster`), inside a private network namespace.
//!
//! # Adding an e2e test file
//! 1. Create `tests/tests/<name>.rs`:
//!    ```ignore
//!    use zeroscale_e2e::{Ctx, test};
//!
//!    fn main() -> std::process::ExitCode {
//!        zeroscale_e2e::run(vec![
//!            test("my_feature_works", my_feature_works),
//!        ])
//!    }
//!
//!    async fn my_feature_works(ctx: Ctx) -> anyhow::Result<()> {
//!        let ns = ctx.namespace().await?;      // fresh namespace in the shared cluster
//!        let client = ctx.client().await?;     // admin kube::Client
//!        let kubeconfig = ctx.cluster().await?.kubeconfig_path().to_path_buf();
//!        // spawn workspace binaries: zeroscale_testkit::workspace_bin("activator") ...
//!        Ok(())
//!    }
//!    ```
//! 2. Add to `tests/Cargo.toml`:
//!    ```toml
//!    [[test]]
//!    name = "<name>"
//!    path = "tests/<name>.rs"
//!    harness = false
//!    ```
//!
//! # How it runs
//! - [`run`] first re-execs the test binary under `unshare --net` (pods get 10.88.x.y addresses
//!   on the node's bridge inside the namespace; nothing leaves it), so everything must already
//!   be built: `cargo build --workspace --bins` first, the cluster's binaries and the images
//!   (`scripts/build-*.sh`); scripts/test.sh does all of it.
//! - One [`LocalCluster`] per test binary, started on first use and shared by its tests; each test
//!   works in its own namespace ([`Ctx::namespace`]). A test that needs a cluster of its own (for
//!   example to restart the API server) asks [`Ctx::own_cluster`], which stops the shared one
//!   first (a machine runs one real node at a time), and drops it at the end.
//! - Pods run the images `scripts/build-images.sh` built ([`sample_model_deployment`] names the
//!   `sample-model` image as `manifests/examples/kustomization.yaml` does); rebuild them after
//!   changing `sample-model`, the activator or the autoscaler. [`run_on_process_kubelet`] is only
//!   for the process kubelet's own tests (it serves the fleet benchmark).
//! - Tests run one at a time (the machine has 2 cores; the cluster is shared), each with a
//!   [`TEST_TIMEOUT`] limit. `cargo test -p zeroscale-e2e --test smoke -- <filter>` filters as usual.
//! - After the tests the shared cluster is dropped and the binary fails if any process it started
//!   is still alive (leak check by environment marker).
//! - [`replay`] replays a trace through the add-on and through `zeroscale-sim` alike (calibration).
//! - [`traffic`] runs the add-on's binaries as local processes (several activators, one
//!   autoscaler) and bounded load against them; `ZEROSCALE_BIN_ACTIVATOR=<path>` (any
//!   `ZEROSCALE_BIN_<NAME>`) makes it run another build, e.g. a saved copy from before a fix.
//! - Logs: set `RUST_LOG` for the harness; `ZEROSCALE_KEEP=1` keeps the cluster dir (component
//!   logs in `logs/`, the node's in `node/`; [`LocalCluster::pod_log`] reads a pod's output while
//!   it exists).

pub mod demo;
pub mod replay;
pub mod traffic;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::json;
use zeroscale_testkit::ClusterOptions;
pub use zeroscale_testkit::LocalCluster;
pub use zeroscale_testkit::wait::eventually;

/// Time limit of one e2e test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

struct Shared {
    /// The binary's shared cluster, once started; [`Ctx::own_cluster`] stops it.
    cluster: tokio::sync::Mutex<Option<Arc<LocalCluster>>>,
    options: ClusterOptions,
    seq: AtomicU32,
}

/// What a test gets: the shared cluster (started on first use) and a namespace factory.
#[derive(Clone)]
pub struct Ctx {
    shared: Arc<Shared>,
    name: String,
}

impl Ctx {
    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binary's shared cluster, started on first use.
    pub async fn cluster(&self) -> anyhow::Result<Arc<LocalCluster>> {
        let mut slot = self.shared.cluster.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(
            LocalCluster::start_with(self.shared.options.clone())
                .await
                .context("starting the shared LocalCluster")?,
        );
        *slot = Some(c.clone());
        Ok(c)
    }

    /// A cluster of the test's own, with the same node as the shared one, for a test that
    /// stops its API server or needs a cluster without the shared one's state. A machine runs
    /// one real node at a time (containerd's run dir, the bridge, the cgroup root), so this
    /// stops the shared cluster first (checking it for leaks as the end of the run does); the
    /// next test that asks for the shared cluster starts a fresh one. Drop it at the end.
    pub async fn own_cluster(&self) -> anyhow::Result<LocalCluster> {
        let mut slot = self.shared.cluster.lock().await;
        if let Some(c) = slot.take() {
            let c = Arc::try_unwrap(c)
                .map_err(|_| anyhow::anyhow!("a test kept a reference to the shared cluster"))?;
            let leaks = teardown(c);
            anyhow::ensure!(leaks.is_empty(), "{}", leaks.join("\n"));
        }
        LocalCluster::start_with(self.shared.options.clone())
            .await
            .context("starting a LocalCluster of the test's own")
    }

    /// An admin client for the shared cluster.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(self.cluster().await?.client())
    }

    /// Creates a fresh namespace in the shared cluster, named after the test.
    pub async fn namespace(&self) -> anyhow::Result<String> {
        let client = self.client().await?;
        let base: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let n = self.shared.seq.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}-{n}", base.trim_matches('-'));
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }
}

type TestFn = Box<dyn FnOnce(Ctx) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// One e2e test.
pub struct E2eTest {
    name: String,
    f: TestFn,
}

/// Declares a test: `test("name", async_fn_taking_ctx)`.
pub fn test<F, Fut>(name: &str, f: F) -> E2eTest
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    E2eTest {
        name: name.to_owned(),
        f: Box::new(move |ctx| Box::pin(f(ctx))),
    }
}

/// The `main` of an e2e test binary: enters the network namespace, runs the selected tests one
/// at a time on a cluster with a real node (containerd, runc, CNI, kubelet, kube-proxy,
/// CoreDNS), tears the shared cluster down and checks that nothing leaked: no process, and none
/// of the node's mounts, cgroups or network devices.
pub fn run(tests: Vec<E2eTest>) -> ExitCode {
    run_with(
        tests,
        ClusterOptions {
            real_node: true,
            ..ClusterOptions::default()
        },
    )
}

/// [`run`] on the process kubelet (`zeroscale_testkit::kubelet`: pods as local processes) instead
/// of a real node: only for the process kubelet's own tests.
pub fn run_on_process_kubelet(tests: Vec<E2eTest>) -> ExitCode {
    run_with(tests, ClusterOptions::default())
}

fn run_with(tests: Vec<E2eTest>, options: ClusterOptions) -> ExitCode {
    zeroscale_testkit::netns::ensure_private_netns();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
    let mut args = Arguments::from_args();
    // One at a time: the cluster is shared and the machine small.
    args.test_threads = Some(1);
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
    let shared = Arc::new(Shared {
        cluster: tokio::sync::Mutex::new(None),
        options,
        seq: AtomicU32::new(0),
    });
    let trials = tests
        .into_iter()
        .map(|t| {
            let rt = rt.clone();
            let ctx = Ctx {
                shared: shared.clone(),
                name: t.name.clone(),
            };
            let f = t.f;
            Trial::test(t.name, move || {
                match rt.block_on(async move { tokio::time::timeout(TEST_TIMEOUT, f(ctx)).await }) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Failed::from(format!("{e:?}"))),
                    Err(_) => Err(Failed::from(format!("timed out after {TEST_TIMEOUT:?}"))),
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut code = conclusion.exit_code();
    // Tear down inside the runtime (kube client drops), then check for leaks.
    let cluster = Arc::try_unwrap(shared)
        .ok()
        .and_then(|s| s.cluster.into_inner())
        .map(|c| Arc::try_unwrap(c).map_err(|_| "a test kept a reference to the shared cluster"));
    let leaks = match cluster {
        Some(Ok(c)) => rt.block_on(async move { teardown(c) }),
        Some(Err(msg)) => vec![msg.to_owned()],
        None => Vec::new(),
    };
    for leak in &leaks {
        eprintln!("LEAK: {leak}");
        code = ExitCode::FAILURE;
    }
    code
}

/// Watches the pods of a namespace and keeps, per pod, the exit code and reason of its first
/// container's terminated state, as the kubelet reports them: it deletes a terminating pod only
/// after its status shows the containers terminated, so a watch sees that state of every pod that
/// goes (unless the watch itself fails), while the pod's logs go with it.
pub struct ExitWatch {
    exits: Arc<std::sync::Mutex<std::collections::BTreeMap<String, (i32, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ExitWatch {
    /// Starts watching the pods of `ns` that match `labels` (a label selector).
    pub fn start(client: Client, ns: &str, labels: &str) -> Self {
        use futures::StreamExt as _;
        use kube::ResourceExt as _;
        use kube::runtime::watcher;
        let exits = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let config = watcher::Config::default().labels(labels);
        let seen = exits.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(pods, config));
            while let Some(ev) = stream.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                    continue;
                };
                let terminated = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.first())
                    .and_then(|c| c.state.as_ref())
                    .and_then(|st| st.terminated.as_ref());
                if let Some(t) = terminated {
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            p.name_any(),
                            (t.exit_code, t.reason.clone().unwrap_or_default()),
                        );
                }
            }
        });
        Self { exits, task }
    }

    /// Stops watching; per pod name, the last terminated state seen.
    pub fn stop(self) -> std::collections::BTreeMap<String, (i32, String)> {
        self.task.abort();
        std::mem::take(
            &mut *self
                .exits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The cluster's Node is registered and Ready, with the network namespace's host address as its
/// InternalIP (on either kubelet).
pub async fn ensure_node_ready(cluster: &LocalCluster) -> anyhow::Result<()> {
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client())
        .get(cluster.node_name())
        .await?;
    let status = node.status.context("node status")?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    anyhow::ensure!(ready, "node Ready");
    let ips: Vec<String> = status
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect();
    anyhow::ensure!(
        ips == [zeroscale_testkit::netns::HOST_IP],
        "InternalIP: {ips:?}"
    );
    Ok(())
}

/// The `sample-model` image as `manifests/examples/kustomization.yaml` names it (the image
/// `scripts/build-images.sh` builds and the node imports).
pub fn sample_model_image() -> String {
    let dir = zeroscale_testkit::addon::manifests_dir().join("examples");
    zeroscale_testkit::addon::kustomized_image(&dir, "sample-model")
        .unwrap_or_else(|e| panic!("the sample-model image of {}: {e}", dir.display()))
}

/// A Deployment running `sample-model` (readiness probe on `/healthz`, container port `http`
/// 8080, label `app: <name>`) with `replicas` and extra `args`.
pub fn sample_model_deployment(name: &str, replicas: i32, args: &[&str]) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    // As manifests/examples/model.yaml: a model needs no API token.
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "model",
                        "image": sample_model_image(),
                        "command": ["sample-model"],
                        "args": args,
                        "env": [{"name": "PORT", "value": "8080"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": "http"},
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    }))
    .expect("static deployment")
}

/// A ClusterIP Service `name` selecting `app: <name>`, port 80 -> `http`.
pub fn service_for(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }))
    .expect("static service")
}

/// Pods of `app: <app>` in `ns`.
pub async fn pods_of(client: &Client, ns: &str, app: &str) -> anyhow::Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(pods.items)
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `(address, ready)` of every endpoint in the EndpointSlices of Service `svc`.
pub async fn slice_endpoints(
    client: &Client,
    ns: &str,
    svc: &str,
) -> anyhow::Result<Vec<(String, bool)>> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?;
    let mut out = Vec::new();
    for s in slices.items {
        for e in s.endpoints.into_iter().flatten() {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            for a in e.addresses {
                out.push((a, ready));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Publishes an activator's metrics address the way the autoscaler discovers activators: a
/// selector-less `zeroscale-activator` Service in `ns` with a hand-made EndpointSlice (real
/// Kubernetes objects; the autoscaler is started with `--activator-service <ns>/zeroscale-activator`).
pub async fn publish_activator_metrics(
    client: &Client,
    ns: &str,
    metrics: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "zeroscale-activator"},
        "spec": {"ports": [{"name": "metrics", "port": 9090, "targetPort": metrics.port()}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": "zeroscale-activator-manual",
            "labels": {"kubernetes.io/service-name": "zeroscale-activator"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [metrics.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "metrics", "port": metrics.port(), "protocol": "TCP"}],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}

/// Waits until Deployment `ns/name` has exactly `want` Ready pods that are not terminating.
pub async fn wait_deployment_ready(
    client: &Client,
    ns: &str,
    name: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await?;
    let selector = d
        .spec
        .and_then(|s| s.selector.match_labels)
        .context("Deployment without matchLabels")?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
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
            Ok((ready == want).then_some(()))
        },
    )
    .await
}

/// `clusterIP:port` of Service `ns/name`'s port named `port`.
pub async fn cluster_ip(
    client: &Client,
    ns: &str,
    name: &str,
    port: &str,
) -> anyhow::Result<std::net::SocketAddr> {
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

/// `podIP:port` of every Ready pod matching `selector` in `ns`.
pub async fn ready_pod_addrs(
    client: &Client,
    ns: &str,
    selector: &str,
    port: u16,
) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .map(|ip| std::net::SocketAddr::new(ip, port))
        .collect())
}

/// Installs the add-on from `manifests/` as a user would (server-side apply of the kustomization,
/// images as its `images:` say), sets `config` in `zeroscale-config`, and waits until both
/// activator and both autoscaler pods are Ready and the activator Service accepts connections.
/// Returns what was applied.
pub async fn install_addon(
    client: &Client,
    config: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Vec<zeroscale_testkit::addon::Applied>> {
    use zeroscale_testkit::addon::{self, ACTIVATOR, ADDON_NAMESPACE, AUTOSCALER};
    let applied = addon::apply_kustomization(client, &addon::manifests_dir()).await?;
    addon::override_config(client, config).await?;
    for name in [ACTIVATOR, AUTOSCALER] {
        wait_deployment_ready(client, ADDON_NAMESPACE, name, 2, Duration::from_secs(120)).await?;
    }
    // kube-proxy programs the Service a moment after its pods are Ready.
    let activator = cluster_ip(client, ADDON_NAMESPACE, ACTIVATOR, "http").await?;
    eventually(
        "the zeroscale-activator Service to accept connections",
        Duration::from_secs(30),
        || async {
            Ok(tokio::net::TcpStream::connect(activator)
                .await
                .ok()
                .map(drop))
        },
    )
    .await?;
    Ok(applied)
}

/// Runs `pod` in `default` until it is Ready, checks that at least `min_processes` processes
/// carry the cluster's marker, drops the cluster and checks that it left nothing: no process,
/// nothing of its node, not its dir (unless `ZEROSCALE_KEEP=1`).
pub async fn ensure_drop_leaves_nothing(
    cluster: LocalCluster,
    pod: Pod,
    min_processes: usize,
) -> anyhow::Result<()> {
    let name = pod.metadata.name.clone().context("the pod has a name")?;
    let marker = cluster.marker().to_owned();
    let dir = cluster.dir();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    eventually("the pod to be Ready", Duration::from_secs(60), || async {
        Ok(pod_ready(&pods.get(&name).await?).then_some(()))
    })
    .await?;
    let before = zeroscale_testkit::process::processes_with_marker(&marker);
    anyhow::ensure!(
        before.len() >= min_processes,
        "marker finds our processes: {}",
        zeroscale_testkit::process::describe(&before)
    );
    drop(pods);
    let leaks = teardown(cluster);
    anyhow::ensure!(leaks.is_empty(), "{}", leaks.join("\n"));
    if std::env::var("ZEROSCALE_KEEP").as_deref() != Ok("1") {
        anyhow::ensure!(!dir.exists(), "temp dir {} removed", dir.display());
    }
    Ok(())
}

/// Drops a cluster and says what it left behind: the real node's mounts, cgroups and devices,
/// and processes with its marker. Empty when it left nothing.
fn teardown(c: LocalCluster) -> Vec<String> {
    let marker = c.marker().to_owned();
    let node = c.node_leak_keys();
    drop(c);
    let mut leaks = Vec::new();
    let node_left = LocalCluster::node_leaks(&node);
    if !node_left.is_empty() {
        leaks.push(format!(
            "the real node left behind after the cluster was dropped:\n{}",
            node_left.join("\n")
        ));
    }
    let left = zeroscale_testkit::process::processes_with_marker(&marker);
    if !left.is_empty() {
        leaks.push(format!(
            "processes of the cluster still alive after it was dropped:\n{}",
            zeroscale_testkit::process::describe(&left)
        ));
    }
    leaks
}
