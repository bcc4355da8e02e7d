#!/usr/bin/env bash
# The one test command (also what CI runs, via .ci/run). On a fresh machine with Rust and Go it
# installs what is missing (iproute2/util-linux, runc, CNI plugins, iptables, buildah, musl-tools via
# apt-get; rustfmt/clippy and the musl target via rustup), builds etcd, the Kubernetes binaries,
# containerd, CoreDNS, Helm, promtool and KServe's manager from source if they are not cached, builds the images, then runs:
# cargo fmt --check, clippy -D warnings, the build, and every test (unit, component, end-to-end;
# the e2e binaries re-exec themselves into a private network namespace).
#
# For development only: ZEROSCALE_TEST_PACKAGES="zeroscale-testkit zeroscale-e2e" restricts
# clippy, build and tests to those packages (CI always runs the whole workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

section() { printf '\n==== %s ====\n' "$*"; }
die() { echo "test.sh: error: $*" >&2; exit 1; }
started=$(date +%s)

# CI builds once from a fresh clone: incremental compilation data would only cost time and
# disk (about half of the debug target dir).
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

section "tools"
ensure_netns_tools
command -v cargo >/dev/null 2>&1 || die "Rust is not installed (cargo not on PATH): see https://rustup.rs"
for comp in rustfmt clippy; do
  sub=${comp/rustfmt/fmt}
  if ! cargo "$sub" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo $sub is missing and rustup is not available to add it"
    rustup component add "$comp"
  fi
done
echo "cargo: $(cargo --version); ip: $(command -v ip); unshare: $(command -v unshare)"

section "Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl)"
ZEROSCALE_K8S_BIN=$(./scripts/build-control-plane.sh </dev/null | tail -n 1)
export ZEROSCALE_K8S_BIN
echo "using $ZEROSCALE_K8S_BIN"

section "node (containerd, CoreDNS; runc, CNI plugins, iptables from Debian)"
ZEROSCALE_NODE_BIN=$(./scripts/build-node.sh </dev/null | tail -n 1)
export ZEROSCALE_NODE_BIN
echo "using $ZEROSCALE_NODE_BIN"

section "tools (Helm for the chart, promtool for the alerting rules)"
ZEROSCALE_TOOLS_BIN=$(./scripts/build-tools.sh </dev/null | tail -n 1)
export ZEROSCALE_TOOLS_BIN
echo "using $ZEROSCALE_TOOLS_BIN"

section "KServe (the controller manager and its CRDs, for the KServe e2e test)"
ZEROSCALE_KSERVE_BIN=$(./scripts/build-kserve.sh </dev/null | tail -n 1)
export ZEROSCALE_KSERVE_BIN
echo "using $ZEROSCALE_KSERVE_BIN"

section "images (zeroscale, sample-model, pause: the Dockerfile's stages, built by buildah)"
ZEROSCALE_IMAGES=$(./scripts/build-images.sh </dev/null | tail -n 1)
export ZEROSCALE_IMAGES
echo "using $ZEROSCALE_IMAGES"

scope=(--workspace)
if [[ -n "${ZEROSCALE_TEST_PACKAGES:-}" ]]; then
  scope=()
  for p in $ZEROSCALE_TEST_PACKAGES; do scope+=(-p "$p"); done
  echo "restricted to: ${scope[*]}"
fi

section "cargo fmt --check"
if [[ -n "${ZEROSCALE_TEST_PACKAGES:-}" ]]; then
  cargo fmt "${scope[@]}" -- --check
else
  cargo fmt --all -- --check
fi

section "cargo clippy -D warnings"
cargo clippy "${scope[@]}" --all-targets -- -D warnings

section "cargo build (all targets; e2e tests run the built binaries)"
cargo build "${scope[@]}" --all-targets

section "cargo test (unit, component, end-to-end)"
cargo test "${scope[@]}"

section "done in $(( $(date +%s) - started ))s"
