#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from the Go module proxy, pinned by
# version and cached under $ZEROSCALE_CACHE (default ~/.cache/zeroscale). A second run reuses them.
#
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
BIN="$OUT/bin"

log() { echo "build-control-plane: $*" >&2; }
die() { echo "build-control-plane: error: $*" >&2; exit 1; }

if [[ -x "$BIN/etcd" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. Install Go >= 1.25 (https://go.dev/doc/install, or Debian's golang-go) and re-run."
GOVER=$(go env GOVERSION)
case "$GOVER" in
  go1.2[5-9]*|go1.[3-9][0-9]*) ;;
  *) die "Go $GOVER is too old: kubernetes $K8S_VERSION needs Go >= 1.25. Install a newer Go and re-run." ;;
esac
PROXY=$(go env GOPROXY)
[[ "$PROXY" == "off" || -z "$PROXY" ]] && die "GOPROXY is '$PROXY': the build fetches modules from a Go module proxy. Set GOPROXY=https://proxy.golang.org,direct (or your mirror)."
if ! go list -m "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1; then
  die "the Go module proxy ($PROXY) does not answer for k8s.io/kubernetes@$K8S_VERSION: check network access to the proxy, or set GOPROXY to a reachable mirror."
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

# --- etcd: its main package is go.etcd.io/etcd/server/v3 (server/main.go) ---
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

# --- kube-apiserver and kube-controller-manager ---
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
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
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
for cmd in kube-apiserver kube-controller-manager; do
  log "go build $cmd"
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2)
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done

end=$(date +%s)
{
  echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION go=$GOVER built=$(date -u +%FT%TZ) seconds=$((end - start))"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
