//! [`LocalCluster`]: etcd + kube-apiserver + kube-controller-manager as local processes, plus
//! a real node (kube-scheduler, containerd, runc, CNI, kubelet, kube-proxy, CoreDNS: the e2e
//! suites, the demo) or the process kubelet (pods as local processes: the fleet benchmark).
//!
//! Choices (see also the crate docs):
//! - The API server serves TLS on 127.0.0.1 and a free port, with a certificate signed by a CA
//!   generated for this cluster; clients authenticate with a static admin token (group
//!   `system:masters`); authorization is `Node,RBAC`; service-account tokens are signed with a
//!   generated key, so the TokenRequest API works.
//! - Admission is the default set, including `ServiceAccount`: kube-controller-manager runs the
//!   `serviceaccount-controller`, which creates the `default` ServiceAccount in every namespace,
//!   so ReplicaSet pods are admitted. [`LocalCluster::start`] waits for `default/default`, which
//!   also proves the controller manager is up.
//! - kube-controller-manager runs the deployment, replicaset, endpointslice, garbage-collector,
//!   namespace, serviceaccount, root-CA publisher, disruption and clusterrole-aggregation
//!   controllers (and the node lifecycle controller with a real node), without leader election
//!   or a serving port.
//! - Everything lives in one temp dir (data, certs, kubeconfig, `logs/<component>.log`, pod
//!   logs); it is removed on drop unless `ZEROSCALE_KEEP=1`.
//! - Every process is started in its own process group under `setpriv --pdeathsig KILL` and
//!   carries [`crate::process::MARKER_ENV`]; drop stops them all and waits.
//!   Caveat: the death signal fires when the *thread* that spawned a process exits, so start the
//!   cluster from a thread that lives as long as the cluster (the main thread under `block_on`,
//!   a `#[tokio::test]` thread, a runtime worker), not from a short-lived helper thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use crate::error::ClusterError;
use crate::kubelet::{Kubelet, KubeletConfig};
use crate::node::{NodeConfig, RealNode};
use crate::process::{self, OwnedChild};

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Start the process kubelet (default true; ignored with `real_node`).
    pub kubelet: bool,
    /// Start kube-scheduler and a real node ([`crate::node::RealNode`]: containerd, runc, CNI,
    /// kubelet, kube-proxy, CoreDNS) instead of the process kubelet (default false).
    pub real_node: bool,
    /// How long to wait for each component (default 90 s: a loaded 2-core machine is slow).
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            kubelet: true,
            real_node: false,
            ready_timeout: Duration::from_secs(90),
        }
    }
}

/// Processes and temp dir; dropping stops and removes them in reverse order.
struct Parts {
    dir: PathBuf,
    keep: bool,
    kubelet: Option<Kubelet>,
    node: Option<RealNode>,
    scheduler: Option<OwnedChild>,
    kcm: Option<OwnedChild>,
    apiserver: Option<OwnedChild>,
    etcd: Option<OwnedChild>,
}

impl Drop for Parts {
    fn drop(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.shutdown();
        }
        if let Some(mut n) = self.node.take() {
            n.shutdown();
        }
        // SIGKILL: all state lives in etcd's data dir, which goes too, so a graceful stop (about
        // a second for the API server) would buy nothing. `stop_apiserver` stays graceful.
        for c in [
            &mut self.scheduler,
            &mut self.kcm,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            if let Some(mut c) = c.take() {
                c.kill();
            }
        }
        if self.keep {
            eprintln!(
                "zeroscale-testkit: ZEROSCALE_KEEP=1, keeping {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running local control plane. See the module docs.
pub struct LocalCluster {
    parts: Mutex<Parts>,
    marker: String,
    bin_dir: PathBuf,
    apiserver_args: Vec<String>,
    port: u16,
    token: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    ready_timeout: Duration,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("server", &self.server_url())
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl LocalCluster {
    /// Starts a cluster with the process kubelet.
    pub async fn start() -> Result<Self, ClusterError> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts a cluster.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self, ClusterError> {
        let bin_dir = crate::bins::k8s_bin_dir();
        let mut needed = vec!["etcd", "kube-apiserver", "kube-controller-manager"];
        if opts.real_node {
            needed.extend(["kube-scheduler", "kubelet", "kube-proxy"]);
        }
        for b in needed {
            if !bin_dir.join(b).is_file() {
                return Err(ClusterError::MissingBinary {
                    binary: b.into(),
                    dir: bin_dir,
                });
            }
        }
        let marker = format!(
            "zs-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            random_hex(4)
        );
        let dir = std::env::temp_dir().join(&marker);
        let keep = std::env::var("ZEROSCALE_KEEP").as_deref() == Ok("1");
        for sub in ["pki", "logs", "pods"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io(format!("creating {}", dir.display())))?;
        }
        let mut parts = Parts {
            dir: dir.clone(),
            keep,
            kubelet: None,
            node: None,
            scheduler: None,
            kcm: None,
            apiserver: None,
            etcd: None,
        };
        let pki = dir.join("pki");
        crate::certs::write_all(&pki)?;
        let token = random_hex(16);
        std::fs::write(
            pki.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )
        .map_err(io("writing tokens.csv"))?;

        let (etcd_port, peer_port, port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            format!("--data-dir={}", dir.join("etcd").display()),
            "--name=default".into(),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // Test data: durability does not matter, latency does.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        parts.etcd = Some(spawn(&bin_dir, "etcd", &etcd_args, &marker, &dir)?);

        let p = |f: &str| pki.join(f).display().to_string();
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            format!("--advertise-address={}", crate::netns::HOST_IP),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // Fewer moving parts at startup; a single-user test cluster needs no fairness.
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if opts.real_node {
            // Pods reach the API server in-cluster: the `kubernetes` Service (10.96.0.1:443)
            // points at HOST_IP:<port>, which kube-proxy forwards to.
            apiserver_args.push("--bind-address=0.0.0.0".into());
        } else {
            // Loopback only, and no endpoint bookkeeping for the `kubernetes` Service: nothing
            // in a process-kubelet test talks to the API server through it.
            apiserver_args.push("--bind-address=127.0.0.1".into());
            apiserver_args.push("--endpoint-reconciler-type=none".into());
        }
        parts.apiserver = Some(spawn(
            &bin_dir,
            "kube-apiserver",
            &apiserver_args,
            &marker,
            &dir,
        )?);

        let kubeconfig = dir.join("kubeconfig");
        let server = format!("https://127.0.0.1:{port}");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &pki.join("ca.crt"), &token),
        )
        .map_err(io("writing the kubeconfig"))?;
        let client = client_from(&kubeconfig).await?;
        wait_apiserver(&client, port, &mut parts, opts.ready_timeout).await?;

        // The root-CA publisher writes `kube-root-ca.crt` into every namespace: the projected
        // ServiceAccount volume of a real pod needs it. The disruption controller keeps
        // PodDisruptionBudget status, which evictions check. With a real node, the node
        // lifecycle controller lifts the `not-ready` taint the kubelet registers with (and
        // taints the node again if the kubelet stops). The clusterrole aggregation controller
        // fills the built-in `view`, `edit` and `admin` roles users are bound to.
        let mut controllers = String::from(
            "deployment-controller,replicaset-controller,endpointslice-controller,\
             garbage-collector-controller,namespace-controller,serviceaccount-controller,\
             root-ca-certificate-publisher-controller,disruption-controller,\
             clusterrole-aggregation-controller",
        );
        if opts.real_node {
            controllers.push_str(",node-lifecycle-controller");
        }
        let kcm_args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            format!("--controllers={controllers}"),
            format!("--root-ca-file={}", p("ca.crt")),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ];
        parts.kcm = Some(spawn(
            &bin_dir,
            "kube-controller-manager",
            &kcm_args,
            &marker,
            &dir,
        )?);
        wait_default_service_account(&client, &mut parts, opts.ready_timeout).await?;
        if opts.real_node {
            let sched_args = vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ];
            parts.scheduler = Some(spawn(
                &bin_dir,
                "kube-scheduler",
                &sched_args,
                &marker,
                &dir,
            )?);
            parts.node = Some(
                RealNode::start(
                    &client,
                    NodeConfig {
                        dir: dir.clone(),
                        marker: marker.clone(),
                        k8s_bin: bin_dir.clone(),
                        node_bin: crate::bins::node_bin_dir(),
                        images: crate::node::read_images(&crate::bins::images_dir())?,
                        kubeconfig: kubeconfig.clone(),
                        timeout: opts.ready_timeout,
                    },
                )
                .await?,
            );
        }

        let cluster = Self {
            parts: Mutex::new(parts),
            marker,
            bin_dir,
            apiserver_args,
            port,
            token,
            kubeconfig,
            client,
            ready_timeout: opts.ready_timeout,
        };
        if opts.kubelet && !opts.real_node {
            cluster.start_kubelet().await?;
        }
        Ok(cluster)
    }

    /// A client authenticated as the admin (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for other processes (`--kubeconfig` / `KUBECONFIG`), admin identity.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The CA certificate file clients must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir().join("pki/ca.crt")
    }

    /// The cluster's temp dir (logs under `logs/`, pod logs under `pods/`).
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    /// The value of [`crate::process::MARKER_ENV`] on every process this cluster started.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// What the real node left behind after the cluster was dropped: call with the values of
    /// [`Self::node_leak_keys`] taken before the drop. Empty without a real node.
    pub fn node_leaks(keys: &Option<(PathBuf, String)>) -> Vec<String> {
        keys.as_ref()
            .map(|(dir, cgroup)| crate::node::leaks(dir, cgroup))
            .unwrap_or_default()
    }

    /// The real node's dir and cgroup name, to check for leaks after the drop.
    pub fn node_leak_keys(&self) -> Option<(PathBuf, String)> {
        let parts = self.lock();
        parts
            .node
            .as_ref()
            .map(|n| (n.dir().to_path_buf(), n.cgroup().to_owned()))
    }

    /// What pod `ns/name` wrote to stdout and stderr so far, on either kubelet (the process
    /// kubelet's `pods/<ns>_<name>.log`, the real node's CRI logs without their prefixes).
    pub fn pod_log(&self, ns: &str, name: &str) -> std::io::Result<String> {
        let parts = self.lock();
        match parts.node.as_ref() {
            Some(n) => n.pod_log(ns, name),
            None => {
                std::fs::read_to_string(parts.dir.join("pods").join(format!("{ns}_{name}.log")))
            }
        }
    }

    /// Whether this cluster runs a real node (not the process kubelet).
    pub fn has_real_node(&self) -> bool {
        self.lock().node.is_some()
    }

    /// When each step of the real node's start finished, since its start.
    pub fn node_timings(&self) -> Vec<(&'static str, Duration)> {
        self.lock()
            .node
            .as_ref()
            .map(|n| n.timings.clone())
            .unwrap_or_default()
    }

    /// Node name of the process kubelet or the real node.
    pub fn node_name(&self) -> &'static str {
        crate::kubelet::NODE_NAME
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a process owned by this cluster: in its own process group, with the cluster's
    /// marker (so the leak check sees it), output to `<dir>/logs/<log_name>.log`, stopped
    /// (SIGTERM, then SIGKILL after 3 s) when the returned handle is dropped. Use it for the
    /// binaries under test, e.g. `cluster.spawn("activator", &workspace_bin("activator"), &args,
    /// &[("KUBECONFIG", path)])`.
    pub fn spawn<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        log_name: &str,
        program: &Path,
        args: &[String],
        env: &[(K, V)],
    ) -> Result<OwnedChild, ClusterError> {
        let log = self.dir().join("logs").join(format!("{log_name}.log"));
        let mut cmd = process::command(program, args, &self.marker, &log)
            .map_err(io(format!("opening {}", log.display())))?;
        for (k, v) in env {
            cmd.env(k, v);
        }
        OwnedChild::spawn(log_name, cmd, log).map_err(io(format!("starting {}", program.display())))
    }

    /// Starts the process kubelet if it is not running.
    pub async fn start_kubelet(&self) -> Result<(), ClusterError> {
        if self.lock().kubelet.is_some() {
            return Ok(());
        }
        let dir = self.dir();
        let kubelet = Kubelet::start(
            self.client.clone(),
            KubeletConfig {
                node_name: crate::kubelet::NODE_NAME.into(),
                host_ip: crate::netns::HOST_IP.into(),
                pod_log_dir: dir.join("pods"),
                marker: self.marker.clone(),
                extra_path: crate::bins::workspace_bin_dir().into_iter().collect(),
            },
        )
        .await?;
        self.lock().kubelet = Some(kubelet);
        Ok(())
    }

    /// Stops the API server (SIGTERM, then SIGKILL after 5 s); etcd and the rest keep running.
    pub async fn stop_apiserver(&self) {
        let child = self.lock().apiserver.take();
        if let Some(mut c) = child {
            // Blocking wait, off the async workers.
            let _ = tokio::task::spawn_blocking(move || c.stop(Duration::from_secs(5))).await;
        }
    }

    /// Starts the API server again on the same port with the same etcd; waits for `/readyz`.
    pub async fn start_apiserver(&self) -> Result<(), ClusterError> {
        if self.lock().apiserver.is_some() {
            return Ok(());
        }
        let dir = self.dir();
        let child = spawn(
            &self.bin_dir,
            "kube-apiserver",
            &self.apiserver_args,
            &self.marker,
            &dir,
        )?;
        // The previous log is kept: spawn appends.
        self.lock().apiserver = Some(child);
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if readyz(&self.client, self.port).await {
                return Ok(());
            }
            let exited = {
                let mut parts = self.lock();
                parts.apiserver.as_mut().and_then(OwnedChild::exited)
            };
            if let Some(status) = exited {
                return Err(start_error(
                    &dir,
                    "kube-apiserver",
                    format!("exited with {status}"),
                ));
            }
            if Instant::now() > deadline {
                return Err(start_error(
                    &dir,
                    "kube-apiserver",
                    "not ready in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(
    bin_dir: &Path,
    name: &str,
    args: &[String],
    marker: &str,
    dir: &Path,
) -> Result<OwnedChild, ClusterError> {
    let log = dir.join("logs").join(format!("{name}.log"));
    let cmd = process::command(&bin_dir.join(name), args, marker, &log)
        .map_err(io(format!("opening {}", log.display())))?;
    OwnedChild::spawn(name, cmd, log).map_err(io(format!(
        "starting {name} (is setpriv from util-linux installed?)"
    )))
}

fn start_error(dir: &Path, component: &str, reason: String) -> ClusterError {
    let log = dir.join("logs").join(format!("{component}.log"));
    ClusterError::Start {
        component: component.into(),
        reason,
        tail: process::tail(&log, 30),
        log: log.display().to_string(),
    }
}

/// If a component has exited, the error naming it.
fn exited_component(parts: &mut Parts) -> Option<ClusterError> {
    let dir = parts.dir.clone();
    for c in [
        &mut parts.etcd,
        &mut parts.apiserver,
        &mut parts.kcm,
        &mut parts.scheduler,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(status) = c.exited() {
            return Some(start_error(
                &dir,
                &c.name.clone(),
                format!("exited with {status}"),
            ));
        }
    }
    None
}

async fn readyz(client: &kube::Client, port: u16) -> bool {
    // Plain TCP first: the kube client logs every refused connection as an error.
    if tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        return false;
    }
    let req = http::Request::get("/readyz").body(Vec::new());
    match req {
        Ok(req) => matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok"),
        Err(_) => false,
    }
}

async fn wait_apiserver(
    client: &kube::Client,
    port: u16,
    parts: &mut Parts,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let what = format!("/readyz not ok within {timeout:?}");
    wait_for(parts, timeout, "kube-apiserver", what, || {
        readyz(client, port)
    })
    .await
}

async fn wait_default_service_account(
    client: &kube::Client,
    parts: &mut Parts,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let what = format!("ServiceAccount default/default not created within {timeout:?}");
    wait_for(parts, timeout, "kube-controller-manager", what, || async {
        matches!(api.get_opt("default").await, Ok(Some(_)))
    })
    .await
}

/// Polls `done` every 50 ms until it is true; fails early when a component process exited
/// (naming it, with its log tail) and at `timeout` with `what`, blamed on `component`.
async fn wait_for<F, Fut>(
    parts: &mut Parts,
    timeout: Duration,
    component: &str,
    what: String,
    mut done: F,
) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if done().await {
            return Ok(());
        }
        if let Some(e) = exited_component(parts) {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(start_error(&parts.dir, component, what));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
",
        ca = ca.display()
    )
}

/// A kube client for a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client, ClusterError> {
    let err = |message: String| ClusterError::Client {
        path: path.to_path_buf(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}
