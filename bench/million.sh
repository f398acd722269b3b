#!/usr/bin/env bash
# bench/million.sh — a million concurrent keep-alive connections on one machine:
# megaconn vs nginx and Go net/http.
#
# What it measures, for each server in $SERVERS (pinned to core $SERVER_CPU,
# spread over P = ceil(connections / $PER_PROC) + 1 worker processes sharing
# the port with SO_REUSEPORT, because the open-file limit here is 20,000 per
# process and cannot be raised):
#   1. baseline, after one request and a few seconds' rest: server RSS (VmRSS
#      summed over the supervisor/master and every worker process), kernel
#      memory (Slab from /proc/meminfo + TCP "mem" pages from /proc/net/sockstat
#      × page size; also the socket slab caches alone, see bench/lib.sh), and
#      the server's CPU time (utime+stime from /proc/PID/stat);
#   2. `megaconn hold` (pinned to core $LOAD_CPU, its own child processes for
#      the same open-file reason) opens the connections from $SOURCE at $RAMP
#      per second, each sends one GET / at once and then a heartbeat GET / every
#      $INTERVAL s (jittered), and holds them $HOLD s after the ramp;
#   3. every $RAMP_SAMPLE s during the ramp and every $SAMPLE s while holding:
#      connections the server holds (open fds of its processes minus their
#      baseline: cheap at a million, unlike `ss`, and not disturbed by other
#      people's benchmarks the way /proc/net/sockstat is), connections hold
#      reports open, server RSS, kernel memory, server CPU seconds -> a CSV;
#   4. at the end of the hold, timed from hold's REAL ramp end (read from
#      hold's own progress lines: the first line where open + drops + resets +
#      failed connects reaches the target, less its connect timeout, and never
#      before the asked ramp), a few seconds before hold starts closing; checked
#      afterwards against hold's report (ramp_secs + hold_secs): a sample that
#      ended after hold began closing is discarded for the last one before:
#      connections
#      held, server RSS and (RSS − baseline) / connections, (kernel − baseline)
#      / connections (counts BOTH ends of each loopback connection: client and
#      server sockets live in this one kernel), PSS (Pss from smaps_rollup,
#      summed: shared code counted once) and (PSS − baseline) / connections,
#      and the server's and hold's CPU while only heartbeats flow (from
#      $CPU_SETTLE s after the ramp to the end-of-hold sample), in % of a core
#      and in µs per heartbeat (heartbeats/s: the mean of hold's own progress
#      lines over that window); over the same window the machine's busy CPU,
#      its softirq share, the host's steal and this script's own (the samplers'); a server's
#      notes say **saturated** when that left under 8 % of a core free (the
#      heartbeat tail then follows the machine: bench/MILLION.md 2026-12-03);
#      hold's report gives ramp time, drops, resets, failed connects and the
#      heartbeat latency percentiles;
#   5. after hold exits (closing everything): RSS again, then SIGTERM to the
#      server and a check that it exits cleanly (status 0, bounded wait).
# megaconn is asked for $N connections (default 1,000,000); the peers for
# $N_PEER (default 200,000) to keep the run time sane. A server is stopped
# early (hold gets SIGTERM and reports what it measured) when its RSS exceeds
# $RSS_CAP or MemAvailable falls below $MIN_AVAIL.
#
# Needs: root, 2+ GiB free per 100k Go connections, golang-go nginx-light jq
# gnuplot-nox (installed with apt-get when missing), cargo (megaconn is built
# with `cargo build --release` unless BENCH_SKIP_BUILD=1, then copied privately
# so concurrent rebuilds cannot change the binary under test).
#
# Sets kernel.sched_autogroup_enabled=0 for the run and RESTORES the previous
#   value at exit (with autogroup on, each session gets its own scheduling
#   group, so `nice` does not hold between the script's sampler, the server and
#   hold; with the default 1 a million-connection ramp stalled at 981,461 in
#   issue 15). AUTOGROUP=keep leaves the setting alone.
# Sets these sysctls (raises only, never lowers; prints every change; NOTHING
# IS RESTORED afterwards — they stay as set until reboot or until you reset them):
#   net.ipv4.ip_local_port_range="1024 65535"  64,512 client ports per source
#       address (39 sources -> 2.5M possible client sockets)
#   net.core.somaxconn=65535, net.ipv4.tcp_max_syn_backlog=65535  so the
#       listeners' accept queues absorb the ramp's bursts
#   fs.file-max >= 2*N + 300,000  each loopback connection is two open files
#       (client and server socket), system-wide
#   net.netfilter.nf_conntrack_max >= 2*N + 200,000 (if the sysctl exists)  so
#       conntrack, if anything enables it, does not drop new connections
#   net.ipv4.tcp_mem >= "786432 1048576 1572864" (3/4/6 GiB in pages)  so a
#       burst of queued bytes across 2M sockets does not hit the TCP memory
#       limit (above "high" the kernel drops; idle sockets need ~0 pages)
#   net.core.netdev_max_backlog >= 16384  loopback packets go through the
#       per-CPU backlog queue; 1000 drops SYNs/ACKs during a 20,000/s ramp
#       (drops show in /proc/net/softnet_stat; the script records them)
#   and `ulimit -n 20000` (the hard cap here).
#
# Env: N (1000000), N_PEER (200000), RAMP (4000 connections/s: what this
#   2-core machine sustained while also serving the heartbeats; at 10,000/s the
#   server fell behind accepting, queued connections missed hold's 5 s timeout
#   and were closed), RAMP_PEER ($RAMP), HOLD (300 s after the ramp), HOLD_PEER
#   ($HOLD), INTERVAL (30 s between heartbeats; see the note below), IDLE_TIMEOUT
#   (every server's keep-alive timeout in s: max(300, 2 × INTERVAL + 60)),
#   TIMEOUT (hold's --timeout; its default 5 s when empty), SOURCE
#   (127.0.0.2-127.0.0.40), SERVERS ("megaconn nginx go"), PER_PROC (19000 connections per server process), PORT (first
#   free from 38300), SAMPLE (10 s), RAMP_SAMPLE (3 s), CPU_SETTLE (15 s),
#   RSS_CAP (8 GiB, bytes), MIN_AVAIL (2 GiB, bytes), PLOT
#   (bench/million-rss.svg; "" for none), SERVER_CPU and LOAD_CPU (taskset
#   CPU lists; default all CPUs, i.e. unpinned), AUTOGROUP (0; "keep": leave
#   kernel.sched_autogroup_enabled as it is),
#   MEGACONN (binary to test), HOLD_ARGS (extra `hold` arguments, e.g.
#   --wake-per-reply: hold woken by each reply, as in runs before
#   2026-12-04), TLS (1: megaconn only, over TLS: `serve
#   --self-signed`, `hold https:// -k`; each connection a full handshake or a
#   resumed one, then its heartbeats over TLS), PROTO (http; megaconn only:
#   framed = the demo's framed TCP protocol, `serve --tcp-listen --tcp-framing
#   u32`, `hold tcp:// --tcp-framing u32 --send PING --expect PONG`, a PING
#   frame per heartbeat; ws = the demo's native WebSocket echo /ws, `hold
#   ws://…/ws`, a ping per heartbeat answered by a pong; with TLS=1 wss://),
#   WS_PING (PROTO=ws:
#   the server's --ws-ping-interval; 2 × INTERVAL), BROADCAST (1:
#   PROTO=framed only: hold also counts pushes (`--receive`), and once the
#   ramp is over one 64-byte broadcast goes to every connection of every
#   worker process through the supervisor's admin `POST /broadcast`; its
#   payload starts `t=<unix ns>`, taken just before curl starts; reported:
#   pushes received / N, time to the last delivery (hold's push latency
#   max), the server's CPU (schedstat, all its processes) from just before
#   the publish until hold counted N pushes or BCAST_WAIT (60) s passed, per
#   delivered message, raw and net of the heartbeats' CPU over the same
#   time (at the holding rate measured later); the heartbeat CPU window then
#   starts CPU_SETTLE s after the broadcast, so it does not count it),
#   DROP_CACHES (1: sync and drop the page cache before the run, so the
#   sockets' ~10 GB come from free memory and kswapd stays idle; 0: leave
#   it; kswapd's CPU while holding is reported either way), NETNS_EHASH
#   (0: off; B: run in a network namespace with a TCP established hash of B
#   buckets, see below),
#   DRAIN_WAIT (90: before the next server, wait at most this many seconds
#   for the last run's sockets, TIME_WAIT included, to be gone),
#   MEGACONN_SERVE_ARGS (extra `megaconn serve` arguments, e.g.
#   "--park-after 500ms"), BENCH_SKIP_BUILD=1, BENCH_SKIP_INSTALL=1,
#   FROM_DIRS ("bench/out/million-A bench/out/million-B": run nothing, write
#   the table and the plot from earlier runs' results; the last dir holding a
#   server's results wins).
# Output: bench/out/million-<stamp>/: <server>.csv (t, phase, server
#   connections, client open, server RSS, kernel bytes, socket slab bytes, server
#   CPU s, server PSS, hold CPU s, sample duration s), <server>.json (all figures + hold's report), hold and server logs,
#   table.md (also on stdout), sysctl.txt; the plot of RSS against connections
#   goes to $PLOT.
# Quick sanity run: N=100000 N_PEER=100000 HOLD=30 bash bench/million.sh
set -euo pipefail

# TLS=1: the same run over TLS (megaconn only).
TLS="${TLS:-0}"
SCHEME=http
SERVE_TLS=()
HOLD_TLS=()
CURL_TLS=()
if [[ "$TLS" == 1 ]]; then
  SCHEME=https
  SERVE_TLS=(--self-signed)
  HOLD_TLS=(-k)
  CURL_TLS=(-k)
fi
# PROTO=framed|ws: the same run on another protocol (megaconn only). The
# listener under test is always $PORT; for framed TCP the readiness check's
# HTTP listener is $HTTP_PORT (set once PORT is known).
PROTO="${PROTO:-http}"
# PERF=1: `perf record -a -g` of the whole machine for PERF_SECS (60) s from
# the start of the CPU-while-holding window, at PERF_FREQ (999) Hz; reports
# by command and DSO, and by symbol, beside the JSON (NAME.perf-*.txt). The
# sampling costs CPU of its own: take the µs per heartbeat from a run
# without it, the shares from one with it.
PERF="${PERF:-0}"
PERF_SECS="${PERF_SECS:-60}"
PERF_FREQ="${PERF_FREQ:-999}"
case "$PROTO" in
  http | framed | ws) ;;
  *) echo "PROTO=$PROTO: use http, framed or ws" >&2 && exit 2 ;;
esac
# BROADCAST=1: one broadcast to every connection after the ramp (PROTO=framed).
BROADCAST="${BROADCAST:-0}"
BCAST_WAIT="${BCAST_WAIT:-60}"
if [[ "$BROADCAST" == 1 && "$PROTO" != framed ]]; then
  echo "BROADCAST=1 needs PROTO=framed (the demo's framed TCP protocol)" >&2 && exit 2
fi

# Unpinned by default (lib.sh pins the server to core 1 and the load to core 0):
# at a million connections the server's accepts and heartbeats alone need more
# than one core at times, and so does hold.
SERVER_CPU="${SERVER_CPU:-0-$(($(nproc) - 1))}"
LOAD_CPU="${LOAD_CPU:-0-$(($(nproc) - 1))}"

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# NETNS_EHASH=B: run everything in a network namespace of its own whose TCP
# established-connection hash table has B buckets (a power of two; the
# kernel's net.ipv4.tcp_child_ehash_entries, Linux 6.1+). The host's table is
# sized at boot from RAM (262,144 buckets here, dmesg "TCP established hash
# table entries"); a million loopback connections are two million sockets in
# it, ~8 per bucket, and every packet walks its bucket's chain
# (__inet_lookup_established, 5-12 % of the machine in perf at a million).
# The namespace's own loopback carries 127.0.0.0/8 as the host's does. Sets
# net.ipv4.tcp_child_ehash_entries only while creating the namespace (then
# restores it) and raises net.ipv4.tcp_mem on the host first (it is global:
# not visible inside a namespace), and net.core.netdev_max_backlog (the
# same). The namespace is deleted at exit.
NETNS_EHASH="${NETNS_EHASH:-0}"
if [[ "$NETNS_EHASH" != 0 && -z "${MILLION_NETNS:-}" ]]; then
  # Packages first, on the host: the namespace has only its loopback, so an
  # apt-get inside it cannot reach the registry (session 45: "Temporary
  # failure resolving 'deb.debian.org'" on a fresh machine). Inside, they are
  # found installed and nothing is fetched.
  bench_install_deps
  command -v gnuplot >/dev/null 2>&1 || [[ -z "${PLOT-bench/million-rss.svg}" || "${BENCH_SKIP_INSTALL:-0}" == 1 ]] \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
  ns="megaconn-million-$$"
  child_was="$(sysctl -n net.ipv4.tcp_child_ehash_entries)" \
    || die "NETNS_EHASH needs net.ipv4.tcp_child_ehash_entries (Linux 6.1+)"
  sysctl -q -w net.ipv4.tcp_child_ehash_entries="$NETNS_EHASH" >/dev/null
  ip netns add "$ns"
  sysctl -q -w net.ipv4.tcp_child_ehash_entries="$child_was" >/dev/null
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip netns exec "$ns" ip link set lo up
  # Global settings the namespace cannot see: raised here, on the host.
  (($(sysctl -n net.ipv4.tcp_mem | awk '{ print $1 }') >= 786432)) \
    || set_sysctl net.ipv4.tcp_mem "786432 1048576 1572864"
  (($(sysctl -n net.core.netdev_max_backlog) >= 16384)) || set_sysctl net.core.netdev_max_backlog 16384
  log "network namespace $ns: TCP established hash $(ip netns exec "$ns" sysctl -n net.ipv4.tcp_ehash_entries) buckets (host: $(sysctl -n net.ipv4.tcp_ehash_entries))"
  status=0
  MILLION_NETNS="$ns" ip netns exec "$ns" bash "${BASH_SOURCE[0]}" "$@" || status=$?
  exit "$status"
fi

# This script samples at nice -10: with 100+ runnable server and hold
# processes a sample at nice 0 took 45 s instead of 2. Servers and hold are
# started back at the nice level the script was started with ($NICE_BACK).
NICE0="$(ps -o ni= -p $$ | tr -d ' ')"
renice -n -10 -p $$ >/dev/null 2>&1 || true
NICE_BACK=$((NICE0 - $(ps -o ni= -p $$ | tr -d ' ')))

N="${N:-1000000}"
N_PEER="${N_PEER:-200000}"
RAMP="${RAMP:-4000}"
RAMP_PEER="${RAMP_PEER:-$RAMP}"
HOLD="${HOLD:-300}"
HOLD_PEER="${HOLD_PEER:-$HOLD}"
INTERVAL="${INTERVAL:-30}"
WS_PING="${WS_PING:-$((2 * INTERVAL))s}"
# Server keep-alive idle timeout: well above the heartbeat interval (jittered),
# else the servers close held connections between heartbeats.
IDLE_TIMEOUT="${IDLE_TIMEOUT:-$((2 * INTERVAL + 60 > 300 ? 2 * INTERVAL + 60 : 300))}"
TIMEOUT="${TIMEOUT:-}" # hold's --timeout (connect and heartbeat reply); hold's default (5 s) when empty
# FROM_DIRS="dir..." (bench/out/million-*): run nothing; write the table and
# the plot from those runs' results (the last dir holding a server wins).
FROM_DIRS="${FROM_DIRS:-}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.40}"
SERVERS="${SERVERS:-megaconn nginx go}"
[[ "$TLS" != 1 || "$SERVERS" == megaconn ]] || die "TLS=1 runs megaconn only: set SERVERS=megaconn"
[[ "$PROTO" == http || "$SERVERS" == megaconn ]] || die "PROTO=$PROTO runs megaconn only: set SERVERS=megaconn"
[[ "$PROTO" != framed || "$TLS" != 1 ]] || die "PROTO=framed has no TLS=1 variant yet (PROTO=ws TLS=1 is wss://)"
PER_PROC="${PER_PROC:-19000}"
# MEGACONN_SERVE_ARGS: extra `megaconn serve` arguments (split on spaces).
read -ra SERVE_EXTRA <<<"${MEGACONN_SERVE_ARGS:-}"
DROP_CACHES="${DROP_CACHES:-1}"
SAMPLE="${SAMPLE:-10}"
RAMP_SAMPLE="${RAMP_SAMPLE:-3}"
CPU_SETTLE="${CPU_SETTLE:-15}"
RSS_CAP="${RSS_CAP:-$((8 << 30))}"
MIN_AVAIL="${MIN_AVAIL:-$((2 << 30))}"
PLOT="${PLOT-$BENCH_DIR/million-rss.svg}"
GO_REUSEPORT="$BENCH_DIR/peers/go-reuseport/target/go-reuseport"


STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/million-$STAMP"
mkdir -p "$RES_DIR"
log "results in $RES_DIR"

HOLD_PID=""
AUTOGROUP_WAS=""
million_cleanup() {
  if [[ -n "$AUTOGROUP_WAS" ]]; then
    sysctl -q -w kernel.sched_autogroup_enabled="$AUTOGROUP_WAS" >/dev/null 2>&1 \
      && log "sysctl kernel.sched_autogroup_enabled restored to $AUTOGROUP_WAS"
    AUTOGROUP_WAS=""
  fi
  if [[ -n "$HOLD_PID" ]]; then
    # hold's children die with it (PR_SET_PDEATHSIG); TERM them too.
    # shellcheck disable=SC2046  # a list of PIDs
    kill_ours TERM hold "$HOLD_PID" $(pgrep -P "$HOLD_PID" 2>/dev/null)
    sleep 1
    # shellcheck disable=SC2046
    kill_ours KILL hold "$HOLD_PID" $(pgrep -P "$HOLD_PID" 2>/dev/null)
    HOLD_PID=""
  fi
  bench_cleanup
}
trap million_cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
if [[ -z "$FROM_DIRS" ]]; then
bench_install_deps
command -v gnuplot >/dev/null 2>&1 || [[ -z "$PLOT" || "${BENCH_SKIP_INSTALL:-0}" == 1 ]] \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null

log "building go-reuseport"
(cd "$BENCH_DIR/peers/go-reuseport" && go build -o target/go-reuseport .) || die "go build failed"
if [[ -z "$MEGACONN_USER" ]]; then
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building megaconn (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release --quiet) || log "WARNING: megaconn build failed; using the existing binary"
  fi
  [[ -x "$REPO_ROOT/target/release/megaconn" ]] || die "no target/release/megaconn"
  # A private copy: others rebuild target/ on this machine during the run.
  cp -f "$REPO_ROOT/target/release/megaconn" "$RES_DIR/megaconn"
  MEGACONN="$RES_DIR/megaconn"
  (cd "$REPO_ROOT" && git describe --always --dirty 2>/dev/null || echo unknown) >"$RES_DIR/megaconn.version"
else
  # A binary given as MEGACONN: its build is what its `.version` file beside
  # it says (the commit it was built from, written by whoever copied it
  # there, as lib.sh's snapshots do), else what the binary says of itself.
  # The work tree's `git describe` would name this checkout, not that
  # binary. (The summary line printed "?" for such a binary.)
  if [[ -s "$MEGACONN.version" ]]; then
    cp -f "$MEGACONN.version" "$RES_DIR/megaconn.version"
  else
    echo "$("$MEGACONN" --version 2>/dev/null || echo unknown) ($MEGACONN, no $MEGACONN.version)" \
      >"$RES_DIR/megaconn.version"
  fi
fi
megaconn_has hold || die "megaconn hold is not available ($MEGACONN hold --help failed)"
# hold runs from its own copy of the binary: run from the same file as the
# server, its code pages would be shared with the server's processes, and the
# server's PSS would fall when hold starts (its share of those pages shrinks),
# biasing Δ PSS per connection negative (by ~70 B/conn at 20,000 connections).
HOLD_BIN="$RES_DIR/megaconn-hold"
cp -f "$MEGACONN" "$HOLD_BIN"
megaconn_has serve && MEGACONN_SERVE_OK=1

# raise_sysctl NAME VALUE...: set when any field of the current value is lower.
raise_sysctl() {
  local name=$1 cur
  shift
  cur="$(sysctl -n "$name" 2>/dev/null)" || { log "sysctl $name: not present here; skipped"; return 0; }
  if awk -v c="$cur" -v w="$*" 'BEGIN { n = split(c, a, /[ \t]+/); split(w, b, " ");
         for (i = 1; i <= n; i++) if (a[i] + 0 < b[i] + 0) exit 0; exit 1 }'; then
    set_sysctl "$name" "$*"
  fi
}
{
  bench_tune
  raise_sysctl fs.file-max $((2 * N + 300000))
  raise_sysctl net.netfilter.nf_conntrack_max $((2 * N + 200000))
  raise_sysctl net.ipv4.tcp_mem 786432 1048576 1572864
  raise_sysctl net.core.netdev_max_backlog 16384
} 2> >(tee -a "$RES_DIR/sysctl.txt" >&2)
if [[ "${AUTOGROUP:-0}" != keep ]]; then
  if cur="$(sysctl -n kernel.sched_autogroup_enabled 2>/dev/null)"; then
    if [[ "$cur" != "${AUTOGROUP:-0}" ]]; then
      AUTOGROUP_WAS=$cur
      set_sysctl kernel.sched_autogroup_enabled "${AUTOGROUP:-0}" 2> >(tee -a "$RES_DIR/sysctl.txt" >&2)
      log "kernel.sched_autogroup_enabled is restored to $cur at exit"
    fi
  else
    log "kernel.sched_autogroup_enabled: not present here"
  fi
fi
if [[ "$DROP_CACHES" == 1 ]]; then
  # Page cache left by builds fills the RAM the sockets need: once free
  # memory reaches the low watermark, kswapd reclaims for the whole run
  # (a million idle connections with ~280 heartbeats/s kept kswapd at ~1
  # core, shrinking procfs dentries, in a run with 15 GB of page cache).
  free0="$(awk '$1 == "MemFree:" { print int($2 / 1024) }' /proc/meminfo)"
  sync
  echo 3 >/proc/sys/vm/drop_caches
  log "dropped the page cache (vm.drop_caches=3): MemFree $free0 -> $(awk '$1 == "MemFree:" { print int($2 / 1024) }' /proc/meminfo) MiB"
fi
sleep 0.2
log "sysctls set above (except sched_autogroup_enabled) are NOT restored at exit"
for s in kernel.sched_autogroup_enabled net.ipv4.ip_local_port_range net.core.somaxconn net.ipv4.tcp_max_syn_backlog fs.file-max \
  net.netfilter.nf_conntrack_max net.ipv4.tcp_mem net.core.netdev_max_backlog; do
  echo "$s = $(sysctl -n "$s" 2>/dev/null | tr -s '[:space:]' ' ')" >>"$RES_DIR/sysctl.txt"
done
PORT="${PORT:-$(free_port 38300)}"
# What serve listens on, what hold connects to, and where readiness is asked.
HTTP_PORT=$PORT
SERVE_LISTEN=(--listen "127.0.0.1:$PORT")
HOLD_TARGET=("$SCHEME://127.0.0.1:$PORT/")
case "$PROTO" in
  framed)
    HTTP_PORT="$(free_port $((PORT + 1)))"
    SERVE_LISTEN=(--listen "127.0.0.1:$HTTP_PORT" --tcp-listen "127.0.0.1:$PORT" --tcp-framing u32)
    HOLD_TARGET=("tcp://127.0.0.1:$PORT" --tcp-framing u32 --send PING --expect PONG)
    if [[ "$BROADCAST" == 1 ]]; then
      # The supervisor's admin listener, for POST /broadcast: a port with no
      # socket in any state (the last run's broadcast leaves one in TIME_WAIT
      # for a minute, and the admin listener does not bind over it).
      ADMIN_PORT=$((HTTP_PORT + 1))
      while [[ -n "$(ss -Htan "( sport = :$ADMIN_PORT )" 2>/dev/null)" ]]; do ADMIN_PORT=$((ADMIN_PORT + 1)); done
      SERVE_LISTEN+=(--admin "127.0.0.1:$ADMIN_PORT")
      HOLD_TARGET+=(--receive)
    fi
    ;;
  ws)
    # TLS=1: wss:// (the server's WebSockets over TLS park too; hold keeps
    # a task and the TLS session per connection).
    HOLD_TARGET=("${SCHEME/http/ws}://127.0.0.1:$PORT/ws" --ws-heartbeat ping)
    # The server pings a WebSocket it has not heard from for this long; at
    # its default (30 s) a client pinging every 30 s ± 10 % crosses a server
    # ping on about half its beats, and more as latency grows (2026-11-30
    # 14:46 run, bench/MILLION.md). Like the keep-alive timeout above, set
    # beyond the client's interval: the server pings only peers that went
    # silent.
    SERVE_LISTEN+=(--ws-ping-interval "$WS_PING")
    ;;
esac
fi # FROM_DIRS

# ---------------------------------------------------------------- helpers
# Byte counts above 2^31: lib.sh's kernel_slab_bytes and kernel_tcp_mem_bytes
# print mawk's %.6g there (e.g. 2.28655e+10, which bash arithmetic rejects) and
# its kernel_sock_slab_bytes uses %d, which mawk caps at 2147483647; so the
# kernel figures come from kernel_stats below (%.0f).
# Packets the kernel dropped because a CPU's backlog queue was full (all CPUs).
softnet_drops() {
  local total=0 _a d _r
  while read -r _a d _r; do total=$((total + 16#$d)); done </proc/net/softnet_stat
  echo "$total"
}

# A TcpExt counter from /proc/net/netstat (system-wide), e.g. ListenOverflows.
tcpext() {
  awk -v k="$1" '$1 == "TcpExt:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == k) c = i; h = 1 } else print $c + 0 }' /proc/net/netstat
}

# What delays one connection by a retransmission timeout (200 ms and more,
# doubling) and no other: "RTO-TIMEOUTS RECEIVE-DROPS", the latter segments
# dropped on receive for memory or a full backlog or window. A lone
# heartbeat of seconds (bench/MILLION.md, 2026-12-04 15:39) is one.
tcp_stalls() {
  echo "$(tcpext TCPTimeouts) $(($(tcpext TCPRcvQDrop) + $(tcpext TCPBacklogDrop) + $(tcpext TCPZeroWindowDrop)))"
}

# The server's processes: the process started and its children (megaconn's and
# go-reuseport's worker processes, nginx's workers).
server_pids() { echo "$SERVER_PID $(pgrep -P "$SERVER_PID" 2>/dev/null | tr '\n' ' ')"; }
# The samplers below fork a handful of processes per sample, not a few per
# server process: with 50+ server processes on a loaded 2-core machine, one
# fork per PID made a single sample take minutes.
fd_count() { # PID... -> open fds summed
  local dirs=() p
  for p in "$@"; do [[ -d "/proc/$p/fd" ]] && dirs+=("/proc/$p/fd"); done
  ((${#dirs[@]})) || { echo 0; return 0; }
  # Linux >= 6.2 gives the number of open fds as the size of /proc/PID/fd:
  # one stat(2) per process instead of reading a million directory entries.
  if [[ "$FD_STAT_OK" == 1 ]]; then
    stat -c %s "${dirs[@]}" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
  else
    find "${dirs[@]}" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l
  fi
}
FD_STAT_OK=0
(($(stat -c %s /proc/self/fd 2>/dev/null || echo 0) > 0)) && FD_STAT_OK=1
# PSS (proportional set size) splits shared pages (the binary's code, shared
# libraries) between the processes mapping them; RSS counts them in every one
# of P worker processes.
proc_stats() { # PID... -> "RSS_BYTES CPU_TICKS PSS_BYTES USER_TICKS" (VmRSS, utime+stime, Pss, utime) summed, one awk
  local files=() p
  for p in "$@"; do [[ -r "/proc/$p/stat" ]] && files+=("/proc/$p/status" "/proc/$p/stat" "/proc/$p/smaps_rollup"); done
  ((${#files[@]})) || { echo "0 0 0 0"; return 0; }
  awk 'FILENAME ~ /status$/ { if ($1 == "VmRSS:") rss += $2 * 1024; next }
       FILENAME ~ /smaps_rollup$/ { if ($1 == "Pss:") pss += $2 * 1024; next }
       { line = $0; sub(/^.*\) /, "", line); split(line, f, " "); ticks += f[12] + f[13]; uticks += f[12] }
       END { printf "%.0f %.0f %.0f %.0f\n", rss, ticks, pss, uticks }' "${files[@]}" 2>/dev/null || echo "0 0 0 0"
}
kernel_stats() { # -> "KERNEL_BYTES SOCK_KERNEL_BYTES MEM_AVAILABLE", one awk
  awk -v ps="$PAGE_SIZE" -v names="$KERNEL_SOCK_CACHES" '
    BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
    FILENAME == "/proc/meminfo" { if ($1 == "Slab:") slab = $2 * 1024; if ($1 == "MemAvailable:") avail = $2 * 1024; next }
    FILENAME == "/proc/net/sockstat" { if ($1 == "TCP:") for (i = 2; i < NF; i++) if ($i == "mem") tcp = $(i + 1) * ps; next }
    want[$1] { sock += $2 * $4 }
    END { printf "%.0f %.0f %.0f\n", slab + tcp, sock + tcp, avail }' /proc/meminfo /proc/net/sockstat /proc/slabinfo
}
# Last "open X" of hold's progress output (0 before the first line).
ticks_secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }
hold_open() {
  tail -c 2000 "$1" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "open") o = $(i + 1) } END { print o + 0 }'
}

# hold's progress lines: "[  12.3s] open N (peak P), H heartbeats/s, drops D,
# resets R, failed connects F, heartbeat errors E" (about once a second).
# hold_full_t LOG TARGET: hold's own time (s) of the first line where every
# connection has been tried and settled (open + drops + resets + failed
# connects >= TARGET), empty before that. hold's ramp ends when every
# connection has been *tried*, at most one connect timeout before that line.
hold_full_t() {
  awk -v n="$2" '
    match($0, /^\[ *[0-9.]+s\]/) {
      t = substr($0, 2, RLENGTH - 3) + 0; o = d = r = f = 0
      for (i = 2; i < NF; i++) {
        if ($i == "open") o = $(i + 1) + 0
        else if ($i == "drops") d = $(i + 1) + 0
        else if ($i == "resets") r = $(i + 1) + 0
        else if ($i == "connects") f = $(i + 1) + 0
      }
      if (o + d + r + f >= n) { print t; exit }
    }' "$1" 2>/dev/null
}
# hold_hb_rate LOG FROM TO: mean heartbeats/s over hold's progress lines with
# FROM <= t <= TO (hold's own clock, which starts within ~1 s of the script's t0).
hold_hb_rate() {
  awk -v a="$2" -v b="$3" '
    match($0, /^\[ *[0-9.]+s\]/) {
      t = substr($0, 2, RLENGTH - 3) + 0
      if (t < a || t > b) next
      for (i = 2; i <= NF; i++) if ($i == "heartbeats/s,") { s += $(i - 1); k++ }
    }
    END { if (k) printf "%.1f\n", s / k; else print "null" }' "$1" 2>/dev/null || echo null
}
# CPU ticks (utime+stime) summed over PIDs: /proc/PID/stat only. proc_stats
# also reads smaps_rollup, which walks each process's page tables: for hold's
# 50+ processes that was ~50 ms of system time per sample at a million.
proc_ticks() { # PID... -> CPU_TICKS
  local files=() p
  for p in "$@"; do [[ -r "/proc/$p/stat" ]] && files+=("/proc/$p/stat"); done
  ((${#files[@]})) || { echo 0; return 0; }
  awk '{ sub(/^.*\) /, ""); ticks += $12 + $13 } END { printf "%.0f\n", ticks }' "${files[@]}" 2>/dev/null || echo 0
}
# hold's CPU ticks (utime+stime), the hold process and its children.
hold_ticks() {
  [[ -n "$HOLD_PID" ]] || { echo 0; return; }
  # shellcheck disable=SC2046
  proc_ticks "$HOLD_PID" $(pgrep -P "$HOLD_PID" 2>/dev/null)
}

# The CPU the whole machine spent in softirq and irq context (/proc/stat,
# seconds over both cores): on loopback the receive side of every segment
# runs there. Not a share to add to the others: this kernel has no
# CONFIG_IRQ_TIME_ACCOUNTING, so softirq work done on the way out of a
# process's system call (the peer's receive, run by the sender's `send`) is
# also in that process's own CPU time.
softirq_secs() { awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.2f\n", ($7 + $8) / hz; exit }' /proc/stat; }
# The CPU the virtual machine's host took from both cores (/proc/stat steal,
# seconds): not idle, so inside "machine busy", but no process of ours ran.
# A saturated run with steal in it was short of CPU because of the host.
steal_secs() { awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.2f\n", $9 / hz; exit }' /proc/stat; }
# This script's own CPU ticks and its reaped children's (the samplers' awk,
# stat, pgrep): the measurement's own cost, at nice -10 while heartbeats flow.
self_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$$/stat"; }

# Every process's CPU ticks, one "PID COMM TICKS" line each (utime+stime of
# all its threads; spaces in COMM become _), read through cat so a process
# that ends between the glob and the read is skipped (mawk stops at an
# unreadable file). With busiest_others: who else took the two cores. On
# this machine the sandbox's own init (PID 1, `process_api`, at nice -10)
# took 15-25 % of a core during the 2026-12-06 15:23 run and ~1 % at rest:
# a run it crowds out says so.
all_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\) [A-Za-z] .*$/, "", c); gsub(/ /, "_", c); r = $0; sub(/^.*\) /, "", r); split(r, f, " "); printf "%s %s %d\n", $1, c, f[12] + f[13] }'
}
# The three busiest processes between two all_ticks snapshots that are not
# the server's, hold's or this script's: "COMM (PID) P %, …" in % of one
# core over SECS. $1 $2 snapshot files, $3 seconds, $4 PIDs to leave out.
busiest_others() {
  awk -v hz="$CLK_TCK" -v secs="$3" -v skip="$4" '
    BEGIN { n = split(skip, s, " "); for (i = 1; i <= n; i++) out[s[i]] = 1 }
    FNR == NR { t0[$1] = $3; next }
    ($1 in t0) && !($1 in out) { d = $3 - t0[$1]; if (d > 0) printf "%.1f %s %s\n", d / hz / secs * 100, $2, $1 }
  ' "$1" "$2" | sort -rn | head -3 | awk '{ printf "%s%s (%s) %s %%", (NR > 1 ? ", " : ""), $2, $3, $1 }'
}
# The PIDs busiest_others leaves out: the server's processes, hold and its
# children, this script and its subshells.
own_pids() {
  echo "$(server_pids) $HOLD_PID $(pgrep -P "$HOLD_PID" 2>/dev/null | tr '\n' ' ') $$ $BASHPID $(pgrep -P $$ 2>/dev/null | tr '\n' ' ')"
}

# CPU ticks of the kernel's page reclaim threads (kswapd0, one per NUMA
# node): a run that drives free memory to the watermark pays for reclaim on
# the same two cores as the server and hold.
kswapd_ticks() {
  # shellcheck disable=SC2046  # a list of PIDs
  proc_ticks $(pgrep -x 'kswapd[0-9]+' 2>/dev/null)
}

# One sample -> globals S_T S_CONNS S_OPEN S_RSS S_K S_SK S_TICKS S_AVAIL
# S_PSS S_HTICKS S_END (script time when the sample was done), and a CSV row.
# $1 phase, $2 csv file, $3 hold log, $4 t0, $5 fd baseline.
sample() {
  local pids
  pids="$(server_pids)"
  S_T=$((SECONDS - $4))
  # shellcheck disable=SC2086  # a list of PIDs
  S_CONNS=$(($(fd_count $pids) - $5))
  ((S_CONNS >= 0)) || S_CONNS=0
  S_OPEN="$(hold_open "$3")"
  # shellcheck disable=SC2086
  read -r S_RSS S_TICKS S_PSS S_UTICKS < <(proc_stats $pids)
  read -r S_K S_SK S_AVAIL < <(kernel_stats)
  S_HTICKS="$(hold_ticks)"
  S_END=$((SECONDS - $4))
  echo "$S_T,$1,$S_CONNS,$S_OPEN,$S_RSS,$S_K,$S_SK,$(ticks_secs "$S_TICKS"),$S_PSS,$(ticks_secs "$S_HTICKS"),$((S_END - S_T))" >>"$2"
}

# Start NAME on PORT with P processes; sets SERVER_PID, SERVER_NAME.
start_server() {
  local name=$1 procs=$2 log_file="$RES_DIR/$1.server.log" i n
  # shellcheck disable=SC2034  # read by bench/lib.sh (server_stop in the EXIT trap)
  SERVER_NAME=$name
  port_listening "$PORT" && die "port $PORT is already in use: $(ss -Hltnp "( sport = :$PORT )" | head -1)"
  case "$name" in
    megaconn)
      # The idle timeout goes through a config file: in this build
      # `megaconn serve --idle-timeout 300s` (any DURATION flag) panics in clap
      # ("Mismatch between definition and access of `idle_timeout`").
      printf 'idle_timeout = "%ss"\nbacklog = 65535\n' "$IDLE_TIMEOUT" >"$RES_DIR/megaconn.toml"
      nice -n "$NICE_BACK" taskset -c "$SERVER_CPU" "$MEGACONN" serve "${SERVE_LISTEN[@]}" --workers 1 \
        --processes "$procs" --config "$RES_DIR/megaconn.toml" "${SERVE_TLS[@]}" "${SERVE_EXTRA[@]}" >"$log_file" 2>&1 &
      ;;
    go)
      GOMAXPROCS=1 nice -n "$NICE_BACK" taskset -c "$SERVER_CPU" "$GO_REUSEPORT" -listen "127.0.0.1:$PORT" \
        -procs "$procs" -idle "${IDLE_TIMEOUT}s" >"$log_file" 2>&1 &
      ;;
    nginx)
      local dir="$RES_DIR/nginx"
      rm -rf "$dir" && mkdir -p "$dir"
      cat >"$dir/nginx.conf" <<EOF
# nginx-light for bench/million.sh: $procs workers, one SO_REUSEPORT listener each.
daemon off;
master_process on;
worker_processes $procs;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
user root;
events {
    worker_connections $PER_PROC;
    multi_accept on;
    accept_mutex off;
}
http {
    access_log off;
    server_tokens off;
    default_type text/plain;
    sendfile off;
    tcp_nodelay on;
    keepalive_requests 1000000000;
    keepalive_timeout ${IDLE_TIMEOUT}s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$PORT reuseport backlog=65535;
        location / { return 200 "Hello, World!"; }
    }
}
EOF
      nice -n "$NICE_BACK" taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$log_file" 2>&1 &
      ;;
    *) die "unknown server $name" ;;
  esac
  SERVER_PID=$!
  # Ready when every process listens and GET / answers (bounded: 60 s).
  for ((i = 0; i < 600; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    n="$(ss -Hltn "( sport = :$PORT )" 2>/dev/null | wc -l)"
    if ((n >= procs)) && curl -fsS "${CURL_TLS[@]}" -o /dev/null -m 1 "$SCHEME://127.0.0.1:$HTTP_PORT/" 2>/dev/null; then
      log "started $name on 127.0.0.1:$PORT (pid $SERVER_PID, $n listeners, processes: $(server_pids | wc -w))"
      return 0
    fi
    sleep 0.1
  done
  log "server $name did not come up; log follows"
  cat "$log_file" >&2 || true
  return 1
}

# SIGTERM, wait up to 90 s; sets EXIT_STATUS (the exit status, or "killed").
EXIT_STATUS=""
stop_server() {
  local i
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < 900; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    # shellcheck disable=SC2046
    kill -KILL "$SERVER_PID" $(pgrep -P "$SERVER_PID") 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    EXIT_STATUS=killed
  else
    EXIT_STATUS=0
    wait "$SERVER_PID" 2>/dev/null || EXIT_STATUS=$?
  fi
  SERVER_PID=""
}

stop_hold() { # SIGTERM: hold stops its children, which report; bounded wait
  local i
  kill -TERM "$HOLD_PID" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
}

# broadcast_once HOLD_LOG TARGET: one 64-byte broadcast through the admin
# route; waits (bounded by BCAST_WAIT s) until hold counted TARGET pushes.
# Sets B_PUSHES (pushes counted when the wait ended), B_NS (server CPU ns
# from just before the publish to then), B_SECS (wall seconds of that) and
# B_STATUS (curl's answer).
broadcast_once() {
  local hlog=$1 target=$2 c0 c1 w0 w1 payload i
  c0="$(sched_ns "$SERVER_PID")"
  w0="$(date +%s%N)"
  payload="$(printf 't=%s ' "$w0")"
  payload="$(printf '%-64s' "$payload" | tr ' ' '.')"
  B_STATUS="$(curl -sS -m 10 --data-binary "$payload" "http://127.0.0.1:$ADMIN_PORT/broadcast" 2>&1 | tr -d '\n')" || true
  for ((i = 0; i < BCAST_WAIT * 10; i++)); do
    B_PUSHES="$(hold_pushes "$hlog")"
    ((B_PUSHES >= target)) && break
    sleep 0.1
  done
  c1="$(sched_ns "$SERVER_PID")"
  w1="$(date +%s%N)"
  B_NS=$((c1 - c0))
  B_SECS="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
  log "  broadcast: $B_STATUS; hold counted $B_PUSHES of $target pushes after ${B_SECS}s; server CPU $((B_NS / 1000000)) ms"
}

# ---------------------------------------------------------------- one server
# run_server NAME TARGET RAMP HOLD -> $RES_DIR/NAME.json
# Text reports of a PERF=1 profile: shares by command and DSO, and the
# top symbols by command.
perf_reports() { # DATA
  local data=$1
  perf report -i "$data" --no-children -g none --sort comm,dso --percent-limit 0.2 --stdio \
    >"${data%.data}-by-dso.txt" 2>/dev/null || true
  perf report -i "$data" --no-children -g none --sort comm,dso,sym --percent-limit 0.1 --stdio \
    >"${data%.data}-by-symbol.txt" 2>/dev/null || true
}

run_server() {
  local name=$1 target=$2 ramp=$3 hold=$4
  local procs=$(((target + PER_PROC - 1) / PER_PROC + 1))
  local csv="$RES_DIR/$name.csv" hlog="$RES_DIR/$name.hold.log" hjson="$RES_DIR/$name.hold.json"
  local t0 fd0 rss0 k0 sk0 sn0 stopped_early="" ramp_done=0 ramp_done_t=0
  local cpu_t0=0 cpu_ticks0=0 cpu_uticks0=0 cpu_hticks0=0 busy_cpu0=0 ksw0=0 ksw1=0 expect_ramp phase sirq0=0 sirq1=0 self0=0 self1=0 steal0=0 steal1=0
  local F_T=0 F_CONNS=0 F_OPEN=0 F_RSS=0 F_PSS=0 F_K=0 F_SK=0 F_TICKS=0 F_HTICKS=0 F_END=0 F_UTICKS=0 peak_conns=0 busy1 sn1 pss0
  local all_open_t=null lo0 lo1 sr0 sr1 rto0 rto1 rqd0 rqd1 settle=$((CPU_SETTLE < hold / 4 ? CPU_SETTLE : hold / 4))
  local B_PUSHES=null B_NS=null B_SECS=null B_STATUS="" perf_pid=""
  log "== $name: $target connections at $ramp/s, held ${hold}s, $procs server processes"
  bench_wait_quiet "${QUIET_WAIT:-20}"
  if ! start_server "$name" "$procs"; then
    jq -n --arg server "$name" --argjson target "$target" '{server: $server, target: $target, error: "server did not start"}' >"$RES_DIR/$name.json"
    SERVER_PID=""
    return 0
  fi
  curl -fsS "${CURL_TLS[@]}" -o /dev/null "$SCHEME://127.0.0.1:$HTTP_PORT/" || true
  sleep 3
  local pids
  pids="$(server_pids)"
  local _t _a
  # shellcheck disable=SC2086
  fd0="$(fd_count $pids)"
  # shellcheck disable=SC2086
  read -r rss0 _t pss0 _u < <(proc_stats $pids)
  read -r k0 sk0 _a < <(kernel_stats)
  sn0="$(softnet_drops)"
  lo0="$(tcpext ListenOverflows)"
  sr0="$(tcpext TCPSynRetrans)"
  read -r rto0 rqd0 < <(tcp_stalls)
  echo "t_secs,phase,server_connections,client_open,server_rss_bytes,kernel_bytes,sock_kernel_bytes,server_cpu_secs,server_pss_bytes,hold_cpu_secs,sample_secs" >"$csv"
  t0=$SECONDS
  : >"$hlog"
  nice -n "$NICE_BACK" taskset -c "$LOAD_CPU" "$HOLD_BIN" hold "${HOLD_TARGET[@]}" "${HOLD_TLS[@]}" -c "$target" --ramp "$ramp" \
    --source "$SOURCE" --interval "${INTERVAL}s" -d "${hold}s" ${TIMEOUT:+--timeout "$TIMEOUT"} \
    ${HOLD_ARGS:-} --json "$hjson" >"$hlog" 2>&1 &
  HOLD_PID=$!
  all_ticks >"$RES_DIR/$name.ticks.ramp0"
  local ramp_t0=$EPOCHREALTIME ramp_t1=""
  expect_ramp=$((target / ramp))
  # hold's connect timeout in whole seconds (its default 5 s when TIMEOUT is empty).
  local tmo=5
  [[ -n "$TIMEOUT" ]] && tmo="$(awk -v t="$TIMEOUT" 'BEGIN { v = t + 0; if (t ~ /ms$/) v /= 1000; else if (t ~ /m$/) v *= 60; printf "%d", v + 0.999 }')"
  local close_lo=0 full_t="" last_cost=0 lo
  local -a HS=() # hold-phase samples: "T CONNS OPEN RSS PSS K SK TICKS HTICKS END UTICKS"
  sample base "$csv" "$hlog" "$t0" "$fd0"
  while kill -0 "$HOLD_PID" 2>/dev/null; do
    if ((ramp_done)); then
      # The end-of-hold sample: a few seconds (plus what the last sample took)
      # before the earliest moment hold can start closing, close_lo, computed
      # from hold's real ramp end when the ramp was seen to be over.
      local left=$((close_lo - 5 - last_cost - (SECONDS - t0)))
      if ((left <= SAMPLE)); then
        ((left > 0)) && sleep "$left"
        kill -0 "$HOLD_PID" 2>/dev/null || break
        phase=final
      else
        sleep "$SAMPLE"
        phase=hold
      fi
    else
      sleep "$RAMP_SAMPLE"
      phase=ramp
    fi
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sample "$phase" "$csv" "$hlog" "$t0" "$fd0"
    last_cost=$((S_END - S_T))
    ((S_CONNS > peak_conns)) && peak_conns=$S_CONNS
    [[ "$all_open_t" == null ]] && ((S_CONNS >= target)) && all_open_t=$S_T
    if [[ "$phase" != ramp ]]; then
      HS+=("$S_T $S_CONNS $S_OPEN $S_RSS $S_PSS $S_K $S_SK $S_TICKS $S_HTICKS $S_END $S_UTICKS")
    fi
    log "  $name t=${S_T}s $phase: server $S_CONNS conns, hold open $S_OPEN, RSS $((S_RSS >> 20)) MiB, kernel +$(((S_K - k0) >> 20)) MiB, avail $((S_AVAIL >> 20)) MiB (sample took ${last_cost}s)"
    # Ramp over: hold's progress shows every connection tried and settled
    # (open + drops + resets + failed connects >= target), or hold's own ramp
    # limit (asked ramp + connect timeout + 5 s) has passed. hold's real ramp
    # end (when every connection had been tried) lies between
    # max(asked ramp, that line - connect timeout) and that line.
    if ((!ramp_done)); then
      full_t="$(hold_full_t "$hlog" "$target")"
      if [[ -n "$full_t" ]] || ((S_T >= expect_ramp + tmo + 6)); then
        ramp_done=1
        ramp_done_t=$S_T
        all_ticks >"$RES_DIR/$name.ticks.ramp1"
        ramp_t1=$EPOCHREALTIME
        lo=$expect_ramp
        if [[ -n "$full_t" ]]; then
          lo="$(awk -v f="$full_t" -v t="$tmo" -v e="$expect_ramp" 'BEGIN { x = int(f) - t; print (x > e ? x : e) }')"
        fi
        close_lo=$((lo + hold))
        log "  ramp over at ${S_T}s ($S_OPEN open; hold settled at ${full_t:-?}s of its clock; asked ${expect_ramp}s); hold closes at ${close_lo}s at the earliest; CPU measured from $((S_T + settle))s"
        if [[ "$BROADCAST" == 1 ]]; then
          broadcast_once "$hlog" "$target"
          # The heartbeat CPU window starts CPU_SETTLE s after the broadcast.
          ramp_done_t=$((SECONDS - t0))
        fi
      fi
    fi
    # CPU-while-holding window starts CPU_SETTLE s after the ramp.
    if ((ramp_done && cpu_t0 == 0 && S_T >= ramp_done_t + settle)); then
      cpu_t0=$S_T cpu_ticks0=$S_TICKS cpu_uticks0=$S_UTICKS cpu_hticks0=$S_HTICKS busy_cpu0="$(machine_idle_snapshot)"
      ksw0="$(kswapd_ticks)" sirq0="$(softirq_secs)" self0="$(self_ticks)" steal0="$(steal_secs)"
      all_ticks >"$RES_DIR/$name.ticks.hold0"
      if [[ "$PERF" == 1 ]]; then
        # The whole machine, call graphs, for PERF_SECS s of the hold.
        perf record -q -a -g -F "$PERF_FREQ" -o "$RES_DIR/$name.perf.data" -- sleep "$PERF_SECS" >/dev/null 2>&1 &
        perf_pid=$!
      fi
    fi
    if ((S_RSS > RSS_CAP)) || ((S_AVAIL < MIN_AVAIL)); then
      stopped_early="RSS $((S_RSS >> 20)) MiB (cap $((RSS_CAP >> 20))) / MemAvailable $((S_AVAIL >> 20)) MiB (floor $((MIN_AVAIL >> 20)))"
      log "  $name: stopping early: $stopped_early"
      HS+=("$S_T $S_CONNS $S_OPEN $S_RSS $S_PSS $S_K $S_SK $S_TICKS $S_HTICKS $S_END $S_UTICKS")
      stop_hold
      break
    fi
    [[ "$phase" == final ]] && break
  done
  busy1="$(machine_idle_snapshot)"
  ksw1="$(kswapd_ticks)" sirq1="$(softirq_secs)" self1="$(self_ticks)" steal1="$(steal_secs)"
  all_ticks >"$RES_DIR/$name.ticks.hold1"
  # Who else took the cores while ramping and while holding (the windows
  # of "machine busy"), the server, hold and this script left out.
  local others_ramp="" others_hold="" skip
  skip="$(own_pids)"
  [[ -n "$ramp_t1" ]] && others_ramp="$(busiest_others "$RES_DIR/$name.ticks.ramp0" "$RES_DIR/$name.ticks.ramp1" "$(awk -v a="$ramp_t0" -v b="$ramp_t1" 'BEGIN { print b - a }')" "$skip")"
  [[ -s "$RES_DIR/$name.ticks.hold0" ]] && others_hold="$(busiest_others "$RES_DIR/$name.ticks.hold0" "$RES_DIR/$name.ticks.hold1" "$(awk -v a="$busy_cpu0" -v c="$busy1" 'BEGIN { split(a, x, " "); split(c, y, " "); print y[1] - x[1] }')" "$skip")"
  if [[ -n "$perf_pid" ]]; then
    wait "$perf_pid" 2>/dev/null || true
    perf_reports "$RES_DIR/$name.perf.data"
  fi
  sn1="$(softnet_drops)"
  lo1="$(tcpext ListenOverflows)"
  sr1="$(tcpext TCPSynRetrans)"
  read -r rto1 rqd1 < <(tcp_stalls)
  # Let hold finish (it is at most a few seconds from its end), bounded.
  local i
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$HOLD_PID" 2>/dev/null && { log "  hold still running; SIGTERM"; stop_hold; }
  wait "$HOLD_PID" 2>/dev/null || log "  hold exited with an error (see $hlog)"
  HOLD_PID=""
  # The end-of-hold sample: the last hold-phase sample that was DONE before hold
  # began closing, by hold's own report (ramp_secs + hold_secs on its clock,
  # which started after the script's t0, so this is conservative).
  local hold_close=null final_note="no hold-phase sample"
  [[ -s "$hjson" ]] && hold_close="$(jq -r 'if .ramp_secs != null and .hold_secs != null then (.ramp_secs + .hold_secs | floor) else null end' "$hjson" 2>/dev/null || echo null)"
  local k rec
  for ((k = ${#HS[@]} - 1; k >= 0; k--)); do
    read -r -a rec <<<"${HS[$k]}"
    if [[ "$hold_close" == null || -n "$stopped_early" ]] || ((rec[9] <= hold_close)); then
      F_T=${rec[0]} F_CONNS=${rec[1]} F_OPEN=${rec[2]} F_RSS=${rec[3]} F_PSS=${rec[4]} F_K=${rec[5]} F_SK=${rec[6]} F_TICKS=${rec[7]} F_HTICKS=${rec[8]} F_END=${rec[9]} F_UTICKS=${rec[10]}
      final_note="sample at ${F_T}-${F_END}s; hold began closing at ${hold_close}s"
      ((k < ${#HS[@]} - 1)) && final_note+=" (the $((${#HS[@]} - 1 - k)) later sample(s) ended after that and were discarded)"
      break
    fi
  done
  log "  $name end-of-hold $final_note"
  local server_alive=true
  kill -0 "$SERVER_PID" 2>/dev/null || server_alive=false
  # Bounded wait until the server has closed (nearly) everything; RSS after.
  local c=0 t_close=$SECONDS
  for ((i = 0; i < 120; i++)); do
    # shellcheck disable=SC2046
    c=$(($(fd_count $(server_pids)) - fd0))
    ((c <= 10)) && break
    sleep 1
  done
  local close_secs=$((SECONDS - t_close)) rss_after pss_after
  # The same few seconds' rest as the baseline had (megaconn's parking lot
  # gives freed heap back once a second).
  sleep 3
  # shellcheck disable=SC2046  # a list of PIDs
  read -r rss_after _t pss_after _u < <(proc_stats $(server_pids))
  local restarts=0
  [[ "$name" == megaconn ]] && restarts="$(grep -ci 'restart' "$RES_DIR/$name.server.log" || true)"
  local exit_status
  stop_server
  exit_status=$EXIT_STATUS
  log "  $name: exit status $exit_status; $(tail -1 "$RES_DIR/$name.server.log")"
  # No hold-phase sample (hold ended early): fall back to the last sample.
  if ((F_T == 0)); then F_T=$S_T F_CONNS=$S_CONNS F_OPEN=$S_OPEN F_RSS=$S_RSS F_PSS=$S_PSS F_K=$S_K F_SK=$S_SK F_TICKS=$S_TICKS F_HTICKS=$S_HTICKS F_END=$S_END F_UTICKS=$S_UTICKS; fi
  # Heartbeats/s over the CPU window (hold's progress lines), and CPU per heartbeat.
  local hb_rate=null srv_us_hb=null srv_user_us_hb=null cli_us_hb=null hold_cpu_pct=null
  if ((cpu_t0 > 0 && F_T > cpu_t0)); then
    hb_rate="$(hold_hb_rate "$hlog" "$cpu_t0" "$F_T")"
    hold_cpu_pct="$(awk -v a="$cpu_hticks0" -v b="$F_HTICKS" -v hz="$CLK_TCK" -v s="$((F_T - cpu_t0))" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }')"
    if [[ "$hb_rate" != null ]]; then
      srv_us_hb="$(awk -v a="$cpu_ticks0" -v b="$F_TICKS" -v hz="$CLK_TCK" -v s="$((F_T - cpu_t0))" -v r="$hb_rate" 'BEGIN { if (r > 0) printf "%.2f", (b - a) / hz / (r * s) * 1e6; else print "null" }')"
      srv_user_us_hb="$(awk -v a="$cpu_uticks0" -v b="$F_UTICKS" -v hz="$CLK_TCK" -v s="$((F_T - cpu_t0))" -v r="$hb_rate" 'BEGIN { if (r > 0) printf "%.2f", (b - a) / hz / (r * s) * 1e6; else print "null" }')"
      cli_us_hb="$(awk -v a="$cpu_hticks0" -v b="$F_HTICKS" -v hz="$CLK_TCK" -v s="$((F_T - cpu_t0))" -v r="$hb_rate" 'BEGIN { if (r > 0) printf "%.2f", (b - a) / hz / (r * s) * 1e6; else print "null" }')"
    fi
  fi
  local cpu_pct=null other_pct=null kswapd_pct=null softirq_pct=null sampler_pct=null steal_pct=null
  if ((cpu_t0 > 0 && F_T > cpu_t0)); then
    cpu_pct="$(awk -v a="$cpu_ticks0" -v b="$F_TICKS" -v hz="$CLK_TCK" -v s="$((F_T - cpu_t0))" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }')"
    # Busy CPU of the whole machine (ncpu × wall − idle, lib.sh) from the CPU
    # window's start until hold's end was awaited: % of one core.
    other_pct="$(awk -v b="$(machine_busy_between "$busy_cpu0" "$busy1")" -v a="$busy_cpu0" -v c="$busy1" 'BEGIN { split(a, x, " "); split(c, y, " "); printf "%.1f", b / (y[1] - x[1]) * 100 }')"
    kswapd_pct="$(awk -v k0="$ksw0" -v k1="$ksw1" -v a="$busy_cpu0" -v c="$busy1" -v hz="$CLK_TCK" 'BEGIN { split(a, x, " "); split(c, y, " "); printf "%.1f", (k1 - k0) / hz / (y[1] - x[1]) * 100 }')"
    softirq_pct="$(awk -v s0="$sirq0" -v s1="$sirq1" -v a="$busy_cpu0" -v c="$busy1" 'BEGIN { split(a, x, " "); split(c, y, " "); printf "%.1f", (s1 - s0) / (y[1] - x[1]) * 100 }')"
    sampler_pct="$(awk -v k0="$self0" -v k1="$self1" -v a="$busy_cpu0" -v c="$busy1" -v hz="$CLK_TCK" 'BEGIN { split(a, x, " "); split(c, y, " "); printf "%.1f", (k1 - k0) / hz / (y[1] - x[1]) * 100 }')"
    steal_pct="$(awk -v s0="$steal0" -v s1="$steal1" -v a="$busy_cpu0" -v c="$busy1" 'BEGIN { split(a, x, " "); split(c, y, " "); printf "%.1f", (s1 - s0) / (y[1] - x[1]) * 100 }')"
  fi
  local hold_json=null
  [[ -s "$hjson" ]] && hold_json="$(jq -c . "$hjson" 2>/dev/null || echo null)"
  jq -n --arg server "$name" --argjson target "$target" --argjson procs "$procs" \
    --argjson ramp "$ramp" --argjson hold_s "$hold" --argjson interval "$INTERVAL" \
    --argjson conns "$F_CONNS" --argjson open "$F_OPEN" --argjson peak "$peak_conns" --argjson t "$F_T" \
    --argjson rss0 "$rss0" --argjson rss "$F_RSS" --argjson rss_after "$rss_after" \
    --argjson pss0 "${pss0:-0}" --argjson pss "${F_PSS:-0}" --argjson pss_after "${pss_after:-0}" \
    --argjson k0 "$k0" --argjson k "$F_K" --argjson sk0 "$sk0" --argjson sk "$F_SK" \
    --argjson cpu_pct "$cpu_pct" --argjson busy_pct "$other_pct" --argjson kswapd_pct "$kswapd_pct" \
    --argjson softirq_pct "$softirq_pct" --argjson sampler_pct "$sampler_pct" --argjson steal_pct "$steal_pct" \
    --arg others_ramp "$others_ramp" --arg others_hold "$others_hold" \
    --argjson cpu_window "$((F_T - cpu_t0))" --argjson softnet_drops "$((sn1 - sn0))" \
    --argjson listen_overflows "$((lo1 - lo0))" --argjson syn_retrans "$((sr1 - sr0))" \
    --argjson rto_timeouts "$((rto1 - rto0))" --argjson rcv_drops "$((rqd1 - rqd0))" \
    --argjson all_open_t "$all_open_t" --argjson cpu_settle "$settle" \
    --arg stopped_early "$stopped_early" --argjson server_alive "$server_alive" \
    --arg exit_status "$exit_status" --argjson close_secs "$close_secs" \
    --argjson restarts "${restarts:-0}" --argjson hold "$hold_json" \
    --argjson hb_rate "$hb_rate" --argjson srv_us_hb "$srv_us_hb" --argjson srv_user_us_hb "$srv_user_us_hb" --argjson cli_us_hb "$cli_us_hb" \
    --argjson hold_cpu_pct "$hold_cpu_pct" --argjson final_end "$F_END" --argjson hold_close "$hold_close" \
    --arg final_note "$final_note" --argjson machine_cpus "$(nproc)" --arg cpu_model "$(cpu_model)" \
    --argjson bcast "$BROADCAST" --argjson b_pushes "$B_PUSHES" --argjson b_ns "$B_NS" \
    --argjson b_secs "$B_SECS" --arg b_status "$B_STATUS" \
    '{server: $server, target: $target, processes: $procs, ramp_rate: $ramp, hold_secs: $hold_s, interval_secs: $interval,
      connections: $conns, client_open: $open, server_peak: $peak, measured_at_secs: $t,
      rss_baseline: $rss0, rss: $rss, rss_after_close: $rss_after,
      pss_baseline: $pss0, pss: $pss, pss_after_close: $pss_after,
      pss_per_conn: (if $conns > 0 then ($pss - $pss0) / $conns else null end),
      rss_per_conn: (if $conns > 0 then ($rss - $rss0) / $conns else null end),
      kernel_per_conn: (if $conns > 0 then ($k - $k0) / $conns else null end),
      sock_kernel_per_conn: (if $conns > 0 then ($sk - $sk0) / $conns else null end),
      kernel_baseline: $k0, kernel: $k,
      cpu_pct_holding: $cpu_pct, cpu_window_secs: $cpu_window, machine_busy_pct: $busy_pct, machine_cpus: $machine_cpus, machine_cpu_model: $cpu_model, kswapd_cpu_pct: $kswapd_pct,
      softirq_cpu_pct: $softirq_pct, sampler_cpu_pct: $sampler_pct, steal_cpu_pct: $steal_pct, others_ramp: $others_ramp, others_holding: $others_hold,
      softnet_drops: $softnet_drops, listen_overflows: $listen_overflows, syn_retransmits: $syn_retrans,
      rto_timeouts: $rto_timeouts, tcp_receive_drops: $rcv_drops,
      all_open_at_secs: $all_open_t, cpu_settle_secs: $cpu_settle,
      stopped_early: (if $stopped_early == "" then null else $stopped_early end),
      server_alive_after_hold: $server_alive, exit_status: $exit_status,
      close_secs: $close_secs, worker_restart_log_lines: $restarts,
      heartbeats_per_sec_holding: $hb_rate, server_us_per_heartbeat: $srv_us_hb, server_user_us_per_heartbeat: $srv_user_us_hb,
      hold_cpu_pct_holding: $hold_cpu_pct, hold_us_per_heartbeat: $cli_us_hb,
      final_sample_done_at_secs: $final_end, hold_began_closing_at_secs: $hold_close, final_sample_note: $final_note,
      broadcast: (if $bcast == 1 then {
        admin_answer: $b_status, pushes_counted: $b_pushes,
        pushes_received: ($hold.pushes_received // null),
        delivered_ratio: (if ($hold.pushes_received // null) != null and $conns > 0 then $hold.pushes_received / $target else null end),
        last_delivery_ms: (if ($hold.push_latency_us.max // null) != null then $hold.push_latency_us.max / 1000 else null end),
        p50_delivery_ms: (if ($hold.push_latency_us.p50 // null) != null then $hold.push_latency_us.p50 / 1000 else null end),
        wait_secs: $b_secs, server_cpu_ms: (if $b_ns != null then $b_ns / 1e6 else null end),
        server_us_per_delivery: (if $b_ns != null and ($hold.pushes_received // 0) > 0 then $b_ns / 1000 / $hold.pushes_received else null end),
        server_us_per_delivery_net: (if $b_ns != null and $cpu_pct != null and ($hold.pushes_received // 0) > 0
          then ([$b_ns / 1000 - $cpu_pct / 100 * $b_secs * 1e6, 0] | max) / $hold.pushes_received else null end)
      } else null end),
      hold: $hold}' >"$RES_DIR/$name.json"
  log "  $name: $(jq -c '{connections, rss, rss_per_conn, kernel_per_conn, cpu_pct_holding, exit_status}' "$RES_DIR/$name.json")"
}

# Before the next server: wait (at most DRAIN_WAIT s) until the last run's
# sockets are gone (back to within 100 of the count at the script's start) (TIME_WAIT lasts 60 s). The second server of a run used to
# start 5 s after the first closed, with ~200,000 sockets still in TIME_WAIT
# (~140 MB of the kernel's memory, expiring during its ramp); the order of
# the servers then moved their ratio of CPU per heartbeat (MILLION.md
# 2026-12-01), so each now starts on a clean table.
DRAIN_WAIT="${DRAIN_WAIT:-90}"
tcp_sockets() { # -> TCP sockets allocated + in TIME_WAIT (this namespace)
  awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "alloc" || $i == "tw") n += $(i + 1) } END { print n + 0 }' /proc/net/sockstat
}
TCP_SOCKETS_AT_START="$(tcp_sockets)"
drain_sockets() {
  local t0=$SECONDS left
  while :; do
    left=$(($(tcp_sockets) - TCP_SOCKETS_AT_START))
    ((left < 100)) && break
    if ((SECONDS - t0 >= DRAIN_WAIT)); then
      log "  $left TCP sockets still allocated or in TIME_WAIT after ${DRAIN_WAIT} s; going on"
      break
    fi
    sleep 1
  done
  log "  sockets of the last run drained in $((SECONDS - t0)) s ($left left)"
}

# ---------------------------------------------------------------- run
t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
if [[ -z "$FROM_DIRS" ]]; then
  for i in "${!servers[@]}"; do
    server="${servers[$i]}"
    ((i > 0)) && drain_sockets
    if [[ "$server" == megaconn ]]; then
      [[ "$MEGACONN_SERVE_OK" == 1 ]] || { log "megaconn serve unavailable; skipped"; continue; }
      run_server megaconn "$N" "$RAMP" "$HOLD"
    else
      run_server "$server" "$N_PEER" "$RAMP_PEER" "$HOLD_PEER"
    fi
  done
fi
elapsed=$((SECONDS - t_start))

# ---------------------------------------------------------------- plot
# Where SERVER's results are: the last of FROM_DIRS holding SERVER.json, else
# this run's directory.
src_dir() {
  local d found="$RES_DIR"
  for d in $FROM_DIRS; do [[ -s "$d/$1.json" ]] && found="$d"; done
  echo "$found"
}
if [[ -n "$PLOT" ]] && command -v gnuplot >/dev/null 2>&1; then
  plot_cmd=""
  for server in "${servers[@]}"; do
    [[ -s "$(src_dir "$server")/$server.csv" ]] || continue
    # RSS against server-side connections, ramp and hold samples.
    awk -F, 'NR > 1 { print $3, $5 / 1048576 }' "$(src_dir "$server")/$server.csv" >"$RES_DIR/$server.plot.dat"
    plot_cmd+="${plot_cmd:+, }'$RES_DIR/$server.plot.dat' using (\$1/1000):2 with linespoints pt 7 ps 0.4 title '$server'"
  done
  if [[ -n "$plot_cmd" ]]; then
    gnuplot <<EOF || log "WARNING: gnuplot failed"
set terminal svg size 800,480 dynamic enhanced font 'sans,12' background '#ffffff'
set output '$PLOT'
set title 'Server RSS against connections held (megaconn to $N, peers to $N_PEER; $(nproc) cores, loopback)'
set xlabel 'connections held (thousands)'
set ylabel 'server RSS, all processes (MiB)'
set key top left
set grid
set yrange [0:*]
set xrange [0:*]
plot $plot_cmd
EOF
    if [[ -s "$PLOT" ]]; then log "plot: $PLOT"; fi
  fi
fi

# ---------------------------------------------------------------- table
{
  what="keep-alive HTTP/1.1"
  [[ "$TLS" == 1 ]] && what="HTTPS/1.1"
  [[ "$PROTO" == framed ]] && what="framed TCP (u32 length header; a PING frame per heartbeat, answered PONG)"
  [[ "$PROTO" == ws ]] && what="WebSocket (native /ws; a ping per heartbeat, answered by a pong)"
  [[ "$PROTO" == ws && "$TLS" == 1 ]] && what="WebSocket over TLS (wss://, native /ws; a ping per heartbeat, answered by a pong)"
  echo "### A million connections ($what): $N for megaconn, $N_PEER for the peers ($(nproc) cores, $(cpu_model); server on CPUs $SERVER_CPU, \`megaconn hold\` on CPUs $LOAD_CPU)"
  echo
  echo "| server | processes | connections held | ramp (hold) / all open | drops / resets / failed connects | heartbeat p50 / p99 / p99.9: whole run | after the ramp | steady (one interval after the ramp) | server RSS total | server bytes/conn (Δ RSS) | server bytes/conn (Δ PSS) | kernel bytes/conn (both ends) | server CPU while holding | server CPU per heartbeat | hold CPU per heartbeat | clean exit |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for server in "${servers[@]}"; do
    [[ -s "$(src_dir "$server")/$server.json" ]] || continue
    jq -r '
      def mib: if . == null then "—" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
      def ms: if . == null then "—" elif . < 1000 then ((. / 10 | round) / 100 | tostring) + " ms" else ((. / 100 | round) / 10 | tostring) + " ms" end;
      def f0: if . == null then "—" else (. | round | tostring) end;
      def big: tostring | explode | reverse | [foreach .[] as $c (0; . + 1; if . > 1 and (. - 1) % 3 == 0 then [44, $c] else [$c] end)] | add | reverse | implode;
      def us: if . == null then "—" else ((. * 10 | round) / 10 | tostring) + " µs" end;
      if .error then "| \(.server) | — | \(.error) | | | | | | | | | | | | | |" else
      "| \(.server) | \(.processes) | \(.connections | big) of \(.target | big)" + (if .stopped_early then " (stopped: \(.stopped_early))" else "" end)
      + " | \(.hold.ramp_secs // null | if . == null then "—" else ((. * 10 | round) / 10 | tostring) + " s" end) / \(.all_open_at_secs // null | if . == null then "—" else "\(.) s" end)"
      + " | \(.hold.drops // "—") / \(.hold.resets // "—") / \(.hold.failed_connects // "—")"
      + " | \(.hold.heartbeat_latency_us.p50 // null | ms) / \(.hold.heartbeat_latency_us.p99 // null | ms) / \(.hold.heartbeat_latency_us.p999 // null | ms)"
      + " | \(.hold.heartbeat_latency_holding_us.p50 // null | ms) / \(.hold.heartbeat_latency_holding_us.p99 // null | ms) / \(.hold.heartbeat_latency_holding_us.p999 // null | ms)"
      + " | \(.hold.heartbeat_latency_steady_us.p50 // null | ms) / \(.hold.heartbeat_latency_steady_us.p99 // null | ms) / \(.hold.heartbeat_latency_steady_us.p999 // null | ms)"
      + " | \(.rss | mib) | \(.rss_per_conn | f0) | \(.pss_per_conn | f0) | \(.kernel_per_conn | f0)"
      + " | \((.heartbeats_per_sec_holding // null) as $hb | .cpu_pct_holding // null | if . == null then "—" else tostring + " % (\($hb | f0) heartbeats/s)" end)"
      + " | \(.server_us_per_heartbeat // null | us)\(if .server_user_us_per_heartbeat != null then " (user \(.server_user_us_per_heartbeat | us))" else "" end) | \(.hold_us_per_heartbeat // null | us)"
      + " | \(if .exit_status == "0" then "yes" else "no (" + .exit_status + ")" end) |" end' "$(src_dir "$server")/$server.json"
  done
  if [[ "$BROADCAST" == 1 ]]; then
    echo
    echo "| server | broadcast of 64 B: pushes received / N | time to last delivery | p50 delivery | server CPU (raw) | server µs per delivered message (raw / net of heartbeats) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for server in "${servers[@]}"; do
      [[ -s "$(src_dir "$server")/$server.json" ]] || continue
      jq -r 'select(.broadcast != null) | .broadcast as $b |
        def r1: if . == null then "—" else ((. * 10 | round) / 10 | tostring) end;
        def r2: if . == null then "—" else ((. * 100 | round) / 100 | tostring) end;
        "| \(.server) | \($b.pushes_received // "—") / \(.target) | \($b.last_delivery_ms | r1) ms | \($b.p50_delivery_ms | r1) ms | \($b.server_cpu_ms | r1) ms over \($b.wait_secs) s | \($b.server_us_per_delivery | r2) / \($b.server_us_per_delivery_net | r2) µs |"' "$(src_dir "$server")/$server.json"
    done
    echo
    echo "Broadcast: once the ramp was over, one \`POST /broadcast\` of 64 bytes (starting \`t=<unix ns>\`, taken just before curl started) to the supervisor's admin listener, which forwards it to every worker process over its publish channel; each delivers it to its connections. Pushes received and delivery latency from \`hold --receive\` (receiver and sender share the clock). Server CPU: schedstat of all its processes from just before the publish until hold counted N pushes (polled from hold's once-a-second progress lines, so the window is up to ~1 s longer than the delivery) or ${BCAST_WAIT} s; net = raw less the heartbeats' CPU over the same wall time at the holding rate measured afterwards."
  fi
  echo
  echo "Connections held: the server's open sockets (open fds of all its processes minus their count at rest) at the end of the hold; \`megaconn hold\` reported the same count open (see the JSON). Ramp: hold's ramp time at the asked rate ($RAMP/s megaconn, $RAMP_PEER/s peers) / seconds after hold started until the server held them all (sampled every $RAMP_SAMPLE s, so ±$RAMP_SAMPLE s; connects whose SYN was dropped wait for retransmits). Heartbeats: one GET / per connection every ${INTERVAL} s (jittered), latency measured by hold over the whole run, and apart for the heartbeats sent after the ramp (in each hold process, once its every connection had been tried), when no connects share the CPUs with them, and for those sent one interval or more after it (steady: a ramp the two cores could not keep up with leaves a backlog of late heartbeats, which hold sends as soon as it can and which are answered in the first seconds after the ramp; by one interval later every connection has beaten on schedule again). Server RSS: VmRSS summed over every process of the server (megaconn's and Go's supervisor + workers, nginx master + workers), at the end of the hold. Server bytes/conn = (RSS − RSS at rest after one request) / connections. Kernel bytes/conn = Δ(Slab + TCP buffer pages) / connections — both the client and the server socket of each loopback connection (this one kernel holds both), so a server's own share is about half. Server bytes/conn (Δ PSS): the same with PSS (Pss from /proc/PID/smaps_rollup, summed: pages shared between the processes, such as the binary's code, split between them instead of counted in each). Server CPU while holding = its CPU seconds / wall seconds from min(${CPU_SETTLE} s, hold/4) after the ramp to the end-of-hold sample, in % of one core (only heartbeats flow then: about connections / ${INTERVAL} s; heartbeats/s is the mean of hold's progress lines over that window). CPU per heartbeat = CPU seconds over that window / heartbeats in it (server: utime+stime of all its processes, with its user-space share, utime, in brackets; hold: of hold and its children). Each server starts once the last one's sockets are gone (TIME_WAIT included, at most ${DRAIN_WAIT} s). The end-of-hold sample is timed from hold's real ramp end and checked against hold's report, so it is taken before hold starts closing (see final_sample_note in the JSON). The script sets kernel.sched_autogroup_enabled=0 for the run and restores it after. Clean exit: status 0 after SIGTERM once hold had closed its connections."
  echo
  for server in "${servers[@]}"; do
    [[ -s "$(src_dir "$server")/$server.json" ]] || continue
    jq -r '"- \(.server): hold open at end \(.hold.connections_open_at_end // "—"), heartbeats \(.hold.heartbeats_ok // "—") ok / \(.hold.heartbeat_errors // "—") failed, p99.99 \(.hold.heartbeat_latency_us.p9999 // "—") µs, max \(.hold.heartbeat_latency_us.max // "—") µs, heartbeats held back by a full send buffer \(.hold.beats_held_back // "—"), wall-clock steps \(.hold.wall_clock_steps // "—"); socket slab + TCP pages \(.sock_kernel_per_conn // 0 | round) B/conn; RSS at rest \(.rss_baseline / 1048576 * 10 | round / 10) MiB, after close \(.rss_after_close / 1048576 * 10 | round / 10) MiB; PSS at rest \((.pss_baseline // 0) / 1048576 * 10 | round / 10) MiB, holding \((.pss // 0) / 1048576 * 10 | round / 10) MiB (\(.pss_per_conn // 0 | round) B/conn), after close \((.pss_after_close // 0) / 1048576 * 10 | round / 10) MiB; machine busy \(.machine_busy_pct // "—") % of one core while holding (all processes on both cores: server, hold and others), of which kswapd \(.kswapd_cpu_pct // "—") %, softirq and irq \(.softirq_cpu_pct // "—") % (mostly also inside the server'"'"'s and hold'"'"'s own CPU), this script'"'"'s samplers \(.sampler_cpu_pct // "—") %, steal (the host'"'"'s) \(.steal_cpu_pct // "—") %; the busiest other processes while holding: \(if (.others_holding // "") == "" then "—" else .others_holding end), while ramping: \(if (.others_ramp // "") == "" then "—" else .others_ramp end); loopback backlog drops \(.softnet_drops), ListenOverflows +\(.listen_overflows), SYN retransmits +\(.syn_retransmits), retransmission timeouts +\(.rto_timeouts // "—"), receive drops (memory, backlog, window) +\(.tcp_receive_drops // "—") (system-wide); server alive after hold: \(.server_alive_after_hold); hold CPU while holding \(.hold_cpu_pct_holding // "—") % of a core; end-of-hold \(.final_sample_note // "—"); asked \(.target) at \(.ramp_rate)/s, held \(.hold_secs) s, heartbeat interval \(.interval_secs // "—") s\(if .machine_busy_pct != null and .machine_cpus != null and .machine_busy_pct > .machine_cpus * 100 - 8 then "; **saturated**: under 8 % of a core was free while holding, so the heartbeat tail is mostly waiting for a CPU, not the server (in every million run since 2026-12-01 that left 8 % free, p99 after the ramp was within 50 ms: bench/MILLION.md, 2026-12-03)" else "" end)"' "$(src_dir "$server")/$server.json"
  done
  echo
  echo "_million.sh: PROTO=$PROTO BROADCAST=$BROADCAST TLS=$TLS N=$N N_PEER=$N_PEER RAMP=$RAMP RAMP_PEER=$RAMP_PEER HOLD=$HOLD HOLD_PEER=$HOLD_PEER INTERVAL=$INTERVAL SOURCE=$SOURCE DROP_CACHES=$DROP_CACHES NETNS_EHASH=${NETNS_EHASH:-0}${MEGACONN_SERVE_ARGS:+ MEGACONN_SERVE_ARGS=\"$MEGACONN_SERVE_ARGS\"}${HOLD_ARGS:+ HOLD_ARGS=\"$HOLD_ARGS\"}; megaconn $(cat "$(src_dir megaconn)/megaconn.version" 2>/dev/null || echo '?'); run time ${elapsed}s; raw data: bench/out/million-$STAMP/${FROM_DIRS:+ and $FROM_DIRS}_"
} | tee "$RES_DIR/table.md"
