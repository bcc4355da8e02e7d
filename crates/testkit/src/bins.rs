//! Finding the binaries the test kit runs.
//!
//! - Control plane (etcd, kube-apiserver, kube-controller-manager): `$ZEROSCALE_K8S_BIN` if set,
//!   else `$ZEROSCALE_CACHE/k8s-<version>-etcd-<version>/bin` with `ZEROSCALE_CACHE` defaulting to
//!   `~/.cache/zeroscale`: where `scripts/build-control-plane.sh` puts them (keep the versions in
//!   sync with that script).
//! - Workspace binaries (`sample-model`, `activator`, `autoscaler`, ...): next to the running test
//!   executable, i.e. `target/<profile>/` (the parent of `deps/` or `examples/`). Build them first
//!   with `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};

/// Kubernetes version built by `scripts/build-control-plane.sh`.
pub const K8S_VERSION: &str = "v1.36.3";
/// etcd version built by `scripts/build-control-plane.sh`.
pub const ETCD_VERSION: &str = "v3.6.16";

/// Directory holding etcd, kube-apiserver and kube-controller-manager (not checked).
pub fn k8s_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZEROSCALE_K8S_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("ZEROSCALE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into());
            home.join(".cache/zeroscale")
        });
    cache
        .join(format!("k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}"))
        .join("bin")
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
