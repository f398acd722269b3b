#!/usr/bin/env bash
# bench/framed-tls-idle.sh — server memory per idle framed TCP connection
# over TLS, beside cleartext framed ones and WebSockets in the clear and
# over TLS (ws://, wss://), one server build, one client for all four
# (bench/framed_tls_idle_client.py), so only the protocol differs.
#
# For each round, for each KIND (framed framed-tls ws wss): starts
# `SERVER serve --workers 1 --park-after 1s --self-signed` with one listener
# of each kind (--listen, --tls-listen, --tcp-listen, --tcp-tls-listen, u32
# framing), reads its RSS after one request, opens N connections of that
# kind (each: one PING frame answered PONG, or the WebSocket handshake) and
# keeps them idle; once all are open and parked (the parked gauge), samples
# RSS SAMPLES times a second apart and prints one row: (median RSS - RSS
# before) / N, with the open and parked gauges.
#
# Env: N (10000), RAMP (1000/s), ROUNDS (1), KINDS ("framed framed-tls ws
#   wss"), SAMPLES (5), PORT (27400, or the next six free ports; +1..+4
#   the listeners, +5 admin),
#   SERVER (target/release/megaconn).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-10000}" RAMP="${RAMP:-1000}" ROUNDS="${ROUNDS:-1}" SAMPLES="${SAMPLES:-5}"
KINDS="${KINDS:-framed framed-tls ws wss}" PORT="${PORT:-27400}"
# Six ports that no socket holds, TIME-WAIT ones included (a client's
# ephemeral port in TIME-WAIT makes the listener's bind fail).
busy() { ss -tan | awk -v lo="$1" '{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p < lo + 6) { f = 1 } } END { exit !f }'; }
while busy "$PORT"; do PORT=$((PORT + 6)); done
SERVER="${SERVER:-target/release/megaconn}"
ADMIN=$((PORT + 5))
ulimit -n $((N + 2000))
out=$(mktemp -d)
server= client=
cleanup() {
  [[ -n "$client" ]] && kill "$client" 2>/dev/null
  [[ -n "$server" ]] && kill "$server" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$server/status"; }
metric() { curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
port_of() {
  case $1 in
    ws) echo $((PORT + 1)) ;; wss) echo $((PORT + 2)) ;;
    framed) echo $((PORT + 3)) ;; framed-tls) echo $((PORT + 4)) ;;
  esac
}

one() { # kind
  "$SERVER" serve --workers 1 --admin "127.0.0.1:$ADMIN" --park-after 1s \
    --max-connections $((N + 1000)) --self-signed --tcp-framing u32 --publish-rate off \
    --listen "127.0.0.1:$((PORT + 1))" --tls-listen "127.0.0.1:$((PORT + 2))" \
    --tcp-listen "127.0.0.1:$((PORT + 3))" --tcp-tls-listen "127.0.0.1:$((PORT + 4))" \
    >"$out/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "127.0.0.1:$ADMIN/metrics" && break; sleep 0.2; done
  kill -0 "$server" 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
  curl -sf -o /dev/null "127.0.0.1:$((PORT + 1))/" || true
  sleep 2
  local before; before=$(rss)
  exec {to_client}> >(python3 bench/framed_tls_idle_client.py 127.0.0.1 "$(port_of "$1")" "$1" "$N" "$RAMP" >"$out/client.log" 2>&1)
  client=$!
  for _ in $(seq 600); do grep -q '^ready' "$out/client.log" && break; sleep 0.5; done
  grep -q '^ready' "$out/client.log" || { cat "$out/client.log" >&2; echo "the client did not open $N" >&2; exit 1; }
  for _ in $(seq 60); do [[ "$(metric megaconn_connections_parked)" == "$N" ]] && break; sleep 0.5; done
  local samples=() open parked
  for _ in $(seq "$SAMPLES"); do sleep 1; samples+=("$(rss)"); done
  open=$(metric megaconn_connections_open) parked=$(metric megaconn_connections_parked)
  # Closes while holding, by reason (none expected).
  local closes
  closes=$(curl -s "127.0.0.1:$ADMIN/metrics" | awk -F'[{}" ]+' '/^megaconn_connections_closed_total\{/ && $NF > 0 { printf "%s%s %d", sep, $3, $NF; sep = ", " }')
  exec {to_client}>&-
  wait "$client" 2>/dev/null || true
  client=
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  local median; median=$(printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '| %s | %d -> %d KiB | %s open, %s parked; closed: %s | **%d B** |\n' \
    "$1" $((before / 1024)) $((median / 1024)) "$open" "$parked" "${closes:-none}" $(((median - before) / N))
}

echo "| kind | RSS before -> holding (median of $SAMPLES) | gauges while holding | RSS per connection |"
echo "|---|---|---|---:|"
for _ in $(seq "$ROUNDS"); do
  for kind in $KINDS; do one "$kind"; done
done
