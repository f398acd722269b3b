#!/usr/bin/env bash
# bench/upgrade.sh — zero-downtime upgrades under many idle connections.
#
# `megaconn hold` opens N keep-alive connections (HTTP heartbeats every
# INTERVAL, so each parks between heartbeats); while it holds them, the
# server is upgraded UPGRADES times (`serve --upgrade`). Reported: what hold
# saw (drops, resets, heartbeat errors, open at the end), and per upgrade the
# time the new process took from connecting to the old one to having every
# parked connection in its own lots (its `megaconn upgrade done ... in X ms`
# line) and how many parked connections moved.
#
#   bench/upgrade.sh                      # N=19000, one server process
#   N=45000 PROCESSES=3 bench/upgrade.sh  # worker processes of 15,000 each
#   flock /work/bigrun.lock env N=... bench/upgrade.sh   # over 50,000
#
# Env: N, PROCESSES (1), WORKERS (2), UPGRADES (3), INTERVAL (10s), PORT
# (26100), ADMIN (26101), MEGACONN (target/release/megaconn), OUT
# (bench/out/upgrade). One process holds at most RLIMIT_NOFILE - 256
# connections (20,000 here): beyond, use PROCESSES.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
MEGACONN="${MEGACONN:-$REPO_ROOT/target/release/megaconn}"
N="${N:-19000}"
PROCESSES="${PROCESSES:-1}"
WORKERS="${WORKERS:-2}"
UPGRADES="${UPGRADES:-3}"
INTERVAL="${INTERVAL:-10s}"
PORT="${PORT:-26100}"
ADMIN="${ADMIN:-26101}"
OUT="${OUT:-$BENCH_DIR/out/upgrade}"
mkdir -p "$OUT"
rm -f "$OUT"/gen*.log "$OUT"/hold.*
ulimit -n 20000
SOCK="$OUT/upgrade.sock"

PIDS=()
# Waits for them too: a server drains its connections before it exits
# (within --shutdown-timeout), holding the port meanwhile, and a next run
# started at once found it in use ("cannot listen on ...: the address is
# already in use").
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

SERVED=""  # the pid serve() started
serve() { # GEN [--upgrade]
  local gen=$1; shift
  # A supervisor's admin listener is not handed over: each generation has
  # its own port (ADMIN + generation).
  local admin=(--admin "127.0.0.1:$ADMIN")
  if [ "$PROCESSES" -gt 1 ]; then admin=(--admin "127.0.0.1:$((ADMIN + gen))"); fi
  "$MEGACONN" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" --processes "$PROCESSES" \
    "${admin[@]}" --upgrade-socket "$SOCK" --park-after 1s --idle-timeout 10m \
    --shutdown-timeout 60s "$@" >"$OUT/gen$gen.log" 2>&1 &
  SERVED=$!
  PIDS+=("$SERVED")
}

GEN=0
metric() {
  local port=$ADMIN
  if [ "$PROCESSES" -gt 1 ]; then port=$((ADMIN + GEN)); fi
  curl -s "127.0.0.1:$port/metrics" | awk -v m="$1" '$1==m {print $2}'
}

wait_for() { # WHAT CMD... : polls CMD (bounded, 300 s)
  local what=$1; shift
  for _ in $(seq 3000); do "$@" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; exit 1
}

parked_all() { local p; p=$(metric megaconn_connections_parked); [ "${p:-0}" -ge $((N * 99 / 100)) ]; }

serve 0
old=$SERVED
wait_for "the server" grep -q "^megaconn serving on" "$OUT/gen0.log"
ramp=$(( N / 10 < 1000 ? 1000 : N / 10 ))
# Enough time for the ramp, the upgrades and their drains.
hold_secs=$(( N / ramp + 30 + UPGRADES * 15 ))
"$MEGACONN" hold "http://127.0.0.1:$PORT/" -c "$N" --ramp "$ramp" --interval "$INTERVAL" \
  -d "${hold_secs}s" --source 127.0.26.1-127.0.26.8 --json "$OUT/hold.json" -q \
  >"$OUT/hold.log" 2>&1 &
hold=$!
PIDS+=("$hold")
wait_for "$N parked connections" parked_all
echo "held: $(metric megaconn_connections_open) open, $(metric megaconn_connections_parked) parked (gen 0, pid $old)"

for gen in $(seq 1 "$UPGRADES"); do
  serve "$gen" --upgrade
  new=$SERVED
  # One process and a supervisor (once every worker process took over)
  # alike say it.
  wait_for "gen $gen" grep -q "^megaconn upgrade done" "$OUT/gen$gen.log"
  grep "^megaconn upgrade done" "$OUT/gen$gen.log"
  # The old generation drains and exits on its own.
  wait_for "gen $((gen - 1)) to exit" bash -c "! kill -0 $old 2>/dev/null"
  grep -h "handed over; draining" "$OUT/gen$((gen - 1)).log" | sed -e 's/^.*upgrade: //' -e "s/^/  gen $((gen - 1)): /" || true
  old=$new
  # Wait until the connections are parked in the new generation again (a
  # heartbeat wakes each one in turn).
  GEN=$gen
  wait_for "parked in gen $gen" parked_all
  echo "  gen $gen: $(metric megaconn_connections_open) open, $(metric megaconn_connections_parked) parked"

done

wait "$hold" || true
echo "hold (client view, whole run across $UPGRADES upgrades):"
sed -n '/^hold /,$p' "$OUT/hold.log"
