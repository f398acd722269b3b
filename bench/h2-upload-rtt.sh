#!/usr/bin/env bash
# An HTTP/2 (h2c) upload over a long path, megaconn A against B, side by
# side (bench/H2-UPLOAD.md).
#
# In a network namespace of its own (never the host's loopback, which
# others share), whose `lo` gets `tc qdisc ... netem delay $DELAY` (one
# way, so the round trip is twice it), it starts the demo app
# (`megaconn serve`, one worker) of $MEGACONN (A) and $MEGACONN_B (B), and
# of B again with $C_ARGS (C, optional: e.g. the budget raised, the
# README's advice before session 51), then, ROUNDS times, with the order
# of the servers turned each round, uploads BYTES of random data with
# curl (HTTP/2 prior knowledge, nghttp2) to `POST /echo` (a handler that
# reads the body as it comes, streaming it back) and takes curl's
# time_total. Prints each upload, the medians and B/A (and C/A).
#
#   MEGACONN=target/release/megaconn MEGACONN_B=/tmp/megaconn-lead51 \
#     bash bench/h2-upload-rtt.sh
#
# Needs root (ip netns, tc), curl with HTTP/2. Knobs: DELAY (25ms),
# BYTES (8388608), ROUNDS (5), C_ARGS (unset: no C), SERVER_CPU (0; the
# servers share it), LOAD_CPU (1).
set -euo pipefail

A_BIN=${MEGACONN:?set MEGACONN to the build under test (A)}
B_BIN=${MEGACONN_B:?set MEGACONN_B to the build to compare with (B)}
DELAY=${DELAY:-25ms}
BYTES=${BYTES:-8388608}
ROUNDS=${ROUNDS:-5}
C_ARGS=${C_ARGS:-}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NS=h2upload$$
WORK=$(mktemp -d /tmp/h2upload.XXXXXX)
PIDS=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
in_ns ip link set lo up
# Without `netem` (this VM's kernel has no sch_netem: "Specified qdisc
# kind is unknown"), a userspace proxy delays each byte by DELAY each way
# (delay_proxy.py, no bandwidth limit); curl then goes through it.
PROXY=0
if ! in_ns tc qdisc add dev lo root netem delay "$DELAY" 2>/dev/null; then
  PROXY=1
  log "no netem: delaying through bench/delay_proxy.py instead"
fi
head -c "$BYTES" /dev/urandom >"$WORK/body"

# NAME PORT BIN [ARGS...]: serves the demo app in the namespace.
start() {
  local name=$1 port=$2 bin=$3
  shift 3
  in_ns taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --workers 1 \
    --admin off "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    in_ns curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return
    sleep 0.1
  done
  log "ERROR: $name did not start:"
  cat "$WORK/$name.log" >&2
  exit 1
}

declare -A PORT=([A]=18081 [B]=18082 [C]=18083)
start A "${PORT[A]}" "$A_BIN"
start B "${PORT[B]}" "$B_BIN"
NAMES=(A B)
if [[ -n "$C_ARGS" ]]; then
  # shellcheck disable=SC2086  # C_ARGS is a word list
  start C "${PORT[C]}" "$B_BIN" $C_ARGS
  NAMES+=(C)
fi
if ((PROXY)); then
  secs=$(awk -v d="$DELAY" 'BEGIN { sub(/ms$/, "", d); print d / 1000 }')
  for name in "${NAMES[@]}"; do
    in_ns python3 "$(dirname "$0")/delay_proxy.py" $((PORT[$name] + 100)) "${PORT[$name]}" "$secs" &
    PIDS+=($!)
    PORT[$name]=$((PORT[$name] + 100))
  done
  sleep 1
fi
# The round trip, as TCP's handshake takes it (one round trip).
rtt=$(in_ns curl -s -o /dev/null -w '%{time_connect}' "http://127.0.0.1:${PORT[A]}/healthz")
log "namespace $NS: loopback delay $DELAY each way (TCP connect ${rtt} s); $BYTES bytes an upload"
log "A: $A_BIN; B: $B_BIN${C_ARGS:+; C: B with $C_ARGS}"

# NAME: one upload; prints its time in seconds (checks the echo came back whole).
upload() {
  local out
  out=$(in_ns taskset -c "$LOAD_CPU" curl -s --http2-prior-knowledge --data-binary "@$WORK/body" \
    -o "$WORK/echo" -w '%{time_total} %{http_code} %{http_version}' \
    "http://127.0.0.1:${PORT[$1]}/echo")
  read -r secs code version <<<"$out"
  [[ "$code" == 200 && "$version" == 2 ]] || {
    log "ERROR: $1 answered $code over HTTP/$version"
    exit 1
  }
  cmp -s "$WORK/body" "$WORK/echo" || {
    log "ERROR: $1's echo differs from the upload"
    exit 1
  }
  echo "$secs"
}

declare -A TIMES
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${NAMES[@]}")
  # Turn the order each round: none always goes first.
  for ((i = 1; i < r % ${#NAMES[@]} + 1; i++)); do
    order=("${order[@]:1}" "${order[0]}")
  done
  line="round $r:"
  for name in "${order[@]}"; do
    t=$(upload "$name")
    TIMES[$name]+="$t "
    line+=" $name ${t}s"
  done
  echo "$line"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A MED
for name in "${NAMES[@]}"; do
  MED[$name]=$(median <<<"${TIMES[$name]}")
  echo "$name: median ${MED[$name]} s (${TIMES[$name]% })"
done
awk -v a="${MED[A]}" -v b="${MED[B]}" 'BEGIN { printf "B/A: %.2f (A is %.2f x as fast)\n", b / a, b / a }'
if [[ -n "$C_ARGS" ]]; then
  awk -v a="${MED[A]}" -v c="${MED[C]}" 'BEGIN { printf "C/A: %.2f\n", c / a }'
fi
