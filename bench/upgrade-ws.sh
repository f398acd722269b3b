#!/usr/bin/env bash
# bench/upgrade-ws.sh — what N held WebSockets see when the server is
# upgraded in place (`serve --upgrade`): a WebSocket cannot move to the
# new process, so the old one tells each `1001` (going away) in its drain
# and closes it; its client reconnects. This counts, from both ends, how
# each of them ended:
#   - the old process: its hand-over line (parked connections moved, what
#     is left to its drain) and its last line (closed cleanly, forced);
#   - `megaconn hold ws://…` (no --reconnect): closed by the server with
#     1001 (and other codes), heartbeats failed (a ping in flight when the
#     close came: its pong never comes; since session 45 the connection
#     still counts as closed with its code, before it counted as failed
#     only), drops (a close without a close frame), resets, and
#     connections still open at its end (session 44 saw 7 and 1: a `hold`
#     that read a close frame and the FIN in one read left the FIN unread,
#     fixed in session 45);
#   - the kernel, once the old process has exited: hold's sockets to PORT
#     by state (`ss`), ESTABLISHED ones by the process at their other end.
#     A socket whose server side is gone cannot stay ESTABLISHED; one
#     hold still counts open after that is hold's accounting, and one
#     still ESTABLISHED to the new process would be a WebSocket that did
#     move.
# Each round: a fresh server (generation 0), hold ramps N WebSockets up,
# waits until the server has all N open and SETTLE s more, upgrades once
# (generation 1), waits for the old process to exit, looks at the sockets,
# then ends hold (SIGINT: it reports what it measured) and the new server.
#
#   bash bench/upgrade-ws.sh                         # N=10000, ROUNDS=2
#   DRAIN_RATE=2000 bash bench/upgrade-ws.sh         # with --shutdown-drain-rate
#
# Env: N (10000), ROUNDS (2), WORKERS (1), INTERVAL (60s: hold's ping
# heartbeat; the first beat of each connection comes at a random point of
# its first interval, so some are in flight at the upgrade), RAMP (5000),
# SETTLE (2 s), DRAIN_RATE (none), MEGACONN (target/release/megaconn),
# PORT and ADMIN (free ones), OUT (bench/out/upgrade-ws: each round's
# logs and hold's JSON). Output: a markdown table, one row a round, on
# stdout; progress on stderr. One process holds at most RLIMIT_NOFILE −
# 256 connections (20,000 here): keep N below that.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
MEGACONN="${MEGACONN:-$REPO_ROOT/target/release/megaconn}"
N="${N:-10000}"
ROUNDS="${ROUNDS:-2}"
WORKERS="${WORKERS:-1}"
INTERVAL="${INTERVAL:-60s}"
RAMP="${RAMP:-5000}"
SETTLE="${SETTLE:-2}"
DRAIN_RATE="${DRAIN_RATE:-}"
OUT="${OUT:-$BENCH_DIR/out/upgrade-ws}"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="${PORT:-$(free_port)}"
ADMIN="${ADMIN:-$(free_port)}"
[[ -x "$MEGACONN" ]] || { echo "no megaconn binary at $MEGACONN (cargo build --release, or MEGACONN=…)" >&2; exit 2; }
mkdir -p "$OUT"
ulimit -n 20000
SOCK="$OUT/upgrade.sock"
log() { echo "upgrade-ws: $*" >&2; }

PIDS=()  # started and not yet reaped
# Waits for them too: a draining server holds the port until it exits.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
reap() { # PID [SIGNAL]: signals it (if given), waits for it, forgets it
  [[ -n "${2:-}" ]] && kill "-$2" "$1" 2>/dev/null
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

SERVED=""
serve() { # LOG [--upgrade]
  local out=$1; shift
  local drain=()
  [[ -n "$DRAIN_RATE" ]] && drain=(--shutdown-drain-rate "$DRAIN_RATE")
  "$MEGACONN" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" \
    --admin "127.0.0.1:$ADMIN" --upgrade-socket "$SOCK" --shutdown-timeout 60s \
    "${drain[@]}" "$@" >"$out" 2>&1 &
  SERVED=$!
  PIDS+=("$SERVED")
}

metric() { curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1==m {print $2}'; }

wait_for() { # WHAT SECONDS CMD... : polls CMD every 0.1 s
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2
  exit 1
}
all_open() { local o; o=$(metric megaconn_connections_open); [[ "${o:-0}" -ge "$N" ]]; }
exited() { ! kill -0 "$1" 2>/dev/null; }

# hold's sockets to PORT (dport: the client's side) by TCP state, and the
# ESTABLISHED ones by the pid at their other end (sport = PORT).
# (`|| true`: none is an answer, not a failure under pipefail.)
client_states() {
  { ss -tanH "( dport = :$PORT )" || true; } | awk '{ n[$1]++ } END { for (s in n) printf "%s %d, ", s, n[s] }' | sed 's/, $//'
}
server_ends() {
  { ss -tanpH state established "( sport = :$PORT )" | grep -o 'pid=[0-9]*' || true; } | sort | uniq -c |
    awk '{ printf "%s %d, ", $2, $1 }' | sed 's/, $//'
}

echo "| round | old process: hand-over, then its last line | hold: closed by the server (by code) | heartbeats failed | drops / resets | open at hold's end | hold's sockets after the old process exited | ESTABLISHED ones, by server pid |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  dir="$OUT/round$round"
  rm -rf "$dir" && mkdir -p "$dir"
  serve "$dir/gen0.log"
  old=$SERVED
  wait_for "the server" 20 grep -q "^megaconn serving on" "$dir/gen0.log"
  # Long enough never to end on its own first; it is interrupted below.
  "$MEGACONN" hold "ws://127.0.0.1:$PORT/ws" -c "$N" --ramp "$RAMP" --interval "$INTERVAL" \
    -d 600s --json "$dir/hold.json" -q >"$dir/hold.log" 2>&1 &
  hold=$!
  PIDS+=("$hold")
  wait_for "$N open WebSockets" 120 all_open
  sleep "$SETTLE"
  log "round $round: $(metric megaconn_connections_open) open, $(metric megaconn_connections_parked) parked (pid $old); upgrading"
  serve "$dir/gen1.log" --upgrade
  new=$SERVED
  wait_for "the upgrade" 60 grep -q "^megaconn upgrade done" "$dir/gen1.log"
  wait_for "the old process to exit" 90 exited "$old"
  reap "$old"
  # What is still open, a moment after: nothing of the old process's can
  # be (its sockets closed with it); hold's reads of the ends are due.
  sleep "$SETTLE"
  states=$(client_states)
  ends=$(server_ends)
  log "round $round: old pid $old exited; hold's sockets: ${states:-none}; established by server pid: ${ends:-none} (new pid $new)"
  reap "$hold" INT
  reap "$new" TERM
  handed=$(grep -h "megaconn handed over" "$dir/gen0.log" | sed -e 's/^.*megaconn handed over to pid [0-9]*: //' -e 's/; they .*$//' | tail -1)
  last=$(grep -h "at shutdown" "$dir/gen0.log" | sed -e 's/^.*; at shutdown/at shutdown/' | tail -1)
  hold_row=$(python3 - "$dir/hold.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
codes = ", ".join(f"{c}: {n:,}" for c, n in sorted(r.get("close_codes", {}).items(), key=lambda kv: int(kv[0])))
print(f"{r['closed_by_server']:,} ({codes or 'none'}) | {r['heartbeat_errors']:,} | "
      f"{r['drops']:,} / {r['resets']:,} | {r['connections_open_at_end']:,}")
EOF
)
  echo "| $round ($(date -u +%H:%M:%S)) | ${handed:-?}; ${last:-?} | $hold_row | ${states:-none} | ${ends:-none} |"
done
