#!/usr/bin/env bash
# Builds etcd and the Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# the node's kubelet and kube-proxy, and kubectl) from the Go module proxy, pinned by version and cached under
# $ZEROSCALE_CACHE (default ~/.cache/zeroscale). A second run reuses them; a binary missing from the
# cache (say, one added by a newer version of this script) is built alone.
#
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
BIN="$OUT/bin"

log() { echo "build-control-plane: $*" >&2; }
die() { echo "build-control-plane: error: $*" >&2; exit 1; }

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for cmd in "${K8S_CMDS[@]}"; do [[ -x "$BIN/$cmd" ]] || missing+=("$cmd"); done
if [[ -x "$BIN/etcd" && ${#missing[@]} == 0 ]]; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

ensure_go
GOVER=$(go env GOVERSION)
if ! go list -m "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1; then
  die "the Go module proxy ($(go env GOPROXY)) does not answer for k8s.io/kubernetes@$K8S_VERSION: check network access to the proxy, or set GOPROXY to a reachable mirror."
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

# --- etcd: its main package is go.etcd.io/etcd/server/v3 (server/main.go) ---
if [[ ! -x "$BIN/etcd" ]]; then
log "etcd $ETCD_VERSION"
mkdir -p "$WORK/etcd"
cat > "$WORK/etcd/go.mod" <<MOD
module zeroscale.dev/build/etcd

go 1.25

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3
MOD
(cd "$WORK/etcd" && go mod tidy >&2 && \
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3 >&2)
mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

# --- the Kubernetes binaries ---
if ((${#missing[@]})); then
# k8s.io/kubernetes requires its staging modules (k8s.io/api, ...) at v0.0.0 and replaces them with
# ./staging paths, which only apply inside its own repo. Generate the replace list from its go.mod.
log "kubernetes $K8S_VERSION"
GOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$GOMOD" ]] || die "could not download the go.mod of k8s.io/kubernetes@$K8S_VERSION"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
mkdir -p "$WORK/k8s"
{
  echo "module zeroscale.dev/build/k8s"
  echo
  echo "go 1.25"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "tool ("
  for cmd in "${K8S_CMDS[@]}"; do echo "	k8s.io/kubernetes/cmd/$cmd"; done
  echo ")"
  echo
  echo "replace ("
  # every "k8s.io/<name> v0.0.0" require line in kubernetes' go.mod
  grep -E '^[[:space:]]+k8s\.io/[^[:space:]]+ v0\.0\.0([[:space:]]|$)' "$GOMOD" | awk '{print $1}' | sort -u |
    while read -r m; do echo "	$m => $m $STAGING_VERSION"; done
  echo ")"
} > "$WORK/k8s/go.mod"
n=$(grep -c '=>' "$WORK/k8s/go.mod")
log "generated $n staging replaces (-> $STAGING_VERSION)"
VPKG=k8s.io/component-base/version
CPKG=k8s.io/client-go/pkg/version
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
LDFLAGS="-s -w"
for p in $VPKG $CPKG; do
  LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
(cd "$WORK/k8s" && go mod tidy >&2)
for cmd in "${missing[@]}"; do
  log "go build $cmd"
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2)
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
fi

end=$(date +%s)
{
  echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION go=$GOVER built=$(date -u +%FT%TZ) seconds=$((end - start)) built_now=${missing[*]}"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
