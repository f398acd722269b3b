#!/usr/bin/env bash
# bench/openloop-trace.sh — where an open-loop request's latency goes, per
# server: the client's send, the server's wake-up and queue, its own service
# time, the way back (issue 15, the 20,000 req/s p99; CPU-PER-REQUEST.md round 10).
#
# What it does: $ROUNDS interleaved rounds (order rotated each round, fresh
# server process, 1 s warm-up) of each entry in $SERVERS, started as
# bench/throughput.sh starts them (pinned to core $SERVER_CPU, `megaconn load
# -t 1` on $LOAD_CPU). An entry is a server name, optionally with a tag:
# NAME+pre runs closed loops first (PRE below), any other tag (nginx+b) is the
# same server under another label (two labels of one server in one run show
# how far two medians of the same thing fall apart). Per entry and round:
#   1. a plain open-loop run (`--rate $RATE -c $CONNS -d $DURATION`, no
#      tracing): the client-observed p50/p99/p99.9 as throughput.sh measures
#      it, the steal time of all cores over it (/proc/stat), and the
#      run-queue delay of each server thread (/proc/TID/schedstat: time it was
#      runnable while something else held its core) over the run, and of the
#      client until 0.3 s before it ends;
#   2. (TRACE=1) the same run under `perf record -a` with the tracepoints of
#      recvfrom, sendto, writev and epoll_wait/epoll_pwait (enter and exit);
#      1 s into it, the client's and the server's socket descriptors are
#      matched through a copy of /proc/net/tcp (same TCP port).
#      bench/openloop-trace.py then pairs, per connection, the client's sendto
#      (t0), the server's recvfrom that returns the request (t1), the server's
#      send of the response (t2) and the client's recvfrom that returns it
#      (t3), and prints percentiles of: the server noticing (t0 → its
#      epoll_wait's return), the queue in its batch (→ t1), its own service
#      time (t1 → t2), the way back (t2 → t3), t3 − t0; the server's wake-up
#      latency (the client's first sendto after the server went to sleep in
#      epoll_wait → that epoll_wait's return); events per epoll_wait return,
#      empty returns and their timeouts;
#   3. (TRACE=1) the server's threads (/proc/PID/task/*/comm) and their
#      voluntary/involuntary context switches before and after the traced run.
# Output: bench/out/openloop-trace-<stamp>/ (per run: load JSON, trace summary
# JSON, perf data removed after analysis unless KEEP_PERF=1) and summary.md
# (TRACE=1) or plain.md (TRACE=0).
#
# Bounded: ROUNDS × entries × (2 × DURATION + ~6 s, + PRE's runs for +pre); it stops by itself, and a
# trap stops perf, the load and the server on any exit.
#
# Needs: root, perf (linux-perf), python3, jq; the binaries bench/lib.sh uses
# (BENCH_SKIP_BUILD=1 MEGACONN=/path to skip building megaconn).
# Env: SERVERS ("megaconn nginx"), ROUNDS (5), DURATION (3s), RATE (20000),
#   CONNS (64), PORT (first free from 38080), KEEP_PERF (0),
#   PRE ("64 512"): for a SERVERS entry NAME+pre (e.g. "megaconn megaconn+pre"),
#   closed-loop runs of PRE_DURATION (3s) with that many connections on the
#   same server process before the plain run, as throughput.sh runs its c64
#   and c512 scenarios before the open loop),
#   TRACE (1; 0: the plain runs only, summary in plain.md),
#   QUIET_WAIT_EACH (3: longest wait for the machine to go quiet before each run).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVERS="${SERVERS:-megaconn nginx}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-3s}"
RATE="${RATE:-20000}"
CONNS="${CONNS:-64}"
PORT="${PORT:-$(free_port 38080)}"
URL="http://127.0.0.1:$PORT/"
PRE="${PRE:-64 512}"
PRE_DURATION="${PRE_DURATION:-3s}"
TRACE="${TRACE:-1}"
EVENTS="syscalls:sys_enter_recvfrom,syscalls:sys_exit_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_exit_sendto,syscalls:sys_enter_writev,syscalls:sys_exit_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_exit_epoll_pwait"

PERF_PID=""
LOAD_PID=""
stop_tracing() {
  [[ -n "$LOAD_PID" ]] && { kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; }
  [[ -n "$PERF_PID" ]] && { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
  LOAD_PID="" PERF_PID=""
}
trap 'stop_tracing; bench_cleanup' EXIT
trap 'exit 130' INT TERM

bench_install_deps
bench_build
bench_tune
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/openloop-trace-$STAMP"
mkdir -p "$RES_DIR"
log "results in $RES_DIR"

# "pid fd inode" for every socket of the given PIDs (the analysis finds the
# ports in a copy of /proc/net/tcp taken at the same time).
socket_inodes() {
  local pid
  for pid in "$@"; do
    # One `ls` per process (not a readlink per descriptor): this runs on the
    # machine during the traced run.
    ls -l /proc/"$pid"/fd 2>/dev/null | awk -v pid="$pid" '$NF ~ /^socket:/ {
      ino = $NF; gsub(/[^0-9]/, "", ino); print pid, $(NF - 2), ino }'
  done
}

sched_of() { # pids -> "tid comm run_ns run_delay_ns timeslices" per thread
  local p t
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      printf '%s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" "$(cat "$t/schedstat")"
    done 2>/dev/null
  done
}

threads_of() { # pid -> "tid comm voluntary nonvoluntary" lines
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s %s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" \
      "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")" \
      "$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")"
  done
}

n_srv=$(wc -w <<<"$SERVERS")
read -r -a servers <<<"$SERVERS"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < n_srv; k++)); do
    entry="${servers[$(((k + round - 1) % n_srv))]}"
    server="${entry%%+*}"
    base="$RES_DIR/${entry//+/-}-r$round"
    pre=""
    [[ "$entry" == *+pre ]] && pre="$PRE"
    bench_wait_quiet "${QUIET_WAIT_EACH:-3}"
    server_start "$server" "$PORT" 1 || die "could not start $server"
    set_measure_pids "$server"
    pids="$SERVER_MEASURE_PIDS" # server_stop clears it; the analysis needs it after
    "$MEGACONN" load "$URL" -c 64 -t 1 -d 1s >/dev/null 2>&1 || true
    # Closed-loop runs first, as bench/throughput.sh does before its open loop.
    for c in $pre; do
      taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -c "$c" -d "$PRE_DURATION" -q >/dev/null 2>&1 || true
    done
    # 1. plain run, with the steal time of both cores over it (the host taking
    # the vCPUs away) and each thread's run-queue delay (/proc/TID/schedstat:
    # time runnable but not running, as other tasks held its core): the
    # server's threads over the whole run, the client's until just before it ends.
    st0="$(awk '/^cpu[0-9]/ { printf "%s ", $9 }' /proc/stat)"
    # shellcheck disable=SC2086  # a list of PIDs
    sched_of $pids >"$base-sched-before.txt"
    taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -c "$CONNS" --rate "$RATE" -d "$DURATION" \
      -q --json "$base-plain.json" >/dev/null 2>&1 &
    LOAD_PID=$!
    sleep "$(awk -v d="${DURATION%s}" 'BEGIN { print d - 0.3 }')"
    sched_of "$LOAD_PID" >"$base-sched-client.txt"
    wait "$LOAD_PID" || log "WARNING: plain load run failed"
    LOAD_PID=""
    # shellcheck disable=SC2086
    sched_of $pids >"$base-sched-after.txt"
    echo "$st0 $(awk '/^cpu[0-9]/ { printf "%s ", $9 }' /proc/stat)" >"$base-steal.txt"
    if [[ "$TRACE" != 1 ]]; then
      server_stop
      log "round $round $entry: plain p99 $(jq -r '.latency_us.p99' "$base-plain.json") us"
      continue
    fi
    # 2. traced run
    # shellcheck disable=SC2086  # a list of PIDs
    for p in $SERVER_MEASURE_PIDS; do threads_of "$p"; done >"$base-threads-before.txt"
    perf record -q -a -e "$EVENTS" --mmap-pages 8192 -o "$base.perf" >/dev/null 2>"$base.perf.err" &
    PERF_PID=$!
    sleep 1
    taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -c "$CONNS" --rate "$RATE" -d "$DURATION" \
      -q --json "$base-traced.json" >/dev/null 2>&1 &
    LOAD_PID=$!
    sleep 1
    # shellcheck disable=SC2086
    socket_inodes "$LOAD_PID" $SERVER_MEASURE_PIDS >"$base-sockets.txt"
    cp /proc/net/tcp "$base-tcp.txt"
    wait "$LOAD_PID" || log "WARNING: traced load run failed"
    LOAD_PID=""
    # shellcheck disable=SC2086
    for p in $SERVER_MEASURE_PIDS; do threads_of "$p"; done >"$base-threads-after.txt"
    kill -INT "$PERF_PID"
    wait "$PERF_PID" || true
    PERF_PID=""
    server_stop
    perf script -i "$base.perf" --ns -F comm,pid,tid,cpu,time,event,trace 2>/dev/null |
      python3 "$BENCH_DIR/openloop-trace.py" --server-pids "$pids" \
        --sockets "$base-sockets.txt" --tcp "$base-tcp.txt" --port "$PORT" \
        --server "$entry" --round "$round" >"$base-trace.json" ||
      log "WARNING: analysis failed for $server round $round"
    [[ "${KEEP_PERF:-0}" == 1 ]] || rm -f "$base.perf"
    log "round $round $entry: plain p99 $(jq -r '.latency_us.p99' "$base-plain.json") us, traced p99 $(jq -r '.latency_us.p99' "$base-traced.json") us; $(jq -r '.line' "$base-trace.json" 2>/dev/null)"
  done
done
if [[ "$TRACE" == 1 ]]; then
  python3 "$BENCH_DIR/openloop-trace.py" --summarize "$RES_DIR" | tee "$RES_DIR/summary.md"
else
  python3 "$BENCH_DIR/openloop-trace.py" --summarize-plain "$RES_DIR" | tee "$RES_DIR/plain.md"
fi
