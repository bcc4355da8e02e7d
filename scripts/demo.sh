#!/usr/bin/env bash
# The one-command demo: a real local cluster with a real node (etcd, the Kubernetes components,
# containerd and CoreDNS built from source the first time; runc and the CNI plugins from Debian),
# zeroscale installed from manifests/ and running as pods from images built here, the example
# model at 0 replicas, and a scenario shown live through the activator Service: cold start, burst
# (scale-up, panic mode), idle (back to zero), second cold start; then a summary table.
# Exits non-zero if any request was not answered 200. Ctrl-C stops everything it started.
#
# The host-side binaries build with the debug profile and the images from a musl release build,
# as scripts/test.sh does, so a machine that ran the tests has everything cached.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

die() { echo "demo.sh: error: $*" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || die "Rust is not installed (cargo not on PATH): see https://rustup.rs"
# The local cluster lives in a private network namespace: ip (iproute2), unshare and setpriv
# (util-linux). Installed with apt-get when missing, as scripts/test.sh does.
ensure_netns_tools

echo "==> Kubernetes binaries (built from source on first use, then cached)" >&2
ZEROSCALE_K8S_BIN=$(./scripts/build-control-plane.sh </dev/null | tail -n 1)
export ZEROSCALE_K8S_BIN
echo "==> node binaries: containerd, CoreDNS (built from source on first use); runc, CNI from Debian" >&2
ZEROSCALE_NODE_BIN=$(./scripts/build-node.sh </dev/null | tail -n 1)
export ZEROSCALE_NODE_BIN
echo "==> images: zeroscale, sample-model, pause (the Dockerfile's stages, built with buildah)" >&2
ZEROSCALE_IMAGES=$(./scripts/build-images.sh </dev/null | tail -n 1)
export ZEROSCALE_IMAGES

echo "==> cargo build --workspace --bins" >&2
cargo build --workspace --bins

target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/debug/zeroscale-demo" "$@"
