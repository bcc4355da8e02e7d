//! Finding the binaries the test kit runs.
//!
//! - etcd and the Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
//!   kubelet, kube-proxy): `$ZEROSCALE_K8S_BIN` if set, else
//!   `$ZEROSCALE_CACHE/k8s-<version>-etcd-<version>/bin` with `ZEROSCALE_CACHE` defaulting to
//!   `~/.cache/zeroscale`: where `scripts/build-control-plane.sh` puts them (keep the versions in
//!   sync with that script).
//! - The node's containerd, shim, ctr and CoreDNS: `$ZEROSCALE_NODE_BIN`, else the cache dir of
//!   `scripts/build-node.sh`; its images: `$ZEROSCALE_IMAGES`, else `<target>/images`
//!   (`scripts/build-images.sh`).
//! - Helm and promtool: `$ZEROSCALE_TOOLS_BIN`, else the cache dir of `scripts/build-tools.sh`.
//! - KServe's controller manager: `$ZEROSCALE_KSERVE_BIN`, else the cache dir of
//!   `scripts/build-kserve.sh`; its CRDs and ConfigMap sit beside that dir (`../crd`, `../config`).
//! - Workspace binaries (`sample-model`, `activator`, `autoscaler`, ...): next to the running test
//!   executable, i.e. `target/<profile>/` (the parent of `deps/` or `examples/`). Build them first
//!   with `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};

/// Kubernetes version built by `scripts/build-control-plane.sh`.
pub const K8S_VERSION: &str = "v1.36.3";
/// etcd version built by `scripts/build-control-plane.sh`.
pub const ETCD_VERSION: &str = "v3.6.16";

/// containerd version built by `scripts/build-node.sh`.
pub const CONTAINERD_VERSION: &str = "v2.4.2";
/// CoreDNS version built by `scripts/build-node.sh`.
pub const COREDNS_VERSION: &str = "v1.15.0";

/// Helm version built by `scripts/build-tools.sh`.
pub const HELM_VERSION: &str = "v3.22.0";
/// Prometheus version whose promtool `scripts/build-tools.sh` builds.
pub const PROMETHEUS_VERSION: &str = "v0.316.0";

/// KServe version whose manager `scripts/build-kserve.sh` builds.
pub const KSERVE_VERSION: &str = "v0.20.0";

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn cache_dir() -> PathBuf {
    env_dir("ZEROSCALE_CACHE").unwrap_or_else(|| {
        let home = env_dir("HOME").unwrap_or_else(|| "/root".into());
        home.join(".cache/zeroscale")
    })
}

/// Directory holding etcd and the Kubernetes binaries (not checked).
pub fn k8s_bin_dir() -> PathBuf {
    env_dir("ZEROSCALE_K8S_BIN").unwrap_or_else(|| {
        cache_dir()
            .join(format!("k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}"))
            .join("bin")
    })
}

/// Directory holding containerd, its shim, ctr and coredns: `$ZEROSCALE_NODE_BIN`, else where
/// `scripts/build-node.sh` caches them (not checked).
pub fn node_bin_dir() -> PathBuf {
    env_dir("ZEROSCALE_NODE_BIN").unwrap_or_else(|| {
        cache_dir()
            .join(format!(
                "node-containerd-{CONTAINERD_VERSION}-coredns-{COREDNS_VERSION}"
            ))
            .join("bin")
    })
}

/// Directory holding `helm` and `promtool`: `$ZEROSCALE_TOOLS_BIN`, else where
/// `scripts/build-tools.sh` caches them (not checked).
pub fn tools_bin_dir() -> PathBuf {
    env_dir("ZEROSCALE_TOOLS_BIN").unwrap_or_else(|| {
        cache_dir()
            .join(format!(
                "tools-helm-{HELM_VERSION}-prometheus-{PROMETHEUS_VERSION}"
            ))
            .join("bin")
    })
}

/// Directory holding KServe's `manager`: `$ZEROSCALE_KSERVE_BIN`, else where
/// `scripts/build-kserve.sh` caches it (not checked). Its parent holds `crd/` and `config/`.
pub fn kserve_bin_dir() -> PathBuf {
    env_dir("ZEROSCALE_KSERVE_BIN").unwrap_or_else(|| {
        cache_dir()
            .join(format!("kserve-{KSERVE_VERSION}"))
            .join("bin")
    })
}

/// KServe's manager binary, or an error saying how to get it.
pub fn kserve_manager() -> Result<PathBuf, String> {
    let p = kserve_bin_dir().join("manager");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "no KServe manager at {}: run scripts/build-kserve.sh (builds it from the Go module proxy) or set ZEROSCALE_KSERVE_BIN",
            p.display()
        ))
    }
}

/// A tool of `scripts/build-tools.sh` (`helm`, `promtool`), or an error saying how to get it.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let p = tools_bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "no {name} at {}: run scripts/build-tools.sh (builds Helm and promtool from the Go module proxy) or set ZEROSCALE_TOOLS_BIN",
            p.display()
        ))
    }
}

/// Directory of the OCI archives `scripts/build-images.sh` writes: `$ZEROSCALE_IMAGES`, else
/// `images/` in the cargo target dir of the running executable (not checked).
pub fn images_dir() -> PathBuf {
    env_dir("ZEROSCALE_IMAGES").unwrap_or_else(|| {
        workspace_bin_dir()
            .and_then(|d| d.parent().map(|t| t.join("images")))
            .unwrap_or_else(|| PathBuf::from("target/images"))
    })
}

/// `target/<profile>/` of the running executable, if it looks like a cargo-built one.
pub fn workspace_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let name = dir.file_name()?.to_str()?;
    if name == "deps" || name == "examples" {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// Path of a workspace binary built next to the running executable.
///
/// # Panics
/// If it does not exist, with a message telling how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = workspace_bin_dir().unwrap_or_else(|| PathBuf::from("target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "workspace binary {name:?} not found at {}: run `cargo build --workspace --bins` first \
         (scripts/test.sh does)",
        path.display()
    );
    path
}
