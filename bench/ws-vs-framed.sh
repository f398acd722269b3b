#!/usr/bin/env bash
# bench/ws-vs-framed.sh — native WebSocket against framed TCP on one worker:
# heartbeat latency, wakes (cold, hot, without a task) and server RSS per
# held connection, the same `hold` on the same server, one after the other.
#
# For each of ws and framed (u32 length header), ROUNDS times, interleaved:
# starts `megaconn serve --workers 1` (with --tcp-listen), reads its RSS,
# holds N connections with `megaconn hold` pinging every INTERVAL for HOLD
# seconds, sampling RSS and the lot's counters every 5 s, and prints one
# row: hold's latency report, the wake counters, and
# (median sampled RSS while holding - RSS before) / N.
#
# Env: N (15000), INTERVAL (5s), HOLD (60), RAMP (1000/s), ROUNDS (1),
#   PORT (27501; +1 admin, +2 framed), MEGACONN (the server,
#   target/release/megaconn), HOLD_BIN (the client, default MEGACONN).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-15000}" INTERVAL="${INTERVAL:-5s}" HOLD="${HOLD:-60}" RAMP="${RAMP:-1000}"
ROUNDS="${ROUNDS:-1}" PORT="${PORT:-27501}"
MEGACONN="${MEGACONN:-target/release/megaconn}"
HOLD_BIN="${HOLD_BIN:-$MEGACONN}"
ADMIN=$((PORT + 1)) TCP=$((PORT + 2))
ulimit -n 20000
out=$(mktemp -d)
server=
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$server/status"; }
metric() { curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

one() { # ws|framed
  "$MEGACONN" serve --workers 1 --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
    --tcp-listen "127.0.0.1:$TCP" --tcp-framing u32 >"$out/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "127.0.0.1:$ADMIN/metrics" && break; sleep 0.2; done
  local before; before=$(rss)
  local target=(ws://127.0.0.1:$PORT/ws)
  [[ $1 == framed ]] && target=(tcp://127.0.0.1:$TCP --tcp-framing u32)
  "$HOLD_BIN" hold "${target[@]}" -c "$N" --interval "$INTERVAL" --duration "${HOLD}s" \
    --ramp "$RAMP" -q >"$out/hold.log" 2>&1 &
  local hold=$! samples=()
  while kill -0 "$hold" 2>/dev/null; do
    sleep 5
    [[ "$(metric megaconn_connections_open)" == "$N" ]] && samples+=("$(rss)")
  done
  wait "$hold" || true
  local cold hot notask
  cold=$(metric 'megaconn_connections_wakes_total{kind="cold"}')
  hot=$(metric 'megaconn_connections_wakes_total{kind="hot"}')
  notask=$(metric megaconn_connections_wakes_without_task_total)
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  local median; median=$(printf '%s\n' "${samples[@]:-0}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '| %s | %s | %s | cold %s, hot %s, without a task %s | %s B |\n' "$1" \
    "$(grep -o 'heartbeats.*' "$out/hold.log")" "$(grep -o 'p50.*p99 [0-9.]*' "$out/hold.log")" \
    "$cold" "$hot" "$notask" "$(( (median - before) / N ))"
}

echo "| protocol | heartbeats | latency us | wakes | server RSS per connection |"
echo "|---|---|---|---|---:|"
for _ in $(seq "$ROUNDS"); do one ws; one framed; done
