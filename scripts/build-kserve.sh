#!/usr/bin/env bash
# Builds KServe's controller manager (`cmd/manager` of github.com/kserve/kserve) from the Go module
# proxy, pinned by version and cached under $ZEROSCALE_CACHE (default ~/.cache/zeroscale), like the
# control plane, and copies the module's CRDs (`config/crd/full/`) next to it. The KServe e2e test
# (tests/tests/kserve_e2e.rs) runs this manager against the local cluster.
#
# Cache layout: $CACHE/kserve-$KSERVE_VERSION/bin/manager, .../crd/*.yaml, the module's
# `inferenceservice-config` ConfigMap as .../config/inferenceservice-config.yaml (the test edits
# its `deploy` and `ingress` entries for Standard mode), .../BUILD-INFO.
# Prints the bin directory on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

KSERVE_VERSION="${KSERVE_VERSION:-v0.20.0}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/kserve-$KSERVE_VERSION"
BIN="$OUT/bin"
CRD="$OUT/crd"

log() { echo "build-kserve: $*" >&2; }
die() { echo "build-kserve: error: $*" >&2; exit 1; }

if [[ -x "$BIN/manager" && -f "$CRD/serving.kserve.io_inferenceservices.yaml" && -f "$OUT/config/inferenceservice-config.yaml" ]]; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi
ensure_go
export GOTOOLCHAIN=local CGO_ENABLED=0
MOD=github.com/kserve/kserve
SRC=$( (go mod download -json "$MOD@$KSERVE_VERSION" 2>/dev/null || true) | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[[ -d "$SRC" ]] || die "the Go module proxy ($(go env GOPROXY)) does not answer for $MOD@$KSERVE_VERSION: check network access to the proxy, or set GOPROXY to a reachable mirror."
mkdir -p "$BIN" "$CRD" "$OUT/config"
start=$(date +%s)

# KServe's go.mod pins its Kubernetes libraries and more with `replace` lines, which only apply
# when it is the main module (a wrapper module, as for Helm, would resolve other versions). So
# build inside the unpacked module itself, read-only: its own go.mod and go.sum decide every
# version, and nothing is written to the module cache but downloads.
log "kserve manager $KSERVE_VERSION"
(cd "$SRC" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" \
  -o "$BIN/manager.tmp" ./cmd/manager >&2)
mv "$BIN/manager.tmp" "$BIN/manager"

# The CRDs as kustomize would install them, minus the kustomizations and conversion-webhook
# patches (the test installs no webhook configuration, so there is no conversion service).
find "$SRC/config/crd/full" -name 'serving.kserve.io_*.yaml' -exec cp {} "$CRD/" \;
cp "$SRC/config/configmap/inferenceservice.yaml" "$OUT/config/inferenceservice-config.yaml"
chmod -R u+w "$CRD" "$OUT/config"

end=$(date +%s)
{
  echo "kserve=$KSERVE_VERSION go=$(go env GOVERSION) built=$(date -u +%FT%TZ) seconds=$((end - start))"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
  echo "crds=$(find "$CRD" -name '*.yaml' | wc -l)"
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
