#!/usr/bin/env bash
# bench/heartbeat-breakdown.sh — where a heartbeat's CPU goes on BOTH ends
# (issue 15): `megaconn serve` and `megaconn hold`, user vs system time,
# system calls and context switches per heartbeat, for one or more megaconn
# binaries side by side in interleaved rounds. (It replaces
# bench/heartbeat-syscalls.sh, which printed the server's half of this table.)
#
# For each binary (BINS, default: target/release/megaconn) and round: `serve`
# (one worker, core $SERVER_CPU, default --park-after 2 s: with INTERVAL > 2 s
# every heartbeat wakes a parked connection) and `hold` from the same binary
# (core $LOAD_CPU, one process: N <= 19,000), N connections, a heartbeat
# GET / every INTERVAL s. After the ramp and SETTLE s, for WINDOW s:
#   CPU µs/hb     = Δ run time of all the process's threads (schedstat, ns) / heartbeats,
#                   split into user and system by the Δutime : Δstime ratio (/proc/PID/stat);
#   syscalls/hb   = `perf stat` tracepoints raw_syscalls:sys_enter (all) and
#                   sendto, recvfrom, epoll_wait, epoll_ctl, futex, write;
#   ctxsw/hb      = Δ(voluntary + involuntary context switches) of its threads;
#   heartbeats    = the server's own megaconn_requests_total over the window;
#   lot ctl/hb    = the lot's own counter megaconn_parking_epoll_ctl_total (server row;
#                   0 where the binary doesn't have it);
# and after the table, hold's heartbeat latency p50/p99 over its whole run.
# INTERVAL=30 with N=19000 is the per-process load of the million run (its
# ~54 server and ~55 hold processes each see ~630 heartbeats/s), where a
# process sleeps between heartbeats; INTERVAL=3, N=15000 is heartbeat-cpu.sh's.
#
# Needs: root, perf (linux-perf), curl, jq. Env: BINS, N (15000), INTERVAL (3),
# RAMP (5000), SETTLE (6), WINDOW (20), ROUNDS (2), PORT (22100), SERVER_CPU
# (1), LOAD_CPU (0), SOURCE (127.0.0.2-127.0.0.9).
set -euo pipefail

BINS="${BINS:-target/release/megaconn}"
N="${N:-15000}"
INTERVAL="${INTERVAL:-3}"
RAMP="${RAMP:-5000}"
SETTLE="${SETTLE:-6}"
WINDOW="${WINDOW:-20}"
ROUNDS="${ROUNDS:-2}"
PORT="${PORT:-22100}"
ADMIN=$((PORT + 1))
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.9}"
OUT="$(mktemp -d /tmp/heartbeat-breakdown.XXXXXX)"
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex,syscalls:sys_enter_write
ulimit -n 20000

SERVER_PID="" HOLD_PID=""
cleanup() {
  if [[ -n "$HOLD_PID" ]]; then kill "$HOLD_PID" 2>/dev/null || true; fi
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

metric() { # name: the server's counter (sum over labels), 0 if absent
  # %.0f, not %d: mawk's %d stops at 2^31 - 1.
  curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}

sample() { # pid -> "run_ns utime_ticks stime_ticks ctxsw" over all its threads
  local pid=$1 ns=0 sw=0 t v
  for t in /proc/"$pid"/task/*; do
    read -r v _ <"$t/schedstat" && ns=$((ns + v))
    v=$(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status") && sw=$((sw + v))
  done
  # utime and stime: fields 14 and 15 (the command has no spaces here).
  read -r -a st <"/proc/$pid/stat"
  echo "$ns ${st[13]} ${st[14]} $sw"
}

row() { # tag side hb before after perf-file lot-epoll_ctl
  local tag=$1 side=$2 hb=$3 lot=${7:-0}
  read -r ns0 u0 s0 w0 <<<"$4"
  read -r ns1 u1 s1 w1 <<<"$5"
  awk -F, -v tag="$tag" -v side="$side" -v hb="$hb" -v ns=$((ns1 - ns0)) \
    -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v lot="$lot" '
    /sys_enter/ { split($3, e, ":"); n[e[2]] = $1 }
    END {
      us = ns / 1000 / hb; user = (u + s > 0) ? us * u / (u + s) : 0
      printf "| %s | %s | %d | %.2f | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n",
        tag, side, hb, us, user, us - user, n["sys_enter"] / hb,
        n["sys_enter_sendto"] / hb, n["sys_enter_recvfrom"] / hb,
        n["sys_enter_epoll_wait"] / hb, n["sys_enter_epoll_ctl"] / hb,
        n["sys_enter_futex"] / hb, n["sys_enter_write"] / hb, w / hb, lot / hb
    }' "$6"
}

run_one() { # bin round
  local bin=$1 round=$2 tag
  tag="$(basename "$(dirname "$bin")")/$(basename "$bin")-r$round"
  local f="${tag//\//_}"
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
    --workers 1 >"$OUT/$f.serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break; sleep 0.1; done
  taskset -c "$LOAD_CPU" "$bin" hold "http://127.0.0.1:$PORT/" -c "$N" --ramp "$RAMP" \
    --source "$SOURCE" --interval "${INTERVAL}s" -d "$((N / RAMP + SETTLE + WINDOW + 10))s" -q \
    --json "$OUT/$f.hold.json" \
    >"$OUT/$f.hold.log" 2>&1 &
  HOLD_PID=$!
  sleep "$((N / RAMP + 1 + SETTLE))"
  local r0 r1 c0 c1 sv0 sv1 h0 h1
  r0=$(metric megaconn_requests_total) c0=$(metric megaconn_parking_epoll_ctl_total) sv0=$(sample "$SERVER_PID") h0=$(sample "$HOLD_PID")
  perf stat -x, -o "$OUT/$f.serve.perf" -e "$EVENTS" -p "$SERVER_PID" -- sleep "$WINDOW" 2>/dev/null &
  local p1=$!
  perf stat -x, -o "$OUT/$f.hold.perf" -e "$EVENTS" -p "$HOLD_PID" -- sleep "$WINDOW" 2>/dev/null
  wait "$p1"
  r1=$(metric megaconn_requests_total) c1=$(metric megaconn_parking_epoll_ctl_total) sv1=$(sample "$SERVER_PID") h1=$(sample "$HOLD_PID")
  kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; HOLD_PID=""
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  row "$tag" serve $((r1 - r0)) "$sv0" "$sv1" "$OUT/$f.serve.perf" $((c1 - c0))
  row "$tag" hold $((r1 - r0)) "$h0" "$h1" "$OUT/$f.hold.perf"
  # hold's latencies over its whole run (stopped by SIGTERM, it still reports).
  jq -r --arg tag "$tag" '"\($tag): hold latency p50 \(.heartbeat_latency_us.p50 // null | if . == null then "—" else . / 1000 end) ms, p99 \(.heartbeat_latency_us.p99 // null | if . == null then "—" else . / 1000 end) ms, \(.heartbeats_ok) ok, \(.heartbeat_errors) failed, \(.drops) drops"' \
    "$OUT/$f.hold.json" >>"$OUT/latency.txt" 2>/dev/null || true
}

echo "| binary-round | side | heartbeats | CPU µs/hb | user | sys | syscalls/hb | sendto | recvfrom | epoll_wait | epoll_ctl | futex | write | ctxsw/hb | lot ctl/hb |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do run_one "$bin" "$round"; done
done
cat "$OUT/latency.txt" 2>/dev/null || true
echo "raw: $OUT" >&2
