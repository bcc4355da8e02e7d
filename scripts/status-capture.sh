#!/usr/bin/env bash
# Makes the README's `kubectl zeroscale` screenshot from a real run: a local cluster with a real
# node (`zeroscale-cluster --real-node`), the add-on applied with `kubectl apply -k manifests/`,
# the example model and a copy of it (`summarize`) that is never requested, one cold start and a
# few requests to `sentiment` through the activator Service, then `kubectl zeroscale status` and
# `explain` typed into a tmux pane of COLS x ROWS (default 180 x 40: a status row with its decision fits) and the pane printed with
# `tmux capture-pane -p` (plain text: the README shows it as a code block). Stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

die() { echo "status-capture.sh: error: $*" >&2; exit 1; }
log() { echo "status-capture.sh: $*" >&2; }
ensure_netns_tools
apt_ensure tmux tmux curl curl nsenter util-linux
COLS=${COLS:-180}
ROWS=${ROWS:-40}

ZEROSCALE_K8S_BIN=$(./scripts/build-control-plane.sh </dev/null | tail -n 1)
ZEROSCALE_NODE_BIN=$(./scripts/build-node.sh </dev/null | tail -n 1)
ZEROSCALE_IMAGES=${ZEROSCALE_IMAGES:-$(./scripts/build-images.sh </dev/null | tail -n 1)}
export ZEROSCALE_K8S_BIN ZEROSCALE_NODE_BIN ZEROSCALE_IMAGES
cargo build -p zeroscale-testkit --bin zeroscale-cluster -p zeroscale-cli --bin kubectl-zeroscale >&2
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug

work=$(mktemp -d /tmp/zeroscale-capture.XXXXXX)
session="zeroscale-capture-$$"
cluster_pid=
cleanup() {
  tmux kill-session -t "$session" 2>/dev/null || true
  if [[ -n "$cluster_pid" ]]; then
    # The process inside the namespace stops the cluster on SIGTERM; then its parent exits.
    [[ -s "$work/pid" ]] && kill -TERM "$(cat "$work/pid")" 2>/dev/null || true
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

log "starting the cluster"
"$bin/zeroscale-cluster" --real-node --kubeconfig-out "$work/kubeconfig" --pid-out "$work/pid" \
  >"$work/cluster.out" 2>"$work/cluster.err" &
cluster_pid=$!
for _ in $(seq 300); do
  grep -qx ready "$work/cluster.out" 2>/dev/null && break
  kill -0 "$cluster_pid" 2>/dev/null || die "the cluster did not start: $(tail -n 20 "$work/cluster.err")"
  sleep 1
done
grep -qx ready "$work/cluster.out" || die "the cluster was not ready in 300 s"
# Everything that talks to the cluster runs in its network namespace.
in_ns() { nsenter --net="/proc/$(cat "$work/pid")/ns/net" "$@"; }
k() { in_ns "$ZEROSCALE_K8S_BIN/kubectl" --kubeconfig "$work/kubeconfig" "$@"; }

log "installing the add-on and the models"
k apply -k manifests/ >&2
k apply -k manifests/status/ >&2
for d in zeroscale-activator zeroscale-autoscaler; do
  k -n zeroscale-system rollout status "deploy/$d" --timeout=300s >&2
done
k apply -k manifests/examples/ >&2
k kustomize manifests/examples/ | sed 's/sentiment/summarize/g' | k apply -f - >&2
ip=$(k -n zeroscale-system get service zeroscale-activator -o jsonpath='{.spec.clusterIP}')
predict() {
  in_ns curl -sS -o /dev/null -w "sentiment: %{http_code} in %{time_total}s\n" \
    -H 'Content-Type: application/json' -d '{"instances": [[1.0, 2.0]]}' \
    "http://$ip/v1/models/sentiment:predict" >&2
}
log "traffic: one request at zero (a cold start), then 20 more"
predict
for _ in $(seq 20); do predict; done
sleep 5

# A shell in the cluster's namespace, kubectl-zeroscale on PATH as a kubectl plugin.
tmux new-session -d -s "$session" -x "$COLS" -y "$ROWS" \
  "nsenter --net=/proc/$(cat "$work/pid")/ns/net env PATH=$bin:$ZEROSCALE_K8S_BIN:$PATH KUBECONFIG=$work/kubeconfig PS1='$ ' bash --norc --noprofile"
sleep 1
tmux send-keys -t "$session" "clear" Enter
for cmd in "kubectl zeroscale status -n models" "kubectl zeroscale explain sentiment -n models"; do
  tmux send-keys -t "$session" "$cmd" Enter
  sleep 3
done
tmux capture-pane -p -t "$session" >"$work/pane"
# The pane without its empty bottom rows.
awk 'NF { last = NR } { line[NR] = $0 } END { for (i = 1; i <= last; i++) print line[i] }' "$work/pane"
