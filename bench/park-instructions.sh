#!/usr/bin/env bash
# bench/park-instructions.sh — the SERVER's user-space instructions per
# heartbeat on a parked HTTP/1.1 connection, counted by callgrind (issue 15):
# independent of the machine's load, so a before/after figure that a busy
# shared machine cannot blur. (bench/hold-instructions.sh counts the client.)
#
# What it measures: `megaconn serve --workers 1 --park-after $PARK_AFTER`
# under valgrind's callgrind (core $SERVER_CPU), and a native `megaconn hold
# -c N --interval INTERVAL` (core $LOAD_CPU) that keeps N keep-alive
# connections and sends a heartbeat GET / on each every INTERVAL. With
# INTERVAL well above PARK_AFTER every heartbeat wakes a cold parked
# connection: read, answered and re-parked (conn/park.rs, conn/woken.rs).
# Two runs, holding SHORT s and LONG s after the ramp; start-up, ramp, the
# opening requests and the closes are the same in both, so
#   instructions per heartbeat = (Ir(LONG) − Ir(SHORT)) / (heartbeats(LONG) − heartbeats(SHORT))
# with the heartbeats from hold's own --json report. The parking lot's
# once-a-second sweep and the runtime's idle turns fall into the difference
# too, spread over the heartbeats (a few instructions each at N=3000).
# Kernel time is not counted (callgrind sees user space only): the step
# STRACE=1 adds `strace -c -f` of a native server over the same workload,
# syscalls per heartbeat.
#
# With MEGACONN_B=/path/to/other/megaconn that build's server is counted
# too, in the same run (for before/after figures).
#
# WINDOW=S counts a steady window instead (no ramp, no opening requests, no
# hang-ups at the end, whose count differs from run to run and moved the
# two-run difference by ~5 %): one run per binary and round (ROUNDS,
# interleaved), callgrind started with `--instr-atstart=no` and switched on
# (`callgrind_control -i on`) SETTLE_S s after hold starts, off S s later;
#   instructions per heartbeat = Ir / responses in the window
# (callgrind's own count of `encode_head` calls: one response a heartbeat),
# beside the lot's turns (tokio's `epoll_wait` calls, each a turn of the
# lot here) and heartbeats per turn. The turns vary from run to run with
# the machine's timing (3–7 heartbeats a turn at the defaults) and each
# costs ~3,000 instructions of tokio's and the lot's, so compare rows at
# like heartbeats per turn, or solve two rows of one binary for the cost per
# response and per turn (bench/MILLION.md, session 50).
#
# Needs: valgrind and strace (installed if missing), jq, curl, a built megaconn (release).
# Env: N (1000), INTERVAL (3s), PARK_AFTER (500ms), SHORT (5), LONG (20),
#   STRACE (1), STRACE_SECS (10), PORT, BENCH_SKIP_BUILD=1, MEGACONN;
#   WINDOW (unset: the two-run difference), SETTLE_S (8), ROUNDS (2).
# Output: the table on stdout; callgrind files in bench/out/park-instructions-<stamp>/
# (`callgrind_annotate --inclusive=yes FILE` shows where the instructions go).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-1000}"
INTERVAL="${INTERVAL:-3s}"
PARK_AFTER="${PARK_AFTER:-500ms}"
SHORT="${SHORT:-5}"
LONG="${LONG:-20}"
STRACE="${STRACE:-1}"
STRACE_SECS="${STRACE_SECS:-10}"
MEGACONN_B="${MEGACONN_B:-}"
WINDOW="${WINDOW:-}"
SETTLE_S="${SETTLE_S:-8}"
ROUNDS="${ROUNDS:-2}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_install_deps
for c in valgrind strace; do
  command -v "$c" >/dev/null 2>&1 || {
    log "installing: $c"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$c" >/dev/null
  }
done
bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 && "$MEGACONN_SERVE_OK" == 1 ]] || die "megaconn serve/hold are not available"
PORT="${PORT:-$(free_port 38900)}"
URL="http://127.0.0.1:$PORT/"
RES_DIR="$OUT_DIR/park-instructions-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RES_DIR"
log "results in $RES_DIR"

# held NAME BINARY SECS [WRAPPER...]: serve under WRAPPER, hold N connections
# SECS s after the ramp, then stop the server (SIGTERM: a clean exit writes
# callgrind's file). Leaves hold's report in $RES_DIR/NAME-SECS.json.
held() {
  local name=$1 bin=$2 secs=$3 base="$RES_DIR/$1-$3" i
  shift 3
  taskset -c "$SERVER_CPU" "$@" "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off \
    --park-after "$PARK_AFTER" >"$base.serve.log" 2>&1 &
  # shellcheck disable=SC2034  # SERVER_NAME: read by lib.sh's server_stop
  SERVER_PID=$! SERVER_NAME="$name"
  wait_http "$PORT" 120 || die "$name did not answer (see $base.serve.log)"
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$URL" -c "$N" --ramp 5000 --interval "$INTERVAL" \
    --timeout 30s -d "${secs}s" -q --json "$base.json" >"$base.log" 2>&1 \
    || die "hold failed: $base.log"
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

count() { # NAME LABEL BINARY -> one table row
  local name=$1 label=$2 bin=$3 d ir=() hb=() bad=0 base
  for d in "$SHORT" "$LONG"; do
    base="$RES_DIR/$name-$d"
    held "$name" "$bin" "$d" valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$base.callgrind"
    ir+=("$(awk '/^(summary|totals):/ { print $2; exit }' "$base.callgrind")")
    hb+=("$(jq .heartbeats_ok "$base.json")")
    bad=$((bad + $(jq '.heartbeat_errors + .drops' "$base.json")))
  done
  awk -v n="$label" -v i0="${ir[0]}" -v i1="${ir[1]}" -v h0="${hb[0]}" -v h1="${hb[1]}" -v bad="$bad" \
    'BEGIN { printf "| %s | %d | %d | **%.0f** | %d |\n", n, h1 - h0, i1 - i0, (i1 - i0) / (h1 - h0), bad }'
}

# syscalls NAME BINARY: strace -c -f of a native server for STRACE_SECS s in
# the middle of a hold; per heartbeat = calls / sendto calls (one response
# per heartbeat).
syscalls() {
  local name=$1 bin=$2 base="$RES_DIR/$1-strace" hp
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off \
    --park-after "$PARK_AFTER" >"$base.serve.log" 2>&1 &
  # shellcheck disable=SC2034
  SERVER_PID=$! SERVER_NAME="$name"
  wait_http "$PORT" 30 || die "$name did not answer (see $base.serve.log)"
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$URL" -c "$N" --ramp 5000 --interval "$INTERVAL" \
    --timeout 30s -d "$((STRACE_SECS + 6))s" -q >"$base.hold.log" 2>&1 &
  hp=$!
  sleep "$((N / 5000 + 4))"
  timeout -s INT "$STRACE_SECS" strace -c -f -p "$SERVER_PID" -o "$base.txt" >/dev/null 2>&1 || true
  wait "$hp" 2>/dev/null || true
  server_stop
  echo "#### $name: syscalls per heartbeat (strace -c -f, ${STRACE_SECS} s; per heartbeat = calls / sendto calls)"
  echo
  echo "| syscall | calls | per heartbeat | errors |"
  echo "|---|---:|---:|---:|"
  awk -v n="$(awk '$NF == "sendto" { print $4 }' "$base.txt")" '$1 ~ /^[0-9.]+$/ && NF >= 5 && n > 0 {
      name = $NF; calls = $4; err = (NF == 6) ? $5 : 0
      printf "| %s | %d | %.3f | %d |\n", name, calls, calls / n, err }' "$base.txt" | sort -t'|' -k4 -nr
  echo
}

# calls FILE FUNCTION: callgrind's count of calls of FUNCTION (a name ending
# the `file:function` of `callgrind_annotate`'s call lines), summed over callers.
calls() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
    | awk -v f="$2" 'index($0, "=> ") && index($0, f " (") {
        s = $0; sub(/.*\(/, "", s); sub(/x\).*/, "", s); gsub(",", "", s); n += s } END { print n + 0 }'
}

# windowed NAME LABEL BINARY ROUND: one steady window (WINDOW), one table row.
windowed() {
  local name=$1 label=$2 bin=$3 round=$4 base="$RES_DIR/$1-r$4" hp ir hb ew
  taskset -c "$SERVER_CPU" valgrind --tool=callgrind --dump-instr=no --instr-atstart=no \
    --callgrind-out-file="$base.callgrind" "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 \
    --admin off --park-after "$PARK_AFTER" >"$base.serve.log" 2>&1 &
  # shellcheck disable=SC2034
  SERVER_PID=$! SERVER_NAME="$name"
  wait_http "$PORT" 120 || die "$name did not answer (see $base.serve.log)"
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$URL" -c "$N" --ramp 5000 --interval "$INTERVAL" \
    --timeout 30s -d "$((SETTLE_S + WINDOW + 6))s" -q --json "$base.json" >"$base.log" 2>&1 &
  hp=$!
  sleep "$SETTLE_S"
  callgrind_control -i on "$SERVER_PID" >/dev/null
  sleep "$WINDOW"
  callgrind_control -i off "$SERVER_PID" >/dev/null
  wait "$hp" || die "hold failed: $base.log"
  server_stop
  ir=$(awk '/^totals:/ { print $2; exit }' "$base.callgrind")
  hb=$(calls "$base.callgrind" "encode::encode_head")
  ew=$(calls "$base.callgrind" "epoll_wait")
  awk -v n="$label" -v r="$round" -v ir="$ir" -v hb="$hb" -v ew="$ew" 'BEGIN {
    t = ew / 2; printf "| %s | %d | %d | %d | %d | %.1f | **%.0f** |\n", n, r, hb, ir, t, (t > 0 ? hb / t : 0), ir / hb }'
}

if [[ -n "$WINDOW" ]]; then
  command -v callgrind_control >/dev/null || die "callgrind_control (valgrind's) is missing"
  {
    echo "### Server: user-space instructions per heartbeat on a parked HTTP/1.1 connection (callgrind over a ${WINDOW} s steady window; $N connections, a heartbeat GET / on each every $INTERVAL, --park-after $PARK_AFTER)"
    echo
    echo "| server | round | heartbeats (responses) | instructions | lot turns (epoll_wait / 2) | heartbeats a turn | instructions/heartbeat |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
      windowed megaconn "megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo "$MEGACONN")" "$MEGACONN" "$r"
      [[ -n "$MEGACONN_B" ]] && windowed megaconn-b "megaconn-b $(cat "$MEGACONN_B.version" 2>/dev/null || echo "$MEGACONN_B")" "$MEGACONN_B" "$r"
    done
    echo
    echo "Command: \`WINDOW=$WINDOW SETTLE_S=$SETTLE_S ROUNDS=$ROUNDS N=$N INTERVAL=$INTERVAL PARK_AFTER=$PARK_AFTER${MEGACONN_B:+ MEGACONN_B=$MEGACONN_B} bash bench/park-instructions.sh\`; hold native, one worker."
  } | tee "$RES_DIR/table.md"
  exit 0
fi

{
  echo "### Server: user-space instructions per heartbeat on a parked HTTP/1.1 connection (callgrind; $N connections, a heartbeat GET / on each every $INTERVAL, --park-after $PARK_AFTER, ${SHORT} s vs ${LONG} s held)"
  echo
  echo "| server | heartbeats (difference) | instructions (difference) | instructions/heartbeat | errors + drops |"
  echo "|---|---:|---:|---:|---:|"
  count megaconn "megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo "$MEGACONN")" "$MEGACONN"
  [[ -n "$MEGACONN_B" ]] && count megaconn-b "megaconn-b $(cat "$MEGACONN_B.version" 2>/dev/null || echo "$MEGACONN_B")" "$MEGACONN_B"
  echo
  if [[ "$STRACE" == 1 ]]; then
    syscalls megaconn "$MEGACONN"
    [[ -n "$MEGACONN_B" ]] && syscalls megaconn-b "$MEGACONN_B"
  fi
  echo "Command: \`N=$N INTERVAL=$INTERVAL PARK_AFTER=$PARK_AFTER SHORT=$SHORT LONG=$LONG${MEGACONN_B:+ MEGACONN_B=$MEGACONN_B} bash bench/park-instructions.sh\`; hold native, one worker."
} | tee "$RES_DIR/table.md"
