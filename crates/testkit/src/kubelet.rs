//! The process kubelet: a node agent that runs pods as local processes.
//!
//! - Registers Node [`NODE_NAME`] (Ready, InternalIP = [`crate::netns::HOST_IP`]) and refreshes
//!   its Ready heartbeat every 10 s.
//! - Acts as the scheduler: binds every pod without `spec.nodeName` to the node (pods/binding).
//! - Runs each bound pod's first container: `command` + `args` (with `$(VAR)` expansion), `env`
//!   (`value`, and `valueFrom.fieldRef` for metadata.name/namespace/uid, spec.nodeName,
//!   spec.serviceAccountName, status.podIP/hostIP) plus `POD_IP`, `POD_NAME`, `POD_NAMESPACE`, in
//!   its own process group under `setpriv --pdeathsig KILL`, output appended to
//!   `<cluster dir>/pods/<namespace>_<name>.log`. `image` is ignored; `command[0]` is resolved on
//!   `PATH`, to which the workspace's `target/<profile>/` dir is prepended (so `sample-model`
//!   works as a command in e2e tests; absolute paths work too). The rest of the environment is
//!   inherited from the test process.
//! - Gives each pod its own address from 10.244.0.0/16 (`ip addr add <ip>/32 dev lo` inside the
//!   private network namespace; removed when the pod is gone).
//! - Writes pod status: phase, podIP(s), hostIP(s), startTime, conditions (PodScheduled,
//!   Initialized, ContainersReady, Ready), containerStatuses (ready, started, restartCount,
//!   state, lastState).
//! - Readiness: `readinessProbe.httpGet` (path, port by number or name, initialDelaySeconds,
//!   periodSeconds, timeoutSeconds, successThreshold, failureThreshold) against the pod IP.
//!   Until the first successful probe it probes every 50 ms instead of every periodSeconds (the
//!   API server defaults periodSeconds to 10, so "unset" cannot be told apart, and waiting 10 s
//!   would make scale-from-zero slow); after that it honours periodSeconds. Without a probe the
//!   pod is Ready as soon as its process has started.
//! - A process that exits is restarted after a backoff (200 ms doubling to 5 s) and counted in
//!   `restartCount` (`restartPolicy` is treated as `Always`).
//! - Deletion (deletionTimestamp set): SIGTERM to the process group, up to the pod's deletion
//!   grace period (else terminationGracePeriodSeconds, else 30 s), then SIGKILL; then the pod
//!   object is deleted with grace period 0.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Container, Node, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt as _};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::process::{MARKER_ENV, signal_group};

/// Name of the process kubelet's node.
pub const NODE_NAME: &str = "zeroscale-node";

/// How the kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Node name.
    pub node_name: String,
    /// Node address (must exist in the namespace).
    pub host_ip: String,
    /// Where pod logs go.
    pub pod_log_dir: PathBuf,
    /// Marker env value put on every pod process.
    pub marker: String,
    /// Dirs prepended to `PATH` for pod commands.
    pub extra_path: Vec<PathBuf>,
}

/// Pod addresses: 10.244.0.2 upward, skipping the host address and .0/.255 of each /24.
#[derive(Debug, Default)]
struct IpAlloc {
    next: u32,
    used: BTreeSet<u32>,
}

impl IpAlloc {
    fn alloc(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..65536 {
            let n = self.next;
            self.next = (self.next + 1) % 65536;
            let (hi, lo) = (n >> 8, n & 0xff);
            if lo == 0 || lo == 255 || (hi == 0 && lo == 1) || self.used.contains(&n) {
                continue;
            }
            self.used.insert(n);
            return Some(Ipv4Addr::new(10, 244, hi as u8, lo as u8));
        }
        None
    }

    fn free(&mut self, ip: Ipv4Addr) {
        let o = ip.octets();
        self.used.remove(&(u32::from(o[2]) << 8 | u32::from(o[3])));
    }
}

struct Worker {
    /// `Some(grace)` asks the pod worker to terminate.
    terminate: watch::Sender<Option<Duration>>,
}

struct Shared {
    client: Client,
    cfg: KubeletConfig,
    ips: Mutex<IpAlloc>,
    /// Live process groups by pod uid, killed on shutdown.
    groups: Mutex<HashMap<String, u32>>,
    /// Addresses in use by pod uid, removed on shutdown.
    addrs: Mutex<HashMap<String, Ipv4Addr>>,
    workers: Mutex<HashMap<String, Worker>>,
    /// Set by `shutdown` under the `groups` lock: no container may start after it.
    stopped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running process kubelet; [`Kubelet::shutdown`] (or drop) kills every pod process.
pub struct Kubelet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.shared.cfg.node_name)
            .finish()
    }
}

impl Kubelet {
    /// Registers the node and starts the scheduler, pod and heartbeat loops.
    pub async fn start(client: Client, cfg: KubeletConfig) -> Result<Self, kube::Error> {
        std::fs::create_dir_all(&cfg.pod_log_dir).ok();
        let shared = Arc::new(Shared {
            client,
            cfg,
            ips: Mutex::new(IpAlloc::default()),
            groups: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        });
        register_node(&shared).await?;
        let tasks = vec![
            tokio::spawn(heartbeat(shared.clone())),
            tokio::spawn(schedule(shared.clone())),
            tokio::spawn(manage_pods(shared.clone())),
        ];
        Ok(Self { shared, tasks })
    }

    /// Stops the loops, kills every pod process group and removes pod addresses (blocking).
    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        lock(&self.shared.workers).clear();
        // A pod task on another runtime thread may be starting a container right now: under
        // this lock it either registered its group (killed below) or sees `stopped` and kills
        // its own (see `run_pod`).
        let groups: Vec<u32> = {
            let mut g = lock(&self.shared.groups);
            self.shared.stopped.store(true, Ordering::SeqCst);
            g.drain().map(|(_, g)| g).collect()
        };
        for g in &groups {
            signal_group(*g, Signal::SIGKILL);
        }
        for (_, ip) in lock(&self.shared.addrs).drain() {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// RFC 3339 UTC timestamp of now, as the API expects.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

async fn register_node(shared: &Shared) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let name = &shared.cfg.node_name;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        }},
    }))
    .expect("static node object");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    patch_node_status(shared).await
}

async fn patch_node_status(shared: &Shared) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let now = now_rfc3339();
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "zeroscale process kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": shared.cfg.host_ip},
            {"type": "Hostname", "address": shared.cfg.node_name},
        ],
        "capacity": {"cpu": "2", "memory": "24Gi", "pods": "1000"},
        "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "1000"},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
            "containerRuntimeVersion": "process://", "kubeletVersion": crate::bins::K8S_VERSION,
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    api.patch_status(
        &shared.cfg.node_name,
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}

async fn heartbeat(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = patch_node_status(&shared).await {
            tracing::debug!(error = %e, "node heartbeat failed");
        }
    }
}

/// The scheduler: binds unscheduled pods to our node.
async fn schedule(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        let pod = match ev {
            Ok(Event::Apply(p) | Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "scheduler watch");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": shared.cfg.node_name},
        });
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
        match api
            .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => tracing::warn!(pod = %name, namespace = %ns, error = %e, "binding failed"),
        }
    }
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Watches the pods bound to our node; starts a worker per pod and tells it when to stop.
async fn manage_pods(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.cfg.node_name));
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    // Pods listed by the current (re)list; workers whose pod is not among them were deleted
    // while the watch was down (e.g. the API server restarted) and are stopped.
    let mut listed: Option<std::collections::HashSet<String>> = None;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Init) => listed = Some(std::collections::HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(pod.uid().unwrap_or_default());
                }
                on_pod(&shared, pod);
            }
            Ok(Event::InitDone) => {
                if let Some(l) = listed.take() {
                    for (uid, w) in lock(&shared.workers).iter() {
                        if !l.contains(uid) {
                            w.terminate.send_replace(Some(Duration::from_secs(1)));
                        }
                    }
                }
            }
            Ok(Event::Apply(pod)) => on_pod(&shared, pod),
            Ok(Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                if let Some(w) = lock(&shared.workers).get(&uid) {
                    // Gone from the API (e.g. force-deleted): stop quickly.
                    w.terminate.send_replace(Some(Duration::from_secs(1)));
                }
            }
            Err(e) => tracing::debug!(error = %e, "pod watch"),
        }
    }
}

fn on_pod(shared: &Arc<Shared>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let mut workers = lock(&shared.workers);
    if let Some(w) = workers.get(&uid) {
        if deleting && w.terminate.borrow().is_none() {
            w.terminate.send_replace(Some(grace_of(&pod)));
        }
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return;
    }
    if deleting {
        // Never started here (or a leftover): just remove it.
        let shared = shared.clone();
        tokio::spawn(async move { delete_now(&shared, &pod).await });
        return;
    }
    let (tx, rx) = watch::channel(None);
    workers.insert(uid.clone(), Worker { terminate: tx });
    let shared2 = shared.clone();
    tokio::spawn(async move {
        run_pod(&shared2, pod, rx).await;
        lock(&shared2.workers).remove(&uid);
    });
}

async fn delete_now(shared: &Shared, pod: &Pod) {
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting pod failed"),
    }
}

/// Container environment: inherited, plus PATH extension, the marker, the pod's env and the
/// downward-API basics.
fn pod_env(shared: &Shared, pod: &Pod, c: &Container, ip: Ipv4Addr) -> Vec<(String, String)> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut path: Vec<PathBuf> = shared.cfg.extra_path.clone();
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    if let Ok(p) = std::env::join_paths(path) {
        env.push(("PATH".into(), p.to_string_lossy().into_owned()));
    }
    env.push((MARKER_ENV.into(), shared.cfg.marker.clone()));
    env.push(("POD_IP".into(), ip.to_string()));
    env.push(("POD_NAME".into(), name.clone()));
    env.push(("POD_NAMESPACE".into(), ns.clone()));
    let spec = pod.spec.as_ref();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(v.clone())
        } else if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            match f.field_path.as_str() {
                "metadata.name" => Some(name.clone()),
                "metadata.namespace" => Some(ns.clone()),
                "metadata.uid" => pod.uid(),
                "spec.nodeName" => Some(shared.cfg.node_name.clone()),
                "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
                "status.podIP" => Some(ip.to_string()),
                "status.hostIP" => Some(shared.cfg.host_ip.clone()),
                _ => None,
            }
        } else {
            None
        };
        let value = value.unwrap_or_default();
        let value = expand(&value, &env);
        env.push((e.name.clone(), value));
    }
    env
}

/// Kubernetes `$(VAR)` expansion against the variables defined so far; `$$` escapes.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let var = &inner[..j];
                    match env.iter().rev().find(|(k, _)| k == var) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(var);
                            out.push(')');
                        }
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn spawn_container(
    shared: &Shared,
    pod: &Pod,
    c: &Container,
    ip: Ipv4Addr,
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    let env = pod_env(shared, pod, c, ip);
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the process kubelet needs container.command (the image's entrypoint is unknown)",
        ));
    };
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(args)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &c.working_dir {
        cmd.current_dir(dir);
    }
    cmd.spawn()
}

async fn ip_addr(op: &str, ip: Ipv4Addr) -> bool {
    tokio::process::Command::new("ip")
        .args(["addr", op, &format!("{ip}/32"), "dev", "lo"])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Readiness probe state.
struct Prober {
    addr: SocketAddr,
    path: String,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: i32,
    failure_threshold: i32,
    successes: i32,
    failures: i32,
    ever_succeeded: bool,
}

/// First poll interval until the first success (see module docs).
const FAST_PROBE: Duration = Duration::from_millis(50);

impl Prober {
    fn new(probe: &Probe, c: &Container, ip: Ipv4Addr) -> Option<Self> {
        let get = probe.http_get.as_ref()?;
        let port = match &get.port {
            IntOrString::Int(p) => u16::try_from(*p).ok()?,
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())?,
        };
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        Some(Self {
            addr: SocketAddr::new(IpAddr::V4(ip), port),
            path: get.path.clone().unwrap_or_else(|| "/".into()),
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_millis(100)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_millis(100)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
            successes: 0,
            failures: 0,
            ever_succeeded: false,
        })
    }

    fn next_interval(&self) -> Duration {
        if self.ever_succeeded {
            self.period
        } else {
            FAST_PROBE
        }
    }

    /// Probes once; returns the new readiness given the current one.
    async fn probe(&mut self, ready: bool) -> bool {
        let ok = matches!(
            crate::http_client::request(self.addr, http::Method::GET, &self.path, None, self.timeout).await,
            Ok(r) if r.status.as_u16() >= 200 && r.status.as_u16() < 400
        );
        if ok {
            self.ever_succeeded = true;
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        if ready {
            self.failures < self.failure_threshold
        } else {
            self.successes >= self.success_threshold
        }
    }
}

/// Everything the status patches need to know about one pod.
struct Status {
    ip: Ipv4Addr,
    host_ip: String,
    container: String,
    image: String,
    start_time: String,
    restarts: i32,
    ready: bool,
    running_since: Option<String>,
    pid: Option<u32>,
    last_state: Value,
    waiting: Option<(String, String)>,
}

impl Status {
    fn to_patch(&self) -> Value {
        let r = if self.ready { "True" } else { "False" };
        let now = now_rfc3339();
        // Strategic merge would otherwise keep the previous state's key next to the new one.
        let state = match (&self.running_since, &self.waiting) {
            (Some(t), _) => {
                json!({"running": {"startedAt": t}, "waiting": null, "terminated": null})
            }
            (None, Some((reason, message))) => {
                json!({"waiting": {"reason": reason, "message": message}, "running": null, "terminated": null})
            }
            (None, None) => {
                json!({"waiting": {"reason": "ContainerCreating"}, "running": null, "terminated": null})
            }
        };
        json!({"status": {
            "phase": "Running",
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.ip.to_string(),
            "podIPs": [{"ip": self.ip.to_string()}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": self.start_time},
                {"type": "ContainersReady", "status": r, "lastTransitionTime": now},
                {"type": "Ready", "status": r, "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": self.container,
                "image": self.image,
                "imageID": "",
                "containerID": self.pid.map(|p| format!("process://{p}")),
                "ready": self.ready,
                "started": self.running_since.is_some(),
                "restartCount": self.restarts,
                "state": state,
                "lastState": self.last_state,
            }],
        }})
    }
}

async fn patch_status(api: &Api<Pod>, name: &str, st: &Status) {
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(st.to_patch()),
        )
        .await
    {
        tracing::debug!(pod = %name, error = %e, "pod status patch failed");
    }
}

/// Runs one pod until it is deleted.
async fn run_pod(shared: &Arc<Shared>, pod: Pod, mut terminate: watch::Receiver<Option<Duration>>) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let Some(container) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first().cloned())
    else {
        return;
    };
    let Some(ip) = lock(&shared.ips).alloc() else {
        tracing::warn!(pod = %name, "no pod address left");
        return;
    };
    if !ip_addr("add", ip).await {
        tracing::warn!(pod = %name, %ip, "ip addr add failed (not in a private network namespace?)");
    }
    lock(&shared.addrs).insert(uid.clone(), ip);
    let log = shared.cfg.pod_log_dir.join(format!("{ns}_{name}.log"));
    let mut st = Status {
        ip,
        host_ip: shared.cfg.host_ip.clone(),
        container: container.name.clone(),
        image: container.image.clone().unwrap_or_else(|| "none".into()),
        start_time: now_rfc3339(),
        restarts: 0,
        ready: false,
        running_since: None,
        pid: None,
        last_state: json!({}),
        waiting: None,
    };
    let mut backoff = Duration::from_millis(200);
    'life: loop {
        // Terminated, or the kubelet shut down (the sender is gone with its worker entry).
        if terminate.borrow().is_some()
            || terminate.has_changed().is_err()
            || shared.stopped.load(Ordering::SeqCst)
        {
            break 'life;
        }
        let mut child = match spawn_container(shared, &pod, &container, ip, &log) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "starting the container failed");
                st.waiting = Some(("RunContainerError".into(), e.to_string()));
                st.running_since = None;
                st.ready = false;
                patch_status(&api, &name, &st).await;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = terminate.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'life;
            }
        };
        let pgid = child.id().unwrap_or(0);
        {
            let mut groups = lock(&shared.groups);
            if shared.stopped.load(Ordering::SeqCst) {
                drop(groups);
                signal_group(pgid, Signal::SIGKILL);
                let _ = child.wait().await;
                break 'life;
            }
            groups.insert(uid.clone(), pgid);
        }
        let mut prober = container
            .readiness_probe
            .as_ref()
            .and_then(|p| Prober::new(p, &container, ip));
        st.pid = Some(pgid);
        st.waiting = None;
        st.running_since = Some(now_rfc3339());
        st.ready = prober.is_none();
        patch_status(&api, &name, &st).await;
        let mut next_probe =
            Instant::now() + prober.as_ref().map_or(Duration::ZERO, |p| p.initial_delay);
        let exit = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = terminate.changed() => {
                    let grace = terminate.borrow().unwrap_or(Duration::ZERO);
                    stop(&mut child, pgid, grace).await;
                    lock(&shared.groups).remove(&uid);
                    break 'life;
                }
                () = tokio::time::sleep_until(next_probe), if prober.is_some() => {
                    if let Some(p) = prober.as_mut() {
                        let ready = p.probe(st.ready).await;
                        next_probe = Instant::now() + p.next_interval();
                        if ready != st.ready {
                            st.ready = ready;
                            patch_status(&api, &name, &st).await;
                        }
                    }
                }
            }
        };
        // The process exited by itself: count a restart and start it again after a backoff.
        signal_group(pgid, Signal::SIGKILL);
        lock(&shared.groups).remove(&uid);
        let code = exit.ok().and_then(|s| s.code()).unwrap_or(-1);
        st.restarts += 1;
        st.last_state = json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": st.running_since,
            "finishedAt": now_rfc3339(),
        }});
        st.running_since = None;
        st.ready = false;
        st.pid = None;
        st.waiting = Some((
            "CrashLoopBackOff".into(),
            format!("back-off {backoff:?} restarting the container"),
        ));
        patch_status(&api, &name, &st).await;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = terminate.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    ip_addr("del", ip).await;
    lock(&shared.addrs).remove(&uid);
    lock(&shared.ips).free(ip);
    delete_now(shared, &pod).await;
}

/// SIGTERM to the group, up to `grace` for the process to exit, then SIGKILL.
async fn stop(child: &mut tokio::process::Child, pgid: u32, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Anything the process left behind in its group.
    signal_group(pgid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x".to_owned()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
    }

    fn prober(addr: SocketAddr, path: &str, success: i32, failure: i32) -> Prober {
        Prober {
            addr,
            path: path.into(),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: success,
            failure_threshold: failure,
            successes: 0,
            failures: 0,
            ever_succeeded: false,
        }
    }

    #[tokio::test]
    async fn probe_thresholds_gate_readiness_transitions() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(crate::sample_model::serve(listener, Default::default()));

        // Not ready -> ready takes successThreshold consecutive successes.
        let mut p = prober(addr, "/healthz", 2, 3);
        assert_eq!(
            p.next_interval(),
            FAST_PROBE,
            "fast until the first success"
        );
        assert!(!p.probe(false).await);
        assert_eq!(
            p.next_interval(),
            Duration::from_secs(1),
            "then periodSeconds"
        );
        assert!(p.probe(false).await);

        // Ready -> not ready takes failureThreshold consecutive failures (404 is a failure).
        let mut p = prober(addr, "/missing", 1, 3);
        assert!(p.probe(true).await);
        assert!(p.probe(true).await);
        assert!(!p.probe(true).await);
        assert!(!p.ever_succeeded);

        // Nothing listening is a failure too.
        server.abort();
        let _ = server.await;
        let mut p = prober(addr, "/healthz", 1, 1);
        assert!(!p.probe(true).await);
    }

    #[test]
    fn ip_allocation_skips_reserved_and_reuses_freed() {
        let mut a = IpAlloc::default();
        let first = a.alloc().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 244, 0, 2));
        let mut seen = BTreeSet::new();
        seen.insert(first);
        for _ in 0..600 {
            let ip = a.alloc().unwrap();
            let o = ip.octets();
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
            assert_ne!(ip.to_string(), crate::netns::HOST_IP);
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        a.free(first);
        assert!(a.used.len() == 600);
    }
}
