#!/usr/bin/env bash
# bench/ws-idle.sh — server memory per idle native WebSocket.
#
# Starts `megaconn serve` (one worker, --park-after 1s) and measures its RSS
# with one WebSocket open to /ws (the native echo), then with N more held
# idle by bench/ws_idle_client.py (a raw-handshake client, standard-library
# Python, answering pings), once they have all parked: (RSS_N - RSS_1) / N
# is the server's user-space bytes per idle WebSocket. Then closes them and
# reads RSS again. The same with N idle HTTP/1.1 keep-alive connections
# (one GET /healthz each) on a fresh server, for comparison in one run.
#
# Env: N (15000), PORT (22080), MEGACONN (target/release/megaconn, built if
#   missing), SETTLE (3 s after the last connection: park-after is 1 s).
# Output: markdown table rows on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-15000}"
PORT="${PORT:-22080}"
SETTLE="${SETTLE:-3}"
MEGACONN="${MEGACONN:-target/release/megaconn}"
[[ -x "$MEGACONN" ]] || cargo build --release --locked --bin megaconn
ulimit -n 20000


rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

server= client_in=
cleanup() {
  [[ -n "$client_in" ]] && exec {client_in}>&- || true
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
}
trap cleanup EXIT

hold() { # path n mode -> starts a client holding n connections; waits for "ready"
  coproc CLIENT { python3 bench/ws_idle_client.py 127.0.0.1 "$PORT" "$1" "$2" "$3"; }
  client_in=${CLIENT[1]}
  read -r ready <&"${CLIENT[0]}"
  [[ "$ready" == "ready $2" ]] || { echo "client: $ready" >&2; exit 1; }
}

release() {
  exec {client_in}>&-; client_in=
  wait "$CLIENT_PID" 2>/dev/null || true
}

measure() { # label path mode
  "$MEGACONN" serve --listen "127.0.0.1:$PORT" --workers 1 --park-after 1s \
    --admin off --max-connections 19000 >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  hold "$2" 1 "$3"
  sleep "$SETTLE"
  local base held after
  base=$(rss "$server")
  release
  hold "$2" "$N" "$3"
  sleep "$SETTLE"
  held=$(rss "$server")
  release
  sleep "$SETTLE"
  after=$(rss "$server")
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  printf '| %s idle %s (parked) | RSS %d -> %d KiB | **%d B each** | after closing: %d KiB |\n' \
    "$N" "$1" $((base / 1024)) $((held / 1024)) $(((held - base) / N)) $((after / 1024))
}

echo "| what | server RSS (1 -> N) | per connection | |"
echo "|---|---|---|---|"
measure "native WebSockets" /ws ws
measure "HTTP/1.1 keep-alive connections" /healthz http
