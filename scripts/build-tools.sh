#!/usr/bin/env bash
# Builds Helm (the chart in charts/zeroscale is linted, rendered and installed with it by the
# tests) from the Go module proxy, pinned by version and cached under $ZEROSCALE_CACHE (default
# ~/.cache/zeroscale), like the control plane.
#
# Prints the directory holding the `helm` binary on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/helm-$HELM_VERSION"
BIN="$OUT/bin"

log() { echo "build-helm: $*" >&2; }
die() { echo "build-helm: error: $*" >&2; exit 1; }

if [[ -x "$BIN/helm" ]]; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi
ensure_go
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

log "helm $HELM_VERSION"
HELM=helm.sh/helm/v3
cat > "$WORK/go.mod" <<MOD
module zeroscale.dev/build/helm

go 1.25

require $HELM $HELM_VERSION

tool $HELM/cmd/helm
MOD
(cd "$WORK" && go mod tidy >&2)
# As Helm's Makefile does: the Kubernetes version `helm template` and `helm lint` assume is the
# one of the client-go Helm is built with (otherwise v1.20, below the chart's kubeVersion).
K8S_MINOR=$(cd "$WORK" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
LDFLAGS="-s -w -X $HELM/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  LDFLAGS+=" -X $HELM/$pkg.k8sVersionMajor=1 -X $HELM/$pkg.k8sVersionMinor=$K8S_MINOR"
done
(cd "$WORK" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/helm.tmp" "$HELM/cmd/helm" >&2)
mv "$BIN/helm.tmp" "$BIN/helm"

end=$(date +%s)
{
  echo "helm=$HELM_VERSION go=$(go env GOVERSION) built=$(date -u +%FT%TZ) seconds=$((end - start))"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
