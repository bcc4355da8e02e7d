#!/usr/bin/env bash
# Builds zeroscale's images without a Docker engine: the add-on (`zeroscale`), the example model
# (`sample-model`) and the test node's sandbox image (`pause`), as OCI archives.
#
# The images are the Dockerfile's own final stages, built by buildah with `--build-arg
# BINARIES=local`: the binaries are compiled here (static, musl, release: as the Dockerfile's
# build stage does) and handed to the `local` stage. Names and tags come from the kustomizations'
# `images:` (manifests/ and manifests/examples/), the only place they are written.
#
# Output: $ZEROSCALE_IMAGES (default target/images): <target>.tar and images.txt, one line per
# image: "<target> <reference> <archive>". Prints the directory on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

TARGET=x86_64-unknown-linux-musl
OUT="${ZEROSCALE_IMAGES:-${CARGO_TARGET_DIR:-$PWD/target}/images}"
CACHE="${ZEROSCALE_CACHE:-$HOME/.cache/zeroscale}"
# The sandbox image exists only on the test node, so its name lives here.
PAUSE_IMAGE="zeroscale.local/pause:0.1.0"

command -v cargo >/dev/null 2>&1 || die "Rust is not installed (cargo not on PATH): see https://rustup.rs"
apt_ensure buildah buildah musl-gcc musl-tools strip binutils
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  command -v rustup >/dev/null 2>&1 || die "the Rust target $TARGET is missing and rustup is not available to add it"
  log "rustup target add $TARGET"
  rustup target add "$TARGET" >&2
fi

# `newName:newTag` of image `$2` in kustomization `$1`.
image_ref() {
  awk -v want="$2" '
    /^images:/ { in_images = 1; next }
    in_images && /^[^ -]/ { in_images = 0 }
    in_images && $1 == "-" && $2 == "name:" { name = $3 }
    in_images && $1 == "newName:" && name == want { new_name = $2 }
    in_images && $1 == "newTag:" && name == want { new_tag = $2 }
    END { if (new_name != "" && new_tag != "") print new_name ":" new_tag }
  ' "$1"
}
ZEROSCALE_IMAGE=$(image_ref manifests/base/kustomization.yaml zeroscale)
SAMPLE_IMAGE=$(image_ref manifests/examples/kustomization.yaml sample-model)
[[ -n "$ZEROSCALE_IMAGE" ]] || die "manifests/base/kustomization.yaml has no images: entry for 'zeroscale' with newName and newTag"
[[ -n "$SAMPLE_IMAGE" ]] || die "manifests/examples/kustomization.yaml has no images: entry for 'sample-model' with newName and newTag"

start=$(date +%s)
log "cargo build --release --target $TARGET"
cargo build --release --locked --target "$TARGET" \
  -p zeroscale-activator -p zeroscale-autoscaler -p zeroscale-testkit \
  --bin activator --bin autoscaler --bin sample-model --bin zeroscale-pause >&2
bins="${CARGO_TARGET_DIR:-$PWD/target}/$TARGET/release"

mkdir -p "$OUT"
ctx=$(mktemp -d "$OUT/context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/out" "$ctx/images"
cp "$bins/activator" "$bins/autoscaler" "$bins/sample-model" "$bins/zeroscale-pause" "$ctx/out/"
# Line tables stay in the workspace's release profile for profiling; images carry none (as the
# Dockerfile's build stage does).
strip --strip-debug "$ctx"/out/*
cp images/passwd images/group "$ctx/images/"

# buildah's own storage, kept in the cache (vfs: works on any file system, and these images are
# a few MiB of layers).
store=(--root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run" --storage-driver vfs)
: > "$OUT/images.txt.tmp"
for spec in "zeroscale $ZEROSCALE_IMAGE" "sample-model $SAMPLE_IMAGE" "pause $PAUSE_IMAGE"; do
  read -r target ref <<<"$spec"
  log "buildah bud --target $target -> $ref"
  buildah "${store[@]}" bud --quiet --layers=false --isolation chroot \
    --build-arg BINARIES=local --target "$target" -f Dockerfile -t "$ref" "$ctx" >&2
  rm -f "$OUT/$target.tar"
  buildah "${store[@]}" push --quiet "$ref" "oci-archive:$OUT/$target.tar:$ref" >&2
  buildah "${store[@]}" rmi "$ref" >/dev/null 2>&1 || true
  echo "$target $ref $OUT/$target.tar" >> "$OUT/images.txt.tmp"
done
mv "$OUT/images.txt.tmp" "$OUT/images.txt"
log "done in $(( $(date +%s) - start ))s: $(du -ch "$OUT"/*.tar | tail -n 1 | cut -f1) of archives in $OUT"
echo "$OUT"
