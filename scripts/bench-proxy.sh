#!/usr/bin/env bash
# Activator benchmarks, side by side in one run (results and reading: BENCHMARKS.md, "Activator").
#
#  1. small keep-alive requests: direct to the backend, through the activator, through nginx;
#     ALT_ROUNDS=N adds N short wrk rounds alternating activator and nginx (their ratio);
#     closed loop with wrk (throughput, latency) and open loop at a fixed rate (latency);
#  2. memory: 10,000 requests queued on a model with no endpoints, then a 30,000-client flood
#     against a queue of 10,000;
#  3. endpoint Ready -> first queued request forwarded;
#  4. (PARTS=balance only) prefix-hash balancing against least-request on a chat body.
#
# BASE_BIN=path/to/activator-bench (built from another commit, e.g. before a refactor) adds its
# activator as target `base` to the proxy runs and the alternating rounds, side by side with this
# tree's (ALT rounds then print activator/base too).
#
# Needs: wrk and nginx (Debian: apt-get install -y wrk nginx-light), taskset, root or a hard fd
# limit >= 12000. Everything listens on 127.0.0.1 and stops by itself.
#
# Pinning (2 cores): the load generator (wrk or `activator-bench load`) on LOAD_CPU; the backend
# and the proxy under test (activator or nginx) on SERVER_CPU; the activator gets WORKERS tokio
# worker threads and nginx WORKERS worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
WORKERS=${WORKERS:-1}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
DUR=${DUR:-10}            # seconds per measured run
CONNS=${CONNS:-64}        # wrk connections
RATE=${RATE:-2000}        # open-loop requests per second
ROUNDS=${ROUNDS:-2}       # the three targets alternate, ROUNDS times (spreads machine noise)
READY_ROUNDS=${READY_ROUNDS:-200}
ALT_ROUNDS=${ALT_ROUNDS:-0} # extra short wrk rounds alternating activator and nginx (throughput ratio)
ALT_DUR=${ALT_DUR:-4}
PARTS=${PARTS:-"proxy memory ready"}

BACKEND=127.0.0.1:28081
ACT=127.0.0.1:28080
ACT_ADMIN=127.0.0.1:29090
NGINX=127.0.0.1:28082
BASE=127.0.0.1:28083
BASE_ADMIN=127.0.0.1:29093
BASE_BIN=${BASE_BIN:-}

cargo build --release -p zeroscale-benches --bin activator-bench
BIN=$CARGO_TARGET_DIR/release/activator-bench
[[ -z $BASE_BIN || -x $BASE_BIN ]] || { echo "BASE_BIN=$BASE_BIN is not an executable" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk missing (apt-get install -y wrk)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx missing (apt-get install -y nginx-light)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-proxy.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() { # addr
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  return 1
}
stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
load() { echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "# WORKERS=$WORKERS LOAD_CPU=$LOAD_CPU SERVER_CPU=$SERVER_CPU DUR=$DUR CONNS=$CONNS RATE=$RATE"
echo "# $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1)"
load

if [[ " $PARTS " == *" proxy "* ]]; then
  cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"instances":[[1.0,2.0,3.0,4.0]]}'
wrk.headers["Content-Type"] = "application/json"
EOF
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream backend {
    server $BACKEND;
    keepalive 256;
  }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # what the activator adds too
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
  taskset -c "$SERVER_CPU" "$BIN" --threads 1 backend --listen $BACKEND &
  PIDS+=($!); BPID=$!
  taskset -c "$SERVER_CPU" "$BIN" --threads "$WORKERS" activator \
    --listen $ACT --admin $ACT_ADMIN --backend $BACKEND &
  PIDS+=($!); APID=$!
  taskset -c "$SERVER_CPU" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
  PIDS+=($!); NPID=$!
  wait_port $BACKEND; wait_port $ACT; wait_port $NGINX
  declare -A URL=([direct]=http://$BACKEND [activator]=http://$ACT [nginx]=http://$NGINX [base]=http://$BASE)
  TARGETS="direct activator nginx"
  ALT_TARGETS="activator nginx"
  if [[ -n $BASE_BIN ]]; then
    echo "# base: $BASE_BIN"
    taskset -c "$SERVER_CPU" "$BASE_BIN" --threads "$WORKERS" activator \
      --listen $BASE --admin $BASE_ADMIN --backend $BACKEND &
    PIDS+=($!); BASE_PID=$!
    wait_port $BASE
    TARGETS="direct activator base nginx"
    ALT_TARGETS="activator base nginx"
  fi
  for t in $TARGETS; do # each answers 200
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      -d '{"instances":[[1.0]]}' "${URL[$t]}/v1/models/sample:predict")
    [[ $code == 200 ]] || { echo "$t answered $code" >&2; exit 1; }
  done

  for r in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -s "$WORK/post.lua" "${URL[$t]}/v1/models/sample:predict" >/dev/null
      out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$WORK/post.lua" \
        "${URL[$t]}/v1/models/sample:predict")
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1=="50%" {print $2}' <<<"$out")
      p99=$(awk '$1=="99%" {print $2}' <<<"$out")
      errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
      echo "wrk round=$r label=$t conns=$CONNS rps=$rps p50=$p50 p99=$p99 $errs"
    done
    load
    for t in $TARGETS; do
      taskset -c "$LOAD_CPU" "$BIN" --threads 0 load --label "$t" --url "${URL[$t]}" \
        --rate "$RATE" --secs "$DUR" --warmup-secs 2 | sed "s/^load /load round=$r /"
    done
    load
  done
  # Short alternating rounds: one 10 s round per target is at the mercy of this VM's noise.
  for r in $(seq 1 "$ALT_ROUNDS"); do
    declare -A RPS=()
    for t in $ALT_TARGETS; do
      taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -s "$WORK/post.lua" "${URL[$t]}/v1/models/sample:predict" >/dev/null
      RPS[$t]=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${ALT_DUR}s" -s "$WORK/post.lua" \
        "${URL[$t]}/v1/models/sample:predict" | awk '/^Requests\/sec/ {print $2}')
    done
    line="alt round=$r activator=${RPS[activator]} nginx=${RPS[nginx]} ratio=$(awk -v a="${RPS[activator]}" -v n="${RPS[nginx]}" 'BEGIN {printf "%.2f", a / n}')"
    if [[ -n $BASE_BIN ]]; then
      line+=" base=${RPS[base]} vs_base=$(awk -v a="${RPS[activator]}" -v b="${RPS[base]}" 'BEGIN {printf "%.3f", a / b}')"
    fi
    echo "$line"
  done
  echo "# activator RSS after the proxy runs: $(grep VmHWM /proc/$APID/status | tr -s ' ')"
  echo "# nginx worker RSS: $(for p in $(pgrep -P $NPID); do grep VmHWM /proc/$p/status | tr -s ' '; done)"
  stop $NPID; stop $APID; stop $BPID
  [[ -z $BASE_BIN ]] || stop "$BASE_PID"
fi

# Prefix-hash balancing against least-request (PARTS=balance, not in the default parts): one chat
# body (a system prompt of about 600 characters and a question) routed by its model field to
# `chat` (least-request) or `chat-prefix` (prefix-hash, 256 characters, c 1.25), each on a
# backend of its own; alternating closed-loop wrk rounds. With the server core saturated, 1/rps is the CPU
# time per request (activator and backend), so the difference of 1/rps is what reading the
# prompt prefix and the keyed pick add.
if [[ " $PARTS " == *" balance "* ]]; then
  SYSTEM=$(printf 'You are a careful assistant for the zeroscale project. %.0s' $(seq 1 11))
  for m in chat chat-prefix; do
    cat >"$WORK/$m.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"model":"$m","messages":[{"role":"system","content":"$SYSTEM"},{"role":"user","content":"How do I scale a model to zero?"}]}'
wrk.headers["Content-Type"] = "application/json"
EOF
  done
  echo "# system prompt: ${#SYSTEM} characters"
  # One backend per model: the sample model answers only for its own name.
  CHAT=127.0.0.1:28084 CHAT_PREFIX=127.0.0.1:28085
  taskset -c "$SERVER_CPU" "$BIN" --threads 1 backend --listen $CHAT --model chat &
  PIDS+=($!); B1=$!
  taskset -c "$SERVER_CPU" "$BIN" --threads 1 backend --listen $CHAT_PREFIX --model chat-prefix &
  PIDS+=($!); B2=$!
  taskset -c "$SERVER_CPU" "$BIN" --threads "$WORKERS" activator \
    --listen $ACT --admin $ACT_ADMIN --chat-backends $CHAT $CHAT_PREFIX &
  PIDS+=($!); APID=$!
  wait_port $CHAT; wait_port $CHAT_PREFIX; wait_port $ACT
  for m in chat chat-prefix; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      --data "{\"model\":\"$m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
      "http://$ACT/v1/chat/completions")
    [[ $code == 200 ]] || { echo "model $m answered $code" >&2; exit 1; }
  done
  for r in $(seq 1 "$ROUNDS"); do
    for m in chat chat-prefix; do
      taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -s "$WORK/$m.lua" "http://$ACT/v1/chat/completions" >/dev/null
      out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$WORK/$m.lua" \
        "http://$ACT/v1/chat/completions")
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ' || true)
      echo "balance round=$r model=$m conns=$CONNS rps=$rps us_per_request=$(awk -v r="$rps" 'BEGIN {printf "%.2f", 1e6 / r}') p50=$p50 p99=$p99 $errs"
    done
    load
  done
  stop $APID; stop $B1; stop $B2
fi

if [[ " $PARTS " == *" memory "* ]]; then
  # 10,000 queued requests hold 10,000 sockets in the activator and in the client; rejected
  # clients close after their 503, so the 30,000-client flood needs no more than that.
  ulimit -n "$(ulimit -Hn)"
  (( $(ulimit -n) >= 12000 )) || { echo "fd limit $(ulimit -n) < 12000" >&2; exit 1; }
  # The floor: a bare hyper server (same listener type) holding 10,000 requests, one HTTP/1.1
  # connection each, then as h2c streams over 50 connections.
  for h2 in "" "--h2-conns 50"; do
    taskset -c "$SERVER_CPU" "$BIN" --threads "$WORKERS" hold --listen $ACT &
    PIDS+=($!); HPID=$!
    wait_port $ACT
    sleep 0.5
    # shellcheck disable=SC2086 # $h2 is empty or two words
    taskset -c "$LOAD_CPU" "$BIN" --threads 1 flood --target $ACT --pid $HPID --clients 10000 \
      --sources 4 $h2 | sed 's/^flood /flood server=bare-hyper /'
    stop $HPID
  done
  # The activator: 10,000 queued over h2c streams.
  taskset -c "$SERVER_CPU" "$BIN" --threads "$WORKERS" activator \
    --listen $ACT --admin $ACT_ADMIN --queue-depth 10000 &
  PIDS+=($!); APID=$!
  wait_port $ACT
  sleep 0.5
  taskset -c "$LOAD_CPU" "$BIN" --threads 1 flood --target $ACT --admin $ACT_ADMIN \
    --pid $APID --clients 10000 --sources 4 --h2-conns 50 | sed 's/^flood /flood server=activator /'
  stop $APID
  # The activator: 10,000 then 30,000 clients on HTTP/1.1, one connection each, queue 10,000.
  for clients in 10000 30000; do
    taskset -c "$SERVER_CPU" "$BIN" --threads "$WORKERS" activator \
      --listen $ACT --admin $ACT_ADMIN --queue-depth 10000 &
    PIDS+=($!); APID=$!
    wait_port $ACT
    sleep 0.5
    taskset -c "$LOAD_CPU" "$BIN" --threads 1 flood --target $ACT --admin $ACT_ADMIN \
      --pid $APID --clients "$clients" --sources 4 | sed 's/^flood /flood server=activator /'
    stop $APID
    load
  done
fi

if [[ " $PARTS " == *" ready "* ]]; then
  "$BIN" --threads 2 ready --rounds "$READY_ROUNDS"
  load
fi
