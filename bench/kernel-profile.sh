#!/usr/bin/env bash
# bench/kernel-profile.sh — where a keep-alive HTTP/1.1 request's *kernel*
# time goes, server by server (issue 15, session 54): megaconn against the
# floor (bench/peers/floor.c) and nginx, per kernel symbol, per request.
#
# What it does, for each round, connection count and server (the servers
# interleaved, the order rotated each round): a fresh server on core
# $SERVER_CPU with one worker (bench/lib.sh server_start, as
# bench/throughput.sh starts them), `megaconn load -t 1 -c CONNS` on core
# $LOAD_CPU for $WARMUP (not counted), then three counted runs of $DURATION:
#   1. the profile: `perf record -e cpu-clock -c $PERIOD_NS -g
#      --kernel-callchains -p <server's serving threads>` across the run
#      (this VM exposes no hardware counters: the software clock samples the
#      server every $PERIOD_NS ns of its own CPU time, user or kernel,
#      softirqs it runs included; kernel call chains only, so that the
#      sampling costs every server about the same);
#   2. the CPU time, nothing attached: the serving threads' run time
#      (/proc/PID/task/*/schedstat, ns) and its utime/stime split
#      (/proc/PID/stat, ticks: this kernel splits by sampling at each tick,
#      250 Hz, so the split is an estimate and the sum is exact);
#   3. the counts: `perf stat` of the system calls it enters (tracepoints
#      syscalls:sys_enter_*), context switches and migrations, and the
#      machine's TCP counters (`nstat`: segments, pure ACKs, delayed ACKs;
#      both ends of the loopback connections, so a server's figure includes
#      what its client's kernel sent it).
# Every figure is divided by the requests the load generator completed in
# that run. bench/kernel-profile.py turns the profiles into tables: kernel
# time a request (each server's share of samples × run 2's CPU time a
# request, so the profiler's own cost cancels) by kernel symbol (self), by
# system call (inclusive) and
# by path (the server's own send, the loopback delivery to the client's
# socket it runs, the wake-ups, epoll), each server beside the floor.
#
# Two variants of the floor test what a server's own ways cost the kernel's
# part (bench/out/floor-preload.so, built here from the C below, preloaded):
#   floor+thread   the floor with a second, idle thread: a process of more
#                  than one thread shares its descriptor table, and the
#                  kernel then takes and drops a reference on the file at
#                  every recv and send (fdget/fput), which a lone thread skips;
#   floor+touchN   the floor touching (reading and writing) N KiB of its own
#                  memory, a line every 64 bytes, before each recv: a user
#                  space working set that competes with the kernel's for the
#                  core's caches.
#
# Needs: root, perf (linux-perf), gcc, the peers as bench/throughput.sh does.
# Env: SERVERS ("megaconn floor nginx"), CONNS ("64 512"), ROUNDS (2),
#   DURATION (4s), WARMUP (1s), PERIOD_NS (100000: a sample every 100 µs
#   of the server's CPU), SERVER_CPU (1), LOAD_CPU (0), MEGACONN (binary
#   under test; also the load generator), MEGACONN_B (a second build,
#   served as "megaconn-b"), AUTOGROUP_NICE (below), PORT (first free from 38380), OUT
#   (bench/out/kernel-profile-<stamp>), BENCH_SKIP_BUILD=1.
# Output: $OUT/<server>-<conns>-r<round>.{perf.data,json,clean.json,cpu,
#   count.json,stat,nstat},
#   and the tables (bench/kernel-profile.py $OUT) on stdout.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_defaults SERVERS="megaconn floor nginx" CONNS="64 512" ROUNDS=2 DURATION=4s \
  WARMUP=1s PERIOD_NS=100000
PORT="${PORT:-$(free_port 38380)}"
OUT="${OUT:-$OUT_DIR/kernel-profile-$(date -u +%Y%m%dT%H%M%SZ)}"
URL="http://127.0.0.1:$PORT/"
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
mkdir -p "$OUT"
# nstat's own history file (its default is shared by every root shell).
export NSTAT_HISTORY="$OUT/.nstat-history"
echo "$PERIOD_NS" >"$OUT/period_ns"

bench_autogroup_nice
trap 'bench_cleanup; autogroup_back' EXIT
trap 'exit 130' INT TERM
bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_LOAD_OK" == 1 ]] || die "megaconn load is not available"

# perf reads the tracepoints from tracefs; mounted if it is not.
[[ -d /sys/kernel/tracing/events ]] || mount -t tracefs nodev /sys/kernel/tracing ||
  log "WARNING: no tracefs: the system calls are not counted"
# The system calls counted (those any of the servers makes while serving).
SYSCALLS="recvfrom sendto read write readv writev epoll_wait epoll_pwait epoll_pwait2 epoll_ctl futex accept4 close sched_yield clock_nanosleep"
stat_events() {
  local s ev="context-switches,cpu-migrations,page-faults"
  for s in $SYSCALLS; do
    [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$s || -d /sys/kernel/debug/tracing/events/syscalls/sys_enter_$s ]] &&
      ev+=",syscalls:sys_enter_$s"
  done
  echo "$ev"
}
EVENTS="$(stat_events)"

# Run time (ns, schedstat) and utime, stime (ticks) summed over PIDs' threads.
cpu_of() {
  local p ns=0 u=0 s=0 a b
  for p in "$@"; do
    a="$(awk '{ s += $1 } END { printf "%.0f", s }' /proc/"$p"/task/*/schedstat)"
    ns=$((ns + a))
    read -r a b < <(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12, $13 }')
    u=$((u + a))
    s=$((s + b))
  done
  echo "$ns $u $s"
}

# The floor's preloaded variants (see the top).
PRELOAD="$OUT_DIR/floor-preload.so"
build_preload() {
  [[ -x "$PRELOAD" && "$PRELOAD" -nt "${BASH_SOURCE[0]}" ]] && return 0
  mkdir -p "$OUT_DIR"
  gcc -O2 -shared -fPIC -o "$PRELOAD" -x c - -ldl -lpthread <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static volatile unsigned char *mem;
static size_t bytes;
static void *idle(void *arg) { for (;;) pause(); return arg; }
__attribute__((constructor)) static void init(void) {
  const char *t = getenv("FLOOR_THREAD"), *k = getenv("FLOOR_TOUCH_KIB");
  pthread_t th;
  if (t && *t == '1') pthread_create(&th, NULL, idle, NULL);
  if (k && (bytes = strtoul(k, NULL, 10) * 1024)) {
    mem = aligned_alloc(64, bytes);
    memset((void *)mem, 0, bytes);
  }
}
ssize_t recv(int fd, void *buf, size_t n, int flags) {
  static ssize_t (*real)(int, void *, size_t, int);
  if (!real) real = (ssize_t (*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
  for (size_t i = 0; i < bytes; i += 64) mem[i]++;
  return real(fd, buf, n, flags);
}
EOF
}

# Starts server $1 on $PORT (bench/lib.sh server_start, or a variant of the
# floor).
start() {
  local name=$1 env=()
  case "$name" in
    floor+thread) env=(FLOOR_THREAD=1) ;;
    floor+touch*) env=("FLOOR_TOUCH_KIB=${name#floor+touch}") ;;
    *) server_start "$name" "$PORT" 1; return ;;
  esac
  build_preload
  [[ -x "$FLOOR" ]] || bench_build_floor
  env "${env[@]}" LD_PRELOAD="$PRELOAD" taskset -c "$SERVER_CPU" "$FLOOR" 127.0.0.1 "$PORT" \
    >"$OUT/$name.log" 2>&1 &
  SERVER_PID=$!
  SERVER_NAME=$name
  SERVER_MEASURE_PIDS=$SERVER_PID
  wait_http "$PORT" 20
}

# The load: $1 connections, $2 duration, $3 the JSON report (or "").
load() {
  local json=()
  [[ -n "$3" ]] && json=(--json "$3")
  taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -q -c "$1" -d "$2" "${json[@]}" >/dev/null 2>&1
}

one() { # server conns round
  local server=$1 conns=$2 round=$3 base pids perf_pid t0 t1
  base="$OUT/$server-$conns-r$round"
  start "$server" || die "could not start $server"
  # The threads that serve: nginx's worker (not its master), else the process.
  pids="$(echo "$SERVER_MEASURE_PIDS" | xargs | tr ' ' ',')"
  load "$conns" "$WARMUP" ""
  # 1. the profile.
  perf record -q -e cpu-clock -c "$PERIOD_NS" -g --kernel-callchains -p "$pids" \
    -o "$base.perf.data" 2>"$base.perf.log" &
  perf_pid=$!
  sleep 0.2 # perf attaches
  load "$conns" "$DURATION" "$base.json"
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  # 2. the CPU time, nothing attached.
  # shellcheck disable=SC2086  # a list of PIDs
  t0="$(cpu_of ${pids//,/ })"
  load "$conns" "$DURATION" "$base.clean.json"
  # shellcheck disable=SC2086
  t1="$(cpu_of ${pids//,/ })"
  echo "$t0 $t1 $(getconf CLK_TCK)" >"$base.cpu"
  # 3. the counts.
  perf stat -x, -e "$EVENTS" -p "$pids" -o "$base.stat" &
  perf_pid=$!
  sleep 0.2
  nstat -n >/dev/null # the history: the next call prints what changed since
  load "$conns" "$DURATION" "$base.count.json"
  nstat -z >"$base.nstat"
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  server_stop
  log "$server $conns conns round $round: $(jq -r .requests "$base.json") requests profiled, $(jq -r .requests "$base.clean.json") timed"
}

read -r -a servers <<<"$SERVERS"
n=${#servers[@]}
for ((round = 1; round <= ROUNDS; round++)); do
  for conns in $CONNS; do
    for ((k = 0; k < n; k++)); do
      one "${servers[$(((k + round - 1) % n))]}" "$conns" "$round"
    done
  done
done
python3 "$BENCH_DIR/kernel-profile.py" "$OUT"
