#!/usr/bin/env bash
# bench/otel.sh — what OpenTelemetry tracing costs (issue 13): server CPU per
# request of one `megaconn serve` binary with tracing off, on but unsampled,
# and sampled (ratio 1: a span per request), interleaved over ROUNDS rounds.
# HTTP/1.1 keep-alive `GET /`, `megaconn load -c 64 -t 1 -d $DURATION` on core 0,
# the server (`--workers 1`, every thread, the export thread included) on core 1.
#
#   off        megaconn serve (no --otel-*: the request path's one branch)
#   unsampled  --otel-endpoint SINK --otel-sample-ratio 0.000001: every request
#              pays the traceparent lookup and one random draw, ~no span
#   sampled    --otel-endpoint SINK --otel-sample-ratio 1: one span per
#              request, exported over OTLP/HTTP-protobuf in batches of 512
#
# SINK is a second `megaconn serve` on core 0 (the load's core, so its work is
# not the server's) whose `POST /echo` answers each export with 200; the
# exporter reads the echoed bytes as an (empty) response. The sampled server
# gets --otel-max-queue-spans 65536 so that spans are exported, not dropped;
# the exported and dropped counts are read from its /metrics and printed.
#
# Server CPU is the sum of the first field of /proc/PID/task/*/schedstat (ns on
# the CPU, every thread) before and after each load run (as in
# bench/metrics-overhead.sh: utime/stime tick in 10 ms, too coarse here).
#
# Step `callgrind` (in STEPS, default on): user-space instructions per request
# of off and unsampled under valgrind, differenced between VG_N2 and VG_N1
# requests so start-up cancels out. Instruction counts do not depend on what
# else the machine runs: that is the figure for "unsampled ≤ 1% over off" on a
# shared machine, where wall-clock CPU moves by ±10% between rounds.
#
# Env: ROUNDS (7), DURATION (8s), PORT (25000; the sink PORT+1, admin PORT+2),
#   STEPS ("cpu callgrind"), VG_N1 (2000), VG_N2 (22000), MEGACONN (default:
#   a copy of target/release/megaconn, built here with cargo build --release).
# Needs: cargo, taskset, curl, python3; valgrind for the callgrind step
# (apt-get installs it when missing). Sets no sysctls.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-7}"
DURATION="${DURATION:-8s}"
PORT="${PORT:-25000}"
SINK_PORT=$((PORT + 1))
ADMIN_PORT=$((PORT + 2))
STEPS="${STEPS:-cpu callgrind}"
VG_N1="${VG_N1:-2000}"
VG_N2="${VG_N2:-22000}"
work="$(mktemp -d)"
server="" sink=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
  if [[ -n "$sink" ]]; then kill "$sink" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${MEGACONN:-}" ]]; then
  echo "building megaconn (cargo build --release) ..." >&2
  cargo build --release --quiet --bin megaconn
  cp target/release/megaconn "$work/megaconn"
  MEGACONN="$work/megaconn"
fi
echo "binary: $MEGACONN ($(git describe --always --dirty 2>/dev/null || echo unknown))" >&2

SINK="http://127.0.0.1:$SINK_PORT/echo"
declare -A ARGS=(
  [off]=""
  [unsampled]="--otel-endpoint $SINK --otel-protocol http/protobuf --otel-sample-ratio 0.000001"
  [sampled]="--otel-endpoint $SINK --otel-protocol http/protobuf --otel-sample-ratio 1 --otel-max-queue-spans 65536"
)
VARIANTS=(off unsampled sampled)

wait_up() { # port [log]
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  echo "nothing answers on port $1 after 30 s${2:+; its log:}" >&2
  [[ -n "${2:-}" ]] && cat "$2" >&2
  return 1
}
# Nanoseconds on the CPU, all threads of PID (/proc/PID/task/*/schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
# The same for the span export thread alone (named megaconn-otel).
export_ns() {
  local t s=0
  for t in /proc/"$1"/task/*; do
    [[ "$(cat "$t/comm" 2>/dev/null)" == megaconn-otel ]] && s=$((s + $(awk '{ print $1 }' "$t/schedstat")))
  done
  echo "$s"
}
metric() { # name: its value on the server's admin /metrics (0 when absent)
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}
start_server() { # variant
  # shellcheck disable=SC2086  # ARGS are words
  taskset -c 1 "$MEGACONN" serve --listen "127.0.0.1:$PORT" --workers 1 \
    --admin "127.0.0.1:$ADMIN_PORT" ${ARGS[$1]} >"$work/server.log" 2>&1 &
  server=$!
  wait_up "$PORT" "$work/server.log"
}
stop_server() {
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
}

if [[ " $STEPS " == *" cpu "* ]]; then
  taskset -c 0 "$MEGACONN" serve --listen "127.0.0.1:$SINK_PORT" --workers 1 --admin off >/dev/null 2>&1 &
  sink=$!
  wait_up "$SINK_PORT"
  declare -A results
  for round in $(seq 1 "$ROUNDS"); do
    for variant in "${VARIANTS[@]}"; do
      start_server "$variant"
      before=$(cpu_ns "$server") xbefore=$(export_ns "$server")
      taskset -c 0 "$MEGACONN" load "http://127.0.0.1:$PORT/" -c 64 -t 1 -d "$DURATION" -q \
        --json "$work/r.json" >/dev/null
      after=$(cpu_ns "$server") xafter=$(export_ns "$server")
      exported=$(metric megaconn_otel_spans_exported_total)
      dropped=$(metric megaconn_otel_spans_dropped_total)
      stop_server
      line=$(python3 -c "import json; r=json.load(open('$work/r.json')); print(r['requests'], round(r['rps']), round(($after-$before)/1e3/r['requests'],4), $exported, $dropped, round(($xafter-$xbefore)/1e3/r['requests'],4))")
      results[$variant]+="$line;"
      echo "round $round $variant: requests rps cpu_us/req exported dropped export_us/req = $line" >&2
    done
  done
  kill "$sink"; wait "$sink" 2>/dev/null || true; sink=""
  python3 - "${results[off]}" "${results[unsampled]}" "${results[sampled]}" <<'PY'
import statistics as st, sys
def parse(s):
    return [[float(x) for x in r.split()] for r in s.strip(';').split(';')]
off, uns, smp = (parse(a) for a in sys.argv[1:4])
col = lambda rows, i: [r[i] for r in rows]
m = lambda rows: st.median(col(rows, 2))
print("| tracing | req/s (median) | server CPU µs/request: median (min–max) | vs off: difference of medians | paired round-by-round |")
print("|---|---:|---:|---:|---:|")
for name, rows in (("off", off), ("on, unsampled", uns), ("on, sampled (ratio 1)", smp)):
    cpu = col(rows, 2)
    if rows is off:
        vs = pair = "—"
    else:
        vs = f"{100 * (m(rows) - m(off)) / m(off):+.1f}%"
        d = [100 * (a - b) / b for a, b in zip(cpu, col(off, 2))]
        pair = f"{min(d):+.1f}% to {max(d):+.1f}% (median {st.median(d):+.1f}%)"
    print(f"| {name} | {st.median(col(rows, 1)):.0f} | {st.median(cpu):.3f} ({min(cpu):.3f}–{max(cpu):.3f}) | {vs} | {pair} |")
per_span = [a - b for a, b in zip(col(smp, 2), col(off, 2))]
exported, dropped, reqs = sum(col(smp, 3)), sum(col(smp, 4)), sum(col(smp, 0))
print(f"\nA sampled span costs {m(smp) - m(off):.2f} µs of server CPU (difference of medians; "
      f"paired rounds {min(per_span):.2f}–{max(per_span):.2f} µs), of which the export thread "
      f"(batching, OTLP encoding, HTTP) {st.median(col(smp, 5)):.2f} µs. "
      f"Sampled runs: {reqs:.0f} requests, {exported:.0f} spans exported, {dropped:.0f} dropped. "
      f"{len(off)} rounds; server CPU from /proc/PID/task/*/schedstat (ns).")
PY
fi

if [[ " $STEPS " == *" callgrind "* ]]; then
  command -v valgrind >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
  }
  # Instructions of a run of N requests, user space, every thread.
  vg_ir() { # variant n
    local out="$work/cg-$1-$2"
    # shellcheck disable=SC2086  # ARGS are words
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
      "$MEGACONN" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off ${ARGS[$1]} \
      >"$out.log" 2>&1 &
    server=$!
    for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
    timeout 600 taskset -c 0 "$MEGACONN" load "http://127.0.0.1:$PORT/" -t 1 -q -c 64 -n "$2" >/dev/null 2>&1 || true
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
    # "summary: N" (or "totals: N") in the output file: Ir over all threads.
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
  }
  declare -A ir
  for variant in off unsampled; do
    a=$(vg_ir "$variant" "$VG_N1")
    b=$(vg_ir "$variant" "$VG_N2")
    ir[$variant]=$(python3 -c "print(($b - $a) / ($VG_N2 - $VG_N1))")
    echo "callgrind $variant: $a Ir at $VG_N1 requests, $b at $VG_N2" >&2
  done
  python3 - "${ir[off]}" "${ir[unsampled]}" <<'PY'
import sys
off, uns = float(sys.argv[1]), float(sys.argv[2])
print("\n| tracing | user-space instructions per request (callgrind) |")
print("|---|---:|")
print(f"| off | {off:.0f} |")
print(f"| on, unsampled | {uns:.0f} |")
print(f"\nUnsampled over off: {uns - off:+.0f} instructions per request ({100 * (uns - off) / off:+.2f}% of megaconn's user-space instructions; the kernel's share of a request, about three quarters of its CPU per bench/PROFILE.md, is the same for both).")
PY
fi
