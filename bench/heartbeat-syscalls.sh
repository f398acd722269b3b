#!/usr/bin/env bash
# bench/heartbeat-syscalls.sh — system calls per heartbeat on parked keep-alive
# connections, for one or more megaconn binaries side by side (issue 15: the
# epoll_ctl of the parking lot's re-arm).
#
# For each binary (BINS, default: target/release/megaconn), in interleaved
# rounds: `megaconn serve` (one worker, pinned to core $SERVER_CPU, default
# --park-after 2 s, so with INTERVAL > 2 s every heartbeat wakes a parked
# connection) and `megaconn hold` from the same binary (core $LOAD_CPU), N
# connections with a heartbeat GET / every INTERVAL s. After the ramp and
# SETTLE s, `perf stat` counts the server's syscalls (tracepoints
# syscalls:sys_enter_*) for WINDOW s; heartbeats = the server's own request
# counter (/metrics on its admin port) over the same window.
# Prints per binary and round: heartbeats, and epoll_ctl, epoll_wait, recvfrom,
# sendto per heartbeat, plus the lot's own epoll_ctl counter
# (megaconn_parking_epoll_ctl_total, where the binary has it).
#
# Needs: root, perf (linux-perf), curl. Env: BINS, N (5000), INTERVAL (3),
# RAMP (5000), SETTLE (6), WINDOW (20), ROUNDS (2), PORT (31500), SERVER_CPU
# (1), LOAD_CPU (0), SOURCE (127.0.0.2-127.0.0.9).
set -euo pipefail

BINS="${BINS:-target/release/megaconn}"
N="${N:-5000}"
INTERVAL="${INTERVAL:-3}"
RAMP="${RAMP:-5000}"
SETTLE="${SETTLE:-6}"
WINDOW="${WINDOW:-20}"
ROUNDS="${ROUNDS:-2}"
PORT="${PORT:-31500}"
ADMIN=$((PORT + 1))
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.9}"
OUT="$(mktemp -d /tmp/heartbeat-syscalls.XXXXXX)"
ulimit -n 20000

SERVER_PID="" HOLD_PID=""
cleanup() {
  if [[ -n "$HOLD_PID" ]]; then kill "$HOLD_PID" 2>/dev/null || true; fi
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

metric() { # name: the server's counter (sum over labels), 0 if absent
  curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'
}

run_one() { # bin round
  local bin=$1 round=$2 tag
  tag="$(basename "$bin")-r$round"
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
    --workers 1 >"$OUT/$tag.serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break; sleep 0.1; done
  taskset -c "$LOAD_CPU" "$bin" hold "http://127.0.0.1:$PORT/" -c "$N" --ramp "$RAMP" \
    --source "$SOURCE" --interval "${INTERVAL}s" -d "$((N / RAMP + SETTLE + WINDOW + 5))s" -q \
    >"$OUT/$tag.hold.log" 2>&1 &
  HOLD_PID=$!
  sleep "$((N / RAMP + 1 + SETTLE))"
  local r0 c0 r1 c1
  r0=$(metric megaconn_requests_total) c0=$(metric megaconn_parking_epoll_ctl_total)
  perf stat -x, -o "$OUT/$tag.perf" -e syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto \
    -p "$SERVER_PID" -- sleep "$WINDOW" 2>/dev/null
  r1=$(metric megaconn_requests_total) c1=$(metric megaconn_parking_epoll_ctl_total)
  kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; HOLD_PID=""
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  awk -F, -v tag="$tag" -v hb=$((r1 - r0)) -v lot=$((c1 - c0)) '
    /sys_enter_/ { split($3, e, ":"); n[e[2]] = $1 }
    END {
      printf "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f |\n", tag, hb,
        n["sys_enter_epoll_ctl"] / hb, n["sys_enter_epoll_wait"] / hb,
        n["sys_enter_recvfrom"] / hb, n["sys_enter_sendto"] / hb, lot / hb
    }' "$OUT/$tag.perf"
}

echo "| binary-round | heartbeats | epoll_ctl/hb | epoll_wait/hb | recvfrom/hb | sendto/hb | lot epoll_ctl/hb (counter) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do run_one "$bin" "$round"; done
done
echo "raw: $OUT" >&2
