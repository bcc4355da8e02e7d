//! [`RealNode`]: a real Kubernetes node inside the test's private network (and mount) namespace:
//! containerd 2.x driving Debian's runc, the CNI bridge plugin, the kubelet, kube-proxy
//! (iptables) and CoreDNS, all built or installed by the project's scripts, running pods as
//! containers from images the project builds (`scripts/build-images.sh`).
//!
//! Choices, and why:
//! - **containerd 2.x** (built by `scripts/build-node.sh`): Kubernetes 1.36's kubelet needs a CRI
//!   runtime that implements the v1 API with the features it checks for; Debian's containerd 1.6
//!   is too old. CGO is off, so the btrfs/devmapper/zfs snapshotters are out; overlayfs is used.
//! - `restrict_oom_score_adj = true`: this machine withholds CAP_SYS_RESOURCE, so runc cannot
//!   lower a sandbox's `oom_score_adj` to -998 ("failed to update /proc/self/oom_score_adj:
//!   Permission denied"); the option caps it at containerd's own value.
//! - **cgroups v1** (the machine's hybrid layout): `failCgroupV1: false`, the `cgroupfs` driver
//!   (no systemd here), and a per-cluster `cgroupRoot` created in every v1 hierarchy, so
//!   cleanup removes exactly what this node made.
//! - **CNI**: Debian's bridge + host-local plugins, pods on 10.88.0.0/16 behind bridge
//!   [`BRIDGE`]; the node's own address is [`crate::netns::HOST_IP`] (on `lo`), which pods reach
//!   through the bridge gateway.
//! - **DNS**: CoreDNS runs on the node (like NodeLocal DNSCache, as a host process rather than a
//!   pod) on `HOST_IP:53`, with the `kubernetes` plugin for `cluster.local` and NXDOMAIN for
//!   everything else (no upstream exists here). The kubelet's `clusterDNS` points at it.
//! - **Images**: the sandbox image is our own `zeroscale-pause` (no registry); every image is
//!   imported into containerd from the OCI archives `scripts/build-images.sh` writes, and pods
//!   use them with `imagePullPolicy: IfNotPresent` (the default for a tagged image).
//! - Eviction thresholds are set near zero and image GC off: the test machine's disk is shared
//!   and often more than 85% full, which would otherwise evict pods or delete our images.
//!
//! Cleanup ([`RealNode::shutdown`]) kills the kubelet, every container process (found through
//! the node's cgroups), containerd and its shims, unmounts everything under the node's dir and
//! the private tmpfs on [`RUN_DIR`],
//! deletes the bridge, flushes kube-proxy's iptables rules and removes the cgroups.
//! [`leaks`] reports whatever is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::error::ClusterError;
use crate::process::{self, OwnedChild};

/// Name of the node (the same as the process kubelet's, so tests need not care which runs).
pub const NODE_NAME: &str = crate::kubelet::NODE_NAME;
/// The CNI bridge the node's pods hang off.
pub const BRIDGE: &str = "zs0";
/// Pod addresses.
pub const POD_CIDR: &str = "10.88.0.0/16";
/// Service ClusterIPs (the API server's `--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// CNI plugins directory (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// containerd's fixed runtime dir (shim sockets, runc state): a private tmpfs while a node runs.
pub const RUN_DIR: &str = "/run/containerd";
/// Where the kubelet's cgroups go, under each v1 hierarchy.
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// One image built by `scripts/build-images.sh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its Dockerfile target (`zeroscale`, `sample-model`, `pause`).
    pub target: String,
    /// Its reference, e.g. `ghcr.io/zeroscale/zeroscale:0.1.0`.
    pub reference: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

/// Reads `images.txt` from the images directory.
pub fn read_images(dir: &Path) -> Result<Vec<Image>, ClusterError> {
    let list = dir.join("images.txt");
    let text = std::fs::read_to_string(&list).map_err(|e| ClusterError::NodeMissing {
        what: format!("the image list {} ({e})", list.display()),
        fix: "run scripts/build-images.sh (or set ZEROSCALE_IMAGES to its output directory)".into(),
    })?;
    let mut images = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some(t), Some(r), Some(a)) => images.push(Image {
                target: t.into(),
                reference: r.into(),
                archive: a.into(),
            }),
            _ => {
                return Err(ClusterError::NodeMissing {
                    what: format!("a valid line in {}: {line:?}", list.display()),
                    fix: "re-run scripts/build-images.sh".into(),
                });
            }
        }
    }
    Ok(images)
}

/// What starting a node needs from its cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The cluster's dir; the node uses `<dir>/node`.
    pub dir: PathBuf,
    /// The cluster's process marker.
    pub marker: String,
    /// kubelet and kube-proxy.
    pub k8s_bin: PathBuf,
    /// containerd, its shim, ctr, coredns.
    pub node_bin: PathBuf,
    /// Images to import (one must be the `pause` target).
    pub images: Vec<Image>,
    /// Admin kubeconfig for the node's components.
    pub kubeconfig: PathBuf,
    /// How long to wait for each step.
    pub timeout: Duration,
}

/// A running node. Dropping it (or [`RealNode::shutdown`]) removes everything it made.
pub struct RealNode {
    dir: PathBuf,
    cgroup: String,
    marker: String,
    node_bin: PathBuf,
    containerd: Option<OwnedChild>,
    kubelet: Option<OwnedChild>,
    kube_proxy: Option<OwnedChild>,
    coredns: Option<OwnedChild>,
    /// Whether our tmpfs is on [`RUN_DIR`].
    run_mounted: bool,
    /// When each started, for the timing report.
    pub timings: Vec<(&'static str, Duration)>,
}

impl std::fmt::Debug for RealNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNode")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Checks what the node needs from the machine; the error says what is missing and how to get
/// it. No fallback: a machine that cannot run containers fails here.
pub fn preflight(node_bin: &Path) -> Result<PathBuf, ClusterError> {
    let missing = |what: String, fix: &str| ClusterError::NodeMissing {
        what,
        fix: fix.into(),
    };
    if !crate::netns::inside() {
        return Err(missing(
            "to run inside the test kit's private network and mount namespace (it mounts over /run/containerd and rewrites iptables)".into(),
            "call zeroscale_testkit::netns::ensure_private_netns() first in main, as the e2e binaries do",
        ));
    }
    for b in ["containerd", "containerd-shim-runc-v2", "ctr", "coredns"] {
        if !node_bin.join(b).is_file() {
            return Err(missing(
                format!("{b} in {}", node_bin.display()),
                "run scripts/build-node.sh (builds containerd and CoreDNS from the Go module proxy) or set ZEROSCALE_NODE_BIN",
            ));
        }
    }
    let runc = which("runc").ok_or_else(|| {
        missing(
            "runc (the OCI runtime containerd drives)".into(),
            "apt-get install runc",
        )
    })?;
    for p in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(p).is_file() {
            return Err(missing(
                format!("the CNI plugin {CNI_BIN_DIR}/{p}"),
                "apt-get install containernetworking-plugins",
            ));
        }
    }
    if which("iptables").is_none() {
        return Err(missing(
            "iptables (kube-proxy programs Services with it)".into(),
            "apt-get install iptables",
        ));
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        return Err(missing(
            "overlayfs in the kernel (/proc/filesystems lists no `overlay`)".into(),
            "load the overlay module (modprobe overlay) or use a kernel with it",
        ));
    }
    let hierarchies = cgroup_hierarchies();
    for want in ["cpu", "memory", "pids", "cpuset"] {
        if !hierarchies
            .iter()
            .any(|h| h.file_name().is_some_and(|n| n == want))
        {
            return Err(missing(
                format!("the cgroup v1 `{want}` hierarchy under {CGROUP_FS}"),
                "mount the cgroup controllers (this node runs the kubelet on cgroups v1 with the cgroupfs driver)",
            ));
        }
    }
    Ok(runc)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The mounted cgroup v1 hierarchies (not the unified v2 one of the hybrid layout).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    mounted_cgroups(&["cgroup"])
}

/// Every mounted cgroup hierarchy, v1 and the unified v2 one (runc creates the containers'
/// cgroups there too): what cleanup and the leak check cover.
fn all_cgroup_hierarchies() -> Vec<PathBuf> {
    mounted_cgroups(&["cgroup", "cgroup2"])
}

fn mounted_cgroups(types: &[&str]) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && types.contains(&f[2])).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

fn ip(args: &[&str]) -> Result<(), ClusterError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(io("running ip (iproute2)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Io {
        what: format!("ip {}", args.join(" ")),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}

fn write(path: &Path, text: &str) -> Result<(), ClusterError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))
}

fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind((crate::netns::HOST_IP, 0))
        .map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

impl RealNode {
    /// Starts containerd, imports the images, starts the kubelet, kube-proxy and CoreDNS, and
    /// waits until Node [`NODE_NAME`] is Ready and DNS answers.
    pub async fn start(client: &kube::Client, cfg: NodeConfig) -> Result<Self, ClusterError> {
        let runc = preflight(&cfg.node_bin)?;
        let pause = cfg
            .images
            .iter()
            .find(|i| i.target == "pause")
            .ok_or_else(|| ClusterError::NodeMissing {
                what: "the pause image in the image list".into(),
                fix: "re-run scripts/build-images.sh".into(),
            })?
            .reference
            .clone();
        let dir = cfg.dir.join("node");
        let cgroup = format!("zeroscale-{}", cfg.marker);
        let mut node = Self {
            dir: dir.clone(),
            cgroup: cgroup.clone(),
            marker: cfg.marker.clone(),
            node_bin: cfg.node_bin.clone(),
            containerd: None,
            kubelet: None,
            kube_proxy: None,
            coredns: None,
            run_mounted: false,
            timings: Vec::new(),
        };
        let t0 = Instant::now();
        make_cgroup_root(&cgroup)?;
        // containerd puts its shims' sockets and runc's state under /run/containerd whatever its
        // configured dirs: a tmpfs of our own there, in our private mount namespace, keeps them
        // off the host and goes with the node.
        std::fs::create_dir_all(RUN_DIR).map_err(io(format!("creating {RUN_DIR}")))?;
        nix::mount::mount(
            Some("tmpfs"),
            RUN_DIR,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .map_err(|e| ClusterError::Io {
            what: format!("mounting a tmpfs on {RUN_DIR}"),
            source: e.into(),
        })?;
        node.run_mounted = true;

        // --- the bridge, and a route for Service IPs ---
        // A real node has a default route, so a connection from the node to a ClusterIP gets
        // routed, then DNATed by kube-proxy's OUTPUT rules. This namespace has no default route:
        // route the Service range over the pods' bridge (created here; the CNI bridge plugin
        // adopts it), from the node's address.
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["link", "set", BRIDGE, "up"],
            vec![
                "route",
                "add",
                SERVICE_CIDR,
                "dev",
                BRIDGE,
                "src",
                crate::netns::HOST_IP,
            ],
        ] {
            ip(&args)?;
        }

        // --- CNI and containerd ---
        let d = |p: &str| dir.join(p).display().to_string();
        write(
            &dir.join("cni/net.d/10-zeroscale.conflist"),
            &format!(
                r#"{{"cniVersion":"1.0.0","name":"zeroscale","plugins":[
 {{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_CIDR}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{ipam}"}}}}
]}}
"#,
                ipam = d("cni/ipam")
            ),
        )?;
        let sock = dir.join("containerd/containerd.sock");
        write(
            &dir.join("containerd/config.toml"),
            &containerd_config(&dir, &sock, &runc, &pause),
        )?;
        let path = format!(
            "{}:{}",
            cfg.node_bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        node.containerd = Some(spawn(
            &cfg,
            "containerd",
            &cfg.node_bin.join("containerd"),
            &[format!("--config={}", d("containerd/config.toml"))],
            &[("PATH", path.as_str())],
        )?);
        wait(&mut node, &cfg, "containerd", "its socket", || async {
            tokio::net::UnixStream::connect(&sock).await.is_ok()
        })
        .await?;
        node.timings.push(("containerd", t0.elapsed()));
        for image in &cfg.images {
            import(&cfg, &sock, image).await?;
        }
        node.timings.push(("images imported", t0.elapsed()));

        // --- kubelet ---
        write(
            &dir.join("resolv.conf"),
            &format!("nameserver {}\n", crate::netns::HOST_IP),
        )?;
        let kubelet_port = free_port()?;
        write(
            &dir.join("kubelet/config.yaml"),
            &kubelet_config(&dir, &sock, &cgroup, kubelet_port),
        )?;
        node.kubelet = Some(spawn(
            &cfg,
            "kubelet",
            &cfg.k8s_bin.join("kubelet"),
            &[
                format!("--config={}", d("kubelet/config.yaml")),
                format!("--kubeconfig={}", cfg.kubeconfig.display()),
                format!("--root-dir={}", d("kubelet/root")),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", crate::netns::HOST_IP),
                "--v=1".into(),
            ],
            &[("PATH", path.as_str())],
        )?);

        // --- kube-proxy ---
        let (proxy_health, proxy_metrics) = (free_port()?, free_port()?);
        write(
            &dir.join("kube-proxy.yaml"),
            &format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
healthzBindAddress: {host}:{proxy_health}
metricsBindAddress: {host}:{proxy_metrics}
iptables:
  minSyncPeriod: 0s
  syncPeriod: 30s
# Leave the host's conntrack table size and timeouts alone (not namespaced).
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
                kubeconfig = cfg.kubeconfig.display(),
                host = crate::netns::HOST_IP,
            ),
        )?;
        node.kube_proxy = Some(spawn(
            &cfg,
            "kube-proxy",
            &cfg.k8s_bin.join("kube-proxy"),
            &[format!("--config={}", d("kube-proxy.yaml")), "--v=1".into()],
            &[] as &[(&str, &str)],
        )?);

        // --- CoreDNS ---
        let dns_ready = free_port()?;
        write(
            &dir.join("Corefile"),
            &format!(
                "cluster.local:53 {{
    bind {host}
    errors
    ready {host}:{dns_ready}
    kubernetes cluster.local {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
}}
.:53 {{
    bind {host}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
",
                host = crate::netns::HOST_IP,
                kubeconfig = cfg.kubeconfig.display(),
            ),
        )?;
        node.coredns = Some(spawn(
            &cfg,
            "coredns",
            &cfg.node_bin.join("coredns"),
            &["-conf".into(), d("Corefile")],
            &[] as &[(&str, &str)],
        )?);

        let nodes: Api<Node> = Api::all(client.clone());
        wait(&mut node, &cfg, "kubelet", "Node Ready", || async {
            matches!(nodes.get_opt(NODE_NAME).await, Ok(Some(n)) if node_ready(&n))
        })
        .await?;
        node.timings.push(("node Ready", t0.elapsed()));
        let ready_url = format!("{}:{dns_ready}", crate::netns::HOST_IP);
        wait(&mut node, &cfg, "coredns", "/ready", || {
            let url = ready_url.clone();
            async move {
                match url.parse() {
                    Ok(addr) => crate::http_client::get(addr, "/ready")
                        .await
                        .is_ok_and(|r| r.status == 200),
                    Err(_) => false,
                }
            }
        })
        .await?;
        node.timings.push(("dns ready", t0.elapsed()));
        Ok(node)
    }

    /// The kubelet's process, e.g. to stop it.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().map(OwnedChild::pid)
    }

    /// The node's dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What pod `ns/name`'s containers wrote (stdout and stderr, every container and every
    /// restart, in file order), read from the kubelet's pod log dir with the CRI log prefix
    /// (`<time> <stream> <F|P> `) taken off. Empty when the pod wrote nothing yet.
    pub fn pod_log(&self, ns: &str, name: &str) -> std::io::Result<String> {
        let prefix = format!("{ns}_{name}_");
        let mut out = String::new();
        let root = self.dir.join("pod-logs");
        let mut pods: Vec<PathBuf> = std::fs::read_dir(&root)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        pods.sort();
        for pod in pods {
            let mut files = Vec::new();
            for c in std::fs::read_dir(&pod)?.filter_map(Result::ok) {
                for f in std::fs::read_dir(c.path())?.filter_map(Result::ok) {
                    files.push(f.path());
                }
            }
            files.sort();
            for f in files {
                out.push_str(&strip_cri_prefix(&std::fs::read_to_string(&f)?));
            }
        }
        Ok(out)
    }

    /// The kubelet's cgroup root (under each v1 hierarchy).
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// Stops everything and removes what the node made (idempotent).
    pub fn shutdown(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.kill();
        }
        for c in [&mut self.kube_proxy, &mut self.coredns] {
            if let Some(mut c) = c.take() {
                c.kill();
            }
        }
        kill_cgroup_processes(&self.cgroup);
        if let Some(mut c) = self.containerd.take() {
            c.kill();
        }
        // Shims run in their own sessions, so killing containerd's group misses them; they
        // carry the marker like everything we start.
        let shim = self.node_bin.join("containerd-shim-runc-v2");
        for pid in process::processes_with_marker(&self.marker) {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe == shim
                && let Ok(p) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait_gone(&self.marker, &shim);
        unmount_under(&self.dir);
        if std::mem::take(&mut self.run_mounted) {
            let _ = nix::mount::umount2(RUN_DIR, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(std::process::Stdio::null())
            .status();
        // The namespace is ours alone: flush kube-proxy's (and the bridge plugin's) rules.
        for table in ["nat", "filter", "mangle"] {
            for op in ["-F", "-X"] {
                let _ = std::process::Command::new("iptables")
                    .args(["-w", "-t", table, op])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        remove_cgroup_root(&self.cgroup);
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits (up to 5 s) until no process of `exe` with the marker is left.
fn wait_gone(marker: &str, exe: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let alive = process::processes_with_marker(marker)
            .into_iter()
            .any(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe));
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a stopped node left behind: mounts under `dir`, cgroup dirs named `cgroup`, the bridge.
pub fn leaks(dir: &Path, cgroup: &str) -> Vec<String> {
    let mut left = Vec::new();
    for m in mounts_under(dir) {
        left.push(format!("mount {}", m.display()));
    }
    for h in all_cgroup_hierarchies() {
        let p = h.join(cgroup);
        if p.exists() {
            left.push(format!("cgroup {}", p.display()));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        left.push(format!("network device {BRIDGE}"));
    }
    if !mounts_under(Path::new(RUN_DIR)).is_empty() {
        left.push(format!("mount {RUN_DIR}"));
    }
    left
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn spawn<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    cfg: &NodeConfig,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(K, V)],
) -> Result<OwnedChild, ClusterError> {
    let log = cfg.dir.join("logs").join(format!("{name}.log"));
    let mut cmd = process::command(program, args, &cfg.marker, &log)
        .map_err(io(format!("opening {}", log.display())))?;
    for (k, v) in env {
        cmd.env(k, v);
    }
    OwnedChild::spawn(name, cmd, log).map_err(io(format!("starting {}", program.display())))
}

async fn import(cfg: &NodeConfig, sock: &Path, image: &Image) -> Result<(), ClusterError> {
    let out = tokio::process::Command::new(cfg.node_bin.join("ctr"))
        .arg(format!("--address={}", sock.display()))
        .args(["--namespace=k8s.io", "images", "import"])
        .arg(&image.archive)
        .output()
        .await
        .map_err(io(format!(
            "running ctr images import {}",
            image.archive.display()
        )))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Start {
        component: "containerd".into(),
        reason: format!(
            "importing {} from {}: {}",
            image.reference,
            image.archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        log: cfg.dir.join("logs/containerd.log").display().to_string(),
        tail: process::tail(&cfg.dir.join("logs/containerd.log"), 20),
    })
}

/// Polls `done` every 100 ms; fails when a node process exited or at the timeout, blaming
/// `component` with its log tail.
async fn wait<F, Fut>(
    node: &mut RealNode,
    cfg: &NodeConfig,
    component: &str,
    what: &str,
    mut done: F,
) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + cfg.timeout;
    let fail = |component: &str, reason: String| {
        let log = cfg.dir.join("logs").join(format!("{component}.log"));
        ClusterError::Start {
            component: component.into(),
            reason,
            tail: process::tail(&log, 30),
            log: log.display().to_string(),
        }
    };
    loop {
        if done().await {
            return Ok(());
        }
        for c in [
            &mut node.containerd,
            &mut node.kubelet,
            &mut node.kube_proxy,
            &mut node.coredns,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(status) = c.exited() {
                return Err(fail(&c.name.clone(), format!("exited with {status}")));
            }
        }
        if Instant::now() > deadline {
            return Err(fail(
                component,
                format!("{what} not reached within {:?}", cfg.timeout),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn containerd_config(dir: &Path, sock: &Path, runc: &Path, pause: &str) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
# Plugins that cannot work here (no erofs tools, no tracing endpoint): off, so the log says why not.
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # No CAP_SYS_RESOURCE here: never ask runc for an oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
[plugins."io.containerd.grpc.v1.cri"]
  # Pod network namespaces under the state dir, so cleanup finds them with the rest.
  netns_mounts_under_state_dir = true
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        sock = sock.display(),
        runc = runc.display(),
        cni_bin = CNI_BIN_DIR,
        cni_conf = d("cni/net.d"),
    )
}

/// Lines of a CRI container log (`<RFC 3339 time> <stdout|stderr> <F|P> <text>`) as the
/// container wrote them: a partial line (`P`) joins the next one.
fn strip_cri_prefix(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    for line in log.lines() {
        let mut f = line.splitn(4, ' ');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some(_), Some(_), Some(tag), text) => {
                out.push_str(text.unwrap_or(""));
                if tag != "P" {
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn kubelet_config(dir: &Path, sock: &Path, cgroup: &str, port: u16) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroups v1 (hybrid layout) and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
containerRuntimeEndpoint: unix://{sock}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
authorization: {{mode: Webhook}}
address: {host}
port: {port}
readOnlyPort: 0
healthzPort: 0
clusterDNS: [{host}]
clusterDomain: cluster.local
resolvConf: {resolv}
podLogsDir: {logs}
# The disk is shared with everything else on the machine: never evict or GC for it.
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
failSwapOn: false
# Faster than the defaults where a test waits on them (ConfigMap volumes, status).
syncFrequency: 10s
nodeStatusReportFrequency: 10s
"#,
        sock = sock.display(),
        host = crate::netns::HOST_IP,
        resolv = d("resolv.conf"),
        logs = d("pod-logs"),
    )
}

/// Creates `<hierarchy>/<name>` in every v1 hierarchy (cpuset needs its cpus and mems copied
/// from the parent before anything can join it).
fn make_cgroup_root(name: &str) -> Result<(), ClusterError> {
    for h in cgroup_hierarchies() {
        let p = h.join(name);
        std::fs::create_dir_all(&p).map_err(|e| ClusterError::NodeMissing {
            what: format!(
                "a writable cgroup hierarchy: creating {} failed ({e})",
                p.display()
            ),
            fix:
                "run as root with the cgroup v1 controllers mounted read-write under /sys/fs/cgroup"
                    .into(),
        })?;
        if h.ends_with("cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(h.join(f)).unwrap_or_default();
                std::fs::write(p.join(f), v.trim())
                    .map_err(io(format!("initialising {}", p.join(f).display())))?;
            }
        }
    }
    Ok(())
}

/// Every cgroup dir under `root`, deepest first.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_dirs(&e.path()));
            }
        }
    }
    out.push(root.to_path_buf());
    out
}

/// SIGKILLs every process in the node's cgroups (the containers) until none is left (5 s).
fn kill_cgroup_processes(name: &str) {
    let root = Path::new(CGROUP_FS).join("pids").join(name);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut any = false;
        for d in cgroup_dirs(&root) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                any = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !any || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_cgroup_root(name: &str) {
    for h in all_cgroup_hierarchies() {
        let root = h.join(name);
        if !root.exists() {
            continue;
        }
        // A cgroup whose last process just died can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in cgroup_dirs(&root) {
            while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_lose_their_prefix_and_partial_lines_join() {
        let log = "2026-12-02T01:00:00.1Z stdout F first line\n\
                   2026-12-02T01:00:00.2Z stderr P half \n\
                   2026-12-02T01:00:00.3Z stderr F and the rest\n\
                   2026-12-02T01:00:00.4Z stdout F\n";
        assert_eq!(
            super::strip_cri_prefix(log),
            "first line\nhalf and the rest\n\n"
        );
    }

    #[test]
    fn a_missing_or_bad_image_list_says_how_to_build_it() {
        let dir = std::env::temp_dir().join(format!("zs-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = read_images(&dir).unwrap_err().to_string();
        assert!(
            e.contains("images.txt") && e.contains("scripts/build-images.sh"),
            "{e}"
        );
        std::fs::write(dir.join("images.txt"), "pause only-two-fields\n").unwrap();
        let e = read_images(&dir).unwrap_err().to_string();
        assert!(e.contains("only-two-fields"), "{e}");
        std::fs::write(
            dir.join("images.txt"),
            "pause zeroscale.local/pause:0.1.0 /x/pause.tar\n\n",
        )
        .unwrap();
        let images = read_images(&dir).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].reference, "zeroscale.local/pause:0.1.0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outside_the_private_namespace_the_node_refuses_to_start() {
        if crate::netns::inside() {
            return;
        }
        let e = preflight(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ensure_private_netns"), "{e}");
    }

    #[test]
    fn the_configs_point_at_the_node_dir() {
        let dir = Path::new("/tmp/zs-x/node");
        let c = containerd_config(
            dir,
            &dir.join("containerd/containerd.sock"),
            Path::new("/usr/sbin/runc"),
            "zeroscale.local/pause:0.1.0",
        );
        for want in [
            r#"root = "/tmp/zs-x/node/containerd/root""#,
            r#"sandbox = "zeroscale.local/pause:0.1.0""#,
            "restrict_oom_score_adj = true",
        ] {
            assert!(c.contains(want), "no {want} in\n{c}");
        }
        let k = kubelet_config(
            dir,
            &dir.join("containerd/containerd.sock"),
            "zeroscale-m",
            10250,
        );
        for want in [
            "failCgroupV1: false",
            "cgroupRoot: /zeroscale-m",
            "clusterDNS: [10.244.0.1]",
        ] {
            assert!(k.contains(want), "no {want} in\n{k}");
        }
    }
}
