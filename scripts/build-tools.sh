#!/usr/bin/env bash
# Builds the operator tools the tests run, from the Go module proxy, pinned by version and cached
# under $ZEROSCALE_CACHE (default ~/.cache/zeroscale), like the control plane:
#  - Helm: the chart in charts/zeroscale is linted, rendered and installed with it;
#  - promtool (Prometheus): the alerting rules in manifests/observability/ are checked and
#    unit-tested with it.
#
# Prints the directory holding `helm` and `promtool` on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/tools-helm-$HELM_VERSION-prometheus-$PROMETHEUS_VERSION"
BIN="$OUT/bin"

log() { echo "build-tools: $*" >&2; }
die() { echo "build-tools: error: $*" >&2; exit 1; }

if [[ -x "$BIN/helm" && -x "$BIN/promtool" ]]; then
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
mkdir -p "$WORK/helm"
cat > "$WORK/helm/go.mod" <<MOD
module zeroscale.dev/build/helm

go 1.25

require $HELM $HELM_VERSION

tool $HELM/cmd/helm
MOD
(cd "$WORK/helm" && go mod tidy >&2)
# As Helm's Makefile does: the Kubernetes version `helm template` and `helm lint` assume is the
# one of the client-go Helm is built with (otherwise v1.20, below the chart's kubeVersion).
K8S_MINOR=$(cd "$WORK/helm" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
LDFLAGS="-s -w -X $HELM/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  LDFLAGS+=" -X $HELM/$pkg.k8sVersionMajor=1 -X $HELM/$pkg.k8sVersionMinor=$K8S_MINOR"
done
(cd "$WORK/helm" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/helm.tmp" "$HELM/cmd/helm" >&2)
mv "$BIN/helm.tmp" "$BIN/helm"

log "promtool (prometheus $PROMETHEUS_VERSION)"
PROM=github.com/prometheus/prometheus
mkdir -p "$WORK/promtool"
cat > "$WORK/promtool/go.mod" <<MOD
module zeroscale.dev/build/promtool

go 1.25

require $PROM $PROMETHEUS_VERSION

tool $PROM/cmd/promtool
MOD
(cd "$WORK/promtool" && go mod tidy >&2 && \
  go build -trimpath -ldflags "-s -w" -o "$BIN/promtool.tmp" "$PROM/cmd/promtool" >&2)
mv "$BIN/promtool.tmp" "$BIN/promtool"

end=$(date +%s)
{
  echo "helm=$HELM_VERSION prometheus=$PROMETHEUS_VERSION go=$(go env GOVERSION) built=$(date -u +%FT%TZ) seconds=$((end - start))"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
