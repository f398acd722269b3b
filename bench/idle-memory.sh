#!/usr/bin/env bash
# bench/idle-memory.sh — memory per idle keep-alive connection: megaconn vs Go
# net/http, nginx, axum.
#
# What it measures, for each server (one process, one worker/thread, pinned to
# core $SERVER_CPU):
#   1. baseline: server RSS (VmRSS; nginx: the worker) after one request, and
#      kernel memory (Slab from /proc/meminfo + TCP "mem" pages from
#      /proc/net/sockstat × page size);
#   2. idle: `megaconn hold` opens $N keep-alive connections from
#      $SOURCE (each is served one GET / first, then stays idle); once the
#      server side shows $N established sockets (`ss`), RSS and kernel memory
#      again -> server userspace bytes per connection, kernel bytes per
#      connection (both ends of each loopback connection: client and server
#      sockets are in this one kernel);
#   3. after closing them all: RSS again (does the memory come back?);
#   4. 4 KiB: on a fresh server process, the same with `hold -m POST --body @4KiB-file` on /echo, so every
#      connection has carried a 4 KiB request body -> RSS per connection again
#      (were the buffers given back once the connection went idle?);
#   5. after closing those: RSS again.
#
# Needs: root, golang-go nginx-light jq (lib.sh installs them when missing),
# cargo; `megaconn hold` (run in several processes because of the 20,000 open
# files cap per process: it picks the count itself; HOLD_PROCESSES overrides).
# Sets sysctls: net.ipv4.ip_local_port_range="1024 65535",
#   net.core.somaxconn=65535, net.ipv4.tcp_max_syn_backlog=65535; ulimit -n 20000.
#
# Env: N (15000), RAMP (5000 connections/s), SOURCE (127.0.0.2-127.0.0.9),
#   PORT (first free from 38090), SERVERS ("megaconn go nginx axum"), OPEN_TIMEOUT (120 s),
#   SETTLE (3 s), HOLD_PROCESSES (unset: hold decides),
#   MEGACONN_SERVE_ARGS (extra `megaconn serve` arguments; default none),
#   MEGACONN_B (another megaconn binary, e.g. an older build, measured as
#   the server "megaconn-b" when SERVERS names it: before/after in one run).
# Output: raw JSON in bench/out/idle-memory-<stamp>/ (results.jsonl, hold JSON)
#   and markdown tables on stdout (also table.md there).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
RAMP="${RAMP:-5000}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.9}"
PORT="${PORT:-$(free_port 38090)}"
SERVERS="${SERVERS:-megaconn go nginx axum}"
OPEN_TIMEOUT="${OPEN_TIMEOUT:-120}"
SETTLE="${SETTLE:-3}"
HOLD_PROCESSES="${HOLD_PROCESSES:-}"
# megaconn's default idle timeout (60 s) is far longer than the few seconds
# between opening the connections and measuring; pass e.g.
# MEGACONN_SERVE_ARGS="--idle-timeout 300s" to match nginx's keepalive_timeout.
MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:-}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available ($MEGACONN hold --help failed)"

read -r -a servers <<<"$SERVERS"
if [[ "$MEGACONN_SERVE_OK" != 1 ]]; then
  log "megaconn serve is not available: measuring the peers only"
  tmp=()
  for s in "${servers[@]}"; do [[ "$s" == megaconn ]] || tmp+=("$s"); done
  servers=("${tmp[@]}")
fi

# The 4 KiB phase needs `hold -m METHOD --body @FILE`.
HOLD_BODY_OK=0
if "$MEGACONN" hold --help 2>/dev/null | grep -q -- '--body'; then
  HOLD_BODY_OK=1
else
  log "megaconn hold has no --body option yet: the 4 KiB phase is skipped"
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/idle-memory-$STAMP"
mkdir -p "$RES_DIR"
RESULTS="$RES_DIR/results.jsonl"
: >"$RESULTS"
BODY_FILE="$RES_DIR/body-4k.bin"
head -c 4096 /dev/zero | tr '\0' 'x' >"$BODY_FILE"
# hold keeps its connections this long at most; we stop it once measured.
HOLD_DURATION="$((N / RAMP + OPEN_TIMEOUT + 60))s"
log "results in $RES_DIR"

# "socket kernel bytes" = socket slab caches + TCP buffer pages;
# "Slab total" (+ TCP pages) is the coarse figure, noisy on a busy machine.
kernel_bytes() { echo $(($(kernel_slab_bytes) + $(kernel_tcp_mem_bytes))); }
sock_kernel_bytes() { echo $(($(kernel_sock_slab_bytes) + $(kernel_tcp_mem_bytes))); }

wait_established() { # target timeout_secs hold_pid -> 0 when reached
  local target=$1 secs=$2 hold_pid=$3 i c=0
  for ((i = 0; i < secs * 4; i++)); do
    c="$(established_count "$PORT")"
    ((c >= target)) && return 0
    if ! kill -0 "$hold_pid" 2>/dev/null; then
      log "hold exited with $c connections established"
      return 1
    fi
    ((i % 20 == 0)) && log "  $c / $target established"
    sleep 0.25
  done
  log "timeout: $c / $target established after ${secs}s"
  return 1
}

wait_drained() { # bounded wait until the server read every request and sent every reply
  local i q=0
  for ((i = 0; i < 120; i++)); do
    q="$(server_queued "$PORT")"
    ((q == 0)) && return 0
    sleep 0.25
  done
  log "WARNING: $q bytes still queued on the server's sockets"
}

wait_closed() { # bounded wait until the server has no established connection
  local i
  for ((i = 0; i < 120; i++)); do
    (($(established_count "$PORT") == 0)) && return 0
    sleep 0.25
  done
  log "WARNING: $(established_count "$PORT") connections still established"
}

stop_hold() { # pid: SIGTERM to hold (it stops its own processes and writes its
  # JSON), bounded wait; then SIGTERM/SIGKILL to whatever of it is left.
  local pid=$1 kids i
  kids="$(pid_descendants "$pid" | tr '\n' ' ')"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kids="$kids $(pid_descendants "$pid" | tr '\n' ' ')"
  # shellcheck disable=SC2086  # a list of PIDs
  kill_ours TERM hold "$pid" $kids
  sleep 0.5
  # shellcheck disable=SC2086
  kill_ours KILL hold "$pid" $kids
  wait "$pid" 2>/dev/null || true
  BENCH_BG_PIDS=()
}

# One hold phase: open N connections, measure, close them, measure.
# $1 server $2 phase name $3 url; rest: extra hold arguments.
# Writes a JSON object with the measurements to $RES_DIR/<server>-<phase>.json
# (run in this shell, not in $(...), so the EXIT trap can stop hold).
hold_phase() {
  local server=$1 phase=$2 url=$3
  shift 3
  local base="$RES_DIR/$server-$phase" hold_pid ok=true
  local rss0 k0 rss1 k1 est rss2 k2 t0 open_secs s0 s1 i0 i1
  local -a extra=()
  [[ -n "$HOLD_PROCESSES" ]] && extra+=(--processes "$HOLD_PROCESSES")
  rss0="$(server_rss_bytes)"
  k0="$(kernel_bytes)"
  s0="$(sock_kernel_bytes)"
  i0="$(tcp_inuse)"
  t0=$SECONDS
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$url" -c "$N" --ramp "$RAMP" --source "$SOURCE" \
    --interval 3600s --duration "$HOLD_DURATION" --json "$base.hold.json" "${extra[@]}" "$@" \
    >"$base.hold.log" 2>&1 &
  hold_pid=$!
  BENCH_BG_PIDS=("$hold_pid")
  wait_established "$N" "$OPEN_TIMEOUT" "$hold_pid" || ok=false
  open_secs=$((SECONDS - t0))
  wait_drained
  sleep "$SETTLE"
  est="$(established_count "$PORT")"
  rss1="$(server_rss_bytes)"
  k1="$(kernel_bytes)"
  s1="$(sock_kernel_bytes)"
  i1="$(tcp_inuse)"
  log "  $server $phase: $est open, RSS $((rss1 / 1024)) KiB (was $((rss0 / 1024)) KiB)"
  stop_hold "$hold_pid"
  wait_closed
  sleep "$SETTLE"
  rss2="$(server_rss_bytes)"
  k2="$(kernel_bytes)"
  local hold_json=null
  [[ -s "$base.hold.json" ]] && hold_json="$(jq -c . "$base.hold.json" 2>/dev/null || echo null)"
  jq -n --arg server "$server" --arg phase "$phase" --argjson ok "$ok" --argjson n "$N" \
    --argjson est "$est" --argjson open_secs "$open_secs" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rss2 "$rss2" \
    --argjson k0 "$k0" --argjson k1 "$k1" --argjson k2 "$k2" --argjson hold "$hold_json" \
    --argjson s0 "$s0" --argjson s1 "$s1" --argjson i0 "$i0" --argjson i1 "$i1" \
    '{server: $server, phase: $phase, all_open: $ok, target: $n, established: $est,
      open_secs: $open_secs,
      rss_before: $rss0, rss_open: $rss1, rss_after_close: $rss2,
      kernel_before: $k0, kernel_open: $k1, kernel_after_close: $k2,
      rss_per_conn: (if $est > 0 then ($rss1 - $rss0) / $est else null end),
      kernel_per_conn: (if $est > 0 then ($k1 - $k0) / $est else null end),
      sock_kernel_before: $s0, sock_kernel_open: $s1,
      sock_kernel_per_conn: (if $est > 0 then ($s1 - $s0) / $est else null end),
      tcp_inuse_before: $i0, tcp_inuse_open: $i1,
      kernel_disturbed: ($est > 0 and ((($i1 - $i0) - 2 * $est) | fabs) > 0.05 * 2 * $est),
      hold: $hold}' >"$base.json"
}

t_start=$SECONDS
bench_wait_quiet "${QUIET_WAIT:-30}"
fresh_server() { # start $1 fresh, serve one request, let it settle
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  server_start "$1" "$PORT" 1 || die "could not start $1"
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/"
  sleep 1
}

for server in "${servers[@]}"; do
  log "== $server"
  # Each phase on a fresh server process, so the second does not reuse memory
  # the first one's connections left behind.
  fresh_server "$server"
  hold_phase "$server" idle "http://127.0.0.1:$PORT/"
  server_stop
  if [[ "$HOLD_BODY_OK" == 1 ]]; then
    fresh_server "$server"
    hold_phase "$server" post4k "http://127.0.0.1:$PORT/echo" -m POST --body "@$BODY_FILE"
    server_stop
  else
    echo '{"skipped": true, "all_open": true}' >"$RES_DIR/$server-post4k.json"
  fi
  jq -c -n --arg server "$server" \
    --slurpfile idle "$RES_DIR/$server-idle.json" --slurpfile post "$RES_DIR/$server-post4k.json" \
    '{server: $server, baseline_rss: $idle[0].rss_before, idle: $idle[0], post4k: $post[0]}' >>"$RESULTS"
done
elapsed=$((SECONDS - t_start))

{
  echo "### Idle connections: memory ($N keep-alive connections, one process, one worker, server on core $SERVER_CPU)"
  echo
  echo "| server | baseline RSS | RSS with $N idle | **bytes/conn (userspace)** | kernel socket bytes/conn (both ends) | RSS after close | RSS with $N idle after 4 KiB POST | bytes/conn after 4 KiB | RSS after close | userspace vs megaconn |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r -s '
    def mib: if . == null then "—" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
    def f0: if . == null then "—" else (. | round | tostring) end;
    def open: if .skipped then "" elif .all_open then "" else " (only \(.established) open)" end;
    def kern: if .sock_kernel_per_conn == null then "—"
      else (.sock_kernel_per_conn | round | tostring)
        + (if .kernel_disturbed then " (disturbed: other programs changed the TCP socket count by \((.tcp_inuse_open - .tcp_inuse_before) - 2 * .established))" else "" end) end;
    (map(select(.server == "megaconn")) | .[0].idle.rss_per_conn) as $m
    | .[] | "| \(.server) | \(.baseline_rss | mib) | \(.idle.rss_open | mib)\(.idle | open) | \(.idle.rss_per_conn | f0) | \(.idle | kern) | \(.idle.rss_after_close | mib) | \(.post4k.rss_open | mib)\(.post4k | open) | \(.post4k.rss_per_conn | f0) | \(.post4k.rss_after_close | mib) | "
      + (if $m == null or $m == 0 or .idle.rss_per_conn == null then "—" else ((.idle.rss_per_conn / $m * 100 | round) / 100 | tostring) + "×" end) + " |"' "$RESULTS"
  echo
  [[ "$HOLD_BODY_OK" == 1 ]] || echo "The 4 KiB columns are empty: \`megaconn hold\` has no \`-m\`/\`--body\` option yet, so that phase was skipped."
  echo
  echo "bytes/conn = (RSS with the connections open − RSS just before opening them) / connections open; each phase runs on a fresh server process (started, served one request, then measured: baseline). Kernel socket bytes/conn = Δ(socket slab caches from /proc/slabinfo: $KERNEL_SOCK_CACHES; + TCP buffer pages from /proc/net/sockstat) / connections; it counts both the client and the server socket of each loopback connection, so the server's share is about half. It is marked disturbed when the machine's TCP socket count (/proc/net/sockstat inuse) changed by more than 5% beyond the 2 × N sockets this run opened, i.e. other programs' sockets are mixed into it. The per-server tables also give Δ(Slab total + TCP pages) / connections, which includes everything else the kernel allocated meanwhile (noisy when other work runs). nginx: its worker's RSS; nginx allocates its connection table for all worker_connections (20000) at start, so part of its per-connection cost (a few hundred bytes) is in its baseline, not in the delta; nginx's /echo reads and discards the body (nginx-light has no echo module), the others echo it."
  jq -r -s '.[] |
    def kib: if . == null then "—" else ((. / 1024 | round) | tostring) + " KiB" end;
    def f0: if . == null then "—" else (. | round | tostring) end;
    def row($name; $p): if $p.skipped then "| \($name) | skipped: \"megaconn hold\" has no --body option yet | | | | | | | | | |" else "| \($name) | \($p.established) | \($p.open_secs) s | \($p.rss_before | kib) | \($p.rss_open | kib) | \($p.rss_per_conn | f0) | \($p.sock_kernel_per_conn | f0) | \($p.kernel_per_conn | f0) | \($p.rss_after_close | kib) | \($p.hold.failed_connects // "—") | \($p.hold.drops // "—") / \($p.hold.resets // "—") |" end;
    "", "#### \(.server)", "",
    "| phase (fresh process each) | connections open | time to open | baseline RSS | RSS open | bytes/conn | kernel socket bytes/conn | Slab total Δ/conn | RSS after close | hold failed connects | hold drops / resets |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    row("idle (1 GET each)"; .idle),
    row("idle after 4 KiB POST /echo"; .post4k)' "$RESULTS"
  echo
  echo "_idle-memory.sh: servers: ${servers[*]}; N=$N RAMP=$RAMP SOURCE=$SOURCE; run time ${elapsed}s; raw JSON: bench/out/idle-memory-$STAMP/_"
} | tee "$RES_DIR/table.md"
