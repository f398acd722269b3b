#!/usr/bin/env bash
# bench/wss-idle.sh — server memory per idle native WebSocket over TLS
# (wss://) beside cleartext ones (ws://), for two server builds side by side
# in one run (A: e.g. main's, which serves wss:// as a task per connection;
# B: e.g. a branch's, which parks them).
#
# For each round, for each of ws and wss, for each of A and B (interleaved):
# starts `SERVER serve --workers 1 --park-after 1s` (wss: `--self-signed`),
# reads its RSS, holds N connections with `HOLD_BIN hold ws(s)://.../ws`
# (pings every INTERVAL, so the server, which pings only peers silent for
# 60 s, sends none) for HOLD seconds, samples RSS every 5 s while all N are
# open, and prints one row: (median sampled RSS - RSS before) / N, and the
# server's open and parked gauges at the last sample.
#
# Env: N (15000), INTERVAL (30s), HOLD (75), RAMP (500/s), ROUNDS (1),
#   PORT (27300; +1 admin), A and B (the two servers; B defaults to
#   target/release/megaconn), HOLD_BIN (the client, default B: it needs
#   `hold wss://`).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-15000}" INTERVAL="${INTERVAL:-30s}" HOLD="${HOLD:-75}" RAMP="${RAMP:-500}"
ROUNDS="${ROUNDS:-1}" PORT="${PORT:-27300}"
B="${B:-target/release/megaconn}"
A="${A:?A: the server build to compare with, e.g. a copy of the main branch release binary}"
HOLD_BIN="${HOLD_BIN:-$B}"
ADMIN=$((PORT + 1))
ulimit -n 20000
out=$(mktemp -d)
server=
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$server/status"; }
metric() { curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

one() { # label binary ws|wss
  local tls=() scheme=ws trust=()
  if [[ $3 == wss ]]; then tls=(--self-signed) scheme=wss trust=(--insecure); fi
  "$2" serve --workers 1 --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
    --park-after 1s --max-connections 19000 "${tls[@]}" >"$out/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "127.0.0.1:$ADMIN/metrics" && break; sleep 0.2; done
  local before; before=$(rss)
  "$HOLD_BIN" hold "$scheme://127.0.0.1:$PORT/ws" "${trust[@]}" -c "$N" --interval "$INTERVAL" \
    --duration "${HOLD}s" --ramp "$RAMP" -q >"$out/hold.log" 2>&1 &
  local hold=$! samples=() open=0 parked=0
  while kill -0 "$hold" 2>/dev/null; do
    sleep 5
    open=$(metric megaconn_connections_open)
    if [[ "$open" == "$N" ]]; then
      samples+=("$(rss)")
      parked=$(metric megaconn_connections_parked)
    fi
  done
  wait "$hold" || true
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  local median; median=$(printf '%s\n' "${samples[@]:-0}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '| %s | %s | %d -> %d KiB (%d samples) | %s open, %s parked | **%d B** | %s |\n' \
    "$1" "$scheme" $((before / 1024)) $((median / 1024)) "${#samples[@]}" "$N" "$parked" \
    $(((median - before) / N)) "$(grep -o 'drops [0-9]*' "$out/hold.log" | head -1)"
}

echo "| server | scheme | RSS before -> holding (median) | gauges while holding | RSS per connection | hold |"
echo "|---|---|---|---|---:|---|"
for _ in $(seq "$ROUNDS"); do
  one A "$A" wss
  one B "$B" wss
  one A "$A" ws
  one B "$B" ws
done
