#!/usr/bin/env bash
# Builds what a real node runs besides the Kubernetes binaries (those come from
# build-control-plane.sh): containerd 2.x and its runc shim, and CoreDNS, from the Go module proxy,
# pinned by version and cached under $ZEROSCALE_CACHE (default ~/.cache/zeroscale). runc and the
# CNI plugins come from Debian packages (installed with apt-get when missing).
#
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
OUT="$CACHE/node-containerd-$CONTAINERD_VERSION-coredns-$COREDNS_VERSION"
BIN="$OUT/bin"

log() { echo "build-node: $*" >&2; }
die() { echo "build-node: error: $*" >&2; exit 1; }

ensure_node_packages

if [[ -x "$BIN/containerd" && -x "$BIN/containerd-shim-runc-v2" && -x "$BIN/coredns" ]]; then
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

# --- containerd and the runc v2 shim. CGO is off, so the snapshotters that need it (btrfs,
# devmapper, zfs) are left out by tag; the node uses overlayfs. ---
log "containerd $CONTAINERD_VERSION"
mkdir -p "$WORK/containerd"
CTD=github.com/containerd/containerd/v2
CTD_LDFLAGS="-s -w -X $CTD/version.Version=$CONTAINERD_VERSION -X $CTD/version.Revision=zeroscale"
cat > "$WORK/containerd/go.mod" <<MOD
module zeroscale.dev/build/containerd

go 1.25

require $CTD $CONTAINERD_VERSION

tool (
	$CTD/cmd/containerd
	$CTD/cmd/containerd-shim-runc-v2
	$CTD/cmd/ctr
)
MOD
(cd "$WORK/containerd" && go mod tidy >&2)
for cmd in containerd containerd-shim-runc-v2 ctr; do
  log "go build $cmd"
  (cd "$WORK/containerd" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "$CTD_LDFLAGS" -o "$BIN/$cmd.tmp" "$CTD/cmd/$cmd" >&2)
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done

# --- CoreDNS: its main package is the module root ---
log "coredns $COREDNS_VERSION"
mkdir -p "$WORK/coredns"
cat > "$WORK/coredns/go.mod" <<MOD
module zeroscale.dev/build/coredns

go 1.25

require github.com/coredns/coredns $COREDNS_VERSION

tool github.com/coredns/coredns
MOD
(cd "$WORK/coredns" && go mod tidy >&2 && \
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" github.com/coredns/coredns >&2)
mv "$BIN/coredns.tmp" "$BIN/coredns"

end=$(date +%s)
{
  echo "containerd=$CONTAINERD_VERSION coredns=$COREDNS_VERSION go=$(go env GOVERSION) built=$(date -u +%FT%TZ) seconds=$((end - start))"
  du -sh "$BIN" | awk '{print "bin_size=" $1}'
} > "$OUT/BUILD-INFO"
log "done in $((end - start))s: $(tr '\n' ' ' < "$OUT/BUILD-INFO")"
echo "$BIN"
